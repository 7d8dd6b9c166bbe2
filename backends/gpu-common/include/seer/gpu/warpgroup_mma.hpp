// Hopper warpgroup matrix instructions (wgmma, sm_90a) and the shared-memory operand layout they read.
//
// A warpgroup (4 consecutive warps, the first at a warp index divisible by 4) multiplies a 64-row A
// operand by a B operand held in shared memory and accumulates into fp32 registers, asynchronously:
// the instruction is issued, and its results may be read only after warpgroup_wait(). Warp w of the
// group owns accumulator rows 16w..16w+15 in the same lane layout as mma.sync m16n8: register
// 4f + c holds row g = lane / 4 (c = 0, 1) or g + 8 (c = 2, 3), column 8f + 2 (lane % 4) + c % 2.
// The A operand, when it comes from registers, uses the mma.sync m16n8k16 A fragment layout, so
// fp32 scores of one product become the A operand of the next after packing to 16 bits.
//
// B tiles in shared memory use the 128-byte swizzle: a tile is stored as column panels 64 elements
// (128 bytes) wide; row r of a panel occupies 128 bytes at r * 128, its 16-byte chunk c stored at
// chunk position c ^ (r % 8). Panels and every 8-row group are 1024-byte aligned, which is what the
// hardware's address swizzle assumes. The same layout serves both operands of attention:
//   K tile [keys][dims], read as B of Q * K^T ("K-major": the reduction axis is contiguous);
//   V tile [keys][dims], read as B of P * V transposed ("MN-major": the output axis is contiguous).
//
// NVIDIA only: this header is not included under HIP, and the instructions exist only in sm_90a
// device code (elsewhere a call traps, so a mis-built binary fails loudly instead of computing zeros).
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/numeric_types.hpp"
#include "seer/gpu/vendor.hpp"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SEER_WARPGROUP_MMA_AVAILABLE 1
#else
#define SEER_WARPGROUP_MMA_AVAILABLE 0
#endif

