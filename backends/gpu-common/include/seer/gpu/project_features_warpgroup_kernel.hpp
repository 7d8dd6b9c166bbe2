// The gate's projection on Hopper warpgroup tensor instructions (wgmma, TF32, sm_90a): the product of
// project_features_tensor_kernel (pooled features times the transposed weights, then RoPE) at the
// wgmma rate instead of mma.sync's, in the same split precision (seer/gpu/fp32_tensor_dot.hpp: each fp32
// operand x = big + small, products big_a big_b + small_a big_b + big_a small_b; two of them when the
// weights are TF32 numbers).
//
// Grid (ceil(max_blocks / 64), output_heads, batch), one warpgroup (128 threads) per CTA: 64 blocks x 128
// output columns, the input features consumed in chunks of 32, the next chunk's asynchronous copies in
// flight while one multiplies. Per chunk, the weights' 128 rows x 32 features (one 128-byte row each, 128-byte swizzle)
// are the B operand, read by the tensor cores from shared memory; the input rows are the A operand, split into big and
// small in registers (warp w: rows 16w .. 16w + 15, the mma.sync fragment layout). Inexact (fp32) weights get their
// small parts in a second swizzled tile, written by a pass over the landed chunk (the same byte positions as the big
// tile, so one layout serves both). The projected rows then go through the stage buffers to the RoPE epilogue that
// project_features_tensor_kernel uses.
//
// NVIDIA only; the instructions exist in sm_90a device code (elsewhere the kernel traps). DeviceLimits
// says whether the device and the build have them (DeviceLimits::warpgroup_projection).
#pragma once

#if !defined(__HIPCC__)

#include <cstdint>

#include "seer/gpu/fp32_tensor_dot.hpp"
#include "seer/gpu/gate_features_kernel.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warpgroup_mma.hpp"

namespace seer::gpu {

inline constexpr int kWarpgroupProjectionRows = 64;      // blocks per CTA: the wgmma M
inline constexpr int kWarpgroupProjectionColumns = 128;  // output columns per CTA: the wgmma N (dims past dim: zero)
inline constexpr int kWarpgroupProjectionDepth = 32;     // input features per chunk: one 128-byte swizzle row
// Two stages (the next chunk's copies in flight while this one multiplies) keep a CTA at 51 KiB (67 with
// inexact weights), so three CTAs share a multiprocessor: with one warpgroup each, the other CTAs' products
// fill the tensor cores while one waits at its barrier. (Three stages and two CTAs: 32 us at 32k.)
inline constexpr int kWarpgroupProjectionStages = 2;
// Staged input rows are 36 floats apart (= 4 mod 32): the fragment loads of lanes (g, t), rows g and
// columns t, fall on 32 distinct banks.
inline constexpr int kWarpgroupProjectionInputStride = 36;

struct WarpgroupProjectionLayout {
  static constexpr int kWeightBytes = kWarpgroupProjectionColumns * 128;  // 16 KiB: 16 swizzle periods
  static constexpr int kInputBytes = kWarpgroupProjectionRows * kWarpgroupProjectionInputStride * 4;  // 9 KiB
  static constexpr int kStageBytes = kWeightBytes + kInputBytes;  // a multiple of 1024: weight tiles stay aligned
  static_assert(kInputBytes % 1024 == 0, "the next stage's weight tile starts on a swizzle period");
  // Dynamic shared bytes: the stages, the small-part tile for inexact weights, and 1024 for the alignment.
  static constexpr int shared_bytes(bool exact_weights) {
    return kWarpgroupProjectionStages * kStageBytes + (exact_weights ? 0 : kWeightBytes) + 1024;
  }
};

template <bool ExactWeights>
__global__ void __launch_bounds__(128, 3) project_features_warpgroup_kernel(const ProjectParams params) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  using Layout = WarpgroupProjectionLayout;
  constexpr int kThreads = 128;
  constexpr int kRows = kWarpgroupProjectionRows;
  constexpr int kColumns = kWarpgroupProjectionColumns;
  constexpr int kDepth = kWarpgroupProjectionDepth;
  constexpr int kStages = kWarpgroupProjectionStages;
  constexpr int kInputStride = kWarpgroupProjectionInputStride;
  static_assert(kStages * Layout::kStageBytes >= kRows * detail::projected_row_stride(kColumns) * 4,
                "the projected rows fit in the stages");

