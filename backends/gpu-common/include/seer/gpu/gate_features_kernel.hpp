// Stage A of the GPU gate: block features of the SeerAttention prefill gate (seer::LearnedGate) on the
// device, in fp32, written once per (sequence, head, block): O(S/B * dg) per head.
//
//   pool_blocks_kernel     pools (one warp each) the PRE-RoPE q or k of one (sequence, head, block) with the gate
//                          type's poolings (max, min, mean in that order; a partial last block pools its
//                          valid tokens, the mean divides by their count). When the gate has no q
//                          projection (every released checkpoint), the pooled query IS the gate's query
//                          and the kernel applies RoPE right away, writing the final feature.
//   project_features_kernel multiplies pooled features by the gate's projection ([heads, in, dg], no
//                          bias), then applies RoPE: 32 blocks of one head per CTA, the weights streamed
//                          through shared memory once per 32 blocks (fp32 FMA: AMD, and wider than 128).
//   project_features_tensor_kernel the same product on NVIDIA tensor cores (split TF32), 64 blocks per CTA.
//   rotate_rows_kernel     RoPE alone, for the identity projection (pre-pooled queries of a gate without one).
//   rope_table_kernel      the RoPE coefficients of every (side, sequence, block, pair), once per call.
//
// RoPE is LearnedGate's: key block n at position n * B, query block m at (k_len - q_len) + m * B, the
// pairing i <-> i + dg/2, cos and sin times the attention factor. Angles and cos/sin are computed in
// double from RotaryEmbedding's own inverse frequencies, so positions near 1M tokens keep their accuracy
// (an fp32 angle would be off by up to ~0.06 rad there); the projections read them from the RoPE table.
//
// Feature layout (device, fp32, padded to the longest sequence so that no device-side offsets are
// needed): query features [batch, Hq, max_query_blocks, width], key features [batch, heads of that
// tensor, max_key_blocks, width]. Rows past a sequence's own block count are never written nor read.
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/platform.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gpu/fp32_tensor_dot.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

inline constexpr int kGateThreads = 256;        // every gate and selection kernel runs 256 threads
inline constexpr int kGateMaxHeadDim = 256;     // pooling keeps one 8-element chunk per thread and head_dim / 8 chunks
inline constexpr int kGateMaxFeatureDim = 256;  // shared tiles of the projection and scoring kernels
inline constexpr int kProjectionRows = 32;      // blocks per CTA of project_features_kernel
inline constexpr int kProjectionDepth = 16;     // input features per step of the projection

// Resident CTAs per multiprocessor asked of the compiler (it caps registers accordingly). AMD's compiler
// reads the same launch bound as a waves-per-EU requirement and fails the build when it cannot meet it,
// so only the NVIDIA build asks.
constexpr int min_blocks_hint(int nvidia) {
#if defined(__HIPCC__)
  static_cast<void>(nvidia);
  return 1;
#else
  return nvidia;
#endif
}

// Sequence lengths as the device reads them: padded batches have one length, packed batches keep their
// cumulative lengths in DEVICE memory (never read on the host, so nothing here needs a synchronisation).
struct GateSequences {
  std::int64_t batch = 0;
  std::int64_t q_max_length = 0;
  std::int64_t k_max_length = 0;
  const std::int32_t* q_cu_seqlens = nullptr;  // null: every query sequence has q_max_length tokens
  const std::int32_t* k_cu_seqlens = nullptr;  // null: every key sequence has k_max_length tokens
  std::int64_t block_size = 64;
  bool causal = true;

  SEER_HOST_DEVICE std::int64_t q_length(std::int64_t b) const {
    return q_cu_seqlens != nullptr ? static_cast<std::int64_t>(q_cu_seqlens[b + 1]) - q_cu_seqlens[b] : q_max_length;
  }
  SEER_HOST_DEVICE std::int64_t k_length(std::int64_t b) const {
    return k_cu_seqlens != nullptr ? static_cast<std::int64_t>(k_cu_seqlens[b + 1]) - k_cu_seqlens[b] : k_max_length;
  }
  SEER_HOST_DEVICE BlockGeometry geometry(std::int64_t b) const {
    return BlockGeometry{q_length(b), k_length(b), block_size, causal};
  }
  SEER_HOST_DEVICE std::int64_t max_query_blocks() const { return BlockGeometry::ceil_div(q_max_length, block_size); }
  SEER_HOST_DEVICE std::int64_t max_key_blocks() const { return BlockGeometry::ceil_div(k_max_length, block_size); }
};

// The gate's final features (after projection and RoPE), fp32 in device memory; logits(m, n) =
// scale * dot(query(b, h, m), key(b, key_head_of(h), n)).
struct GateFeatures {
  float* query = nullptr;  // [batch, heads, max_query_blocks, dim]
  float* key = nullptr;    // [batch, key_heads, max_key_blocks, dim]
  std::int64_t heads = 0;
  std::int64_t key_heads = 0;  // heads (single-linear gates: one key projection per query head) or KV heads
  std::int64_t dim = 0;
  std::int64_t max_query_blocks = 0;
  std::int64_t max_key_blocks = 0;
  float scale = 1.0f;

