// Decode block selection: which KV blocks each (sequence, KV head) reads in a decode step, from the
// DecodeGate's scores over the KCompressionCache (SeerAttention-R §3.3; reference §3 "Decode selection").
//
// Scored blocks. A step appends n >= 1 query tokens to sequence b (1 for plain decoding, up to ~8 for
// speculative decoding); lengths[b] counts them, so token i sits at position lengths[b] - n + i. Each
// token's gate query scores the complete blocks before its own block (j < position / B, the training
// convention) with its own softmax. A block's score for the row is the MAX over the step's tokens of
// their probabilities for it (tokens that do not score the block do not count): one list per KV head
// must serve every token of the step, and a block that matters to any token should be read. For
// n = 1 this is the plain softmax of the single query.
//
// Policies, applied to the scored blocks:
//   TokenBudget{tokens}   keeps the floor(tokens / B) best scored blocks (every scored block when that
//                         many or fewer exist), the original's top-k of the softmax by block budget;
//   DecodeThreshold{tau}  keeps the scored blocks whose score exceeds tau (strict, as the original).
// Ranking is by score, ties to the lower block index. Then the forced blocks are added:
//   - the first block (block 0, the attention sink; the original's first_block_unmasked), and
//   - every block holding one of the step's tokens: for n = 1 the newest block (partial, or complete
//     when the length is a multiple of B), which the gate never scores and which the original forces
//     with mask[:, :, -1] = True. With n > 1 a step can straddle a block boundary; each token must
//     read its own block, so all those blocks are forced.
// So a row holds at most floor(tokens / B) + 1 + (blocks spanned by the step) blocks, like the
// original's budget + 2 for n = 1. The budget picks among all scored blocks, block 0 included, as
// the original's top-k does; a forced block that also ranks in the top k is counted once.
// A sequence with no step tokens (n = 0, an idle slot of the batch) gets an empty row.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/selection/row_candidates.hpp"

namespace seer {

struct TokenBudget {
  std::int64_t tokens = 4096;  // seerattn_token_budget

  std::int64_t blocks(std::int64_t block_size) const { return tokens / block_size; }
  void validate() const { require(tokens >= 0, "policy.tokens", "token budget is ", tokens, ", expected >= 0"); }
};

struct DecodeThreshold {
  double tau = 0.0;  // seerattn_threshold; the paper tries 2e-3 .. 6e-3

