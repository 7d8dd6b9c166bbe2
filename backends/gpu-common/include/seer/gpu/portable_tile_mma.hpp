// A 16x16x16 tile multiply-accumulate for one warp without matrix instructions: each lane computes
// the accumulator elements it owns in the AMD 16x16 layout of its width (warp::Amd16x16Layout), with
// fp32 fused multiply-adds over operands read from (shared) memory.
//
// It is the fallback of seer/gpu/tensor_core_amd.hpp on AMD targets without MFMA/WMMA support in
// seer, and it is plain C++ over a lane index, so the CPU tests run it for 32 and 64 lanes.
#pragma once

#include <cstdint>

#include "seer/core/numeric_types.hpp"
#include "seer/core/platform.hpp"
#include "seer/gpu/warp_algorithms.hpp"

namespace seer::gpu {

// A 16 x 16 operand in memory: element (row, column) at data[row * row_stride + column * column_stride].
// The A operand's rows are output rows and its columns the reduction axis; the B operand's rows are
// the reduction axis and its columns output columns. A transposed operand (K for Q * K^T) is the same
// view with the two strides swapped.
template <class T>
struct TileOperand {
  const T* data;
  int row_stride;
  int column_stride;
  SEER_HOST_DEVICE const T& at(int row, int column) const { return data[row * row_stride + column * column_stride]; }
};

// Converts a seer 16-bit storage element to float, on host and device.
SEER_HOST_DEVICE inline float element_to_float(seer::bfloat16 value) {
  const std::uint32_t bits = static_cast<std::uint32_t>(value.bits) << 16;
  float result;
  __builtin_memcpy(&result, &bits, sizeof(result));
  return result;
}

SEER_HOST_DEVICE inline float element_to_float(seer::half value) {
  const std::uint32_t sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
  std::uint32_t exponent = (value.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = value.bits & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else if (mantissa == 0) {
    bits = sign;  // +-0
  } else {        // subnormal: normalise the mantissa
    exponent = 113u;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float result;
  __builtin_memcpy(&result, &bits, sizeof(result));
  return result;
}

// accumulator (in Layout, this lane's registers) += A * B over k = 0..15.
template <class Layout, class T>
SEER_HOST_DEVICE void portable_tile_multiply_accumulate(float (&accumulator)[Layout::kRegisters], int lane,
                                                        const TileOperand<T>& a, const TileOperand<T>& b) {
  for (int reg = 0; reg < Layout::kRegisters; ++reg) {
    const int row = Layout::row(lane, reg);
    const int column = Layout::column(lane, reg);
    float sum = accumulator[reg];
    for (int k = 0; k < 16; ++k) sum = fmaf(element_to_float(a.at(row, k)), element_to_float(b.at(k, column)), sum);
    accumulator[reg] = sum;
  }
}

}  // namespace seer::gpu
