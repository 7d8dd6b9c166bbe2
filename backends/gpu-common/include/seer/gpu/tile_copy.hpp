// Asynchronous copies of 64-row tiles of 16-byte chunks from global into swizzled shared memory (the
// layout of seer/gpu/tensor_core.hpp's swizzled_offset), shared by the prefill, ground-truth and decode
// kernels. The copy itself is a policy: plain cp.async.cg, or with an L2 cache policy (the decode kernel's
// K/V lines, read once per call). NVIDIA only.
#pragma once

#if !defined(__HIPCC__)

#include <cstdint>

#include "seer/gpu/vendor.hpp"

namespace seer::gpu::detail {

// The 16-byte asynchronous copy of load_tile_async: plain (cp.async.cg), or with an L2 cache policy
// (seer/gpu/decode_kernel.hpp: K/V lines that are read once per call).
struct PlainTileCopy {
  __device__ void operator()(void* destination, const void* source) const {
    vendor::copy_async_16_bytes(destination, source);
  }
  __device__ void operator()(void* destination, const void* source, bool valid) const {
    vendor::copy_async_16_bytes(destination, source, valid);
  }
};

// Asynchronously copies `valid_rows` rows of a 64 x HeadDim tile (zero-filling the rest) into a
// swizzled shared tile. Rows are `row_stride` elements apart in global memory. Each thread keeps one
// chunk column and walks down the rows, so the global address advances by one add per copy (the
// address arithmetic of a generic index loop cost a quarter of the issue slots).
template <class Traits, class T, class Copy = PlainTileCopy>
__device__ inline void load_tile_async(T* shared_tile, const T* first_row, std::int64_t row_stride,
                                       std::int64_t valid_rows, const Copy& copy = Copy{}) {
  static_assert(Traits::kThreads % Traits::kChunksPerRow == 0, "threads must cover whole rows");
  constexpr int kRowsPerPass = Traits::kThreads / Traits::kChunksPerRow;
  static_assert(Traits::kTileRows % kRowsPerPass == 0, "passes must cover the tile");
  const int chunk = static_cast<int>(threadIdx.x) % Traits::kChunksPerRow;
  const int first = static_cast<int>(threadIdx.x) / Traits::kChunksPerRow;
  const T* source = first_row + first * row_stride + chunk * 8;
  const std::int64_t pass_stride = kRowsPerPass * row_stride;
  // The swizzle of row first + pass * kRowsPerPass depends only on (pass * kRowsPerPass) % 8: written
  // this way the destinations are one register plus compile-time offsets (16 separately computed
  // addresses were hoisted out of the key loop and spilled).
  T* const destination_row = shared_tile + first * Traits::kChunksPerRow * 8;
  const int first_low_bits = first & 7;
  if (valid_rows >= Traits::kTileRows) {  // every tile but a ragged tail: no predicates, no selects
#pragma unroll
    for (int pass = 0; pass < Traits::kTileRows / kRowsPerPass; ++pass) {
      const int swizzled_chunk = chunk ^ ((first_low_bits + ((pass * kRowsPerPass) & 7)) & 7);
      copy(destination_row + pass * kRowsPerPass * Traits::kChunksPerRow * 8 + swizzled_chunk * 8, source);
      source += pass_stride;
    }
    return;
  }
#pragma unroll
  for (int pass = 0; pass < Traits::kTileRows / kRowsPerPass; ++pass) {
    const int row = first + pass * kRowsPerPass;
    const bool valid = row < valid_rows;
    const int swizzled_chunk = chunk ^ ((first_low_bits + ((pass * kRowsPerPass) & 7)) & 7);
    copy(destination_row + pass * kRowsPerPass * Traits::kChunksPerRow * 8 + swizzled_chunk * 8,
         valid ? source : first_row, valid);
    source += pass_stride;
  }
}

}  // namespace seer::gpu::detail

#endif  // !defined(__HIPCC__)
