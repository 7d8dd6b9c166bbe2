// The parameters of seer's prefill kernels (NVIDIA: prefill_kernel.hpp, AMD: prefill_kernel_amd.hpp):
// everything a kernel reads, passed by value. Plain data; no GPU headers needed.
#pragma once

#include <cstdint>

#include "seer/core/block_set.hpp"
#include "seer/core/sequence_batch.hpp"

namespace seer::gpu {

// Everything the kernel reads, passed by value. Device pointers only.
template <class T>
struct PrefillParams {
  SequenceBatch<const T> q, k, v;
  SequenceBatch<T> out;
  float* lse = nullptr;  // [Hq, total_q] or null
  std::int64_t lse_head_stride = 0;
  std::int64_t lse_token_stride = 0;
  BlockSetView blocks;      // valid when has_blocks
  bool has_blocks = false;  // false: dense (every visible tile)
  bool causal = true;
  std::int64_t group = 1;            // query heads per KV head
  std::int64_t tiles_per_block = 1;  // BlockSet block_size / tile size
  std::int64_t max_query_tiles = 0;  // grid x extent: tiles of the longest query sequence
  float scale_log2 = 0.0f;           // softmax_scale * log2(e)
};

}  // namespace seer::gpu