  SEER_HOST_DEVICE std::int64_t key_head_of(std::int64_t h) const { return h / (heads / key_heads); }
  SEER_HOST_DEVICE std::int64_t query_offset(std::int64_t b, std::int64_t h, std::int64_t m) const {
    return ((b * heads + h) * max_query_blocks + m) * dim;
  }
  SEER_HOST_DEVICE std::int64_t key_offset(std::int64_t b, std::int64_t key_head, std::int64_t n) const {
    return ((b * key_heads + key_head) * max_key_blocks + n) * dim;
  }
};

// Block RoPE with RotaryEmbedding's inverse frequencies (device copy) and attention factor.
struct DeviceRope {
  const double* inverse_frequencies = nullptr;  // [dim / 2]
  std::int64_t half_dim = 0;
  double attention_factor = 1.0;
};

// The RoPE coefficients (detail::rope_coefficients) of every (side, sequence, block, pair), computed once per
// call by rope_table_kernel for all heads: the projections' epilogues then rotate with two multiply-adds
// per pair instead of a range reduction and a sine and cosine per head and element.
struct RopeTable {
  float2* entries = nullptr;  // [2 (keys, queries)][batch][max_blocks][half]
  std::int64_t batch = 0;
  std::int64_t max_blocks = 0;  // the longer of the query and key block counts
  std::int64_t half = 0;
  SEER_HOST_DEVICE std::int64_t entry_count() const { return 2 * batch * max_blocks * half; }
  SEER_HOST_DEVICE const float2* row(bool is_query, std::int64_t b, std::int64_t block) const {
    return entries + (((is_query ? batch : 0) + b) * max_blocks + block) * half;
  }
};

namespace detail {

// Element type -> float on the device. bfloat16 is the upper half of a float; half goes through the
// vendor's 16-bit float type (both vendors convert it to float natively).
template <class T>
struct DeviceElement;

template <>
struct DeviceElement<bfloat16> {
  __device__ static float to_float(std::uint32_t bits) { return __uint_as_float(bits << 16); }
};

template <>
struct DeviceElement<half> {
  __device__ static float to_float(std::uint32_t bits) {
    using Device = typename vendor::element_traits<half>::device_type;
    const std::uint16_t narrow = static_cast<std::uint16_t>(bits);
    Device value;
    static_assert(sizeof(value) == sizeof(narrow), "half is two bytes");
    __builtin_memcpy(&value, &narrow, sizeof narrow);
    return static_cast<float>(value);
  }
};

// RoPE coefficients of pair i at `position`: (cos, sin) of the angle times the attention factor. The angle
// is reduced to [-pi, pi] in double (error ~1e-10 rad at 1M tokens), then sine and cosine are taken in fp32:
// ~1e-7 relative, far below the fp32 features' own rounding, and without the double-precision sincos.
__device__ inline float2 rope_coefficients(const DeviceRope& rope, std::int64_t position, std::int64_t i) {
  double angle = static_cast<double>(position) * rope.inverse_frequencies[i];
  constexpr double kTwoPi = 6.283185307179586;
  angle = fma(-kTwoPi, rint(angle * (1.0 / kTwoPi)), angle);
  float sine = 0.0f, cosine = 0.0f;
  sincosf(static_cast<float>(angle), &sine, &cosine);
  const float factor = static_cast<float>(rope.attention_factor);
  return make_float2(cosine * factor, sine * factor);
}

// Rotates the pair (first, second) = (x_i, x_{i + dim/2}) of a block feature by (cos, sin) coefficients.
__device__ inline void rotate_pair(float2 coefficients, float& first, float& second) {
  const float x = first, y = second;
  first = fmaf(x, coefficients.x, -y * coefficients.y);
  second = fmaf(y, coefficients.x, x * coefficients.y);
}

// Rotates the pair to `position`.
__device__ inline void rotate_pair(const DeviceRope& rope, std::int64_t position, std::int64_t i, float& first,
                                   float& second) {
  rotate_pair(rope_coefficients(rope, position, i), first, second);
}

// A lane's running max, min and sum of its 8 components over a block's tokens (the gate's poolings).
struct PoolingSums {
  float maximum[8], minimum[8], sum[8];
  __device__ PoolingSums() {
    const float infinity = __int_as_float(0x7f800000);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      maximum[e] = -infinity;
      minimum[e] = infinity;
      sum[e] = 0.0f;
    }
  }
  __device__ void add(int e, float x) {
    maximum[e] = fmaxf(maximum[e], x);
    minimum[e] = fminf(minimum[e], x);
    sum[e] += x;
  }
  // Which statistics a pass keeps (rope_and_pool_kernel's Keep: the mean alone for Qavg queries), and the
  // one a BlockPooling value (0 max, 1 min, 2 mean) needs.
  static constexpr int kKeepMaximum = 1, kKeepMinimum = 2, kKeepSum = 4, kKeepAll = 7;
  SEER_HOST_DEVICE static constexpr int keep_for(int pooling) {
    return pooling == 0 ? kKeepMaximum : pooling == 1 ? kKeepMinimum : kKeepSum;
  }
};

