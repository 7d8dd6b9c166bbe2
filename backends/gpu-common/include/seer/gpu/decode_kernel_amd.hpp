// The split-KV sparse decode kernel for AMD GPUs: the algorithm of seer/gpu/decode_kernel.hpp (same
// DecodeParams, CTA plan, split schedule, masking, epilogue and merge kernel) written for the AMD tile
// multiply of seer/gpu/tensor_core_amd.hpp (MFMA on CDNA2/3, WMMA on RDNA3, an FMA loop elsewhere).
//
// What differs from the NVIDIA kernel, and why:
//   - 4 warps of vendor::warp_size lanes (the host launches 4 x the device's wavefront width); warp w
//     owns row block w % R and its share of the keys of each tile, as on NVIDIA.
//   - Operands live in dense shared memory and are read by the tile multiply in its own layout; the
//     probabilities go through shared memory to become the A operand of P * V.
//   - The copy of a K/V tile is a plain load and store (HIP has no portable asynchronous copy), so
//     there is no multi-stage pipeline: Q + K + V + P fit in 64 KiB of LDS at head dim 128.
// nvcc compiles this kernel too (portable tile path, 32-lane RDNA layout): the CUDA decode tests run
// it on NVIDIA hardware, which checks everything but the MFMA/WMMA operand layouts and 64 lanes.
#pragma once

#include <cstdint>

#include "seer/gpu/decode_kernel.hpp"
#include "seer/gpu/decode_params.hpp"
#include "seer/gpu/tensor_core_amd.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"
#include "seer/gpu/warp_exchange.hpp"

namespace seer::gpu {

template <class T, int HeadDim, int RowBlocks>
struct AmdDecodeTraits {
  static_assert(HeadDim == 64 || HeadDim == 128, "the decode kernel supports head dims 64 and 128");
  static_assert(RowBlocks == 1 || RowBlocks == 2 || RowBlocks == 4, "query tiles have 16, 32 or 64 rows");
  static constexpr int kTileKeys = 64;
  static constexpr int kWarps = 4;
  static constexpr int kKeyGroups = kWarps / RowBlocks;
  static constexpr int kKeysPerWarp = kTileKeys / kKeyGroups;
  static constexpr int kQueryRows = 16 * RowBlocks;
  static constexpr int kQueryElements = kQueryRows * HeadDim;
  static constexpr int kTileElements = kTileKeys * HeadDim;
  static constexpr int kProbabilityElements = kWarps * 16 * kKeysPerWarp;
  static constexpr int kQueryBytes = kQueryElements * static_cast<int>(sizeof(T));
  static constexpr int kWorkBytes = (2 * kTileElements + kProbabilityElements) * static_cast<int>(sizeof(T));
  static constexpr int kStagingBytes = kWarps * 16 * (HeadDim + decode_detail::kStagingPad + 2) * 4;
  static constexpr int kSharedBytes = kQueryBytes + (kWorkBytes > kStagingBytes ? kWorkBytes : kStagingBytes);
  static_assert(kSharedBytes <= 64 * 1024, "CDNA workgroups have 64 KiB of LDS");
};

namespace amd_decode_detail {

// Copies 64 K and V rows of `work`'s tile into dense shared memory (zeros past the sequence's end).
template <int HeadDim, class T>
__device__ inline void load_key_value_tile(const DecodeParams<T>& params, const decode_detail::DecodeCtaWork& work,
                                           std::int64_t tile, T* keys, T* values) {
  constexpr int kChunksPerRow = HeadDim / 8;
  const std::int64_t first_key = tile * kDecodeTileKeys;
  const std::int64_t valid_rows = work.cached_tokens - first_key;
  const int threads = static_cast<int>(blockDim.x);
  for (int index = static_cast<int>(threadIdx.x); index < kDecodeTileKeys * kChunksPerRow; index += threads) {
    const int row = index / kChunksPerRow, chunk = index % kChunksPerRow;
    const bool valid = row < valid_rows;
    const std::int64_t offset =
        valid ? params.cache.offset(work.sequence, first_key + row, work.kv_head) + chunk * 8 : 0;
    vendor::copy_async_16_bytes(keys + row * HeadDim + chunk * 8, params.cache.keys + offset, valid);
    vendor::copy_async_16_bytes(values + row * HeadDim + chunk * 8, params.cache.values + offset, valid);
  }
  vendor::commit_async_copies();
  vendor::wait_async_copies<0>();
}

}  // namespace amd_decode_detail

template <class T, int HeadDim, int RowBlocks>
__global__ void sparse_decode_kernel_amd(const DecodeParams<T> params) {
  using Traits = AmdDecodeTraits<T, HeadDim, RowBlocks>;
  using Layout = AccumulatorLayout;
  constexpr int R = kAccumulatorRegisters;
  constexpr int kKeysPerWarp = Traits::kKeysPerWarp;
  constexpr int kKeyTiles = kKeysPerWarp / 16;  // n16 tiles of the warp's scores
  constexpr int kDimTiles = HeadDim / 16;
  constexpr int kChunksPerRow = HeadDim / 8;
  const float negative_infinity = -__int_as_float(0x7f800000);
  // The host launched 4 * warpSize threads; a mismatch (a wrong width) must not compute garbage.
  if (static_cast<int>(blockDim.x) != Traits::kWarps * vendor::warp_size) return;

  decode_detail::DecodeCtaWork work;
  if (!decode_detail::plan_decode_cta(params, work)) return;

  extern __shared__ uint4 amd_decode_shared_chunks[];  // 16-byte aligned, like every tile row
  T* const shared_query = reinterpret_cast<T*>(amd_decode_shared_chunks);
  T* const shared_keys = shared_query + Traits::kQueryElements;
  T* const shared_values = shared_keys + Traits::kTileElements;
  T* const shared_probabilities = shared_values + Traits::kTileElements;

  for (int index = static_cast<int>(threadIdx.x); index < Traits::kQueryRows * kChunksPerRow;
       index += static_cast<int>(blockDim.x)) {
    const int row = index / kChunksPerRow, chunk = index % kChunksPerRow;
    const bool valid = row < work.rows;
    const T* source =
        valid ? params.q.vector(work.sequence, work.row_token(row), work.row_head(row)) + chunk * 8 : params.q.data;
    vendor::copy_async_16_bytes(shared_query + row * HeadDim + chunk * 8, source, valid);
  }
  vendor::commit_async_copies();
  vendor::wait_async_copies<0>();

  const int lane = vendor::lane_index();
  const int warp = vendor::warp_index();
  const int row_block = warp % RowBlocks;
  const int key_base = (warp / RowBlocks) * kKeysPerWarp;
  T* const warp_probabilities = shared_probabilities + warp * 16 * kKeysPerWarp;
  const NativeWarpExchange exchange;
  const std::int64_t first_masked_key = work.geometry.last_visible_key(0) + 1;

  float output[kDimTiles][R];
  float running_max[R], running_sum[R];  // per accumulator register: one row of this lane each
  std::int64_t row_limit[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    running_max[r] = negative_infinity;
    running_sum[r] = 0.0f;
    row_limit[r] = work.row_limit(16 * row_block + Layout::row(lane, r));
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) output[d][r] = 0.0f;
  }

