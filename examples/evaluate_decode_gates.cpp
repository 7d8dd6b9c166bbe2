// How much attention decode block selection keeps: distilled DecodeGates against their initial
// (untrained) weights, a sink + recent-window rule and an oracle, at the same token budgets, on text
// the gates never saw (one window from the second half of each book).
//
// For each window and layer the frozen model runs densely; a KCompressionCache is filled from the
// window's pre-RoPE keys; then for decode positions t (every --stride-th token of the second half of
// the window) each policy builds its per-KV-head block list as a decode step at t would (cache length
// t + 1, the query of token t), and each query head h of the group is scored by its captured mass:
// the sum over the kept blocks of its dense attention probabilities at t (post-RoPE q and k, exact
// softmax over keys 0..t). Reported: the mean over (window, layer, t, query head), and the mean kept
// blocks. Policies, all with the first and the newest block forced:
//   trained gate   TokenBudget over the distilled gate's scores (select_decode_blocks_into);
//   initial gate   the same with the distillation's starting weights (normal(0, 0.02), norms 1, --seed);
//   sink + recent  the budget's blocks right before the newest one;
//   oracle         the budget's blocks with the largest attention mass summed over the group's query
//                  heads: the best list one KV head can share for this measure.
//
//   evaluate_decode_gates [--model DIR] [--gates FILE] [--text-dir DIR] [--books a.txt,b.txt] [--tokens N]
//                         [--budgets 256,1024] [--stride N] [--seed N] [--threads N]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "llama_engine.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/decode_selection.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/training/decode_gate_file.hpp"
#include "text_windows.hpp"

namespace {

struct Options {
  std::string model, gates, text_dir, books, budgets;
  std::int64_t tokens = 0, stride = 0;
  unsigned seed = 0;
  int threads = 0;
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(
      argc, argv,
      "usage: evaluate_decode_gates [--model DIR] [--gates FILE] [--text-dir DIR] [--books a.txt,b.txt]\n"
      "                             [--tokens N] [--budgets 256,1024] [--stride N] [--seed N] [--threads N]");
  Options o;
  o.model = args.text("--model", "../shared/data/models/gutenberg-byte-llama-8k");
  o.gates = args.text("--gates", "bench/gate_quality/decode_gates.safetensors");
  o.text_dir = args.text("--text-dir", "../shared/data/text");
  o.books = args.text("--books", "10004.txt,10146.txt,10387.txt,10509.txt,11327.txt");
  o.tokens = args.integer("--tokens", 8192);
  o.budgets = args.text("--budgets", "256,512,1024,2048");
  o.stride = args.integer("--stride", 61);
  o.seed = static_cast<unsigned>(args.integer("--seed", 1234));
  o.threads = static_cast<int>(args.integer("--threads", 0));
  args.finish();
  seer::require(o.tokens >= 128, "--tokens", "is ", o.tokens, ", expected >= 128");
  seer::require(o.stride >= 1, "--stride", "is ", o.stride, ", expected >= 1");
  return o;
}

// The distillation's starting point for these gates (as distill_decode_gates initialises them).
std::vector<seer::DecodeGate> initial_gates(const std::vector<seer::DecodeGate>& trained, unsigned seed) {
  std::mt19937_64 random(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<seer::DecodeGate> gates;
  for (const auto& gate : trained) {
    seer::DecodeGateWeights weights = gate.weights();
    for (auto& w : weights.q_projection) w = normal(random);
    for (auto& w : weights.k_projection) w = normal(random);
    std::fill(weights.q_norm.begin(), weights.q_norm.end(), 1.0f);
    std::fill(weights.k_norm.begin(), weights.k_norm.end(), 1.0f);
    gates.emplace_back(gate.config(), gate.num_q_heads(), gate.num_kv_heads(), gate.head_dim(), std::move(weights));
  }
  return gates;
}

constexpr int kPolicies = 4;
const char* const kPolicyNames[kPolicies] = {"trained gate", "initial gate", "sink + recent", "oracle"};

struct Totals {
  double mass[kPolicies] = {};
  double kept[kPolicies] = {};
  double samples = 0.0;
  double available_blocks = 0.0;
};

// Blocks [0, newest] of the list `scores` ranks best (top `budget` of [0, newest)), plus 0 and newest.
std::vector<std::int32_t> best_blocks(const std::vector<double>& scores, std::int64_t newest, std::int64_t budget) {
  std::vector<std::int32_t> order(static_cast<std::size_t>(newest));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return scores[a] > scores[b]; });
  order.resize(std::min<std::size_t>(order.size(), static_cast<std::size_t>(budget)));
  order.push_back(0);
  order.push_back(static_cast<std::int32_t>(newest));
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  return order;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    const auto model = engine::LlamaModel::load(options.model);
    const auto& config = model.config();
    const auto file = seer::training::read_decode_gate_file(options.gates, config);
    const std::vector<seer::DecodeGate> untrained = initial_gates(file.gates, options.seed);
    std::vector<std::int64_t> budgets;
    for (const auto& item : engine::split_list(options.budgets)) budgets.push_back(std::atoll(item.c_str()));
    seer::require(!budgets.empty(), "--budgets", "is empty");