// Position of the first token of block `block` of sequence b: keys at block * B, queries at
// (k_len - q_len) + block * B (LearnedGate's convention).
__device__ inline std::int64_t block_position(const GateSequences& sequences, std::int64_t b, std::int64_t block,
                                              bool is_query) {
  const std::int64_t first = block * sequences.block_size;
  return is_query ? sequences.k_length(b) - sequences.q_length(b) + first : first;
}

}  // namespace detail

template <class T>
struct PoolParams {
  SequenceBatch<const T> input;  // device memory, dim stride 1, 16-byte aligned vectors
  GateSequences sequences;
  bool is_query = false;     // lengths and RoPE positions of the query (true) or key (false) side
  int pools[3] = {0, 0, 0};  // seer::BlockPooling values, in the gate type's order
  int pool_count = 0;
  float* out = nullptr;  // [batch, heads, max_blocks, pool_count * head_dim]
  std::int64_t max_blocks = 0;
  bool rotate = false;  // apply RoPE (only with one pooling: the feature is the gate's query itself)
  DeviceRope rope;
};

inline constexpr int kPoolThreads = 128;      // one warp per (sequence, head, block)
inline constexpr int kPoolLoadsInFlight = 8;  // 16-byte token loads per lane issued before any is reduced

// Blocks one CTA of pool_blocks_kernel pools on a device whose warps have `warp_size` lanes. Host code
// passes the widest warp it may meet (HIP's host pass sees 64), so that the grid covers every block.
constexpr std::int64_t pool_blocks_per_cta(int warp_size) { return kPoolThreads / warp_size; }

// Grid (ceil(max_blocks / pool_blocks_per_cta), heads, batch), kPoolThreads threads. Warp w pools block
// blockIdx.x * warps + w: lane (slot, chunk) holds one 16-byte chunk of a token vector (head_dim / 8 lanes
// per token, warp_size / (head_dim / 8) token slots) and reduces the tokens of its slot with
// kPoolLoadsInFlight loads in flight; the slots are combined through the warp's shared memory. No
// CTA-wide barrier: each warp works alone.
template <class T>
__global__ void __launch_bounds__(kPoolThreads) pool_blocks_kernel(const PoolParams<T> params) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  constexpr int kWarps = kPoolThreads / vendor::warp_size;
  __shared__ float partial_max[kPoolThreads * 8];
  __shared__ float partial_min[kPoolThreads * 8];
  __shared__ float partial_sum[kPoolThreads * 8];
  __shared__ float features[kWarps][3 * kGateMaxHeadDim];

  const int warp = vendor::warp_index(), lane = vendor::lane_index();
  const int thread = static_cast<int>(threadIdx.x);
  const std::int64_t block = static_cast<std::int64_t>(blockIdx.x) * kWarps + warp, h = blockIdx.y, b = blockIdx.z;
  const std::int64_t length = params.is_query ? params.sequences.q_length(b) : params.sequences.k_length(b);
  const std::int64_t first = block * params.sequences.block_size;
  if (block >= params.max_blocks || first >= length) return;  // the whole warp
  const std::int64_t count =
      length - first < params.sequences.block_size ? length - first : params.sequences.block_size;

  const int dim = static_cast<int>(params.input.head_dim);
  const int chunks = dim / 8;
  const int slots = vendor::warp_size / chunks;
  const int slot = lane / chunks, chunk = lane % chunks;
  detail::PoolingSums pooled;
  if (slot < slots) {
    const T* source = params.input.vector(b, first + slot, h) + chunk * 8;
    const std::int64_t step = slots * params.input.token_stride;
    for (std::int64_t t0 = slot; t0 < count; t0 += kPoolLoadsInFlight * slots, source += kPoolLoadsInFlight * step) {
      uint4 raw[kPoolLoadsInFlight];
#pragma unroll
      for (int j = 0; j < kPoolLoadsInFlight; ++j)
        raw[j] = t0 + j * slots < count ? *reinterpret_cast<const uint4*>(source + j * step) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int j = 0; j < kPoolLoadsInFlight; ++j) {
        if (t0 + j * slots >= count) break;
        const std::uint32_t words[4] = {raw[j].x, raw[j].y, raw[j].z, raw[j].w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const std::uint32_t bits = (e % 2 == 0) ? (words[e / 2] & 0xffffu) : (words[e / 2] >> 16);
          pooled.add(e, detail::DeviceElement<T>::to_float(bits));
        }
      }
    }
  }
  // Lane (slot, chunk) stores at thread * 8: the warp's slot s, component d sits at
  // (warp * warp_size + s * chunks) * 8 + d.
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    partial_max[thread * 8 + e] = pooled.maximum[e];
    partial_min[thread * 8 + e] = pooled.minimum[e];
    partial_sum[thread * 8 + e] = pooled.sum[e];
  }
  vendor::sync_warp();

  float* feature = features[warp];
  const float inverse_count = 1.0f / static_cast<float>(count);
  for (int d = lane; d < dim; d += vendor::warp_size) {
    const float infinity = __int_as_float(0x7f800000);
    float block_max = -infinity, block_min = infinity, block_sum = 0.0f;
    for (int s = 0; s < slots; ++s) {
      const int at = (warp * vendor::warp_size + s * chunks) * 8 + d;
      block_max = fmaxf(block_max, partial_max[at]);
      block_min = fminf(block_min, partial_min[at]);
      block_sum += partial_sum[at];
    }
    for (int p = 0; p < params.pool_count; ++p) {
      const int pooling = params.pools[p];  // BlockPooling: 0 max, 1 min, 2 mean
      feature[p * dim + d] = pooling == 0 ? block_max : pooling == 1 ? block_min : block_sum * inverse_count;
    }
  }
  vendor::sync_warp();

  const std::int64_t width = static_cast<std::int64_t>(params.pool_count) * dim;
  float* out = params.out + ((b * params.input.heads + h) * params.max_blocks + block) * width;
  if (params.rotate) {
    const std::int64_t position = detail::block_position(params.sequences, b, block, params.is_query);
    const int half = dim / 2;
    for (int i = lane; i < half; i += vendor::warp_size) {
      float first_value = feature[i], second_value = feature[i + half];
      detail::rotate_pair(params.rope, position, i, first_value, second_value);
      out[i] = first_value;
      out[i + half] = second_value;
    }
  } else {
    for (int i = lane; i < width; i += vendor::warp_size) out[i] = feature[i];
  }
}

