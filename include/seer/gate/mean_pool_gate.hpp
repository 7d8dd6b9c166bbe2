// MeanPoolGate: a training-free baseline gate with no weights.
//
// logits(m, n) = mean(q over query block m) . mean(k over key block n) / sqrt(D), on the POST-RoPE
// q and k (the vectors attention itself uses), query head h reading KV head h / (Hq / Hkv). The mean
// of a block approximates the mean of the block's attention logits only up to the spread inside the
// block, which is why a learned gate does better; this one is the reference point for "what does
// learning buy". Partial blocks average their valid tokens. Same scores interface as LearnedGate.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gate/block_feature_scores.hpp"
#include "seer/gate/block_pooling.hpp"

namespace seer {

using MeanPoolGateScores = BlockFeatureScores;

struct MeanPoolGate {
  std::int64_t block_size = 64;

  template <class T>
  MeanPoolGateScores score(SequenceBatch<const T> q_after_rope, SequenceBatch<const T> k_after_rope, bool causal = true,
                           int threads = 0) const {
    static_assert(is_element_type_v<T>, "the gate reads float, double, half or bfloat16");
    const auto& q = q_after_rope;
    const auto& k = k_after_rope;
    require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
    require(q.heads > 0, "q_after_rope", "has ", q.heads, " heads, expected > 0");
    require(k.heads > 0 && q.heads % k.heads == 0, "k_after_rope", "has ", k.heads,
            " heads, expected a divisor of the ", q.heads, " query heads");
    require(q.head_dim > 0, "q_after_rope", "head dim is ", q.head_dim, ", expected > 0");
    require(k.head_dim == q.head_dim, "k_after_rope", "head dim is ", k.head_dim, ", expected q's ", q.head_dim);
    require(q.batch >= 0, "q_after_rope", "batch is ", q.batch, ", expected >= 0");
    require(k.batch == q.batch, "k_after_rope", "batch is ", k.batch, " but q_after_rope has batch ", q.batch);
    validate_host_lengths(q, "q_after_rope");
    validate_host_lengths(k, "k_after_rope");
    require(q.data != nullptr || q.total_tokens() == 0, "q_after_rope", "data pointer is null");
    require(k.data != nullptr || k.total_tokens() == 0, "k_after_rope", "data pointer is null");

    MeanPoolGateScores scores(sequence_geometries(q, k, block_size, causal), q.heads, k.heads, q.head_dim,
                              1.0 / std::sqrt(static_cast<double>(q.head_dim)));
    const std::vector<BlockPooling> mean{BlockPooling::mean};
    // Features are stored contiguously per (sequence, head), so pooling writes them in place.
    parallel_for(q.batch * (q.heads + k.heads), threads, [&](std::int64_t unit) {
      const std::int64_t heads = q.heads + k.heads;
      const std::int64_t b = unit / heads, h = unit % heads;
      const BlockGeometry& g = scores.sequences()[b];
      if (h < q.heads) {
        if (g.query_blocks() > 0) detail::pool_blocks_into(q, b, h, block_size, mean, scores.query_feature(b, h, 0));
      } else if (g.key_blocks() > 0) {
        detail::pool_blocks_into(k, b, h - q.heads, block_size, mean, scores.key_feature(b, h - q.heads, 0));
      }
    });
    return scores;
  }
};

}  // namespace seer
