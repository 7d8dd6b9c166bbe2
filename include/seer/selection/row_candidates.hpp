// One row of selection input: the gate's logits for the visible key blocks of a query block, and
// which of them the ForcedBlocks modifiers force. Shared helpers for the policies live here: the
// softmax over the row, and the deterministic "best first" order (higher logit first, ties to the
// lower block index).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "seer/core/platform.hpp"

namespace seer {

struct RowCandidates {
  const double* logits = nullptr;        // [count]; -inf allowed (a block the gate rules out)
  const std::uint8_t* forced = nullptr;  // [count]; nonzero = kept whatever the policy says
  std::int64_t count = 0;                // visible key blocks of the query block
};

// Deterministic order for "the best blocks": higher logit first; equal logits by lower index.
SEER_HOST_DEVICE inline bool ranks_before(double logit_a, std::int64_t index_a, double logit_b, std::int64_t index_b) {
  return logit_a > logit_b || (logit_a == logit_b && index_a < index_b);
}

// softmax(logits) over the row, in double. A row whose logits are all -inf gets all zeros.
inline void row_softmax(const RowCandidates& row, std::vector<double>& probabilities) {
  probabilities.assign(static_cast<std::size_t>(row.count), 0.0);
  double peak = -std::numeric_limits<double>::infinity();
  for (std::int64_t n = 0; n < row.count; ++n) peak = std::max(peak, row.logits[n]);
  if (peak == -std::numeric_limits<double>::infinity()) return;
  double total = 0.0;
  for (std::int64_t n = 0; n < row.count; ++n) total += probabilities[n] = std::exp(row.logits[n] - peak);
  for (auto& p : probabilities) p /= total;
}

// Indices of the non-forced candidates, best first.
inline void unforced_best_first(const RowCandidates& row, std::vector<std::int32_t>& order) {
  order.clear();
  for (std::int64_t n = 0; n < row.count; ++n)
    if (!row.forced[n]) order.push_back(static_cast<std::int32_t>(n));
  std::sort(order.begin(), order.end(),
            [&](std::int32_t a, std::int32_t b) { return ranks_before(row.logits[a], a, row.logits[b], b); });
}

// Scratch buffers reused across rows by one thread.
struct SelectionScratch {
  std::vector<double> probabilities;
  std::vector<std::int32_t> order;
};

// Writes forced blocks plus `extra` (any order) into `kept` in ascending order.
inline void merge_kept(const RowCandidates& row, const std::vector<std::int32_t>& extra, std::size_t extra_count,
                       std::vector<std::int32_t>& kept) {
  kept.clear();
  for (std::int64_t n = 0; n < row.count; ++n)
    if (row.forced[n]) kept.push_back(static_cast<std::int32_t>(n));
  kept.insert(kept.end(), extra.begin(), extra.begin() + static_cast<std::ptrdiff_t>(extra_count));
  std::sort(kept.begin(), kept.end());
}

}  // namespace seer
