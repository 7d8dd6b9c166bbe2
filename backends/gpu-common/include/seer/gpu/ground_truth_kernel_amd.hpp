// The ground-truth forward for AMD GPUs: prefill_kernel_amd.hpp's dense path (4 warps of 16 query
// rows, operands staged in shared memory for the AMD tile multiply, online base-2 softmax) plus the
// store of each row's largest scaled logit per 64-key tile into the workspace, exactly what the NVIDIA
// forward of ground_truth_kernel.hpp stores. The pooling kernels of ground_truth_kernel.hpp are shared.
//
// Launch: grid (max_query_tiles, Hq, B), 4 * (the device's warp width) threads, AmdPrefillTraits'
// shared memory. nvcc compiles it too (portable tile path); it has not run on an AMD GPU.
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/gpu/ground_truth_kernel.hpp"
#include "seer/gpu/prefill_kernel_amd.hpp"
#include "seer/gpu/tensor_core_amd.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"
#include "seer/gpu/warp_exchange.hpp"

namespace seer::gpu {

template <class T, int HeadDim>
__global__ void ground_truth_forward_kernel_amd(const GroundTruthParams<T> ground_truth) {
  using Traits = AmdPrefillTraits<T, HeadDim>;
  using Layout = AccumulatorLayout;
  const PrefillParams<T>& params = ground_truth.attention;
  constexpr int R = kAccumulatorRegisters;
  constexpr int kKeyTiles = Traits::kKeysPerStep / 16;
  constexpr int kDimTiles = HeadDim / 16;
  constexpr int kParts = Traits::kTileRows / Traits::kKeysPerStep;  // key steps per 64-key tile
  constexpr float kLn2 = 0.6931471805599453f;
  const float negative_infinity = -__int_as_float(0x7f800000);
  if (static_cast<int>(blockDim.x) != Traits::kWarps * vendor::warp_size) return;

  const std::int64_t query_tile = params.max_query_tiles - 1 - static_cast<std::int64_t>(blockIdx.x);
  const std::int64_t head = blockIdx.y;
  const std::int64_t sequence = blockIdx.z;
  const BlockGeometry tiles{params.q.length(sequence), params.k.length(sequence), Traits::kTileRows, params.causal};
  if (query_tile >= tiles.query_blocks()) return;

  const std::int64_t kv_head = head / params.group;
  const std::int64_t visible_tiles = tiles.visible_key_blocks(query_tile);
  const std::int64_t first_masked_tile = tiles.first_masked_key_block(query_tile);

  extern __shared__ uint4 amd_shared_chunks[];
  T* const shared_query = reinterpret_cast<T*>(amd_shared_chunks);
  T* const shared_key_value = shared_query + Traits::kQueryElements;
  T* const shared_probabilities = shared_key_value + Traits::kKeyValueElements;

  const std::int64_t first_query = query_tile * Traits::kTileRows;
  const std::int64_t query_rows =
      tiles.q_len - first_query < Traits::kTileRows ? tiles.q_len - first_query : Traits::kTileRows;
  const std::int64_t first_token = params.q.start(sequence) + first_query;
  amd_detail::load_tile<HeadDim>(shared_query, Traits::kTileRows, params.q.vector(sequence, first_query, head),
                                 params.q.token_stride, query_rows);

  const int lane = vendor::lane_index();
  const int warp_row = vendor::warp_index() * 16;
  T* const warp_probabilities = shared_probabilities + vendor::warp_index() * 16 * Traits::kKeysPerStep;
  const NativeWarpExchange exchange;
  float* const row_maxima_rows =
      ground_truth.row_maxima + head * ground_truth.key_tiles * ground_truth.token_capacity + first_token + warp_row;

  float output[kDimTiles][R];
  float running_max[R], running_sum[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    running_max[r] = negative_infinity;
    running_sum[r] = 0.0f;
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) output[d][r] = 0.0f;
  }

