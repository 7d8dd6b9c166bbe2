// Warp-wide matrix instructions and the shared-memory tile layout that feeds them.
//
// NVIDIA branch: mma.sync m16n8k16 (16-bit inputs, fp32 accumulators, sm_80 and newer) and
// ldmatrix. The fragment layouts below are the ones the PTX ISA documents for these instructions;
// under HIP this header includes tensor_core_amd.hpp instead (MFMA/WMMA, with their own layouts).
//
// Shared-memory tiles hold rows of head_dim 16-bit elements as 16-byte chunks. Chunk c of row r is
// stored at chunk position c ^ (r % 8): the 8 rows an ldmatrix reads at once then hit 8 different
// 16-byte bank groups, so neither the loads nor the asynchronous copies conflict.
#pragma once

#if defined(__HIPCC__)
// AMD GPUs: MFMA / WMMA / portable tiles with their own layouts, in their own file.
#include "seer/gpu/tensor_core_amd.hpp"
#else  // NVIDIA branch, to the end of the file

#include <cstdint>

#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

// Element offset of (row, chunk) in a swizzled tile whose rows have `ChunksPerRow` 16-byte chunks.
template <int ChunksPerRow>
__device__ inline int swizzled_offset(int row, int chunk) {
  static_assert(ChunksPerRow % 8 == 0, "the swizzle permutes chunks in groups of 8: rows need >= 64 elements");
  return row * ChunksPerRow * 8 + ((chunk ^ (row & 7)) * 8);
}

// The same offset for chunk 2 * pair + half_chunk (pair a compile-time loop index, half_chunk 0 or 1,
// row_low_bits == row % 8). The swizzle only permutes the low 3 bits of the chunk, so the high part
// becomes a compile-time offset and a lane needs 4 address registers per operand instead of one per
// pair (those extra registers were spilled in the key loop).
template <int ChunksPerRow>
__device__ inline int swizzled_pair_offset(int row, int row_low_bits, int pair, int half_chunk) {
  static_assert(ChunksPerRow % 8 == 0, "the swizzle permutes chunks in groups of 8: rows need >= 64 elements");
  return row * ChunksPerRow * 8 + (pair / 4) * 64 + (((2 * (pair % 4) + half_chunk) ^ row_low_bits) * 8);
}

// Four 8x8 matrices of 16-bit elements; lane l supplies the address of row l % 8 of matrix l / 8.
__device__ inline void load_matrix_x4(std::uint32_t (&fragment)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(vendor::shared_address(row_address)));
}

// The same, transposed: used for V, whose rows are keys (the reduction axis of P * V).
__device__ inline void load_matrix_x4_transposed(std::uint32_t (&fragment)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(vendor::shared_address(row_address)));
}

// accumulator[16x8] += a[16x16] * b[16x8]. a: 4 registers (row-major fragment), b: 2 registers
// (column-major fragment). Accumulator lane layout: lane = 4 * g + t holds (g, 2t), (g, 2t+1),
// (g+8, 2t), (g+8, 2t+1).
template <class T>
struct matrix_multiply_accumulate;

template <>
struct matrix_multiply_accumulate<seer::bfloat16> {
  __device__ static void run(float (&accumulator)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct matrix_multiply_accumulate<seer::half> {
  __device__ static void run(float (&accumulator)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

}  // namespace seer::gpu

#endif  // NVIDIA branch
