// The pass an engine makes anyway before attention, rotating q (or k) with the model's RoPE, with the
// gate's block pooling fused in: q and k are read once and written once, instead of the RoPE pass plus
// a second read by pool_blocks_kernel.
//
// rope_and_pool_kernel<T, Keep> rotates a q or k tensor IN PLACE to its positions with the model's RoPE
// (seer::RotaryEmbedding's inverse frequencies, attention factor and rotate_half pairing; queries sit at
// (k_len - q_len) + t, keys at t, as in the gate). With Keep != 0 it also writes the gate's poolings of
// the PRE-RoPE vectors of every (sequence, head, block), [batch, heads, max_blocks, |pools| * D] in the
// gate's pooling order: the layout of PooledBlockFeatures; Keep names the running statistics the pools
// need (detail::PoolingSums::kKeep*: the mean alone for Qavg queries). Keep = 0 is the same pass without
// the pooling, the engine's plain RoPE pass, so that what pooling adds can be measured.
//
// One CTA per (block, sequence). It first fills the block's cos / sin table (tokens x D/2, in shared
// memory: the angles do not depend on the head, so each is computed once for all heads), then warp w
// takes heads w, w + warps, ...: lane (slot, chunk) holds 8 components (one 16-byte load) of tokens
// slot, slot + slots, ..., and gets the partner components i +- D/2 from lane chunk +- chunks/2 of the
// same slot by a shuffle. The slots' poolings are combined by shuffles as well.
#pragma once

#include <cstdint>

#include "seer/core/platform.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gpu/gate_features_kernel.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

inline constexpr int kRopePoolThreads = 256;
inline constexpr int kRopeLoadsInFlight = 4;  // token loads per lane issued before any is used

template <class T>
struct RopePoolParams {
  SequenceBatch<T> tensor;  // rotated in place; device memory, dim stride 1, 16-byte aligned vectors
  GateSequences sequences;
  bool is_query = false;     // lengths and positions of the query (true) or key (false) side
  int pools[3] = {0, 0, 0};  // seer::BlockPooling values, in the gate type's order
  int pool_count = 0;
  float* pooled = nullptr;  // [batch, heads, max_blocks, pool_count * head_dim] (Pool only)
  std::int64_t max_blocks = 0;
  const double* inverse_frequencies = nullptr;  // [head_dim / 2], the model's RoPE
  double attention_factor = 1.0;
};

// Dynamic shared memory of one CTA: cos and sin of block_size tokens x head_dim / 2 pairs.
inline std::int64_t rope_pool_shared_bytes(std::int64_t block_size, std::int64_t head_dim) {
  return 2 * block_size * (head_dim / 2) * static_cast<std::int64_t>(sizeof(float));
}