  bool keeps(double probability) const { return probability > tau; }
  void validate() const {
    require(std::isfinite(tau) && tau >= 0.0 && tau < 1.0, "policy.tau", "threshold is ", tau, ", expected in [0, 1)");
  }
};

// Most blocks n consecutive tokens can touch.
inline std::int64_t decode_step_blocks(std::int64_t step_tokens, std::int64_t block_size) {
  return step_tokens <= 0 ? 0 : (step_tokens - 1 + block_size - 1) / block_size + 1;
}

// Row capacity for a DecodeBlockList that any step with sequences up to max_length cached tokens and
// up to step_tokens query tokens fits: fixed before decoding starts, so rows never reallocate.
inline std::int64_t decode_block_capacity(const TokenBudget& policy, std::int64_t max_length, std::int64_t block_size,
                                          std::int64_t step_tokens = 1) {
  policy.validate();
  require(max_length >= 0, "max_length", "is ", max_length, ", expected >= 0");
  require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
  require(step_tokens >= 1, "step_tokens", "is ", step_tokens, ", expected >= 1");
  const std::int64_t all = (max_length + block_size - 1) / block_size;
  const std::int64_t most = policy.blocks(block_size) + 1 + decode_step_blocks(step_tokens, block_size);
  return std::max<std::int64_t>(1, std::min(all, most));
}

inline std::int64_t decode_block_capacity(const DecodeThreshold& policy, std::int64_t max_length,
                                          std::int64_t block_size, std::int64_t step_tokens = 1) {
  policy.validate();
  require(max_length >= 0, "max_length", "is ", max_length, ", expected >= 0");
  require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
  require(step_tokens >= 1, "step_tokens", "is ", step_tokens, ", expected >= 1");
  return std::max<std::int64_t>(1, (max_length + block_size - 1) / block_size);
}

// One row's selection. scores[j], j < scored_blocks, is the row's score (a probability) of block j;
// blocks [first_step_block, newest_block] hold the step's tokens. Writes the kept blocks, ascending.
template <class Policy>
void select_decode_row(const Policy& policy, const double* scores, std::int64_t scored_blocks,
                       std::int64_t first_step_block, std::int64_t newest_block, std::int64_t block_size,
                       std::vector<std::int32_t>& kept) {
  kept.clear();
  if (newest_block < 0) return;
  std::vector<std::int32_t> chosen;
  if constexpr (std::is_same_v<Policy, TokenBudget>) {
    const std::int64_t budget = policy.blocks(block_size);
    chosen.resize(static_cast<std::size_t>(scored_blocks));
    std::iota(chosen.begin(), chosen.end(), 0);
    if (budget < scored_blocks) {
      std::partial_sort(chosen.begin(), chosen.begin() + budget, chosen.end(),
                        [&](std::int32_t a, std::int32_t b) { return ranks_before(scores[a], a, scores[b], b); });
      chosen.resize(static_cast<std::size_t>(budget));
    }
  } else {
    static_assert(std::is_same_v<Policy, DecodeThreshold>, "decode policies are TokenBudget and DecodeThreshold");
    for (std::int64_t j = 0; j < scored_blocks; ++j)
      if (policy.keeps(scores[j])) chosen.push_back(static_cast<std::int32_t>(j));
  }
  chosen.push_back(0);
  for (std::int64_t j = std::max<std::int64_t>(first_step_block, 0); j <= newest_block; ++j)
    chosen.push_back(static_cast<std::int32_t>(j));
  std::sort(chosen.begin(), chosen.end());
  chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
  kept = std::move(chosen);
}

// The row score of (b, kv_head) for a step: for every scored block j < (lengths[b] - 1) / B, the max
// over the step's tokens of their gate probability (0 for a block no token scores). `scores` is
// resized to the scored block count. q_before_rope holds the step's tokens: q.length(b) of them.
template <class T, class Storage>
void decode_step_scores(const DecodeGate& gate, const KCompressionCache<Storage>& cache,
                        const SequenceBatch<const T>& q_before_rope, std::int64_t length, std::int64_t b,
                        std::int64_t kv_head, std::vector<double>& scores) {
  const std::int64_t block = gate.block_size();
  const std::int64_t step = q_before_rope.length(b);
  require(q_before_rope.dim_stride == 1, "q_before_rope", "dim stride is ", q_before_rope.dim_stride, ", expected 1");
  scores.clear();
  if (step <= 0) return;
  const std::int64_t scored = decode_scored_blocks(length - 1, block);
  scores.assign(static_cast<std::size_t>(scored), 0.0);
  if (scored == 0) return;
  std::vector<double> query(static_cast<std::size_t>(gate.hidden_size()));
  std::vector<double> logits(static_cast<std::size_t>(scored));
  const std::int64_t group = gate.group_size();
  for (std::int64_t i = 0; i < step; ++i) {
    const std::int64_t position = length - step + i;
    const std::int64_t count = decode_scored_blocks(position, block);
    if (count == 0) continue;
    const T* first_head = q_before_rope.vector(b, i, kv_head * group);
    gate.query(first_head, q_before_rope.head_stride, kv_head, position, query.data());
    gate.logits(query.data(), cache.row(b, 0, kv_head), cache.block_stride(), count, logits.data());
    decode_log_softmax(logits.data(), count, logits.data());
    for (std::int64_t j = 0; j < count; ++j)
      scores[static_cast<std::size_t>(j)] = std::max(scores[static_cast<std::size_t>(j)], std::exp(logits[j]));
  }
}

// Runs the gate for one decode step and writes every row of `blocks` (batch x kv_heads rows).
// lengths: host [batch] cached tokens per sequence, the step's tokens included (the KV cache's).
// The cache must be up to date (update() after appending the step's keys).
template <class T, class Storage, class Policy>
void select_decode_blocks_into(const DecodeGate& gate, const KCompressionCache<Storage>& cache,
                               SequenceBatch<const T> q_before_rope, const std::int32_t* lengths, const Policy& policy,
                               DecodeBlockList& blocks, int threads = 0) {
  static_assert(is_element_type_v<T>, "the gate reads float, double, half or bfloat16");
  policy.validate();
  const std::int64_t batch = cache.batch();
  const std::int64_t block = gate.block_size();
  require(lengths != nullptr || batch == 0, "lengths", "is null");
  require(q_before_rope.batch == batch, "q_before_rope", "batch is ", q_before_rope.batch, ", the cache's ", batch);
  require(q_before_rope.heads == gate.num_q_heads(), "q_before_rope", "has ", q_before_rope.heads,
          " heads, expected the gate's ", gate.num_q_heads());
  require(q_before_rope.head_dim == gate.head_dim(), "q_before_rope", "head dim is ", q_before_rope.head_dim,
          ", expected the gate's ", gate.head_dim());
  require(q_before_rope.dim_stride == 1, "q_before_rope", "dim stride is ", q_before_rope.dim_stride, ", expected 1");
  require(q_before_rope.data != nullptr || q_before_rope.total_tokens() == 0, "q_before_rope", "data pointer is null");
  validate_host_lengths(q_before_rope, "q_before_rope");
  require(cache.kv_heads() == gate.num_kv_heads() && cache.hidden_size() == gate.hidden_size(), "cache",
          "was built for ", cache.kv_heads(), " KV heads of width ", cache.hidden_size(), ", the gate has ",
          gate.num_kv_heads(), " of width ", gate.hidden_size());
  require(blocks.batch() == batch && blocks.kv_heads() == gate.num_kv_heads() && blocks.block_size() == block, "blocks",
          "is shaped for batch ", blocks.batch(), ", ", blocks.kv_heads(), " KV heads, block ", blocks.block_size(),
          "; expected ", batch, ", ", gate.num_kv_heads(), ", ", block);
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t length = lengths[b], step = q_before_rope.length(b);
    require(length >= 0, "lengths", "sequence ", b, " has ", length, " cached tokens, expected >= 0");
    require(length >= step, "lengths", "sequence ", b, " has ", length, " cached tokens but ", step,
            " step tokens; lengths must include the step's tokens");
    const std::int64_t needed = step > 0 ? decode_scored_blocks(length - 1, block) : 0;
    require(cache.completed_blocks(b) >= needed, "cache", "sequence ", b, " has ", cache.completed_blocks(b),
            " compressed blocks, the step needs ", needed, "; call update() after appending the step's keys");
    if (step > 0) {
      const std::int64_t most = decode_block_capacity(policy, length, block, step);
      require(most <= blocks.capacity(), "blocks", "capacity ", blocks.capacity(), " is below the ", most,
              " blocks sequence ", b, " may keep (use decode_block_capacity)");
    }
  }
  parallel_for(batch * gate.num_kv_heads(), threads, [&](std::int64_t unit) {
    const std::int64_t b = unit / gate.num_kv_heads(), h = unit % gate.num_kv_heads();
    const std::int64_t length = lengths[b], step = q_before_rope.length(b);
    std::vector<double> scores;
    std::vector<std::int32_t> kept;
    if (step > 0) {
      decode_step_scores(gate, cache, q_before_rope, length, b, h, scores);
      select_decode_row(policy, scores.data(), static_cast<std::int64_t>(scores.size()), (length - step) / block,
                        (length - 1) / block, block, kept);
    }
    blocks.set_row(b, h, kept, (length + block - 1) / block);
  });
}

