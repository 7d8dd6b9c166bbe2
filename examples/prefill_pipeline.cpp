// The seer pipeline end to end on a real model: gate -> selection -> block-sparse attention.
//
// Runs gutenberg-byte-llama-8k (or any Llama checkpoint) over the start of a book. At every layer
// the engine's attention call computes dense attention (which the model continues with) and, on the
// same Q/K/V, seer's block-sparse attention with the distilled LearnedGate (when a gate file is
// given), the training-free MeanPoolGate and the oracle gate (true block attention mass), all
// selecting blocks with TopK at a target density.
// It prints, per layer, the density reached, the error of the sparse output against dense
// attention, and the times of dense attention, gate + selection, and sparse attention.
//
//   prefill_pipeline [--model DIR] [--text FILE] [--gates FILE] [--tokens N] [--density D] [--threads T]
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "command_line.hpp"
#include "llama_engine.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gate/mean_pool_gate.hpp"
#include "seer/gate/oracle_gate.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/top_k.hpp"
#include "seer/training/gate_file.hpp"
#include "text_windows.hpp"

namespace {

struct Options {
  std::string model = "../shared/data/models/gutenberg-byte-llama-8k";
  std::string text = "../shared/data/text/10004.txt";
  std::string gates;  // seer gate file (examples/distill_gates.cpp); empty: no learned gate
  std::int64_t tokens = 4096;
  double density = 0.3;
  int threads = 0;
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(
      argc, argv,
      "usage: prefill_pipeline [--model DIR] [--text FILE] [--gates FILE] [--tokens N] [--density D] "
      "[--threads T]");
  Options o;
  o.model = args.text("--model", o.model);
  o.text = args.text("--text", o.text);
  o.gates = args.text("--gates", o.gates);
  o.tokens = args.integer("--tokens", o.tokens);
  o.density = args.real("--density", o.density);
  o.threads = static_cast<int>(args.integer("--threads", o.threads));
  args.finish();
  return o;
}

double milliseconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

struct Comparison {
  double density = 0.0;
  double max_error = 0.0;       // max |sparse - dense| over all outputs
  double relative_error = 0.0;  // ||sparse - dense|| / ||dense||
  double select_ms = 0.0;       // gate scoring + block selection
  double sparse_ms = 0.0;       // block-sparse attention
};

// Runs block-sparse attention for `blocks` and compares it with the dense output.
Comparison compare_with_dense(const engine::LayerAttention& call, const seer::BlockSet& blocks,
                              const std::vector<float>& dense, double select_ms, int threads) {
  std::vector<float> sparse(dense.size(), std::nanf(""));
  auto out = call.out;
  out.data = sparse.data();
  const seer::TensorView<float, 2> no_lse{};
  const auto start = std::chrono::steady_clock::now();
  seer::cpu::block_sparse_attention(call.q, call.k, call.v, &blocks, seer::AttentionOptions{}, out, no_lse, threads);
  Comparison result;
  result.sparse_ms = milliseconds_since(start);
  result.select_ms = select_ms;
  result.density = blocks.density();
  double difference = 0.0, reference = 0.0;
  for (std::size_t i = 0; i < dense.size(); ++i) {
    const double delta = static_cast<double>(sparse[i]) - dense[i];
    result.max_error = std::max(result.max_error, std::fabs(delta));
    difference += delta * delta;
    reference += static_cast<double>(dense[i]) * dense[i];
  }
  result.relative_error = std::sqrt(difference / reference);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  try {
    std::printf("seer prefill pipeline: model %s\n", options.model.c_str());
    const auto model = engine::LlamaModel::load(options.model);
    const auto& config = model.config();
    std::vector<seer::LearnedGate> learned;
    if (!options.gates.empty()) learned = seer::training::read_gate_file(options.gates, config).gates;
    std::string text = engine::read_text_file(options.text);
    if (static_cast<std::int64_t>(text.size()) > options.tokens) text.resize(static_cast<std::size_t>(options.tokens));
    const auto tokens = engine::bytes_as_tokens(text);
    std::printf("%lld tokens of %s; %lld layers, %lld/%lld heads, head dim %lld; TopK target density %.2f\n\n",
                static_cast<long long>(tokens.size()), options.text.c_str(), static_cast<long long>(config.num_layers),
                static_cast<long long>(config.num_q_heads), static_cast<long long>(config.num_kv_heads),
                static_cast<long long>(config.head_dim), options.density);
    std::printf("%5s  %-9s  %7s  %10s  %10s  %9s  %10s  %9s  %8s\n", "layer", "gate", "density", "max error",
                "rel error", "dense ms", "select ms", "sparse ms", "speedup");

    // Per gate, over all layers: dense ms, gate + selection ms, sparse ms, in the order first seen.
    std::vector<std::pair<std::string, std::array<double, 3>>> totals;
    const auto policy = seer::TopK::target_density(options.density);
    const auto logits = model.forward(tokens, [&](const engine::LayerAttention& call) {
      const seer::TensorView<float, 2> no_lse{};
      const auto start = std::chrono::steady_clock::now();
      seer::cpu::block_sparse_attention(call.q, call.k, call.v, nullptr, seer::AttentionOptions{}, call.out, no_lse,
                                        options.threads);
      const double dense_ms = milliseconds_since(start);
      const std::vector<float> dense(call.out.data,
                                     call.out.data + call.q.batch * call.q.max_length * call.q.heads * call.q.head_dim);

      auto report = [&](const char* gate, const Comparison& c) {
        auto it = std::find_if(totals.begin(), totals.end(), [&](const auto& entry) { return entry.first == gate; });
        if (it == totals.end()) it = totals.insert(totals.end(), {gate, {0.0, 0.0, 0.0}});
        it->second[0] += dense_ms;
        it->second[1] += c.select_ms;
        it->second[2] += c.sparse_ms;
        std::printf("%5lld  %-9s  %7.3f  %10.2e  %10.2e  %9.1f  %10.1f  %9.1f  %7.2fx\n",
                    static_cast<long long>(call.layer), gate, c.density, c.max_error, c.relative_error, dense_ms,
                    c.select_ms, c.sparse_ms, dense_ms / (c.select_ms + c.sparse_ms));
      };
      if (!learned.empty()) {
        const auto select_start = std::chrono::steady_clock::now();
        const auto scores = learned[call.layer].score(call.q_before_rope, call.k_before_rope, true, options.threads);
        const auto blocks = seer::select_blocks(scores, policy, {}, options.threads);
        report("learned", compare_with_dense(call, blocks, dense, milliseconds_since(select_start), options.threads));
      }
      {
        const auto select_start = std::chrono::steady_clock::now();
        const auto scores = seer::MeanPoolGate{64}.score(call.q, call.k, true, options.threads);
        const auto blocks = seer::select_blocks(scores, policy, {}, options.threads);
        report("mean-pool", compare_with_dense(call, blocks, dense, milliseconds_since(select_start), options.threads));
      }
      {
        const auto select_start = std::chrono::steady_clock::now();
        const auto scores = seer::OracleGate{}.score(call.q, call.k, seer::AttentionOptions{}, 64);
        const auto blocks = seer::select_blocks(scores, policy, {}, options.threads);
        report("oracle", compare_with_dense(call, blocks, dense, milliseconds_since(select_start), options.threads));
      }
    });
    std::printf("\nall layers:\n");
    for (const auto& [gate, ms] : totals)
      std::printf("  %-9s dense attention %8.1f ms, gate + selection %7.1f ms, sparse attention %7.1f ms (%.2fx)\n",
                  gate.c_str(), ms[0], ms[1], ms[2], ms[0] / (ms[1] + ms[2]));
    std::printf("dense model: %.3f bits per byte on this text\n", engine::LlamaModel::bits_per_token(logits, tokens));
    std::printf(
        "(oracle selection needs the full attention map: it shows what a perfect gate could keep, not a "
        "speedup)\n");
  } catch (const seer::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
