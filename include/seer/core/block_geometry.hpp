// The block grid and causal mask of one sequence: the masking semantics every backend shares.
//
// Query row i (0 <= i < q_len) may attend to key j (0 <= j < k_len) iff
//     !causal  or  j <= i + (k_len - q_len)
// i.e. causality is bottom-right aligned (FlashAttention >= 2.1), so a chunk of queries at the end of
// a longer key sequence works. Rows with no visible key (possible when q_len > k_len) produce output
// 0 and log-sum-exp -inf.
//
// Both axes are cut into blocks of `block_size` tokens from index 0; the last block of each axis
// may be partial. For a query block m and a key block n the geometry answers the questions the
// kernels ask: is any key of n visible to a row of m, are all keys of n visible to every row of m
// (a "full" block needs no mask arithmetic), and which key blocks hold the causal boundary (the
// "diagonal" blocks that selection keeps by default). The CPU reference and the GPU kernels call
// these same functions, so their masking cannot drift apart.
#pragma once

#include <cstdint>

#include "seer/core/platform.hpp"

namespace seer {

struct BlockGeometry {
  std::int64_t q_len = 0;
  std::int64_t k_len = 0;
  std::int64_t block_size = 64;
  bool causal = true;

  SEER_HOST_DEVICE static std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

  SEER_HOST_DEVICE std::int64_t query_blocks() const { return ceil_div(q_len, block_size); }
  SEER_HOST_DEVICE std::int64_t key_blocks() const { return ceil_div(k_len, block_size); }

  // Keys are aligned so that the last query sees the last key.
  SEER_HOST_DEVICE std::int64_t diagonal_offset() const { return k_len - q_len; }

  // Largest key index row i may see, or -1 when it sees none. Rows are not clamped to q_len.
  SEER_HOST_DEVICE std::int64_t last_visible_key(std::int64_t i) const {
    if (!causal) return k_len - 1;
    const std::int64_t last = i + diagonal_offset();
    return last < k_len - 1 ? (last < -1 ? -1 : last) : k_len - 1;
  }

  SEER_HOST_DEVICE bool visible(std::int64_t i, std::int64_t j) const { return j < k_len && j <= last_visible_key(i); }

  SEER_HOST_DEVICE std::int64_t first_row(std::int64_t m) const { return m * block_size; }
  SEER_HOST_DEVICE std::int64_t last_row(std::int64_t m) const {
    const std::int64_t last = (m + 1) * block_size - 1;
    return last < q_len - 1 ? last : q_len - 1;
  }

  // Key blocks [0, visible_key_blocks(m)) hold every key some row of query block m may see; a gate
  // scores exactly these candidates.
  SEER_HOST_DEVICE std::int64_t visible_key_blocks(std::int64_t m) const {
    const std::int64_t last = last_visible_key(last_row(m));
    return last < 0 ? 0 : last / block_size + 1;
  }

  // True when every row of query block m sees every key of key block n: no mask arithmetic needed.
  SEER_HOST_DEVICE bool block_is_full(std::int64_t m, std::int64_t n) const {
    const std::int64_t block_end = (n + 1) * block_size;  // one past the block's last key
    return block_end <= k_len && block_end - 1 <= last_visible_key(first_row(m));
  }

  // Key blocks of query block m that need masking are exactly [first_masked_key_block(m),
  // visible_key_blocks(m)): the causal boundary and the ragged tail are always the newest blocks.
  // Iterating kept blocks in ascending order therefore visits all full blocks first.
  SEER_HOST_DEVICE std::int64_t first_masked_key_block(std::int64_t m) const {
    const std::int64_t last = last_visible_key(first_row(m));
    std::int64_t full = (last + 1) / block_size;  // blocks entirely at or below the first row's limit
    const std::int64_t complete = k_len / block_size;
    if (full > complete) full = complete;
    const std::int64_t visible = visible_key_blocks(m);
    return full < visible ? full : visible;
  }

  // The "diagonal" of query block m: the key blocks that hold the newest key visible to each of its
  // rows, [diagonal_first(m), diagonal_last(m)]. With q_len == k_len that is the single block n == m;
  // a misaligned chunk may span two. Keeping them guarantees that every row with a visible key keeps
  // at least its newest key. For non-causal attention the same bottom-right aligned positions are
  // used. Empty (first > last) when no row of the block sees any key.
  SEER_HOST_DEVICE std::int64_t diagonal_first(std::int64_t m) const {
    if (k_len <= 0) return 0;
    std::int64_t aligned = first_row(m) + diagonal_offset();
    if (aligned < 0) aligned = 0;
    if (aligned > k_len - 1) aligned = k_len - 1;
    return aligned / block_size;
  }
  SEER_HOST_DEVICE std::int64_t diagonal_last(std::int64_t m) const {
    if (k_len <= 0) return -1;
    std::int64_t aligned = last_row(m) + diagonal_offset();
    if (aligned < 0) {
      if (causal) return -1;
      aligned = 0;
    }
    if (aligned > k_len - 1) aligned = k_len - 1;
    return aligned / block_size;
  }
};

}  // namespace seer
