// Distils SeerAttention-R decode gates (DecodeGate: Qproj, Kmaxminavg, RMSNorm, RoPE) for a Llama
// checkpoint on the CPU, the way the original trains them (§4.2 and §5.2 of the reference): the model
// is frozen; each layer's gate learns, for every token t of the second half of a window, the 1-D
// ground truth of the model's own attention over the complete blocks before t's block (GQA-maxed block
// maxima, normalised); loss = KL divergence x 10 (seer/training/decode_distillation.hpp), AdamW with a
// cosine schedule and warmup.
//
// Two phases, as distill_gates:
//   1. Precompute: run the frozen model (dense attention) over the training windows once and keep, per
//      window and layer, the head-pooled pre-RoPE queries of the trained tokens, the pooled pre-RoPE
//      key blocks and the ground-truth rows. About 23 MB per window and layer for the gutenberg model
//      at 8192 tokens (the queries dominate: trained tokens x Hq x D doubles), hence few windows.
//   2. Train: each step takes `batch` windows, sums the loss over layers, averages over the windows,
//      and updates every layer's gate tensors with AdamW. Held-out windows are scored as it goes.
//
// Data: the first half of every book in --text-dir (the evaluation programs use the second halves).
// Output: a decode gate file (seer/training/decode_gate_file.hpp) with the settings in its metadata.
//
//   distill_decode_gates [--model DIR] [--text-dir DIR] [--books a.txt,b.txt] [--windows-per-book N]
//                        [--tokens N] [--steps N] [--batch N] [--learning-rate X] [--warmup N]
//                        [--q-head-pooling Qproj|Qavgproj|Qavg] [--qk-norm true|false] [--seed N]
//                        [--threads N] [--out FILE]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "distillation_loop.hpp"
#include "llama_engine.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/training/adam_w.hpp"
#include "seer/training/decode_distillation.hpp"
#include "seer/training/decode_gate_file.hpp"
#include "text_windows.hpp"

namespace {

struct Options : engine::DistillationOptions {
  std::string q_head_pooling = "Qproj";
  bool qk_norm = true;  // the training script's USE_QK_NORM=true

