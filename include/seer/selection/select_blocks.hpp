// select_blocks: gate scores + selection policy + forced blocks -> BlockSet.
//
// The three policy axes meet here and nowhere else. `Scores` is what a gate's score() returns; it
// must provide
//     std::int64_t heads() const;
//     const std::vector<BlockGeometry>& sequences() const;
//     void score_row(std::int64_t b, std::int64_t h, std::int64_t m, double* logits) const;
// where score_row writes the logits of the visible key blocks [0, visible_key_blocks(m)) of query
// block m and is safe to call concurrently. `Policy` is TopK, Threshold, Nucleus or any type with
//     void validate() const;
//     void select(const BlockGeometry&, const RowCandidates&, SelectionScratch&,
//                 std::vector<std::int32_t>& kept_ascending) const;
// Rows are scored one at a time, so memory stays O(S/B) per thread: the (S/B)^2 score matrix is
// never materialised.
#pragma once

#include <cstdint>
#include <vector>

#include "seer/core/block_set.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/row_candidates.hpp"

namespace seer {

template <class Scores, class Policy>
BlockSet select_blocks(const Scores& scores, const Policy& policy, const ForcedBlocks& forced = {}, int threads = 0) {
  policy.validate();
  forced.validate();
  const auto& sequences = scores.sequences();
  const std::int64_t heads = scores.heads();
  const std::int64_t block_size = sequences.empty() ? 64 : sequences.front().block_size;
  BlockSet blocks(heads, block_size, sequences);

  // Each (sequence, head) is selected independently into its own rows, then appended in order.
  const std::int64_t units = static_cast<std::int64_t>(sequences.size()) * heads;
  std::vector<std::vector<std::int64_t>> unit_offsets(static_cast<std::size_t>(units));
  std::vector<std::vector<std::int32_t>> unit_blocks(static_cast<std::size_t>(units));
  parallel_for(units, threads, [&](std::int64_t unit) {
    const std::int64_t b = unit / heads, h = unit % heads;
    const BlockGeometry& g = sequences[b];
    std::vector<double> logits;
    std::vector<std::uint8_t> forced_flags;
    std::vector<std::int32_t> kept;
    SelectionScratch scratch;
    auto& offsets = unit_offsets[unit];
    auto& kept_all = unit_blocks[unit];
    offsets.push_back(0);
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
      const std::int64_t visible = g.visible_key_blocks(m);
      kept.clear();
      if (forced.row_is_dense(g, m)) {
        for (std::int64_t n = 0; n < visible; ++n) kept.push_back(static_cast<std::int32_t>(n));
      } else if (visible > 0) {
        logits.assign(static_cast<std::size_t>(visible), 0.0);
        scores.score_row(b, h, m, logits.data());
        forced_flags.assign(static_cast<std::size_t>(visible), 0);
        for (std::int64_t n = 0; n < visible; ++n) forced_flags[n] = forced.is_forced(g, m, n) ? 1 : 0;
        policy.select(g, RowCandidates{logits.data(), forced_flags.data(), visible}, scratch, kept);
      }
      kept_all.insert(kept_all.end(), kept.begin(), kept.end());
      offsets.push_back(static_cast<std::int64_t>(kept_all.size()));
    }
  });
  for (std::int64_t unit = 0; unit < units; ++unit) {
    const auto& offsets = unit_offsets[unit];
    for (std::size_t r = 0; r + 1 < offsets.size(); ++r)
      blocks.append_row(unit_blocks[unit].data() + offsets[r], offsets[r + 1] - offsets[r]);
  }
  return blocks;
}

}  // namespace seer
