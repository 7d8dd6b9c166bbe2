// Distils SeerAttention prefill gates (LearnedGate, Qavg_Kmaxminavg) for a Llama checkpoint on the
// CPU, the way the original trains them (§5.1 of the reference): the model is frozen, each layer's
// gate learns to predict the two-dimensional ground truth of the model's own attention, loss = KL
// divergence (seer/training/distillation_loss.hpp), AdamW with a cosine schedule and warmup.
//
// Two phases:
//   1. Precompute: run the frozen model (dense attention) over the training windows once, and keep,
//      per window and layer, the block-pooled pre-RoPE q/k and the ground-truth rows. These are all
//      the gate ever reads, and they are small (~1.4 MB per window and layer for the gutenberg model),
//      so training steps never run the model again.
//   2. Train: each step takes `batch` windows, sums the loss over layers, averages over the windows,
//      and updates every layer's gate with AdamW. A held-out validation window is scored as it goes.
//
// Data: the first half of every book in --text-dir (evaluate_gates uses only the second halves).
// Output: a gate file (seer/training/gate_file.hpp) with the training settings in its metadata.
//
//   distill_gates [--model DIR] [--text-dir DIR] [--books a.txt,b.txt] [--windows-per-book N]
//                 [--tokens N] [--steps N] [--batch N] [--learning-rate X] [--warmup N] [--seed N]
//                 [--threads N] [--out FILE] [--target max|mass]
// --target picks the ground truth's block pooling: max (the paper's §4.1, the default) or mass
// (cpu/ground_truth.hpp: the mean attention mass of the block, what TopK's error depends on).
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
#include "seer/gate/learned_gate.hpp"
#include "seer/training/adam_w.hpp"
#include "seer/training/distillation_loss.hpp"
#include "seer/training/gate_file.hpp"
#include "text_windows.hpp"

namespace {

struct Options : engine::DistillationOptions {
  std::string target = "max";  // ground-truth pooling: max (SeerAttention §4.1) or mass

  Options() {
    windows_per_book = 12;
    steps = 500;
    batch = 8;
    out = "bench/gate_quality/learned_gates.safetensors";
  }
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(
      argc, argv,
      "usage: distill_gates [--model DIR] [--text-dir DIR] [--books a.txt,b.txt] [--windows-per-book N]\n"
      "                     [--tokens N] [--steps N] [--batch N] [--learning-rate X] [--warmup N]\n"
      "                     [--seed N] [--threads N] [--out FILE] [--target max|mass]");
  Options o;
  engine::read_distillation_flags(args, o);
  o.target = args.text("--target", o.target);
  args.finish();
  seer::require(o.target == "max" || o.target == "mass", "--target", "is ", o.target, ", expected max or mass");
  engine::check_distillation_options(o, 64);
  return o;
}

// normal(0, 0.02) weights: transformers' initializer_range init, which the original gates start from.
std::vector<seer::LearnedGate> initial_gates(const seer::io::ModelConfig& model, unsigned seed) {
  seer::LearnedGateConfig config;
  config.gate_type = "Qavg_Kmaxminavg";
  config.block_size = 64;
  config.hidden_size = model.head_dim;  // the gate's RoPE needs dg == head_dim
  config.rope = model.rope;
  std::mt19937_64 random(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<seer::LearnedGate> gates;
  for (std::int64_t l = 0; l < model.num_layers; ++l) {
    std::vector<float> k(static_cast<std::size_t>(model.num_q_heads * 3 * model.head_dim * model.head_dim));
    for (auto& w : k) w = normal(random);
    gates.emplace_back(config, model.num_q_heads, model.num_kv_heads, model.head_dim, std::move(k));
  }
  return gates;
}

using WindowExamples = std::vector<seer::training::DistillationExample>;  // one per layer

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    const auto model = engine::LlamaModel::load(options.model);
    const auto& config = model.config();
    std::vector<seer::LearnedGate> gates = initial_gates(config, options.seed);

    // The last window of every book is held out (when a book gives more than one) to watch the loss
    // on text the gates do not train on. Training windows come first, validation windows after.
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
        "distill_gates: %zu windows of %lld bytes from the first halves of the books (%zu train, %zu validation)\n",
        windows.size(), static_cast<long long>(options.tokens), train_count, windows.size() - train_count);