  for (std::int64_t tile = 0; tile < visible_tiles; ++tile) {
    float tile_row_max[R];  // raw q . k maximum of each of this lane's rows over the whole 64-key tile
#pragma unroll
    for (int r = 0; r < R; ++r) tile_row_max[r] = negative_infinity;
    for (int part = 0; part < kParts; ++part) {
      const std::int64_t first_key = tile * Traits::kTileRows + part * Traits::kKeysPerStep;
      __syncthreads();
      amd_detail::load_tile<HeadDim>(shared_key_value, Traits::kKeysPerStep,
                                     params.k.vector(sequence, first_key, kv_head), params.k.token_stride,
                                     tiles.k_len - first_key);
      __syncthreads();

      float scores[kKeyTiles][R];
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
        for (int r = 0; r < R; ++r) scores[n][r] = 0.0f;
#pragma unroll
        for (int kd = 0; kd < HeadDim / 16; ++kd) {
          const TileOperand<T> a{shared_query + warp_row * HeadDim + 16 * kd, HeadDim, 1};
          const TileOperand<T> b{shared_key_value + 16 * n * HeadDim + 16 * kd, 1, HeadDim};
          tile_multiply_accumulate<T>(scores[n], a, b);
        }
      }

      if (tile >= first_masked_tile) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::int64_t last_visible = tiles.last_visible_key(first_query + warp_row + Layout::row(lane, r));
#pragma unroll
          for (int n = 0; n < kKeyTiles; ++n)
            if (first_key + 16 * n + Layout::column(lane, r) > last_visible) scores[n][r] = negative_infinity;
        }
      }

#pragma unroll
      for (int r = 0; r < R; ++r) {
        float tile_max = negative_infinity;
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) tile_max = fmaxf(tile_max, scores[n][r]);
        tile_max = warp::reduce_within_groups<Layout::kRowGroupLanes>(tile_max, exchange, warp::Maximum{});
        tile_row_max[r] = fmaxf(tile_row_max[r], tile_max);
        const float new_max = fmaxf(running_max[r], tile_max * params.scale_log2);
        const float base = new_max == negative_infinity ? 0.0f : new_max;
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

      __syncthreads();
      amd_detail::load_tile<HeadDim>(shared_key_value, Traits::kKeysPerStep,
                                     params.v.vector(sequence, first_key, kv_head), params.v.token_stride,
                                     tiles.k_len - first_key);
      __syncthreads();

#pragma unroll
      for (int d = 0; d < kDimTiles; ++d)
#pragma unroll
        for (int kk = 0; kk < kKeyTiles; ++kk) {
          const TileOperand<T> a{warp_probabilities + 16 * kk, Traits::kKeysPerStep, 1};
          const TileOperand<T> b{shared_key_value + 16 * kk * HeadDim + 16 * d, HeadDim, 1};
          tile_multiply_accumulate<T>(output[d], a, b);
        }
    }
    // One lane per row (column 0 of the row's 16-lane group) stores; rows past the end must not.
    float* const tile_row_maxima = row_maxima_rows + tile * ground_truth.token_capacity;
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (Layout::column(lane, r) == 0 && warp_row + Layout::row(lane, r) < query_rows)
        tile_row_maxima[Layout::row(lane, r)] = tile_row_max[r] * ground_truth.softmax_scale;
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float sum = warp::reduce_within_groups<Layout::kRowGroupLanes>(running_sum[r], exchange, warp::Sum{});
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int row = warp_row + Layout::row(lane, r);
    if (row < query_rows) {
      T* const destination = params.out.vector(sequence, first_query + row, head);
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d) {
        const std::uint32_t packed = vendor::element_traits<T>::pack(output[d][r] * inverse, 0.0f);
        destination[16 * d + Layout::column(lane, r)] = T{static_cast<std::uint16_t>(packed & 0xffffu)};
      }
      if (Layout::column(lane, r) == 0)
        params.lse[head * params.lse_head_stride + (first_token + row) * params.lse_token_stride] =
            sum > 0.0f ? (running_max[r] + __log2f(sum)) * kLn2 : negative_infinity;
    }
  }
}

}  // namespace seer::gpu