  for (std::int64_t step = 0; step < work.steps; ++step) {
    const std::int64_t tile = work.tile(step);
    __syncthreads();  // every warp is done with the previous tile (and, the first time, Q is visible)
    amd_decode_detail::load_key_value_tile<HeadDim>(params, work, tile, shared_keys, shared_values);
    __syncthreads();

    // ---- scores = Q * K^T: 16 rows x kKeysPerWarp keys per warp ----
    float scores[kKeyTiles][R];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int r = 0; r < R; ++r) scores[n][r] = 0.0f;
#pragma unroll
      for (int kd = 0; kd < HeadDim / 16; ++kd) {
        const TileOperand<T> a{shared_query + 16 * row_block * HeadDim + 16 * kd, HeadDim, 1};
        const TileOperand<T> b{shared_keys + (key_base + 16 * n) * HeadDim + 16 * kd, 1, HeadDim};  // K^T
        tile_multiply_accumulate<T>(scores[n], a, b);
      }
    }

    // ---- mask (the new tokens' causal edge, the ragged end) ----
    const std::int64_t first_key = tile * kDecodeTileKeys + key_base;
    if (first_key + kKeysPerWarp > first_masked_key) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n)
          if (first_key + 16 * n + Layout::column(lane, r) > row_limit[r]) scores[n][r] = negative_infinity;
    }

    // ---- online softmax: a row lives in one register of a group of lanes ----
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float tile_max = negative_infinity;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) tile_max = fmaxf(tile_max, scores[n][r]);
      tile_max = warp::reduce_within_groups<Layout::kRowGroupLanes>(tile_max, exchange, warp::Maximum{});
      const float new_max = fmaxf(running_max[r], tile_max * params.scale_log2);
      const float base = new_max == negative_infinity ? 0.0f : new_max;  // no -inf - -inf
      const float rescale = vendor::fast_exp2(running_max[r] - base);
      running_max[r] = new_max;
      float tile_sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        const float probability = vendor::fast_exp2(fmaf(scores[n][r], params.scale_log2, -base));
        tile_sum += probability;
        const std::uint32_t packed = vendor::element_traits<T>::pack(probability, 0.0f);
        warp_probabilities[Layout::row(lane, r) * kKeysPerWarp + 16 * n + Layout::column(lane, r)] =
            T{static_cast<std::uint16_t>(packed & 0xffffu)};
      }
      running_sum[r] = running_sum[r] * rescale + tile_sum;
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d) output[d][r] *= rescale;
    }
    vendor::sync_warp();  // the warp's P is visible to all its lanes

    // ---- output += P * V ----
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d)
#pragma unroll
      for (int kk = 0; kk < kKeyTiles; ++kk) {
        const TileOperand<T> a{warp_probabilities + 16 * kk, kKeysPerWarp, 1};
        const TileOperand<T> b{shared_values + (key_base + 16 * kk) * HeadDim + 16 * d, HeadDim, 1};
        tile_multiply_accumulate<T>(output[d], a, b);
      }
  }
  __syncthreads();  // every warp is done with the tiles: the staging reuses them

  // ---- stage each warp's (max, sum, output) and combine (the shared epilogue) ----
  float* const maxima = reinterpret_cast<float*>(shared_keys);
  float* const sums = maxima + Traits::kWarps * 16;
  float* const staged = sums + Traits::kWarps * 16;
  constexpr int kStride = HeadDim + decode_detail::kStagingPad;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float sum = warp::reduce_within_groups<Layout::kRowGroupLanes>(running_sum[r], exchange, warp::Sum{});
    const int slot = warp * 16 + Layout::row(lane, r);
    if (Layout::column(lane, r) == 0) {
      maxima[slot] = running_max[r];
      sums[slot] = sum;
    }
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) staged[slot * kStride + 16 * d + Layout::column(lane, r)] = output[d][r];
  }
  __syncthreads();
  decode_detail::write_decode_rows<T, HeadDim, RowBlocks, Traits::kKeyGroups>(params, work, maxima, sums, staged);
}

}  // namespace seer::gpu