namespace seer::gpu::hopper {

inline constexpr int kSwizzlePanelElements = 64;  // 16-bit elements per 128-byte swizzled row
inline constexpr int kSwizzlePanelRowBytes = 128;
inline constexpr int kSwizzleGroupBytes = 8 * kSwizzlePanelRowBytes;  // one 8-row swizzle period

// Byte offset of 16-byte chunk `chunk` (of the whole row) of row `row` in a swizzled tile of `rows` rows.
template <int Rows>
__device__ constexpr int swizzled_panel_offset(int row, int chunk) {
  return (chunk / 8) * Rows * kSwizzlePanelRowBytes + row * kSwizzlePanelRowBytes + (((chunk % 8) ^ (row % 8)) * 16);
}

// The 64-bit shared-memory matrix descriptor of a 128-byte-swizzled operand starting at `start`
// (1024-byte aligned, or 32-byte steps inside a swizzle row for successive k16 slices of a K-major
// operand). stride_byte_offset: the distance between consecutive 8-row groups (1024 in this layout).
// leading_byte_offset: for an MN-major (transposed) operand, the distance between its 64-column panels;
// a K-major operand whose k16 slice lies inside one panel does not use it. Fields of 14 bits in
// 16-byte units, as the PTX ISA defines them; the probe test (tests/gpu/test_warpgroup_mma.cu) checks
// both uses against a float64 product.
__device__ inline std::uint64_t swizzled_descriptor(const void* start, std::uint32_t leading_byte_offset,
                                                    std::uint32_t stride_byte_offset) {
  const std::uint32_t address = vendor::shared_address(start);
  std::uint64_t descriptor = (address & 0x3FFFF) >> 4;
  descriptor |= static_cast<std::uint64_t>((leading_byte_offset >> 4) & 0x3FFF) << 16;
  descriptor |= static_cast<std::uint64_t>((stride_byte_offset >> 4) & 0x3FFF) << 32;
  descriptor |= static_cast<std::uint64_t>(1) << 62;  // layout type 1: 128-byte swizzle
  return descriptor;
}

// Makes register and shared-memory writes of this thread visible to the next wgmma it issues.
__device__ inline void warpgroup_fence() {
#if SEER_WARPGROUP_MMA_AVAILABLE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

// Closes the group of wgmma issued since the last commit.
__device__ inline void warpgroup_commit() {
#if SEER_WARPGROUP_MMA_AVAILABLE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most `Pending` committed groups are still running.
template <int Pending>
__device__ inline void warpgroup_wait() {
#if SEER_WARPGROUP_MMA_AVAILABLE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
#endif
}

// Shared memory written through the generic proxy (ordinary stores, cp.async) and read next by
// wgmma (the async proxy) needs this fence in each writing thread, before the barrier that publishes it.
__device__ inline void fence_shared_for_async_proxy() {
#if SEER_WARPGROUP_MMA_AVAILABLE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Tells the compiler an in-flight accumulator register may change under it: reads of `value` are
// not moved above the preceding warpgroup_wait(), writes not below the next wgmma.
__device__ inline void pin_register(float& value) { asm volatile("" : "+f"(value)::"memory"); }

template <int Count>
__device__ inline void pin_registers(float (&values)[Count]) {
#pragma unroll
  for (int i = 0; i < Count; ++i) pin_register(values[i]);
}

namespace detail {

// The m64n64k16 instruction for 16-bit inputs of type TYPE ("bf16" or "f16"): 32 fp32 accumulators,
// 4 A registers, the B descriptor, a predicate that is false on the first product (overwrite), trans-b.
#define SEER_WGMMA_M64N64K16(TYPE)                                                 \
  "{\n.reg .pred keep;\nsetp.ne.b32 keep, %37, 0;\n"                               \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                      \
  " "                                                                              \
  "{"                                                                              \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "         \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
  "}, {%32, %33, %34, %35}, %36, keep, 1, 1, %38;\n}\n"

#define SEER_WGMMA_M64N64K16_OPERANDS                                                           \
  : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3]), \
    "+f"(accumulator[4]), "+f"(accumulator[5]), "+f"(accumulator[6]), "+f"(accumulator[7]), \
    "+f"(accumulator[8]), "+f"(accumulator[9]), "+f"(accumulator[10]), "+f"(accumulator[11]), \
    "+f"(accumulator[12]), "+f"(accumulator[13]), "+f"(accumulator[14]), "+f"(accumulator[15]), \
    "+f"(accumulator[16]), "+f"(accumulator[17]), "+f"(accumulator[18]), "+f"(accumulator[19]), \
    "+f"(accumulator[20]), "+f"(accumulator[21]), "+f"(accumulator[22]), "+f"(accumulator[23]), \
    "+f"(accumulator[24]), "+f"(accumulator[25]), "+f"(accumulator[26]), "+f"(accumulator[27]), \
    "+f"(accumulator[28]), "+f"(accumulator[29]), "+f"(accumulator[30]), "+f"(accumulator[31]) \
  : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(accumulate), "n"(TransposeB)

// The m64n128k16 instruction for 16-bit inputs of type TYPE ("bf16" or "f16"): 64 fp32 accumulators,
// 4 A registers, the B descriptor, a predicate that is false on the first product (overwrite), trans-b.
#define SEER_WGMMA_M64N128K16(TYPE)                                                  \
  "{\n.reg .pred keep;\nsetp.ne.b32 keep, %69, 0;\n"                                 \
  "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                       \
  " "                                                                                \
  "{"                                                                                \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"   \
  "}, {%64, %65, %66, %67}, %68, keep, 1, 1, %70;\n}\n"

// The 64 fp32 accumulators of an m64n128 instruction as in-out operands %0 .. %63.
#define SEER_WGMMA_ACCUMULATORS_64                                                              \
  : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3]), \
    "+f"(accumulator[4]), "+f"(accumulator[5]), "+f"(accumulator[6]), "+f"(accumulator[7]), \
    "+f"(accumulator[8]), "+f"(accumulator[9]), "+f"(accumulator[10]), "+f"(accumulator[11]), \
    "+f"(accumulator[12]), "+f"(accumulator[13]), "+f"(accumulator[14]), "+f"(accumulator[15]), \
    "+f"(accumulator[16]), "+f"(accumulator[17]), "+f"(accumulator[18]), "+f"(accumulator[19]), \
    "+f"(accumulator[20]), "+f"(accumulator[21]), "+f"(accumulator[22]), "+f"(accumulator[23]), \
    "+f"(accumulator[24]), "+f"(accumulator[25]), "+f"(accumulator[26]), "+f"(accumulator[27]), \
    "+f"(accumulator[28]), "+f"(accumulator[29]), "+f"(accumulator[30]), "+f"(accumulator[31]), \
    "+f"(accumulator[32]), "+f"(accumulator[33]), "+f"(accumulator[34]), "+f"(accumulator[35]), \
    "+f"(accumulator[36]), "+f"(accumulator[37]), "+f"(accumulator[38]), "+f"(accumulator[39]), \
    "+f"(accumulator[40]), "+f"(accumulator[41]), "+f"(accumulator[42]), "+f"(accumulator[43]), \
    "+f"(accumulator[44]), "+f"(accumulator[45]), "+f"(accumulator[46]), "+f"(accumulator[47]), \
    "+f"(accumulator[48]), "+f"(accumulator[49]), "+f"(accumulator[50]), "+f"(accumulator[51]), \
    "+f"(accumulator[52]), "+f"(accumulator[53]), "+f"(accumulator[54]), "+f"(accumulator[55]), \
    "+f"(accumulator[56]), "+f"(accumulator[57]), "+f"(accumulator[58]), "+f"(accumulator[59]), \
    "+f"(accumulator[60]), "+f"(accumulator[61]), "+f"(accumulator[62]), "+f"(accumulator[63])

#define SEER_WGMMA_M64N128K16_OPERANDS \
  SEER_WGMMA_ACCUMULATORS_64:          \
  "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(accumulate), "n"(TransposeB)

// The m64n128k8 instruction for TF32 inputs (K-major B only: TF32 has no transposed forms).
#define SEER_WGMMA_M64N128K8_TF32                                                    \
  "{\n.reg .pred keep;\nsetp.ne.b32 keep, %69, 0;\n"                                 \
  "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "                            \
  "{"                                                                                \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"   \
  "}, {%64, %65, %66, %67}, %68, keep, 1, 1;\n}\n"