  const detail::ProjectionTile tile = detail::projection_tile(params, kRows);
  if (tile.rows <= 0) return;
  const int dim = static_cast<int>(params.dim);
  const int width = static_cast<int>(params.input_width);

  extern __shared__ unsigned char dynamic_shared[];
  // The swizzle assumes 1024-byte-aligned tiles; the dynamic allocation is only 16-byte aligned.
  unsigned char* const base = dynamic_shared + ((1024 - (vendor::shared_address(dynamic_shared) & 1023)) & 1023);
  auto stage_weights = [&](int stage) { return base + stage * Layout::kStageBytes; };
  auto stage_input = [&](int stage) {
    return reinterpret_cast<float*>(base + stage * Layout::kStageBytes + Layout::kWeightBytes);
  };
  unsigned char* const weights_small = base + kStages * Layout::kStageBytes;  // inexact weights only

  // Copies: thread i moves 16-byte vector v = i % 8 of tile rows i / 8 + 16 j (4 input rows, 8 weight
  // rows). Weight row n's vector v lands at n * 128 + 16 (v ^ n % 8); n % 8 is the same for all j.
  const int thread = static_cast<int>(threadIdx.x);
  const int vector = thread % 8, first_row = thread / 8;
  const int k = 4 * vector;
  constexpr int kInputCopies = kRows / 16, kWeightCopies = kColumns / 16;
  const float* input_sources[kInputCopies];
  bool input_valid[kInputCopies];
#pragma unroll
  for (int j = 0; j < kInputCopies; ++j) {
    const int row = first_row + 16 * j;
    input_sources[j] = tile.input + row * params.input_width + k;
    input_valid[j] = row < tile.rows;
  }
  const float* weight_sources[kWeightCopies];
  bool weight_valid[kWeightCopies];
#pragma unroll
  for (int j = 0; j < kWeightCopies; ++j) {
    const int column = first_row + 16 * j;
    weight_sources[j] = tile.weights + column * params.input_width + k;
    weight_valid[j] = column < dim;
  }
  const int weight_offset = first_row * 128 + 16 * (vector ^ (first_row % 8));
  auto load_chunk = [&](int chunk) {
    const int stage = chunk % kStages, depth = chunk * kDepth;
    const bool inside = depth + k < width;  // the width is a multiple of 8: vectors are wholly in or out
    float* input_tile = stage_input(stage) + first_row * kInputStride + k;
#pragma unroll
    for (int j = 0; j < kInputCopies; ++j) {
      const bool valid = inside && input_valid[j];
      vendor::copy_async_16_bytes(input_tile + 16 * j * kInputStride, valid ? input_sources[j] + depth : tile.input,
                                  valid);
    }
    unsigned char* weight_tile = stage_weights(stage) + weight_offset;
#pragma unroll
    for (int j = 0; j < kWeightCopies; ++j) {
      const bool valid = inside && weight_valid[j];
      vendor::copy_async_16_bytes(weight_tile + 16 * j * 128, valid ? weight_sources[j] + depth : tile.weights, valid);
    }
    vendor::commit_async_copies();
  };

  const int warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, t = lane % 4;
  float accumulator[kColumns / 2];  // rows 16 warp + (g, g + 8), columns 8 f + 2 t + (0, 1): see warpgroup_mma.hpp
#pragma unroll
  for (int i = 0; i < kColumns / 2; ++i) accumulator[i] = 0.0f;

