// fp32 dot products on NVIDIA tensor cores, to near-fp32 accuracy: each fp32 operand x is split into a
// TF32 "big" part (x with its low 13 mantissa bits cleared) and the exact remainder small = x - big, and
// a * b is accumulated as big_a * small_b + small_a * big_b + big_a * big_b (mma.sync m16n8k8 tf32, fp32
// accumulators). The tensor cores read a TF32 operand's top 19 bits and ignore the rest, so `small` is
// passed as it is (truncated there to 11 significant bits: ~2^-21 of x) and the split costs two
// instructions (a mask and a subtraction; the rounding conversion cvt.rna.tf32 is a 5-instruction
// sequence on sm_90, which made the split dominate the logit loop). The dropped small_a * small_b and
// small's truncation are each ~2^-20 of the product, a few fp32 roundings, so the gate's logits and
// projections keep the accuracy the selection tests demand (margins of 1e-4 of the largest logit, which
// one TF32 product, ~2^-11, would not meet), at ~3x the FMA pipe's rate.
//
// Operands are rows (in shared memory, or in global memory for keys streamed from L2): a warp multiplies
// 16 "left" rows by 8 "right" rows
// (dot(left[i], right[j]) for every pair), both row-major over the reduction dimension. The reduction
// dimension is consumed in chunks of 16: lane (g, t) = (lane / 4, lane % 4) reads 16-byte vectors
// [4t, 4t + 4) of left rows g and g + 8 and of right row g, and the two k8 steps of the chunk take
// columns (4t, 4t + 1) and then (4t + 2, 4t + 3) as the fragment's columns (t, t + 4). That is a
// permutation of the reduction index applied to both operands alike, so the dots are unchanged, and a
// lane loads whole 16-byte vectors. Row strides must be = 16 (mod 32) floats: the 8 lanes of each
// 16-byte load phase then cover 32 distinct banks (see padded_row_stride).
//
// NVIDIA only (sm_80 and newer); AMD builds keep the FMA loops of the kernels that use this.
#pragma once

#if !defined(__HIPCC__)

#include <cstdint>

#include "seer/core/platform.hpp"