struct ProjectParams {
  const float* input = nullptr;  // [batch, input_heads, max_blocks, input_width]
  std::int64_t input_heads = 0;
  std::int64_t input_width = 0;
  // The weights in one of two forms, the other null (both null: identity, input_width == dim): as given,
  // [output_heads, input_width, dim], for project_features_kernel; or transposed, [output_heads, dim,
  // input_width], for project_features_tensor_kernel.
  const float* weights = nullptr;
  const float* weights_transposed = nullptr;
  bool weights_tf32_exact = false;  // every weight is a TF32 number (DeviceLearnedGate checks on upload)
  float* output = nullptr;          // [batch, output_heads, max_blocks, dim]
  std::int64_t output_heads = 0;
  std::int64_t dim = 0;
  std::int64_t max_blocks = 0;
  GateSequences sequences;
  bool is_query = false;
  RopeTable rope_table;  // filled by rope_table_kernel earlier in the stream
};

// Grid (ceil(max_blocks * half / Threads), batch, 2 sides: keys, queries): RopeTable entries.
template <int Threads>
__global__ void __launch_bounds__(Threads)
    rope_table_kernel(const GateSequences sequences, const DeviceRope rope, const RopeTable table) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  const std::int64_t entry = static_cast<std::int64_t>(blockIdx.x) * Threads + threadIdx.x;
  if (entry >= table.max_blocks * table.half) return;
  const std::int64_t b = blockIdx.y, block = entry / table.half, i = entry % table.half;
  const bool is_query = blockIdx.z == 1;
  table.entries[((is_query ? table.batch : 0) + b) * table.max_blocks * table.half + entry] =
      detail::rope_coefficients(rope, detail::block_position(sequences, b, block, is_query), i);
}