  const int chunks = (width + kDepth - 1) / kDepth;
  static_assert(kStages == 2, "one chunk in flight while one multiplies");
  load_chunk(0);
  for (int chunk = 0; chunk < chunks; ++chunk) {
    vendor::wait_async_copies<0>();          // this thread's copies of the chunk have landed...
    hopper::fence_shared_for_async_proxy();  // ... and are visible to the tensor cores
    // Every thread's copies too; and every warp's products of chunk - 1 completed (waited below), so its
    // stage, which chunk + 1 takes, is free.
    __syncthreads();
    if (chunk + 1 < chunks) load_chunk(chunk + 1);
    const int stage = chunk % kStages;
    unsigned char* const weights_big = stage_weights(stage);
    if constexpr (!ExactWeights) {
      // big = the top 19 bits (in place), small = the exact remainder, at the same swizzled positions.
      for (int i = thread; i < Layout::kWeightBytes / 16; i += kThreads) {
        uint4* big = reinterpret_cast<uint4*>(weights_big) + i;
        const uint4 raw = *big;
        const SplitTf32 x = split_tf32(__uint_as_float(raw.x)), y = split_tf32(__uint_as_float(raw.y));
        const SplitTf32 z = split_tf32(__uint_as_float(raw.z)), w = split_tf32(__uint_as_float(raw.w));
        *big = make_uint4(x.big, y.big, z.big, w.big);
        reinterpret_cast<uint4*>(weights_small)[i] = make_uint4(x.small, y.small, z.small, w.small);
      }
      hopper::fence_shared_for_async_proxy();
      __syncthreads();
    }
    // A fragments of the chunk's four k8 slices: rows g and g + 8 of the warp, columns t and t + 4.
    const float* input = stage_input(stage) + (16 * warp + g) * kInputStride + t;
    std::uint32_t big[4][4], small[4][4];
#pragma unroll
    for (int step = 0; step < kDepth / 8; ++step) {
      const float values[4] = {input[8 * step], input[8 * kInputStride + 8 * step], input[8 * step + 4],
                               input[8 * kInputStride + 8 * step + 4]};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const SplitTf32 parts = split_tf32(values[e]);
        big[step][e] = parts.big;
        small[step][e] = parts.small;
      }
    }
    hopper::warpgroup_fence();
#pragma unroll
    for (int step = 0; step < kDepth / 8; ++step) {
      // K-major B: slice `step` starts 32 bytes into each 128-byte row; 8-row groups are 1024 bytes apart.
      const std::uint64_t b_big =
          hopper::swizzled_descriptor(weights_big + 32 * step, Layout::kWeightBytes, hopper::kSwizzleGroupBytes);
      hopper::warpgroup_multiply_tf32(accumulator, small[step], b_big, 1u);
      if constexpr (!ExactWeights) {
        const std::uint64_t b_small =
            hopper::swizzled_descriptor(weights_small + 32 * step, Layout::kWeightBytes, hopper::kSwizzleGroupBytes);
        hopper::warpgroup_multiply_tf32(accumulator, big[step], b_small, 1u);
      }
      hopper::warpgroup_multiply_tf32(accumulator, big[step], b_big, 1u);
    }
    hopper::warpgroup_commit();
    hopper::warpgroup_wait<0>();
    hopper::pin_registers(accumulator);
  }

  __syncthreads();  // every chunk consumed: the stage buffers now hold the projected rows
  float* projected = reinterpret_cast<float*>(base);
  const int stride = detail::projected_row_stride(dim);
#pragma unroll
  for (int f = 0; f < kColumns / 8; ++f) {
    const int column = 8 * f + 2 * t;
    if (column < dim) {
      float* upper = projected + (16 * warp + g) * stride + column;
      *reinterpret_cast<float2*>(upper) = make_float2(accumulator[4 * f], accumulator[4 * f + 1]);
      *reinterpret_cast<float2*>(upper + 8 * stride) = make_float2(accumulator[4 * f + 2], accumulator[4 * f + 3]);
    }
  }
  __syncthreads();
  detail::write_rotated_rows(params, projected, stride, tile.rows, tile.first_block, tile.b, tile.o, kThreads);
}

}  // namespace seer::gpu

#endif  // !defined(__HIPCC__)
