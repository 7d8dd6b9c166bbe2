// The README's minimal example: gate -> selection -> block-sparse attention on the CPU.
#include <cstdio>
#include <random>
#include <vector>

#include "seer/seer.hpp"

int main() {
  const std::int64_t tokens = 4096, q_heads = 8, kv_heads = 2, dim = 64;  // GQA: 4 query heads per KV head
  std::vector<float> q(tokens * q_heads * dim), k(tokens * kv_heads * dim), v(k.size()), out(q.size());
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (auto* x : {&q, &k, &v})
    for (float& value : *x) value = normal(rng);

  // Non-owning [batch, tokens, heads, dim] views (strides may be anything; packed varlen works too).
  using seer::TensorView;
  const auto qs = seer::padded_batch(TensorView<const float, 4>::contiguous(q.data(), {1, tokens, q_heads, dim}), "q");
  const auto ks = seer::padded_batch(TensorView<const float, 4>::contiguous(k.data(), {1, tokens, kv_heads, dim}), "k");
  const auto vs = seer::padded_batch(TensorView<const float, 4>::contiguous(v.data(), {1, tokens, kv_heads, dim}), "v");
  const auto os = seer::padded_batch(TensorView<float, 4>::contiguous(out.data(), {1, tokens, q_heads, dim}), "out");

  // 1. Gate: score every 64x64 block of the causal map (a trained seer::LearnedGate reads pre-RoPE Q/K).
  const auto scores = seer::MeanPoolGate{64}.score(qs, ks);
  // 2. Selection: keep ~20% of the causal blocks per head; the diagonal block is always kept.
  const seer::BlockSet blocks = seer::select_blocks(scores, seer::TopK::target_density(0.2));
  // 3. Attention over the kept blocks only (fp32 accumulation, all cores).
  seer::cpu::block_sparse_attention(qs, ks, vs, &blocks, seer::AttentionOptions{}, os, TensorView<float, 2>{});

  std::printf("kept %lld blocks, %.1f%% of the causal map; out[0] = %.4f\n",
              static_cast<long long>(blocks.kept_blocks()), 100.0 * blocks.density(), out[0]);
  return 0;
}
