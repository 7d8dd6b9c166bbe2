// The AMD branch of seer/gpu/tensor_core.hpp (which includes this file under HIP). nvcc compiles it
// too, taking the portable path, so the AMD kernel's logic can be tested on NVIDIA hardware.
//
// One warp multiplies 16x16x16 tiles: accumulator[16x16] += A[16x16] * B[16x16], fp32 accumulators,
// 16-bit inputs read from (shared) memory through TileOperand views. The accumulator layout is
// warp::Amd16x16Layout<warp_size> on every path, so the code around the multiply (masking, row
// reductions over 16 lanes, the epilogue) is the same whichever instruction runs:
//   - CDNA2/CDNA3 (gfx90a, gfx940-942), wave64: v_mfma_f32_16x16x16_{bf16,f16}. Lane l supplies
//     A[l % 16][4 (l / 16) + i] and B[4 (l / 16) + i][l % 16], i = 0-3.
//   - RDNA3 (gfx110x, gfx115x), wave32: v_wmma_f32_16x16x16_{bf16,f16}. Lane l supplies row l % 16 of
//     A and column l % 16 of B, all 16 k (lanes 16-31 repeat lanes 0-15).
//   - any other AMD target: the portable FMA loop (seer/gpu/portable_tile_mma.hpp).
// NVIDIA's ldmatrix/mma.sync fragments have no AMD counterpart, so the kernels that use this branch
// stage their operands in shared memory instead of reusing register fragments.
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/numeric_types.hpp"
#include "seer/gpu/portable_tile_mma.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"

namespace seer::gpu {

#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
inline constexpr const char* tile_instruction = "mfma";
#elif defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || defined(__gfx1103__) || \
    defined(__gfx1150__) || defined(__gfx1151__)
inline constexpr const char* tile_instruction = "wmma";
#else
inline constexpr const char* tile_instruction = "portable";
#endif

using AccumulatorLayout = warp::Amd16x16Layout<vendor::warp_size>;
inline constexpr int kAccumulatorRegisters = AccumulatorLayout::kRegisters;

template <class T>
__device__ inline void tile_multiply_accumulate(float (&accumulator)[kAccumulatorRegisters], const TileOperand<T>& a,
                                                const TileOperand<T>& b) {
  [[maybe_unused]] const int lane = vendor::lane_index();
#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
  static_assert(vendor::warp_size == 64 && kAccumulatorRegisters == 4, "MFMA 16x16x16 runs on wave64");
  typedef float float4_vector __attribute__((ext_vector_type(4)));
  float4_vector c = {accumulator[0], accumulator[1], accumulator[2], accumulator[3]};
  const int row = lane % 16, first_k = 4 * (lane / 16);
  if constexpr (std::is_same_v<T, seer::bfloat16>) {
    typedef short short4_vector __attribute__((ext_vector_type(4)));
    short4_vector a_values, b_values;
    for (int i = 0; i < 4; ++i) {
      a_values[i] = static_cast<short>(a.at(row, first_k + i).bits);
      b_values[i] = static_cast<short>(b.at(first_k + i, row).bits);
    }
    c = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a_values, b_values, c, 0, 0, 0);
  } else {
    typedef _Float16 half4_vector __attribute__((ext_vector_type(4)));
    half4_vector a_values, b_values;
    for (int i = 0; i < 4; ++i) {
      a_values[i] = __builtin_bit_cast(_Float16, a.at(row, first_k + i).bits);
      b_values[i] = __builtin_bit_cast(_Float16, b.at(first_k + i, row).bits);
    }
    c = __builtin_amdgcn_mfma_f32_16x16x16f16(a_values, b_values, c, 0, 0, 0);
  }
  for (int r = 0; r < 4; ++r) accumulator[r] = c[r];
#elif defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || defined(__gfx1103__) || \
    defined(__gfx1150__) || defined(__gfx1151__)
  static_assert(vendor::warp_size == 32 && kAccumulatorRegisters == 8, "WMMA 16x16x16 (w32) runs on wave32");
  typedef float float8_vector __attribute__((ext_vector_type(8)));
  float8_vector c;
  for (int r = 0; r < 8; ++r) c[r] = accumulator[r];
  const int index = lane % 16;
  if constexpr (std::is_same_v<T, seer::bfloat16>) {
    typedef short short16_vector __attribute__((ext_vector_type(16)));
    short16_vector a_values, b_values;
    for (int k = 0; k < 16; ++k) {
      a_values[k] = static_cast<short>(a.at(index, k).bits);
      b_values[k] = static_cast<short>(b.at(k, index).bits);
    }
    c = __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32(a_values, b_values, c);
  } else {
    typedef _Float16 half16_vector __attribute__((ext_vector_type(16)));
    half16_vector a_values, b_values;
    for (int k = 0; k < 16; ++k) {
      a_values[k] = __builtin_bit_cast(_Float16, a.at(index, k).bits);
      b_values[k] = __builtin_bit_cast(_Float16, b.at(k, index).bits);
    }
    c = __builtin_amdgcn_wmma_f32_16x16x16_f16_w32(a_values, b_values, c);
  }
  for (int r = 0; r < 8; ++r) accumulator[r] = c[r];
#else
  portable_tile_multiply_accumulate<AccumulatorLayout>(accumulator, lane, a, b);
#endif
}

}  // namespace seer::gpu
