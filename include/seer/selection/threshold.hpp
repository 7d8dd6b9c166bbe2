// Threshold: keep the visible key blocks whose gate probability exceeds tau.
//
// The probability is the softmax of the row's logits over its visible key blocks (the original
// applies the softmax in bf16; seer computes it in double, so a block within bf16 rounding of tau
// may differ). Comparison is strict (p > tau), as in the original. Forced blocks are kept as well.
// Typical tau for SeerAttention prefill gates: 5e-4 to 5e-3.
#pragma once

#include <cstdint>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"
#include "seer/selection/row_candidates.hpp"

namespace seer {

struct Threshold {
  double tau = 0.0;

  SEER_HOST_DEVICE bool keeps(double probability) const { return probability > tau; }

  void validate() const {
    require(tau >= 0.0 && tau < 1.0, "policy.tau", "threshold is ", tau, ", expected in [0, 1)");
  }

  void select(const BlockGeometry&, const RowCandidates& row, SelectionScratch& scratch,
              std::vector<std::int32_t>& kept) const {
    row_softmax(row, scratch.probabilities);
    kept.clear();
    for (std::int64_t n = 0; n < row.count; ++n)
      if (row.forced[n] || keeps(scratch.probabilities[n])) kept.push_back(static_cast<std::int32_t>(n));
  }
};

}  // namespace seer
