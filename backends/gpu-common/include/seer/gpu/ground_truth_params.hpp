// The parameters of seer's ground-truth kernels (seer/gpu/ground_truth_kernel.hpp and
// ground_truth_kernel_amd.hpp): everything they read, passed by value. Plain data; no GPU headers.
#pragma once

#include <cstdint>

#include "seer/gpu/prefill_params.hpp"

namespace seer::gpu {

inline constexpr int kGroundTruthTile = 64;  // rows and keys of the forward's tiles

// Everything the ground-truth kernels read, passed by value. Device pointers only.
template <class T>
struct GroundTruthParams {
  PrefillParams<T> attention;       // dense (has_blocks false); lse always set (the caller's or the workspace's)
  float* row_maxima = nullptr;      // r[head, tile, token] at (head * key_tiles + tile) * token_capacity + token
  std::int64_t key_tiles = 0;       // 64-key tiles of the longest k
  std::int64_t token_capacity = 0;  // query tokens the workspace indexes (q.start(b) + t < token_capacity)
  float softmax_scale = 0.0f;       // natural units: r = softmax_scale * max q . k
  std::int64_t block_size = 64;     // of the targets: a multiple of the tile
  // The target, dense fp32: (sequence, head, row, key block) at the four strides below. 2-D rows are
  // query blocks (heads: query heads); 1-D rows are query tokens (heads: KV heads).
  float* target = nullptr;
  std::int64_t target_stride[4] = {0, 0, 0, 0};
  std::int64_t target_rows = 0;     // extent of the row axis
  std::int64_t target_columns = 0;  // extent of the key-block axis
};

}  // namespace seer::gpu
