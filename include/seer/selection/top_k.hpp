// TopK: keep the k highest-scoring visible key blocks of each query-block row.
//
// k is either a fixed count or derived from a target density rho over the causal triangle with the
// formula of the original SeerAttention (nz_ratio): k = floor((1 - sqrt(1 - rho)) * nb), and k = 1
// when that is 0, where nb is the number of key blocks of the sequence. (Solving 2r - r^2 = rho for
// r = k/nb: rows near the top have fewer than k candidates, so a causal map at k per row has
// density ~rho.)
//
// Forced blocks (ForcedBlocks) count inside k: a row keeps max(k, forced) blocks, the forced ones
// plus the best k - forced others. Ties go to the lower block index. The policy ranks raw logits,
// as the original does, so no softmax is needed.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"
#include "seer/selection/row_candidates.hpp"

namespace seer {

struct TopK {
  std::int64_t count = 0;  // used when density < 0
  double density = -1.0;   // target density in (0, 1]; < 0 means "use count"

  static TopK blocks(std::int64_t k) { return TopK{k, -1.0}; }
  static TopK target_density(double rho) { return TopK{0, rho}; }

  // Blocks per row (before clamping to the visible candidates) for a sequence with this geometry.
  SEER_HOST_DEVICE std::int64_t budget(const BlockGeometry& g) const {
    if (density < 0.0) return count;
    const auto k = static_cast<std::int64_t>((1.0 - std::sqrt(1.0 - density)) * static_cast<double>(g.key_blocks()));
    return k > 0 ? k : 1;
  }

  void validate() const {
    if (density < 0.0) {
      require(count >= 1, "policy.count", "TopK keeps ", count, " blocks, expected >= 1");
    } else {
      require(density > 0.0 && density <= 1.0, "policy.density", "TopK target density is ", density,
              ", expected in (0, 1]");
    }
  }

  void select(const BlockGeometry& g, const RowCandidates& row, SelectionScratch& scratch,
              std::vector<std::int32_t>& kept) const {
    std::int64_t forced = 0;
    for (std::int64_t n = 0; n < row.count; ++n) forced += row.forced[n] ? 1 : 0;
    const std::int64_t extra = std::max<std::int64_t>(0, budget(g) - forced);
    unforced_best_first(row, scratch.order);
    merge_kept(row, scratch.order, static_cast<std::size_t>(std::min<std::int64_t>(extra, scratch.order.size())), kept);
  }
};

}  // namespace seer