// The instructions, one function per shape; the element type only changes the type names in the text.
template <class T, bool TransposeB>
struct warpgroup_mma_kernels {
  static_assert(std::is_same_v<T, seer::bfloat16> || std::is_same_v<T, seer::half>, "16-bit inputs only");

  __device__ static void m64n64k16(float (&accumulator)[32], const std::uint32_t (&a)[4], std::uint64_t b_descriptor,
                                   std::uint32_t accumulate) {
#if SEER_WARPGROUP_MMA_AVAILABLE
    if constexpr (std::is_same_v<T, seer::bfloat16>)
      asm volatile(SEER_WGMMA_M64N64K16("bf16") SEER_WGMMA_M64N64K16_OPERANDS);
    else
      asm volatile(SEER_WGMMA_M64N64K16("f16") SEER_WGMMA_M64N64K16_OPERANDS);
#else
    (void)accumulator, (void)a, (void)b_descriptor, (void)accumulate;
    __trap();
#endif
  }

  __device__ static void m64n128k16(float (&accumulator)[64], const std::uint32_t (&a)[4], std::uint64_t b_descriptor,
                                    std::uint32_t accumulate) {
#if SEER_WARPGROUP_MMA_AVAILABLE
    if constexpr (std::is_same_v<T, seer::bfloat16>)
      asm volatile(SEER_WGMMA_M64N128K16("bf16") SEER_WGMMA_M64N128K16_OPERANDS);
    else
      asm volatile(SEER_WGMMA_M64N128K16("f16") SEER_WGMMA_M64N128K16_OPERANDS);
#else
    (void)accumulator, (void)a, (void)b_descriptor, (void)accumulate;
    __trap();
#endif
  }
};

#undef SEER_WGMMA_M64N64K16
#undef SEER_WGMMA_M64N64K16_OPERANDS
#undef SEER_WGMMA_M64N128K16
#undef SEER_WGMMA_M64N128K16_OPERANDS

}  // namespace detail

// accumulator[64 x 128] (+)= a[64 x 8] * B[8 x 128] in TF32 (the tensor cores read each operand's top 19
// bits), A from registers in the mma.sync m16n8k8 tf32 layout (a0 (g, t), a1 (g + 8, t), a2 (g, t + 4),
// a3 (g + 8, t + 4) of the warp's 16 rows), B K-major: 128 rows of 32 fp32 values (128 bytes) in the
// 128-byte swizzle, the descriptor's start stepping 32 bytes per k8 slice. Asynchronous, like
// warpgroup_multiply.
__device__ inline void warpgroup_multiply_tf32(float (&accumulator)[64], const std::uint32_t (&a)[4],
                                               std::uint64_t b_descriptor, std::uint32_t accumulate) {
#if SEER_WARPGROUP_MMA_AVAILABLE
  asm volatile(SEER_WGMMA_M64N128K8_TF32 SEER_WGMMA_ACCUMULATORS_64
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(accumulate));
#else
  (void)accumulator, (void)a, (void)b_descriptor, (void)accumulate;
  __trap();
#endif
}
#undef SEER_WGMMA_M64N128K8_TF32
#undef SEER_WGMMA_ACCUMULATORS_64

// accumulator[64 x N] (+)= a[64 x 16] * B[16 x N], A from registers (4 per thread), B described by
// `b_descriptor`; TransposeB: B is stored N-contiguous (a V tile) rather than K-contiguous (a K tile).
// accumulate == 0 overwrites the accumulator. Asynchronous: see warpgroup_commit / warpgroup_wait.
template <class T, int N, bool TransposeB>
__device__ inline void warpgroup_multiply(float (&accumulator)[N / 2], const std::uint32_t (&a)[4],
                                          std::uint64_t b_descriptor, std::uint32_t accumulate) {
  static_assert(N == 64 || N == 128, "warpgroup_multiply is instantiated for N = 64 and 128");
  if constexpr (N == 64)
    detail::warpgroup_mma_kernels<T, TransposeB>::m64n64k16(accumulator, a, b_descriptor, accumulate);
  else
    detail::warpgroup_mma_kernels<T, TransposeB>::m64n128k16(accumulator, a, b_descriptor, accumulate);
}

}  // namespace seer::gpu::hopper
