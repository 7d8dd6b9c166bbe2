// The block-sparse prefill kernel for AMD GPUs: the same algorithm as seer/gpu/prefill_kernel.hpp
// (FlashAttention-2-style forward over the kept 64-key tiles of a BlockSet, online base-2 softmax,
// masking by seer::BlockGeometry, the same PrefillParams), written for the AMD tile multiply of
// seer/gpu/tensor_core_amd.hpp.
//
// What differs from the NVIDIA kernel, and why:
//   - One CTA has 4 warps of vendor::warp_size lanes (256 threads on CDNA, 128 on RDNA); each warp
//     owns 16 query rows. The host cannot know the wavefront width at compile time (clang's host pass
//     sees one value for all targets), so it launches 4 * (the device's warpSize) threads.
//   - Operands are staged in shared memory and read by the tile multiply in the layout its
//     instruction wants; the probabilities P go through shared memory to become the A operand of
//     P * V (NVIDIA reuses the accumulator registers, whose layout matches mma's A operand; AMD's do not).
//   - A row's 16 accumulators are spread over 16 lanes (not 4): row maxima and sums reduce over 16
//     lanes with the width-parameterised warp::reduce_within_groups.
//   - LDS is 64 KiB per workgroup on CDNA: K and V share one buffer, and head dim 256 walks each
//     64-key tile in two 32-key halves (Q 32 KiB + K/V 16 KiB + P 4 KiB).
// Correctness on AMD hardware has not been run (no AMD GPU was available); CI compiles it for gfx90a
// (MFMA), gfx942 (MFMA) and gfx1100 (WMMA). nvcc compiles it too (portable tile path, 32-lane RDNA
// layout): tests/gpu runs the shared GPU suite against it on NVIDIA hardware, which checks everything
// but the MFMA/WMMA operand layouts and the 64-lane case.
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/prefill_schedule.hpp"
#include "seer/gpu/tensor_core_amd.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"
#include "seer/gpu/warp_exchange.hpp"

namespace seer::gpu {

template <class T, int HeadDim>
struct AmdPrefillTraits {
  static_assert(HeadDim == 64 || HeadDim == 128 || HeadDim == 256,
                "the prefill kernel supports head dims 64, 128, 256");
  static constexpr int kTileRows = 64;                           // query rows per CTA = keys per tile
  static constexpr int kWarps = 4;                               // 16 query rows each
  static constexpr int kKeysPerStep = HeadDim == 256 ? 32 : 64;  // keys staged in shared memory at once
  static constexpr int kQueryElements = kTileRows * HeadDim;
  static constexpr int kKeyValueElements = kKeysPerStep * HeadDim;
  static constexpr int kProbabilityElements = kWarps * 16 * kKeysPerStep;
  static constexpr int kSharedBytes =
      (kQueryElements + kKeyValueElements + kProbabilityElements) * static_cast<int>(sizeof(T));
  static_assert(kSharedBytes <= 64 * 1024, "CDNA workgroups have 64 KiB of LDS");
};

namespace amd_detail {

// Copies `valid_rows` rows (zeros for the rest) of a rows x HeadDim tile into dense shared memory.
template <int HeadDim, class T>
__device__ inline void load_tile(T* shared_tile, int rows, const T* first_row, std::int64_t row_stride,
                                 std::int64_t valid_rows) {
  constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks
  const int threads = static_cast<int>(blockDim.x);
  for (int index = static_cast<int>(threadIdx.x); index < rows * kChunksPerRow; index += threads) {
    const int row = index / kChunksPerRow, chunk = index % kChunksPerRow;
    const bool valid = row < valid_rows;
    vendor::copy_async_16_bytes(shared_tile + row * HeadDim + chunk * 8,
                                valid ? first_row + row * row_stride + chunk * 8 : first_row, valid);
  }
  vendor::commit_async_copies();
  vendor::wait_async_copies<0>();
}

}  // namespace amd_detail

template <class T, int HeadDim>
__global__ void block_sparse_prefill_kernel_amd(const PrefillParams<T> params) {
  using Traits = AmdPrefillTraits<T, HeadDim>;
  using Layout = AccumulatorLayout;
  constexpr int R = kAccumulatorRegisters;
  constexpr int kKeyTiles = Traits::kKeysPerStep / 16;  // n16 tiles of a score row per step
  constexpr int kDimTiles = HeadDim / 16;
  constexpr float kLn2 = 0.6931471805599453f;
  const float negative_infinity = -__int_as_float(0x7f800000);
  // The host launched 4 * warpSize threads; a mismatch (a wrong width) must not compute garbage.
  if (static_cast<int>(blockDim.x) != Traits::kWarps * vendor::warp_size) return;

  const std::int64_t query_tile = params.max_query_tiles - 1 - static_cast<std::int64_t>(blockIdx.x);
  const std::int64_t head = blockIdx.y;
  const std::int64_t sequence = blockIdx.z;
  const BlockGeometry tiles{params.q.length(sequence), params.k.length(sequence), Traits::kTileRows, params.causal};
  if (query_tile >= tiles.query_blocks()) return;

  const std::int64_t kv_head = head / params.group;
  const detail::KeyTileSchedule schedule = detail::key_tile_schedule(params, tiles, sequence, head, query_tile);
  const std::int64_t first_masked_tile = tiles.first_masked_key_block(query_tile);

  extern __shared__ uint4 amd_shared_chunks[];  // 16-byte aligned, like every tile row
  T* const shared_query = reinterpret_cast<T*>(amd_shared_chunks);
  T* const shared_key_value = shared_query + Traits::kQueryElements;
  T* const shared_probabilities = shared_key_value + Traits::kKeyValueElements;

  const std::int64_t first_query = query_tile * Traits::kTileRows;
  const std::int64_t query_rows =
      tiles.q_len - first_query < Traits::kTileRows ? tiles.q_len - first_query : Traits::kTileRows;
  amd_detail::load_tile<HeadDim>(shared_query, Traits::kTileRows, params.q.vector(sequence, first_query, head),
                                 params.q.token_stride, query_rows);

  const int lane = vendor::lane_index();
  const int warp_row = vendor::warp_index() * 16;
  T* const warp_probabilities = shared_probabilities + vendor::warp_index() * 16 * Traits::kKeysPerStep;
  const NativeWarpExchange exchange;

  float output[kDimTiles][R];
  float running_max[R], running_sum[R];  // per accumulator register: one row of this lane each
#pragma unroll
  for (int r = 0; r < R; ++r) {
    running_max[r] = negative_infinity;
    running_sum[r] = 0.0f;
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) output[d][r] = 0.0f;
  }