namespace detail {

// The blocks a projection CTA covers: grid x = tiles of `tile_rows` blocks, y = output head o, z = sequence
// b. Output head o reads input head o / (output_heads / input_heads) (the single-linear layout projects a
// KV head's features once per query head of its group).
struct ProjectionTile {
  std::int64_t first_block = 0, o = 0, b = 0;
  int rows = 0;                    // blocks of this tile inside the sequence (<= 0: none)
  const float* input = nullptr;    // the first block's input features
  const float* weights = nullptr;  // head o's weights (as given or transposed: the same size)
};
__device__ inline ProjectionTile projection_tile(const ProjectParams& params, int tile_rows) {
  ProjectionTile tile;
  tile.first_block = static_cast<std::int64_t>(blockIdx.x) * tile_rows;
  tile.o = blockIdx.y;
  tile.b = blockIdx.z;
  const std::int64_t length = params.is_query ? params.sequences.q_length(tile.b) : params.sequences.k_length(tile.b);
  const std::int64_t blocks = BlockGeometry::ceil_div(length, params.sequences.block_size);
  const std::int64_t rest = blocks - tile.first_block;
  tile.rows = static_cast<int>(rest < tile_rows ? (rest > 0 ? rest : 0) : tile_rows);
  const std::int64_t input_head = tile.o / (params.output_heads / params.input_heads);
  tile.input = params.input +
               ((tile.b * params.input_heads + input_head) * params.max_blocks + tile.first_block) * params.input_width;
  const float* weights = params.weights != nullptr ? params.weights : params.weights_transposed;
  tile.weights = weights + tile.o * params.input_width * params.dim;
  return tile;
}

// Row stride (floats) of the projected rows the tensor-core projections leave in shared memory: dim + 8, so
// that their float2 accumulator stores (8 rows x 4 lanes per instruction) fall on distinct banks.
SEER_HOST_DEVICE constexpr int projected_row_stride(int dim) { return dim + 8; }

// The projection kernels' epilogue: RoPE on the projected rows [rows][stride] (shared memory) of output head o,
// written to the output. Thread (row offset, pair) rotates pair `pair` of rows offset, offset + rows_per_pass,
// ... (one division per thread, not per element), 8 rows at a time with all their loads issued first: the
// coefficient loads come from L2, and one at a time they left the loop waiting on each.
__device__ inline void write_rotated_rows(const ProjectParams& params, const float* projected, int stride, int rows,
                                          std::int64_t first_block, std::int64_t b, std::int64_t o, int threads) {
  constexpr int kGroup = 8;
  const int dim = static_cast<int>(params.dim);
  const int half = dim / 2;
  const int rows_per_pass = threads / half;
  const int thread = static_cast<int>(threadIdx.x);
  const int pair = thread % half, row_offset = thread / half;
  float* output = params.output + ((b * params.output_heads + o) * params.max_blocks + first_block) * params.dim;
  if (row_offset >= rows_per_pass) return;
  for (int first_row = row_offset; first_row < rows; first_row += kGroup * rows_per_pass) {
    float2 coefficients[kGroup];
    float first_value[kGroup], second_value[kGroup];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int row = first_row + u * rows_per_pass;
      if (row < rows) {
        coefficients[u] = params.rope_table.row(params.is_query, b, first_block + row)[pair];
        first_value[u] = projected[row * stride + pair];
        second_value[u] = projected[row * stride + pair + half];
      }
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int row = first_row + u * rows_per_pass;
      if (row < rows) {
        rotate_pair(coefficients[u], first_value[u], second_value[u]);
        output[row * params.dim + pair] = first_value[u];
        output[row * params.dim + pair + half] = second_value[u];
      }
    }
  }
}

}  // namespace detail

