// Modifiers that force blocks into every selection, independent of the policy.
//
//  - keep_diagonal (default on): the key blocks on the causal boundary of the query block
//    (BlockGeometry::diagonal_first..diagonal_last). This is what keeps a row from ever being
//    empty. The original SeerAttention prefill forces nothing and can produce empty rows (NaN in its
//    Triton kernel); turning this off reproduces it, and seer then yields output 0 and LSE -inf.
//  - sink_blocks: the first n key blocks (attention sinks), as SeerAttention-R's first_block_unmasked.
//  - dense_last_rows: the last n query-block rows keep every visible block; the original's
//    seerattn_last_block_dense is dense_last_rows = 2.
//
// Forced blocks count inside a TopK budget and inside a Nucleus mass (see those policies).
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"

namespace seer {

struct ForcedBlocks {
  bool keep_diagonal = true;
  std::int64_t sink_blocks = 0;
  std::int64_t dense_last_rows = 0;

  SEER_HOST_DEVICE bool row_is_dense(const BlockGeometry& g, std::int64_t m) const {
    return m >= g.query_blocks() - dense_last_rows;
  }

  // Is visible key block n forced for query block m?
  SEER_HOST_DEVICE bool is_forced(const BlockGeometry& g, std::int64_t m, std::int64_t n) const {
    if (n < sink_blocks) return true;
    return keep_diagonal && n >= g.diagonal_first(m) && n <= g.diagonal_last(m);
  }

  void validate() const {
    require(sink_blocks >= 0, "forced.sink_blocks", "is ", sink_blocks, ", expected >= 0");
    require(dense_last_rows >= 0, "forced.dense_last_rows", "is ", dense_last_rows, ", expected >= 0");
  }
};

}  // namespace seer