namespace seer::gpu {

// Row stride (floats) for rows of `depth` floats read as fragments (16-byte loads by lanes (g, t)): depth
// rounded up to 16, then to 16 mod 32.
SEER_HOST_DEVICE constexpr int padded_row_stride(int depth) {
  const int rounded = (depth + 15) / 16 * 16;
  return rounded % 32 == 0 ? rounded + 16 : rounded;
}

struct SplitTf32 {
  std::uint32_t big;
  std::uint32_t small;
};

__device__ inline SplitTf32 split_tf32(float x) {
  const std::uint32_t big = __float_as_uint(x) & 0xffffe000u;
  return SplitTf32{big, __float_as_uint(x - __uint_as_float(big))};  // x - big is exact in fp32
}

// accumulator[16x8] += a[16x8] * b[8x8] in TF32. Fragment layouts (PTX ISA, mma.m16n8k8 .tf32): a0 (g, t),
// a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); b0 (k t, n g), b1 (k t + 4, n g); accumulators (g, 2t),
// (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
__device__ inline void multiply_tf32(float (&accumulator)[4], std::uint32_t a0, std::uint32_t a1, std::uint32_t a2,
                                     std::uint32_t a3, std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Accumulators of a warp's dot tiles, spread over `Chains` independent chains (1, 2, 3 or 6): the three
// products of a k8 step (big x small, small x big, big x big) and the two steps of a chunk go round-robin
// over the chains, so that consecutive tensor-core instructions do not wait for each other's results (one
// chain of 6 dependent HMMAs per chunk left the warps stalled on their latency). total() adds them up.
template <int RightTiles, int Chains>
struct DotAccumulators {
  static_assert(6 % Chains == 0, "the 6 products of a chunk spread evenly over the chains");
  float chain[Chains][RightTiles][4];
  __device__ DotAccumulators() {
#pragma unroll
    for (int c = 0; c < Chains; ++c)
#pragma unroll
      for (int j = 0; j < RightTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) chain[c][j][e] = 0.0f;
  }
  // Element e of tile j (the accumulator layout of multiply_tf32). The small products are added first.
  __device__ float total(int j, int e) const {
    float sum = 0.0f;
#pragma unroll
    for (int c = Chains - 1; c >= 0; --c) sum += chain[c][j][e];
    return sum;
  }
};

// One k8 step (step 0 or 1 of a chunk) of tile j in split precision. RightExact: the right operand's values
// are TF32 numbers (small parts zero, e.g. bf16 weights), so big_a * small_b is exactly zero and skipped.
template <bool RightExact = false, int RightTiles, int Chains>
__device__ inline void multiply_split(DotAccumulators<RightTiles, Chains>& accumulators, int j, int step,
                                      const SplitTf32 (&a)[4], const SplitTf32 (&b)[2]) {
  if constexpr (!RightExact)
    multiply_tf32(accumulators.chain[(3 * step) % Chains][j], a[0].big, a[1].big, a[2].big, a[3].big, b[0].small,
                  b[1].small);
  multiply_tf32(accumulators.chain[(3 * step + 1) % Chains][j], a[0].small, a[1].small, a[2].small, a[3].small,
                b[0].big, b[1].big);
  multiply_tf32(accumulators.chain[(3 * step + 2) % Chains][j], a[0].big, a[1].big, a[2].big, a[3].big, b[0].big,
                b[1].big);
}

// Operands are read in two phases, so that the next chunk's loads can be in flight while the current chunk
// multiplies: fetch() returns the raw registers of a chunk, and a static split() turns them into TF32 parts.
// Fp32Rows: rows of fp32 values, split after the load; fetch(row, offset) gives the four values at
// [offset, offset + 4) of a row.
struct Fp32Rows {
  const float* rows;
  int stride;
  using Raw = float4;
  __device__ Raw fetch(int row, int offset) const {
    return *reinterpret_cast<const float4*>(rows + row * stride + offset);
  }
  __device__ static void split(const Raw& x, SplitTf32 (&v)[4]) {
    v[0] = split_tf32(x.x), v[1] = split_tf32(x.y), v[2] = split_tf32(x.z), v[3] = split_tf32(x.w);
  }
};

// The left operand: fetch(d) loads lane (g, t)'s share of the chunk at reduction offset d, fragments() gives
// the A fragments of its two k8 steps. LeftRows reads rows g and g + 8 and interleaves them; LeftFragments
// reads planes stored in fragment order (store_left_fragment_slot), one 16-byte load per step and part, for a
// left operand that every warp of a CTA reads (split once, and no register moves to assemble fragments).
template <class Rows>
struct LeftRows {
  Rows rows;
  struct Raw {
    typename Rows::Raw upper, lower;
  };
  __device__ Raw fetch(int d) const {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int g = lane / 4, t = lane % 4;
    return Raw{rows.fetch(g, 4 * t + d), rows.fetch(g + 8, 4 * t + d)};
  }
  __device__ static void fragments(const Raw& raw, SplitTf32 (&first)[4], SplitTf32 (&second)[4]) {
    SplitTf32 upper[4], lower[4];
    Rows::split(raw.upper, upper);
    Rows::split(raw.lower, lower);
    first[0] = upper[0], first[1] = lower[0], first[2] = upper[1], first[3] = lower[1];
    second[0] = upper[2], second[1] = lower[2], second[2] = upper[3], second[3] = lower[3];
  }
};
struct LeftFragments {
  const float* big;    // [depth / 16][2 steps][32 lanes][4], see store_left_fragment
  const float* small;  // the same layout
  struct Raw {
    uint4 big[2], small[2];  // per step
  };
  __device__ Raw fetch(int d) const {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int at = ((d / 16) * 2 * 32 + lane) * 4;
    return Raw{{*reinterpret_cast<const uint4*>(big + at), *reinterpret_cast<const uint4*>(big + at + 128)},
               {*reinterpret_cast<const uint4*>(small + at), *reinterpret_cast<const uint4*>(small + at + 128)}};
  }
  __device__ static void fragments(const Raw& raw, SplitTf32 (&first)[4], SplitTf32 (&second)[4]) {
    const uint4 &b0 = raw.big[0], &s0 = raw.small[0], &b1 = raw.big[1], &s1 = raw.small[1];
    first[0] = {b0.x, s0.x}, first[1] = {b0.y, s0.y}, first[2] = {b0.z, s0.z}, first[3] = {b0.w, s0.w};
    second[0] = {b1.x, s1.x}, second[1] = {b1.y, s1.y}, second[2] = {b1.z, s1.z}, second[3] = {b1.w, s1.w};
  }
};

// The planes LeftFragments reads, written one fragment slot at a time. Slot s = 2 c + step covers chunk c's
// k8 step `step`; its lane (g, t) holds left[g][col], left[g + 8][col], left[g][col + 1], left[g + 8][col + 1]
// with col = left_fragment_column(s, lane) = 16 c + 4 t + 2 step (the permutation LeftRows applies), split,
// as one 16-byte vector per plane: a warp stores 512 contiguous bytes per plane.
__device__ inline int left_fragment_column(int slot, int lane) {
  return 16 * (slot / 2) + 4 * (lane % 4) + 2 * (slot % 2);
}
__device__ inline void store_left_fragment_slot(float* big, float* small, int slot, int lane,
                                                const float (&values)[4]) {
  SplitTf32 parts[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) parts[e] = split_tf32(values[e]);
  reinterpret_cast<uint4*>(big)[slot * 32 + lane] = make_uint4(parts[0].big, parts[1].big, parts[2].big, parts[3].big);
  reinterpret_cast<uint4*>(small)[slot * 32 + lane] =
      make_uint4(parts[0].small, parts[1].small, parts[2].small, parts[3].small);
}

}  // namespace seer::gpu

#endif  // !defined(__HIPCC__)