    // Phase 1: frozen forward + ground truth, once per window.
    std::vector<WindowExamples> examples(windows.size());
    std::vector<double> dense_bits(windows.size());
    engine::Stopwatch precompute;
    for (std::size_t w = 0; w < windows.size(); ++w) {
      const auto tokens = engine::bytes_as_tokens(windows[w].bytes);
      const auto logits = model.forward(tokens, [&](const engine::LayerAttention& call) {
        seer::cpu::block_sparse_attention(call.q, call.k, call.v, nullptr, seer::AttentionOptions{}, call.out,
                                          seer::TensorView<float, 2>{}, options.threads);
        auto layer_examples = seer::training::make_distillation_examples(
            gates[call.layer], call.q_before_rope, call.k_before_rope, call.q, call.k, seer::AttentionOptions{},
            options.threads,
            options.target == "mass" ? seer::cpu::BlockTargetPooling::mass : seer::cpu::BlockTargetPooling::max);
        examples[w].push_back(std::move(layer_examples.front()));
      });
      dense_bits[w] = engine::LlamaModel::bits_per_token(logits, tokens);
      const double elapsed = precompute.seconds();
      const double rate = static_cast<double>((w + 1) * tokens.size()) / elapsed;
      std::printf(
          "precompute %zu/%zu  %s@%lld  dense %.3f bpb  %.0f tokens/s  elapsed %s  left %s\n", w + 1, windows.size(),
          windows[w].book.c_str(), static_cast<long long>(windows[w].offset), dense_bits[w], rate,
          engine::format_duration(elapsed).c_str(),
          engine::format_duration(elapsed / static_cast<double>(w + 1) * static_cast<double>(windows.size() - w - 1))
              .c_str());
      std::fflush(stdout);
    }

    const double precompute_seconds = precompute.seconds();

    // Phase 2: AdamW on every layer's k projection.
    const seer::training::DistillationOptions loss_options;  // scale 10, first quarter of rows dropped
    std::vector<seer::training::AdamW> optimizers;
    std::vector<seer::training::GateGradient> gradients;
    for (const auto& gate : gates) {
      optimizers.emplace_back(static_cast<std::int64_t>(gate.k_projection().size()));
      gradients.push_back(seer::training::GateGradient::zeros_like(gate));
    }
    auto window_loss = [&](std::size_t w, bool with_gradient, double weight) {
      double loss = 0.0;
      for (std::size_t l = 0; l < gates.size(); ++l)
        loss += seer::training::distillation_loss(gates[l], examples[w][l], loss_options,
                                                  with_gradient ? &gradients[l] : nullptr, weight, options.threads);
      return loss;
    };
    const engine::DistillationRun run =
        engine::distillation_run(options, train_count, windows.size(), static_cast<double>(options.tokens));
    const engine::DistillationResult trained = engine::run_distillation(
        run, window_loss,
        [&]() {
          for (auto& g : gradients) g.set_zero();
        },
        [&](double learning_rate) {
          for (std::size_t l = 0; l < gates.size(); ++l)
            optimizers[l].step(gates[l].k_projection_data(), gradients[l].k_projection.data(), learning_rate);
        });
    auto metadata = engine::distillation_metadata(run, trained, options.model, options.books, options.tokens);
    metadata["loss"] = "KL(ground truth || gate) x 10, torch KLDivLoss mean, first quarter of rows dropped";
    metadata["target_pooling"] = options.target;
    metadata["init"] = "normal(0, 0.02), seed " + std::to_string(options.seed);
    seer::training::write_gate_file(options.out, gates, metadata);
    std::printf("\nvalidation loss %.4f -> %.4f; precompute %s, training %s; gates written to %s\n",
                trained.initial_validation, trained.final_validation,
                engine::format_duration(precompute_seconds).c_str(), engine::format_duration(trained.seconds).c_str(),
                options.out.c_str());
  } catch (const seer::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