// Allocates the list (capacity for the cache view's max_length and this step's most tokens per
// sequence) and selects. For a CUDA-graph-stable capacity across steps, allocate once with
// decode_block_capacity and call select_decode_blocks_into.
template <class T, class Storage, class KeyType, class Policy>
DecodeBlockList select_decode_blocks(const DecodeGate& gate, const KCompressionCache<Storage>& cache,
                                     SequenceBatch<const T> q_before_rope, const KvCacheView<KeyType>& kv_cache,
                                     const Policy& policy, int threads = 0) {
  validate_host_kv_cache(kv_cache);
  require(kv_cache.batch == cache.batch(), "kv_cache", "batch is ", kv_cache.batch, ", the compression cache's ",
          cache.batch());
  validate_host_lengths(q_before_rope, "q_before_rope");
  std::int64_t step = 1;
  for (std::int64_t b = 0; b < q_before_rope.batch; ++b) step = std::max(step, q_before_rope.length(b));
  DecodeBlockList blocks(cache.batch(), gate.num_kv_heads(),
                         decode_block_capacity(policy, kv_cache.max_length, gate.block_size(), step),
                         gate.block_size());
  select_decode_blocks_into(gate, cache, q_before_rope, kv_cache.lengths, policy, blocks, threads);
  return blocks;
}

}  // namespace seer