// Grid (ceil(max_blocks / 32), output_heads, batch), MaxFeatureDim threads (projection_threads). Output
// head o reads input head o / (output_heads / input_heads) (the single-linear layout projects a KV head's
// features once per query head of its group). Each warp owns 8 rows x 128 columns, each thread 8 rows x
// 4 columns: per input feature, two broadcast 16-byte reads of the inputs and one 16-byte read of the
// weights feed 32 multiply-adds. A template (on the largest feature dim its tiles hold) so that several
// translation units may include it.
//
// Global loads are 16 bytes wide and whole 32-byte sectors: a warp loads 16 rows x 8 consecutive input
// features (two 16-byte vectors per row). Their transposed stores into input_tile (row stride
// kProjectionRows + 4, which keeps the 16-byte row reads aligned) then land in 32 distinct banks. Weight
// rows sit in MaxFeatureDim / 4 fixed vector slots per input feature, so that no index needs a division by
// the run-time dim.
template <int MaxFeatureDim>
__global__ void __launch_bounds__(MaxFeatureDim, min_blocks_hint(MaxFeatureDim == 128 ? 4 : 2))
    project_features_kernel(const ProjectParams params) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  static_assert(MaxFeatureDim % 128 == 0 && MaxFeatureDim <= kGateMaxFeatureDim, "tiles cover 128 columns per set");
  constexpr int kThreads = MaxFeatureDim;
  constexpr int kColumnSets = MaxFeatureDim / 128;
  constexpr int kRowGroups = kThreads / 32 / kColumnSets;
  static_assert(kRowGroups * 8 == kProjectionRows, "4 row groups of 8 rows");
  constexpr int kInputStride = kProjectionRows + 4;
  constexpr int kWeightSlots = MaxFeatureDim / 4;  // 16-byte weight vectors per input feature
  __shared__ __align__(16) float input_tile[kProjectionDepth * kInputStride];  // [input feature][row]
  // [input feature][column] during the multiply, then the projected rows [kProjectionRows][dim] for RoPE:
  // sized for the larger of the two.
  constexpr int kWeightTileRows = kProjectionDepth > kProjectionRows ? kProjectionDepth : kProjectionRows;
  __shared__ __align__(16) float weight_tile[kWeightTileRows * MaxFeatureDim];

  const detail::ProjectionTile tile = detail::projection_tile(params, kProjectionRows);
  if (tile.rows <= 0) return;
  const std::int64_t first_block = tile.first_block, o = tile.o, b = tile.b;
  const int rows = tile.rows;
  const float* const input = tile.input;
  const float* const weights = tile.weights;

  const int dim = static_cast<int>(params.dim);
  const int thread = static_cast<int>(threadIdx.x);
  const int warp = thread / 32, lane = thread % 32;
  const int column = (warp % kColumnSets) * 128 + lane * 4;  // this thread's 4 columns
  const int row_group = warp / kColumnSets;                  // rows 8 * row_group .. + 7

  float* projected = weight_tile;  // [kProjectionRows][dim] after the multiply (kWeightTileRows >= kProjectionRows)
  {
    float accumulator[8][4];
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) accumulator[r][c] = 0.0f;

    // The next step's input and weight tiles are loaded into registers while this step multiplies.
    // Input vector i of a step: lane l of group g = i / 32 loads row l % 16 + 16 (g % 2), features
    // 4 (l / 16 + 2 (g / 2)) .. + 3; its four transposed stores hit banks (l + constant) mod 32.
    constexpr int kInputVectors = kProjectionDepth * kProjectionRows / 4;
    constexpr int kStagedInputs = (kInputVectors + kThreads - 1) / kThreads;
    constexpr int kStagedWeights = kProjectionDepth * kWeightSlots / kThreads;
    const int vectors_per_row = dim / 4;
    float4 staged_inputs[kStagedInputs];
    float4 staged_weights[kStagedWeights];
    const auto input_row = [](int i) { return (i % 32) % 16 + 16 * ((i / 32) % 2); };
    const auto input_feature = [](int i) { return 4 * ((i % 32) / 16 + 2 * (i / 64)); };
    auto load_step = [&](std::int64_t depth) {
#pragma unroll
      for (int j = 0; j < kStagedInputs; ++j) {
        const int i = thread + j * kThreads;
        const int row = input_row(i), k = input_feature(i);
        // input_width is a multiple of 8, so a vector is wholly inside or wholly past it.
        const bool valid = i < kInputVectors && row < rows && depth + k < params.input_width;
        staged_inputs[j] = valid ? *reinterpret_cast<const float4*>(input + row * params.input_width + depth + k)
                                 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int j = 0; j < kStagedWeights; ++j) {
        const int i = thread + j * kThreads;
        const int k = i / kWeightSlots, v = i % kWeightSlots;
        float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (v < vectors_per_row && depth + k < params.input_width)
          value = *reinterpret_cast<const float4*>(weights + (depth + k) * params.dim + v * 4);
        staged_weights[j] = value;
      }
    };
    load_step(0);
    for (std::int64_t depth = 0; depth < params.input_width; depth += kProjectionDepth) {
      __syncthreads();  // the previous step's tiles are consumed
#pragma unroll
      for (int j = 0; j < kStagedInputs; ++j) {
        const int i = thread + j * kThreads;
        if (i >= kInputVectors) break;
        float* at = &input_tile[input_feature(i) * kInputStride + input_row(i)];
        at[0] = staged_inputs[j].x;
        at[kInputStride] = staged_inputs[j].y;
        at[2 * kInputStride] = staged_inputs[j].z;
        at[3 * kInputStride] = staged_inputs[j].w;
      }
#pragma unroll
      for (int j = 0; j < kStagedWeights; ++j) {
        const int i = thread + j * kThreads;
        *reinterpret_cast<float4*>(&weight_tile[(i / kWeightSlots) * MaxFeatureDim + (i % kWeightSlots) * 4]) =
            staged_weights[j];
      }
      __syncthreads();
      if (depth + kProjectionDepth < params.input_width) load_step(depth + kProjectionDepth);
#pragma unroll 8
      for (int k = 0; k < kProjectionDepth; ++k) {
        const float4 low = *reinterpret_cast<const float4*>(&input_tile[k * kInputStride + row_group * 8]);
        const float4 high = *reinterpret_cast<const float4*>(&input_tile[k * kInputStride + row_group * 8 + 4]);
        const float4 w = *reinterpret_cast<const float4*>(&weight_tile[k * MaxFeatureDim + column]);
        const float rows_value[8] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
        const float columns_value[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int r = 0; r < 8; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) accumulator[r][c] = fmaf(rows_value[r], columns_value[c], accumulator[r][c]);
      }
    }
    // The projected rows go through shared memory (the weight tile's space) so RoPE can pair x_i with
    // x_{i + dim/2}.
    __syncthreads();
    if (column < dim) {
#pragma unroll
      for (int r = 0; r < 8; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) projected[(row_group * 8 + r) * dim + column + c] = accumulator[r][c];
    }
    __syncthreads();
  }

  detail::write_rotated_rows(params, projected, dim, rows, first_block, b, o, kThreads);
}