// Grid (max_blocks, batch), kRopePoolThreads threads. head_dim is 64 or 128 (the host checks), so a
// token's chunks fill whole lanes groups of the warp and every lane has a slot.
// Four CTAs per multiprocessor keep enough loads in flight for the memory rate: the mean-only pass (68
// registers, three CTAs) measured 15% slower than the plain one (56), and as fast once capped at 64. The
// running maximum and minimum are kept as packed 16-bit pairs (exact: they are input values), so that the
// three-statistics pass fits the same 64 registers (with fp32 statistics it took 80, three CTAs per SM, and
// 228 us per 32k tensor against 198 without pooling).
template <class T, int Keep>
__global__ void __launch_bounds__(kRopePoolThreads, 4) rope_and_pool_kernel(const RopePoolParams<T> params) {
  constexpr bool kPool = Keep != 0;
  // Element e of a lane's 8 (word e / 2 holds elements e & ~1 and e | 1, the even one in the low half).
  auto element_bits = [](std::uint32_t word, int e) { return e % 2 == 0 ? word & 0xffffu : word >> 16; };
  extern __shared__ __align__(16) float rope_table[];
  constexpr int kWarps = kRopePoolThreads / vendor::warp_size;
  const std::int64_t block = blockIdx.x, b = blockIdx.y;
  const std::int64_t length = params.is_query ? params.sequences.q_length(b) : params.sequences.k_length(b);
  const std::int64_t block_size = params.sequences.block_size;
  const std::int64_t first = block * block_size;
  if (first >= length) return;  // the whole CTA
  const int count = static_cast<int>(length - first < block_size ? length - first : block_size);
  const int dim = static_cast<int>(params.tensor.head_dim);
  const int half = dim / 2;
  const std::int64_t position0 =
      (params.is_query ? params.sequences.k_length(b) - params.sequences.q_length(b) : 0) + first;

  // The block's table: angle in double (RotaryEmbedding's), reduced to [-pi, pi], then sine and cosine in
  // fp32 (~1e-7 relative: far below the bf16 / fp16 rounding of the rotated output).
  float* cosines = rope_table;
  float* sines = rope_table + block_size * half;
  const DeviceRope rope{params.inverse_frequencies, half, params.attention_factor};
  for (int i = static_cast<int>(threadIdx.x); i < count * half; i += kRopePoolThreads) {
    const int t = i / half, pair = i % half;
    const float2 coefficients = detail::rope_coefficients(rope, position0 + t, pair);
    cosines[i] = coefficients.x;
    sines[i] = coefficients.y;
  }
  __syncthreads();

  const int warp = vendor::warp_index(), lane = vendor::lane_index();
  const int chunks = dim / 8;
  const int slots = vendor::warp_size / chunks;
  const int slot = lane / chunks, chunk = lane % chunks;
  const int partner = slot * chunks + (chunk + chunks / 2) % chunks;  // holds components i +- D/2
  const bool second_half = chunk >= chunks / 2;
  const int pair0 = (chunk % (chunks / 2)) * 8;  // this lane's 8 pairs: pair0 .. pair0 + 7
  const std::int64_t step = slots * params.tensor.token_stride;

  for (std::int64_t h = warp; h < params.tensor.heads; h += kWarps) {
    // This lane's 8 components: maximum and minimum as 4 packed pairs each, the sum in fp32.
    using Element = vendor::element_traits<T>;
    using Sums = detail::PoolingSums;
    std::uint32_t maximum[4], minimum[4];
    float sum[8];
#pragma unroll
    for (int w = 0; w < 4; ++w)
      maximum[w] = Element::kNegativeInfinityPair, minimum[w] = Element::kPositiveInfinityPair;
#pragma unroll
    for (int e = 0; e < 8; ++e) sum[e] = 0.0f;
    T* pointer = params.tensor.vector(b, first + slot, h) + chunk * 8;
    // Uniform trip count across the warp (the shuffles need every lane); tokens past the block are
    // skipped. kRopeLoadsInFlight tokens' loads are issued before the first is used.
    for (int t0 = 0; t0 < count; t0 += kRopeLoadsInFlight * slots) {
      uint4 raw[kRopeLoadsInFlight];
#pragma unroll
      for (int j = 0; j < kRopeLoadsInFlight; ++j)
        raw[j] = t0 + j * slots + slot < count ? *reinterpret_cast<const uint4*>(pointer + j * step)
                                               : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int j = 0; j < kRopeLoadsInFlight; ++j) {
        if (t0 + j * slots >= count) break;  // uniform: no lane of the warp has a token left
        const int t = t0 + j * slots + slot;
        const std::uint32_t words[4] = {raw[j].x, raw[j].y, raw[j].z, raw[j].w};
        std::uint32_t other[4];
#pragma unroll
        for (int w = 0; w < 4; ++w)
          other[w] = static_cast<std::uint32_t>(vendor::broadcast(static_cast<int>(words[w]), partner));
        if (t >= count) continue;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          if constexpr ((Keep & Sums::kKeepMaximum) != 0) maximum[w] = Element::max_pair(maximum[w], words[w]);
          if constexpr ((Keep & Sums::kKeepMinimum) != 0) minimum[w] = Element::min_pair(minimum[w], words[w]);
        }
        // This lane's 8 angles of token t: two 16-byte reads each (pair0 is a multiple of 8).
        const float4* cosine_vectors = reinterpret_cast<const float4*>(cosines + t * half + pair0);
        const float4* sine_vectors = reinterpret_cast<const float4*>(sines + t * half + pair0);
        const float4 c0 = cosine_vectors[0], c1 = cosine_vectors[1], s0 = sine_vectors[0], s1 = sine_vectors[1];
        const float cosine[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
        const float sine[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
        float rotated[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const std::uint32_t bits = element_bits(words[e / 2], e);
          const std::uint32_t partner_bits = element_bits(other[e / 2], e);
          const float x = detail::DeviceElement<T>::to_float(bits);
          const float y = detail::DeviceElement<T>::to_float(partner_bits);
          if constexpr ((Keep & Sums::kKeepSum) != 0) sum[e] += x;
          // rotate_half: x_i -> x_i cos - x_{i+D/2} sin, x_{i+D/2} -> x_{i+D/2} cos + x_i sin.
          rotated[e] = second_half ? fmaf(x, cosine[e], y * sine[e]) : fmaf(x, cosine[e], -y * sine[e]);
        }
        uint4 packed;
        packed.x = vendor::element_traits<T>::pack(rotated[0], rotated[1]);
        packed.y = vendor::element_traits<T>::pack(rotated[2], rotated[3]);
        packed.z = vendor::element_traits<T>::pack(rotated[4], rotated[5]);
        packed.w = vendor::element_traits<T>::pack(rotated[6], rotated[7]);
        *reinterpret_cast<uint4*>(pointer + j * step) = packed;
      }
      pointer += kRopeLoadsInFlight * step;
    }
    if constexpr (kPool) {
      // Slots differ in the lane bits at and above `chunks`: a butterfly over them combines all slots.
      for (int offset = chunks; offset < vendor::warp_size; offset *= 2) {
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          if constexpr ((Keep & Sums::kKeepMaximum) != 0)
            maximum[w] = Element::max_pair(
                maximum[w], static_cast<std::uint32_t>(vendor::shuffle_xor(static_cast<int>(maximum[w]), offset)));
          if constexpr ((Keep & Sums::kKeepMinimum) != 0)
            minimum[w] = Element::min_pair(
                minimum[w], static_cast<std::uint32_t>(vendor::shuffle_xor(static_cast<int>(minimum[w]), offset)));
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          if constexpr ((Keep & Sums::kKeepSum) != 0) sum[e] += vendor::shuffle_xor(sum[e], offset);
        }
      }
      if (slot == 0) {
        const float inverse_count = 1.0f / static_cast<float>(count);
        float* out = params.pooled + ((b * params.tensor.heads + h) * params.max_blocks + block) *
                                         (static_cast<std::int64_t>(params.pool_count) * dim);
        for (int p = 0; p < params.pool_count; ++p) {
          const int pooling = params.pools[p];  // BlockPooling: 0 max, 1 min, 2 mean
          float value[8];
#pragma unroll
          for (int e = 0; e < 8; ++e)
            value[e] = pooling == 0   ? detail::DeviceElement<T>::to_float(element_bits(maximum[e / 2], e))
                       : pooling == 1 ? detail::DeviceElement<T>::to_float(element_bits(minimum[e / 2], e))
                                      : sum[e] * inverse_count;
          float* at = out + p * dim + chunk * 8;
          *reinterpret_cast<float4*>(at) = make_float4(value[0], value[1], value[2], value[3]);
          *reinterpret_cast<float4*>(at + 4) = make_float4(value[4], value[5], value[6], value[7]);
        }
      }
    }
  }
}

}  // namespace seer::gpu
