// OracleGate: a "gate" that scores key blocks with the true attention, for evaluation and as the
// upper bound a learned gate is measured against.
//
// The logits of row (b, h, m) are the log of the two-dimensional ground truth (cpu/ground_truth.hpp):
//     logits[n] = log GT[b, h, m, n],   n in [0, visible_key_blocks(m)),
// so softmax(logits) gives the normalised row back, TopK ranks blocks by their largest attention
// weight, and Threshold/Nucleus see the ground-truth probabilities. A block whose weights all
// underflow to 0 gets -inf. Rows are computed on demand, one query block against its visible keys,
// so memory stays O(block_size x keys) per call and no (S/B)^2 map is ever built.
//
//     auto scores = OracleGate{}.score(q, k, options, 64);
//     BlockSet blocks = select_blocks(scores, TopK::target_density(0.1));
//
// The returned scores refer to q, k and their cu_seqlens without copying: keep them alive.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/cpu/ground_truth.hpp"

namespace seer {

template <class T>
class OracleGateScores {
 public:
  OracleGateScores(SequenceBatch<const T> q, SequenceBatch<const T> k, std::vector<BlockGeometry> sequences,
                   double scale)
      : q_(q), k_(k), sequences_(std::move(sequences)), scale_(scale) {}

  std::int64_t heads() const { return q_.heads; }
  const std::vector<BlockGeometry>& sequences() const { return sequences_; }

  // Thread-safe: each call uses its own workspace.
  void score_row(std::int64_t b, std::int64_t h, std::int64_t m, double* logits) const {
    const BlockGeometry& geometry = sequences_[b];
    cpu::GroundTruthWorkspace work;
    cpu::two_dimensional_ground_truth_row(q_, k_, geometry, scale_, b, h, m, work, logits);
    for (std::int64_t n = 0; n < geometry.visible_key_blocks(m); ++n) logits[n] = std::log(logits[n]);
  }

 private:
  SequenceBatch<const T> q_, k_;
  std::vector<BlockGeometry> sequences_;
  double scale_;
};

struct OracleGate {
  // q [.., Hq, D] and k [.., Hkv, D]: the (post-RoPE) queries and keys the attention will use.
  template <class T>
  OracleGateScores<T> score(SequenceBatch<const T> q, SequenceBatch<const T> k, const AttentionOptions& options,
                            std::int64_t block_size) const {
    cpu::validate_ground_truth_inputs(q, k, options, block_size);
    return OracleGateScores<T>(q, k, sequence_geometries(q, k, block_size, options.causal),
                               options.scale_for(q.head_dim));
  }
};

}  // namespace seer