// RoPE alone (the identity projection: a gate without q projection fed pre-pooled features), at memory
// speed: thread i of a CTA rotates pairs 4 v .. 4 v + 3 (v = i % (dim / 8)) of row i / (dim / 8) with
// 16-byte loads and stores of the row's two halves and of the RoPE table. Grid (ceil(max_blocks /
// rotated_rows_per_cta(dim)), output_heads, batch).
SEER_HOST_DEVICE constexpr int rotated_rows_per_cta(int threads, std::int64_t dim) {
  return threads / static_cast<int>(dim / 8);
}
template <int Threads>
__global__ void __launch_bounds__(Threads) rotate_rows_kernel(const ProjectParams params) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  const int half = static_cast<int>(params.dim / 2), vectors = half / 4;
  const int thread = static_cast<int>(threadIdx.x);
  const int local_row = thread / vectors, v = thread % vectors;
  if (local_row >= rotated_rows_per_cta(Threads, params.dim)) return;
  const std::int64_t block =
      static_cast<std::int64_t>(blockIdx.x) * rotated_rows_per_cta(Threads, params.dim) + local_row;
  const std::int64_t o = blockIdx.y, b = blockIdx.z;
  const std::int64_t length = params.is_query ? params.sequences.q_length(b) : params.sequences.k_length(b);
  if (block >= BlockGeometry::ceil_div(length, params.sequences.block_size)) return;
  const std::int64_t input_head = o / (params.output_heads / params.input_heads);
  const float* input =
      params.input + ((b * params.input_heads + input_head) * params.max_blocks + block) * params.input_width + 4 * v;
  float* output = params.output + ((b * params.output_heads + o) * params.max_blocks + block) * params.dim + 4 * v;
  float4 first = *reinterpret_cast<const float4*>(input);
  float4 second = *reinterpret_cast<const float4*>(input + half);
  const float2* coefficients = params.rope_table.row(params.is_query, b, block) + 4 * v;
  const float4 pairs01 = *reinterpret_cast<const float4*>(coefficients);
  const float4 pairs23 = *reinterpret_cast<const float4*>(coefficients + 2);
  detail::rotate_pair(make_float2(pairs01.x, pairs01.y), first.x, second.x);
  detail::rotate_pair(make_float2(pairs01.z, pairs01.w), first.y, second.y);
  detail::rotate_pair(make_float2(pairs23.x, pairs23.y), first.z, second.z);
  detail::rotate_pair(make_float2(pairs23.z, pairs23.w), first.w, second.w);
  *reinterpret_cast<float4*>(output) = first;
  *reinterpret_cast<float4*>(output + half) = second;
}

#if !defined(__HIPCC__)
inline constexpr int kTensorProjectionRows = 64;      // blocks per CTA of project_features_tensor_kernel
inline constexpr int kTensorProjectionColumns = 128;  // the largest output width it takes

// NVIDIA, feature widths up to 128: the same product as project_features_kernel on tensor cores in split
// TF32 (near-fp32 accuracy, seer/gpu/fp32_tensor_dot.hpp), from the transposed fp32 weights (one row per
// output column, so that both operands are row-major over the input features). Grid (ceil(max_blocks /
// 64), output_heads, batch), 256 threads: warp w computes the 32 x 32 tile of rows 32 (w % 2) .. + 31 and
// columns 32 (w / 2) .. + 31 (2 x 4 tiles of 16 x 8), splitting both operands as it reads them. Square warp
// tiles read the fewest operand bytes per product (6 KiB of shared memory per 32 input features; the
// earlier 16 x 64 tiles of pre-split weights read 18), and the fp32 weights take half the stage space, so
// a stage holds 32 input features: half as many barriers. Chunks arrive by asynchronous copies, three
// stages deep in dynamic shared memory (tensor_projection_shared_bytes); the projected rows then go
// through the stage buffers for RoPE.
// (A template, like the other kernels of these headers, so that several translation units may include it.)
inline constexpr int kTensorProjectionDepth = 32;
inline constexpr int kTensorProjectionStages = 3;
SEER_HOST_DEVICE constexpr int tensor_projection_stage_floats() {
  return (kTensorProjectionRows + kTensorProjectionColumns) * padded_row_stride(kTensorProjectionDepth);
}
constexpr int tensor_projection_shared_bytes() {
  return kTensorProjectionStages * tensor_projection_stage_floats() * static_cast<int>(sizeof(float));
}

// ExactWeights: every weight is a TF32 number (bf16 checkpoints, as the released gates are stored), so the
// product of the inputs' big parts with the weights' small parts (zero) is skipped: two products, not three.
template <int Columns, bool ExactWeights>
__global__ void __launch_bounds__(256, 2) project_features_tensor_kernel(const ProjectParams params) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  static_assert(Columns == kTensorProjectionColumns, "warps cover 4 x 32 columns");
  constexpr int kThreads = 256;
  constexpr int kRows = kTensorProjectionRows;
  constexpr int kDepth = kTensorProjectionDepth;
  constexpr int kStride = padded_row_stride(kDepth);  // 48 floats: = 16 mod 32, conflict-free fragment loads
  constexpr int kStages = kTensorProjectionStages;
  constexpr int kStageFloats = tensor_projection_stage_floats();
  static_assert(kStages * kStageFloats >= kRows * detail::projected_row_stride(Columns),
                "the projected rows fit the stages");
  extern __shared__ __align__(16) float stages[];

  const detail::ProjectionTile tile = detail::projection_tile(params, kRows);
  if (tile.rows <= 0) return;
  const std::int64_t first_block = tile.first_block, o = tile.o, b = tile.b;
  const int rows = tile.rows;
  const float* const input = tile.input;
  const float* const weights = tile.weights;
  const int dim = static_cast<int>(params.dim);
  const int width = static_cast<int>(params.input_width);
  const int thread = static_cast<int>(threadIdx.x);
  const int warp = thread / 32, lane = thread % 32;

  // Stage s: input rows [kRows][kStride], then the weight rows [Columns][kStride]. Thread i copies 16-byte
  // vector i % 8 (features 4 (i % 8) .. + 3 of the chunk) of tile rows i / 8 + 32 j: its sources and their
  // validity are fixed, only the chunk's offset moves. Rows and features past the ends are zero-filled (the
  // input width is a multiple of 8, so a vector is wholly inside or wholly past it).
  constexpr int kVectors = kDepth / 4;
  constexpr int kRowsPerPass = kThreads / kVectors;
  constexpr int kCopies = (kRows + Columns) / kRowsPerPass;
  static_assert(kCopies * kRowsPerPass == kRows + Columns && kRows % kRowsPerPass == 0, "whole passes of rows");
  const int k = 4 * (thread % kVectors), first_row = thread / kVectors;
  const float* sources[kCopies];
  bool source_valid[kCopies];