  for (std::int64_t step = 0;; ++step) {
    const std::int64_t tile = schedule.tile(step);
    if (tile < 0) break;  // past the kept tiles, or (they ascend) beyond the visible region
    for (int part = 0; part < Traits::kTileRows / Traits::kKeysPerStep; ++part) {
      const std::int64_t first_key = tile * Traits::kTileRows + part * Traits::kKeysPerStep;
      __syncthreads();  // every warp is done with the previous V (and, the first time, Q has landed)
      amd_detail::load_tile<HeadDim>(shared_key_value, Traits::kKeysPerStep,
                                     params.k.vector(sequence, first_key, kv_head), params.k.token_stride,
                                     tiles.k_len - first_key);
      __syncthreads();

      // ---- scores = Q * K^T: 16 rows x kKeysPerStep keys per warp ----
      float scores[kKeyTiles][R];
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
        for (int r = 0; r < R; ++r) scores[n][r] = 0.0f;
#pragma unroll
        for (int kd = 0; kd < HeadDim / 16; ++kd) {
          const TileOperand<T> a{shared_query + warp_row * HeadDim + 16 * kd, HeadDim, 1};
          const TileOperand<T> b{shared_key_value + 16 * n * HeadDim + 16 * kd, 1, HeadDim};  // B[d][key] = K[key][d]
          tile_multiply_accumulate<T>(scores[n], a, b);
        }
      }

      // ---- mask (causal boundary, ragged tail) ----
      if (tile >= first_masked_tile) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::int64_t last_visible = tiles.last_visible_key(first_query + warp_row + Layout::row(lane, r));
#pragma unroll
          for (int n = 0; n < kKeyTiles; ++n)
            if (first_key + 16 * n + Layout::column(lane, r) > last_visible) scores[n][r] = negative_infinity;
        }
      }

      // ---- online softmax: a row lives in one register of 16 lanes ----
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
          warp_probabilities[Layout::row(lane, r) * Traits::kKeysPerStep + 16 * n + Layout::column(lane, r)] =
              T{static_cast<std::uint16_t>(packed & 0xffffu)};
        }
        running_sum[r] = running_sum[r] * rescale + tile_sum;
#pragma unroll
        for (int d = 0; d < kDimTiles; ++d) output[d][r] *= rescale;
      }

      __syncthreads();  // every warp is done with K (and its P is visible to its lanes)
      amd_detail::load_tile<HeadDim>(shared_key_value, Traits::kKeysPerStep,
                                     params.v.vector(sequence, first_key, kv_head), params.v.token_stride,
                                     tiles.k_len - first_key);
      __syncthreads();

      // ---- output += P * V ----
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d)
#pragma unroll
        for (int kk = 0; kk < kKeyTiles; ++kk) {
          const TileOperand<T> a{warp_probabilities + 16 * kk, Traits::kKeysPerStep, 1};
          const TileOperand<T> b{shared_key_value + 16 * kk * HeadDim + 16 * d, HeadDim, 1};  // B[key][d] = V[key][d]
          tile_multiply_accumulate<T>(output[d], a, b);
        }
    }
  }

  // ---- epilogue: row sums over the 16 lanes of a row, normalise, store ----
  const std::int64_t first_token = params.q.start(sequence) + first_query;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float sum = warp::reduce_within_groups<Layout::kRowGroupLanes>(running_sum[r], exchange, warp::Sum{});
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row that saw no kept visible key gives 0
    const int row = warp_row + Layout::row(lane, r);
    if (row < query_rows) {
      T* const destination = params.out.vector(sequence, first_query + row, head);
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d) {
        const std::uint32_t packed = vendor::element_traits<T>::pack(output[d][r] * inverse, 0.0f);
        destination[16 * d + Layout::column(lane, r)] = T{static_cast<std::uint16_t>(packed & 0xffffu)};
      }
      if (params.lse != nullptr && Layout::column(lane, r) == 0)
        params.lse[head * params.lse_head_stride + (first_token + row) * params.lse_token_stride] =
            sum > 0.0f ? (running_max[r] + __log2f(sum)) * kLn2 : negative_infinity;
    }
  }
}

}  // namespace seer::gpu