  Options() {
    windows_per_book = 3;
    steps = 200;
    batch = 4;
    out = "bench/gate_quality/decode_gates.safetensors";
  }
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(
      argc, argv,
      "usage: distill_decode_gates [--model DIR] [--text-dir DIR] [--books a.txt,b.txt]\n"
      "                            [--windows-per-book N] [--tokens N] [--steps N] [--batch N]\n"
      "                            [--learning-rate X] [--warmup N] [--q-head-pooling Qproj|Qavgproj|Qavg]\n"
      "                            [--qk-norm true|false] [--seed N] [--threads N] [--out FILE]");
  Options o;
  engine::read_distillation_flags(args, o);
  o.q_head_pooling = args.text("--q-head-pooling", o.q_head_pooling);
  o.qk_norm = args.boolean("--qk-norm", o.qk_norm);
  args.finish();
  engine::check_distillation_options(o, 128);
  return o;
}

// normal(0, 0.02) projections and unit norm weights: transformers' _init_weights for the gate modules.
std::vector<seer::DecodeGate> initial_gates(const seer::io::ModelConfig& model, const Options& options) {
  seer::DecodeGateConfig config;
  config.block_size = 64;
  config.hidden_size = model.head_dim;  // the gate's RoPE needs dg == head_dim
  config.query_head_pooling = seer::parse_query_head_pooling(options.q_head_pooling);
  config.use_qk_norm = options.qk_norm;
  config.use_rope = true;
  config.rope = model.rope;
  const auto layout = seer::DecodeGateLayout::of(config, model.num_q_heads, model.num_kv_heads, model.head_dim);
  std::mt19937_64 random(options.seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto random_tensor = [&](const std::vector<std::int64_t>& shape) {
    std::vector<float> values(static_cast<std::size_t>(seer::DecodeGateLayout::elements(shape)));
    for (auto& w : values) w = normal(random);
    return values;
  };
  std::vector<seer::DecodeGate> gates;
  for (std::int64_t l = 0; l < model.num_layers; ++l) {
    seer::DecodeGateWeights weights;
    weights.q_projection = random_tensor(layout.q_shape);
    weights.k_projection = random_tensor(layout.k_shape);
    weights.q_norm.assign(static_cast<std::size_t>(seer::DecodeGateLayout::elements(layout.norm_shape)), 1.0f);
    weights.k_norm = weights.q_norm;
    gates.emplace_back(config, model.num_q_heads, model.num_kv_heads, model.head_dim, std::move(weights));
  }
  return gates;
}

using WindowExamples = std::vector<seer::training::DecodeDistillationExample>;  // one per layer

// One AdamW state per gate tensor, so each tensor keeps its own moments.
struct GateOptimizer {
  std::vector<seer::training::AdamW> tensors;

  explicit GateOptimizer(const seer::DecodeGate& gate) {
    const auto& w = gate.weights();
    for (auto size : {w.q_projection.size(), w.k_projection.size(), w.q_norm.size(), w.k_norm.size()})
      tensors.emplace_back(static_cast<std::int64_t>(size));
  }
  void step(seer::DecodeGate& gate, const seer::training::DecodeGateGradient& gradient, double learning_rate) {
    tensors[0].step(gate.q_projection_data(), gradient.q_projection.data(), learning_rate);
    tensors[1].step(gate.k_projection_data(), gradient.k_projection.data(), learning_rate);
    tensors[2].step(gate.q_norm_data(), gradient.q_norm.data(), learning_rate);
    tensors[3].step(gate.k_norm_data(), gradient.k_norm.data(), learning_rate);
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    const auto model = engine::LlamaModel::load(options.model);
    const auto& config = model.config();
    std::vector<seer::DecodeGate> gates = initial_gates(config, options);

    // The last window of every book is held out (when a book gives more than one).
    std::vector<engine::TextWindow> windows, held_out;
    for (const auto& book : engine::split_list(options.books)) {
      auto book_windows = engine::book_windows(options.text_dir, book, engine::BookHalf::training,
                                               options.windows_per_book, options.tokens);
      if (book_windows.size() > 1) {
        held_out.push_back(std::move(book_windows.back()));
        book_windows.pop_back();
      }
      for (auto& w : book_windows) windows.push_back(std::move(w));
    }
    const std::size_t train_count = windows.size();
    for (auto& w : held_out) windows.push_back(std::move(w));
    std::printf(
        "distill_decode_gates: %zu windows of %lld bytes from the first halves of the books (%zu train, %zu "
        "validation); %s gates, qk norm %s\n",
        windows.size(), static_cast<long long>(options.tokens), train_count, windows.size() - train_count,
        options.q_head_pooling.c_str(), options.qk_norm ? "on" : "off");

    // Phase 1: frozen forward + ground truth, once per window.
    const seer::training::DecodeDistillationOptions loss_options;  // x10, tokens [len / 2, len)
    std::vector<WindowExamples> examples(windows.size());
    engine::Stopwatch precompute;
    for (std::size_t w = 0; w < windows.size(); ++w) {
      const auto tokens = engine::bytes_as_tokens(windows[w].bytes);
      const auto logits = model.forward(tokens, [&](const engine::LayerAttention& call) {
        seer::cpu::block_sparse_attention(call.q, call.k, call.v, nullptr, seer::AttentionOptions{}, call.out,
                                          seer::TensorView<float, 2>{}, options.threads);
        auto layer_examples = seer::training::make_decode_distillation_examples(
            gates[call.layer], call.q_before_rope, call.k_before_rope, call.q, call.k, loss_options,
            seer::AttentionOptions{}, options.threads);
        examples[w].push_back(std::move(layer_examples.front()));
      });
      const double dense_bits = engine::LlamaModel::bits_per_token(logits, tokens);
      const double elapsed = precompute.seconds();
      const double rate = static_cast<double>((w + 1) * tokens.size()) / elapsed;
      std::printf(
          "precompute %zu/%zu  %s@%lld  dense %.3f bpb  %.0f tokens/s  elapsed %s  left %s\n", w + 1, windows.size(),
          windows[w].book.c_str(), static_cast<long long>(windows[w].offset), dense_bits, rate,
          engine::format_duration(elapsed).c_str(),
          engine::format_duration(elapsed / static_cast<double>(w + 1) * static_cast<double>(windows.size() - w - 1))
              .c_str());
      std::fflush(stdout);
    }
    const double precompute_seconds = precompute.seconds();

    // Phase 2: AdamW on every layer's gate tensors.
    std::vector<GateOptimizer> optimizers;
    std::vector<seer::training::DecodeGateGradient> gradients;
    for (const auto& gate : gates) {
      optimizers.emplace_back(gate);
      gradients.push_back(seer::training::DecodeGateGradient::zeros_like(gate));
    }
    auto window_loss = [&](std::size_t w, bool with_gradient, double weight) {
      double loss = 0.0;
      for (std::size_t l = 0; l < gates.size(); ++l)
        loss += seer::training::decode_distillation_loss(
            gates[l], examples[w][l], loss_options, with_gradient ? &gradients[l] : nullptr, weight, options.threads);
      return loss;
    };
    const engine::DistillationRun run = engine::distillation_run(
        options, train_count, windows.size(), static_cast<double>(options.tokens / 2));  // the second half trains
    const engine::DistillationResult trained = engine::run_distillation(
        run, window_loss,
        [&]() {
          for (auto& g : gradients) g.set_zero();
        },
        [&](double learning_rate) {
          for (std::size_t l = 0; l < gates.size(); ++l) optimizers[l].step(gates[l], gradients[l], learning_rate);
        });
    auto metadata = engine::distillation_metadata(run, trained, options.model, options.books, options.tokens);
    metadata["loss"] =
        "KL(1-D ground truth || gate) x 10, torch KLDivLoss mean, tokens [len/2, len), blocks j < t/64 scored";
    metadata["init"] = "projections normal(0, 0.02), norm weights 1, seed " + std::to_string(options.seed);
    seer::training::write_decode_gate_file(options.out, gates, metadata);
    std::printf("\nvalidation loss %.4f -> %.4f; precompute %s, training %s; decode gates written to %s\n",
                trained.initial_validation, trained.final_validation,
                engine::format_duration(precompute_seconds).c_str(), engine::format_duration(trained.seconds).c_str(),
                options.out.c_str());
  } catch (const seer::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