#pragma unroll
  for (int j = 0; j < kCopies; ++j) {
    const int row = first_row + j * kRowsPerPass;
    if (row < kRows) {
      sources[j] = input + row * params.input_width + k;
      source_valid[j] = row < rows;
    } else {
      sources[j] = weights + (row - kRows) * params.input_width + k;
      source_valid[j] = row - kRows < dim;
    }
  }
  auto load_chunk = [&](int chunk) {
    float* tile = stages + (chunk % kStages) * kStageFloats + first_row * kStride + k;
    const int depth = chunk * kDepth;
    const bool inside = depth + k < width;
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const bool valid = inside && source_valid[j];
      vendor::copy_async_16_bytes(tile + j * kRowsPerPass * kStride, valid ? sources[j] + depth : input, valid);
    }
    vendor::commit_async_copies();
  };

  // Warp tile: rows 32 * row_half + 16 i + (g, g + 8), columns 32 * column_quarter + 8 j + g (B rows).
  const int row_half = warp % 2, column_quarter = warp / 2;
  const int g = lane / 4, t = lane % 4;
  DotAccumulators<8, 1> dots;  // tile 4 i + j: 8 independent accumulator chains
  const int chunks = (width + kDepth - 1) / kDepth;
  load_chunk(0);
  if (chunks > 1) load_chunk(1);
  for (int chunk = 0; chunk < chunks; ++chunk) {
    if (chunk + 1 < chunks) {
      vendor::wait_async_copies<1>();
    } else {
      vendor::wait_async_copies<0>();
    }
    // Chunk `chunk` has landed for every thread, and every thread is done with chunk - 1, whose stage the
    // next copy reuses.
    __syncthreads();
    if (chunk + 2 < chunks) load_chunk(chunk + 2);
    const float* tile = stages + (chunk % kStages) * kStageFloats;
    const Fp32Rows left{tile + (32 * row_half + g) * kStride + 4 * t, kStride};
    const Fp32Rows right{tile + (kRows + 32 * column_quarter + g) * kStride + 4 * t, kStride};
#pragma unroll
    for (int d = 0; d < kDepth; d += 16) {
      LeftRows<Fp32Rows>::Raw a_raw[2];  // [row tile]: rows g, g + 8
      float4 b_raw[4];                   // [column tile]
#pragma unroll
      for (int i = 0; i < 2; ++i) a_raw[i] = {left.fetch(16 * i, d), left.fetch(16 * i + 8, d)};
#pragma unroll
      for (int j = 0; j < 4; ++j) b_raw[j] = right.fetch(8 * j, d);
      SplitTf32 first[2][4], second[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) LeftRows<Fp32Rows>::fragments(a_raw[i], first[i], second[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        SplitTf32 column[4];
        Fp32Rows::split(b_raw[j], column);
        const SplitTf32 b_first[2] = {column[0], column[1]};
        const SplitTf32 b_second[2] = {column[2], column[3]};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          multiply_split<ExactWeights>(dots, 4 * i + j, 0, first[i], b_first);
          multiply_split<ExactWeights>(dots, 4 * i + j, 1, second[i], b_second);
        }
      }
    }
  }

  __syncthreads();  // every chunk consumed: the stage buffers now hold the projected rows
  float* projected = stages;
  const int stride = detail::projected_row_stride(dim);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int column = 32 * column_quarter + 8 * j + 2 * t;
      if (column < dim) {
        float* upper = projected + (32 * row_half + 16 * i + g) * stride + column;
        *reinterpret_cast<float2*>(upper) = make_float2(dots.total(4 * i + j, 0), dots.total(4 * i + j, 1));
        *reinterpret_cast<float2*>(upper + 8 * stride) =
            make_float2(dots.total(4 * i + j, 2), dots.total(4 * i + j, 3));
      }
    }
  __syncthreads();
  detail::write_rotated_rows(params, projected, stride, rows, first_block, b, o, kThreads);
}
#endif

}  // namespace seer::gpu