    const std::int64_t hq = config.num_q_heads, hkv = config.num_kv_heads, dim = config.head_dim;
    const std::int64_t group = hq / hkv, block = file.gates.front().block_size();
    std::vector<Totals> totals(budgets.size());
    engine::Stopwatch clock;
    const auto books = engine::split_list(options.books);
    for (std::size_t book = 0; book < books.size(); ++book) {
      const auto window =
          engine::book_windows(options.text_dir, books[book], engine::BookHalf::evaluation, 1, options.tokens).front();
      const auto tokens = engine::bytes_as_tokens(window.bytes);
      const auto n = static_cast<std::int64_t>(tokens.size());
      model.forward(tokens, [&](const engine::LayerAttention& call) {
        seer::cpu::block_sparse_attention(call.q, call.k, call.v, nullptr, seer::AttentionOptions{}, call.out,
                                          seer::TensorView<float, 2>{}, options.threads);
        // The window's pre-RoPE keys as a one-sequence KV cache, compressed once.
        const std::vector<std::int32_t> full{static_cast<std::int32_t>(n)};
        const seer::TensorView<const float, 4> keys{
            call.k_before_rope.data,
            {1, n, hkv, dim},
            {n * call.k_before_rope.token_stride, call.k_before_rope.token_stride, call.k_before_rope.head_stride, 1}};
        const auto kv = seer::contiguous_kv_cache(keys, keys, full.data(), n);
        const seer::DecodeGate* gates[2] = {&file.gates[call.layer], &untrained[call.layer]};
        std::vector<seer::KCompressionCache<float>> caches;
        for (const auto* gate : gates) {
          caches.push_back(seer::KCompressionCache<float>::for_kv_cache(kv, *gate));
          caches.back().prefill(kv, *gate, nullptr, options.threads);
        }
        const std::vector<std::int32_t> one_token{0, 1};
        std::vector<double> probabilities, mass, group_mass;
        for (std::int64_t t = n / 2; t < n; t += options.stride) {
          const std::int64_t newest = t / block;
          const std::vector<std::int32_t> length{static_cast<std::int32_t>(t + 1)};
          seer::SequenceBatch<const float> query = call.q_before_rope;  // token t as a one-token step
          query.data = call.q_before_rope.vector(0, t, 0);
          query.cu_seqlens = one_token.data();
          query.max_length = 1;
          query.stored_tokens = 1;
          // Dense attention mass per block for every query head: [hq, newest + 1].
          mass.assign(static_cast<std::size_t>(hq * (newest + 1)), 0.0);
          for (std::int64_t h = 0; h < hq; ++h) {
            const float* q = call.q.vector(0, t, h);
            probabilities.resize(static_cast<std::size_t>(t + 1));
            double peak = -std::numeric_limits<double>::infinity(), total = 0.0;
            for (std::int64_t k = 0; k <= t; ++k) {
              const float* key = call.k.vector(0, k, h / group);
              double dot = 0.0;
              for (std::int64_t d = 0; d < dim; ++d) dot += static_cast<double>(q[d]) * static_cast<double>(key[d]);
              probabilities[k] = dot / std::sqrt(static_cast<double>(dim));
              peak = std::max(peak, probabilities[k]);
            }
            for (auto& p : probabilities) total += (p = std::exp(p - peak));
            for (std::int64_t k = 0; k <= t; ++k) mass[h * (newest + 1) + k / block] += probabilities[k] / total;
          }
          for (std::size_t b = 0; b < budgets.size(); ++b) {
            const std::int64_t budget_blocks = budgets[b] / block;
            seer::DecodeBlockList lists[2] = {seer::DecodeBlockList(1, hkv, newest + 1, block),
                                              seer::DecodeBlockList(1, hkv, newest + 1, block)};
            for (int g = 0; g < 2; ++g)
              seer::select_decode_blocks_into(*gates[g], caches[static_cast<std::size_t>(g)], query, length.data(),
                                              seer::TokenBudget{budgets[b]}, lists[g], 1);
            for (std::int64_t c = 0; c < hkv; ++c) {
              group_mass.assign(static_cast<std::size_t>(newest + 1), 0.0);
              for (std::int64_t h = c * group; h < (c + 1) * group; ++h)
                for (std::int64_t j = 0; j <= newest; ++j) group_mass[j] += mass[h * (newest + 1) + j];
              std::vector<double> recency(static_cast<std::size_t>(newest + 1));
              std::iota(recency.begin(), recency.end(), 0.0);
              const std::vector<std::int32_t> kept[kPolicies] = {lists[0].row(0, c), lists[1].row(0, c),
                                                                 best_blocks(recency, newest, budget_blocks),
                                                                 best_blocks(group_mass, newest, budget_blocks)};
              for (std::int64_t h = c * group; h < (c + 1) * group; ++h) {
                for (int p = 0; p < kPolicies; ++p) {
                  for (const auto j : kept[p]) totals[b].mass[p] += mass[h * (newest + 1) + j];
                  totals[b].kept[p] += static_cast<double>(kept[p].size());
                }
                totals[b].samples += 1.0;
                totals[b].available_blocks += static_cast<double>(newest + 1);
              }
            }
          }
        }
      });
      const double elapsed = clock.seconds();
      std::printf("window %zu/%zu  %s@%lld  elapsed %s  left %s\n", book + 1, books.size(), window.book.c_str(),
                  static_cast<long long>(window.offset), engine::format_duration(elapsed).c_str(),
                  engine::format_duration(elapsed / static_cast<double>(book + 1) *
                                          static_cast<double>(books.size() - book - 1))
                      .c_str());
      std::fflush(stdout);
    }

    std::printf("\ncaptured dense attention mass per query head (mean over windows, layers, positions, heads)\n");
    std::printf("%-8s %-11s", "budget", "kept/blocks");
    for (const char* name : kPolicyNames) std::printf("  %-24s", name);
    std::printf("\n");
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      const Totals& s = totals[b];
      std::printf("%-8lld %5.1f/%-5.1f", static_cast<long long>(budgets[b]), s.kept[0] / s.samples,
                  s.available_blocks / s.samples);
      for (int p = 0; p < kPolicies; ++p)
        std::printf("  mass %.4f (%5.2f kept)", s.mass[p] / s.samples, s.kept[p] / s.samples);
      std::printf("\n");
    }
  } catch (const seer::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
