// Nucleus (top-p): keep the smallest set of visible key blocks whose gate probability mass reaches p.
//
// Forced blocks are taken first and their mass counts; then blocks are added best first (higher
// probability, ties to the lower index) while the mass is below p, or the count below min_k, and
// the count below max_k. Forced blocks are kept even beyond max_k. The probability is the softmax of
// the row's logits over its visible key blocks.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"
#include "seer/selection/row_candidates.hpp"

namespace seer {

struct Nucleus {
  double p = 0.9;
  std::int64_t min_k = 1;
  std::int64_t max_k = std::numeric_limits<std::int64_t>::max();

  // Should one more block be added, given the kept mass and count so far?
  SEER_HOST_DEVICE bool wants_more(double mass, std::int64_t kept) const {
    if (kept >= max_k) return false;
    return mass < p || kept < min_k;
  }

  void validate() const {
    require(p > 0.0 && p <= 1.0, "policy.p", "nucleus mass is ", p, ", expected in (0, 1]");
    require(min_k >= 0, "policy.min_k", "is ", min_k, ", expected >= 0");
    require(max_k >= min_k, "policy.max_k", "is ", max_k, ", expected >= min_k (", min_k, ")");
  }

  void select(const BlockGeometry&, const RowCandidates& row, SelectionScratch& scratch,
              std::vector<std::int32_t>& kept) const {
    row_softmax(row, scratch.probabilities);
    double mass = 0.0;
    std::int64_t count = 0;
    for (std::int64_t n = 0; n < row.count; ++n)
      if (row.forced[n]) {
        mass += scratch.probabilities[n];
        ++count;
      }
    unforced_best_first(row, scratch.order);
    std::size_t taken = 0;
    while (taken < scratch.order.size() && wants_more(mass, count)) {
      mass += scratch.probabilities[scratch.order[taken++]];
      ++count;
    }
    merge_kept(row, scratch.order, taken, kept);
  }
};

}  // namespace seer
