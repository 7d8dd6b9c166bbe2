// The SeerAttention-R decode gate on the GPU, written once against the vendor layer (seer::cuda and
// seer::hip re-export it: seer/cuda/decode_gate.hpp, seer/hip/decode_gate.hpp). CPU references:
// seer::DecodeGate (gate/decode_gate.hpp), seer::KCompressionCache (decode/k_compression_cache.hpp) and
// seer::select_decode_blocks_into (decode/decode_selection.hpp); the semantics are theirs.
//
//   DeviceDecodeGate gate(decode_gate);                        // upload once (allocates, synchronous)
//   DeviceKCompressionCache compressed(batch, max_blocks, gate);  // rows + per-sequence counters, zeroed
//   // per step, after the step's keys are in the KV cache (device lengths include them):
//   compress_key_blocks(gate, kv_cache, compressed.view(), stream);
//   select_decode_blocks(gate, compressed.view(), q_before_rope, lengths, max_length, policy, output,
//                        workspace, workspace_bytes, stream);
//   sparse_decode(q_rope, kv_cache, &output.view(), ...);
//
// Which blocks to compress without a host synchronisation: the counter of compressed blocks of each
// sequence lives on the device (DeviceCompressedKeys::completed_blocks, like KCompressionCache's
// completed_blocks(b)). compress_key_blocks enqueues two kernels: the first compresses blocks
// [completed[b], lengths[b] / B) of every (sequence, KV head), the second advances completed[b] to
// lengths[b] / B once every head is done (stream order separates them, so no CTA races another on the
// counter). A decode loop therefore calls it after every step with the same arguments, and a captured
// graph replays it for every step. reset_compressed_blocks() zeroes the counter of one slot (a new
// sequence) or of all. Counters never move backwards: lengths that shrink without a reset are a
// contract violation the device cannot report (the CPU cache throws), and nothing is recompressed.
//
// Kernels (256 threads each):
//   compress_key_blocks_kernel  grid (slices, Hkv, batch): each CTA strides over the new blocks of one
//       (sequence, KV head): [max | min | mean] pooling of the block's pre-RoPE keys (contiguous or paged
//       cache), the linear map Wk[h] [3D, dg], optional RMSNorm, RoPE at j * B; fp32 row out.
//   decode_select_kernel        grid (Hkv, batch): one CTA per row. Builds the step's gate queries
//       (1..8 tokens: head pooling, projection, RMSNorm, RoPE at the token's position), scores the
//       complete blocks j < position / B of each token twice (pass 1: each token's softmax maximum and
//       normaliser; pass 2: probabilities, max over tokens, into the row's workspace slice), selects
//       (TokenBudget: an exact radix select of the k-th largest score, ties to the lower index through
//       an ascending rank of the equal scores; DecodeThreshold: score > tau), adds block 0 and the
//       blocks of the step's tokens, and writes the row ascending with block-wide prefix sums. Any row
//       length works (a 128k-token row is 2048 blocks; 1M tokens 16384): the only per-block state is
//       one fp32 score per block in the caller's workspace, [batch, Hkv, max_blocks].
//
// Numerics: pooling, projections, RMSNorm and logits in fp32, RoPE angles and sin/cos in double
// (detail::rotate_pair, shared with the prefill gate), softmax with expf. The CPU reference is double,
// so selections can differ only where fp32 rounding decides a near-tie of the budget's k-th score or a
// probability within rounding of tau. Keys must be pre-RoPE (the KCompressionCache's applied_rope
// path, undoing an engine's RoPE, has no GPU version yet).
//
// Everything is stream-ordered: host validation (naming the argument, seer::InvalidArgument), then
// kernel launches; no host synchronisation, no allocation in the calls, graph-capturable. Runtime
// failures throw seer::BackendError. The caller's contract (device memory, not checkable on the host):
// lengths[b] <= max_length, step tokens q_len(b) <= lengths[b], the compressed cache is up to date for
// the lengths (compress_key_blocks after appending the step's keys), page-table entries valid.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/platform.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/decode_selection.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/gpu/device_upload.hpp"
#include "seer/gpu/gate_features_kernel.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

inline constexpr int kDecodeGateThreads = 256;           // every decode-gate kernel; the block scans assume it
inline constexpr int kDecodeGateMaxStepTokens = 8;       // query tokens per sequence and step
inline constexpr int kDecodeGateMaxHeadDim = 256;        // pooled key [3D] in shared memory
inline constexpr int kDecodeGateMaxHiddenSize = 256;     // query features [8, dg] in shared memory
inline constexpr int kDecodeGateMaxQueryInput = 4096;    // Qproj input g * D in shared memory
inline constexpr int kDecodeGateCompressionSlices = 32;  // CTAs per (sequence, KV head) of the compression

// A DecodeGate's weights and RoPE in device memory, uploaded once.
class DeviceDecodeGate {
 public:
  explicit DeviceDecodeGate(const DecodeGate& gate)
      : num_q_heads_(gate.num_q_heads()),
        num_kv_heads_(gate.num_kv_heads()),
        head_dim_(gate.head_dim()),
        hidden_size_(gate.hidden_size()),
        block_size_(gate.block_size()),
        pooling_(gate.config().query_head_pooling),
        use_qk_norm_(gate.config().use_qk_norm),
        rms_norm_epsilon_(gate.config().rms_norm_epsilon),
        attention_factor_(gate.rotary_embedding() != nullptr ? gate.rotary_embedding()->attention_factor() : 1.0) {
    require(head_dim_ <= kDecodeGateMaxHeadDim, "gate", "head dim is ", head_dim_, ", the GPU decode gate takes up to ",
            kDecodeGateMaxHeadDim);
    require(hidden_size_ % 4 == 0 && hidden_size_ <= kDecodeGateMaxHiddenSize, "gate", "hidden size is ", hidden_size_,
            ", the GPU decode gate takes multiples of 4 up to ", kDecodeGateMaxHiddenSize);
    require(gate.query_input_width() <= kDecodeGateMaxQueryInput, "gate", "query input width (group x head dim) is ",
            gate.query_input_width(), ", the GPU decode gate takes up to ", kDecodeGateMaxQueryInput);
    require(block_size_ <= 2147483647, "gate", "block size ", block_size_, " is too large");
    try {
      key_projection_ = upload_to_device(gate.weights().k_projection, "DeviceDecodeGate");
      if (pooling_ != QueryHeadPooling::average)
        query_projection_ = upload_to_device(gate.weights().q_projection, "DeviceDecodeGate");
      if (use_qk_norm_) {
        query_norm_ = upload_to_device(gate.weights().q_norm, "DeviceDecodeGate");
        key_norm_ = upload_to_device(gate.weights().k_norm, "DeviceDecodeGate");
      }
      if (gate.rotary_embedding() != nullptr)
        inverse_frequencies_ = upload_to_device(gate.rotary_embedding()->inverse_frequencies(), "DeviceDecodeGate");
      // A pageable upload may still be in flight when cudaMemcpy returns; callers' non-blocking streams
      // are not ordered after it, so wait here (once, at construction).
      vendor::synchronize(nullptr, "decode gate upload");
    } catch (...) {
      release();
      throw;
    }
  }
  DeviceDecodeGate(const DeviceDecodeGate&) = delete;
  DeviceDecodeGate& operator=(const DeviceDecodeGate&) = delete;
  ~DeviceDecodeGate() { release(); }

  std::int64_t num_q_heads() const { return num_q_heads_; }
  std::int64_t num_kv_heads() const { return num_kv_heads_; }
  std::int64_t group_size() const { return num_q_heads_ / num_kv_heads_; }
  std::int64_t head_dim() const { return head_dim_; }
  std::int64_t hidden_size() const { return hidden_size_; }
  std::int64_t block_size() const { return block_size_; }
  QueryHeadPooling query_head_pooling() const { return pooling_; }
  bool use_qk_norm() const { return use_qk_norm_; }
  bool use_rope() const { return inverse_frequencies_ != nullptr; }
  double rms_norm_epsilon() const { return rms_norm_epsilon_; }
  const float* key_projection() const { return key_projection_; }
  const float* query_projection() const { return query_projection_; }
  const float* query_norm() const { return query_norm_; }
  const float* key_norm() const { return key_norm_; }
  DeviceRope rope() const { return DeviceRope{inverse_frequencies_, hidden_size_ / 2, attention_factor_}; }

 private:
  void release() noexcept {
    vendor::device_release(key_projection_);
    vendor::device_release(query_projection_);
    vendor::device_release(query_norm_);
    vendor::device_release(key_norm_);
    vendor::device_release(inverse_frequencies_);
    key_projection_ = query_projection_ = query_norm_ = key_norm_ = nullptr;
    inverse_frequencies_ = nullptr;
  }

  std::int64_t num_q_heads_, num_kv_heads_, head_dim_, hidden_size_, block_size_;
  QueryHeadPooling pooling_;
  bool use_qk_norm_;
  double rms_norm_epsilon_;
  double attention_factor_;
  float* key_projection_ = nullptr;
  float* query_projection_ = nullptr;
  float* query_norm_ = nullptr;
  float* key_norm_ = nullptr;
  double* inverse_frequencies_ = nullptr;
};

// The compressed keys of one layer in device memory (caller-owned, or DeviceKCompressionCache's):
// rows [batch, max_blocks, kv_heads, hidden_size] fp32 (KCompressionCache<float>'s layout) and the
// per-sequence count of compressed blocks.
struct DeviceCompressedKeys {
  float* rows = nullptr;
  std::int32_t* completed_blocks = nullptr;  // [batch]
  std::int64_t batch = 0;
  std::int64_t max_blocks = 0;
  std::int64_t kv_heads = 0;
  std::int64_t hidden_size = 0;

  SEER_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t j, std::int64_t h) const {
    return ((b * max_blocks + j) * kv_heads + h) * hidden_size;
  }
  SEER_HOST_DEVICE std::int64_t block_stride() const { return kv_heads * hidden_size; }
};

// The DecodeBlockList arrays a selection writes (device memory, caller-owned); view() is what
// sparse_decode reads.
struct DeviceDecodeBlockListBuffers {
  std::int32_t* key_blocks = nullptr;  // [batch * kv_heads * capacity]
  std::int32_t* counts = nullptr;      // [batch * kv_heads]
  std::int64_t batch = 0;
  std::int64_t kv_heads = 0;
  std::int64_t capacity = 0;
  std::int64_t block_size = 64;

  DecodeBlockListView view() const { return {key_blocks, counts, batch, kv_heads, capacity, block_size}; }
};

namespace detail {

template <class T>
__device__ inline float load_element(const T* pointer) {
  return DeviceElement<T>::to_float(*reinterpret_cast<const std::uint16_t*>(pointer));
}

// Block-wide sum of one float per thread (kDecodeGateThreads threads); every thread gets the total.
__device__ inline float decode_gate_block_sum(float value, float* scratch) {
  const int thread = static_cast<int>(threadIdx.x);
  scratch[thread] = value;
  __syncthreads();
  for (int half = kDecodeGateThreads / 2; half > 0; half /= 2) {
    if (thread < half) scratch[thread] += scratch[thread + half];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();
  return total;
}

// Block-wide exclusive prefix sum of one int per thread; `total` receives the sum of all.
__device__ inline int decode_gate_exclusive_scan(int value, int* scratch, int& total) {
  const int thread = static_cast<int>(threadIdx.x);
  scratch[thread] = value;
  __syncthreads();
  for (int offset = 1; offset < kDecodeGateThreads; offset *= 2) {
    const int left = thread >= offset ? scratch[thread - offset] : 0;
    __syncthreads();
    scratch[thread] += left;
    __syncthreads();
  }
  const int inclusive = scratch[thread];
  total = scratch[kDecodeGateThreads - 1];
  __syncthreads();
  return inclusive - value;
}

// In place on feature[0, dim) in shared memory: optional RMSNorm with `weight`, then optional RoPE at
// `position`, then a multiplication by `scale`. Ends with a barrier.
__device__ inline void finish_feature(float* feature, int dim, const float* weight, double epsilon, bool rotate,
                                      const DeviceRope& rope, std::int64_t position, float scale, float* scratch) {
  const int thread = static_cast<int>(threadIdx.x);
  if (weight != nullptr) {
    float square_sum = 0.0f;
    for (int d = thread; d < dim; d += kDecodeGateThreads) square_sum += feature[d] * feature[d];
    square_sum = decode_gate_block_sum(square_sum, scratch);
    const float inverse_rms =
        static_cast<float>(1.0 / sqrt(static_cast<double>(square_sum) / static_cast<double>(dim) + epsilon));
    for (int d = thread; d < dim; d += kDecodeGateThreads) feature[d] *= inverse_rms * weight[d];
    __syncthreads();
  }
  if (rotate) {
    const int half = dim / 2;
    for (int i = thread; i < half; i += kDecodeGateThreads)
      rotate_pair(rope, position, i, feature[i], feature[i + half]);
    __syncthreads();
  }
  if (scale != 1.0f) {
    for (int d = thread; d < dim; d += kDecodeGateThreads) feature[d] *= scale;
    __syncthreads();
  }
}

}  // namespace detail

// ---- Key compression ------------------------------------------------------------------------------

template <class T>
struct CompressKeysParams {
  KvCacheView<const T> cache;  // device memory, pre-RoPE keys
  DeviceCompressedKeys out;
  const float* key_projection = nullptr;  // [Hkv, 3D, dg]
  const float* key_norm = nullptr;        // [dg] or null
  double rms_norm_epsilon = 1e-6;
  bool rotate = false;
  DeviceRope rope;
  std::int64_t block_size = 64;
};

// Grid (slices, Hkv, batch). Reads completed_blocks, never writes it (advance_completed_blocks_kernel does).
template <class T>
__global__ void __launch_bounds__(kDecodeGateThreads) compress_key_blocks_kernel(const CompressKeysParams<T> params) {
  __shared__ float pooled[3 * kDecodeGateMaxHeadDim];
  __shared__ float compressed[kDecodeGateMaxHiddenSize];
  __shared__ float scratch[kDecodeGateThreads];
  const std::int64_t h = blockIdx.y, b = blockIdx.z;
  const int thread = static_cast<int>(threadIdx.x);
  const std::int64_t block = params.block_size;
  const std::int64_t completed = params.out.completed_blocks[b];
  std::int64_t target = static_cast<std::int64_t>(params.cache.lengths[b]) / block;
  if (target > params.out.max_blocks) target = params.out.max_blocks;  // outside the contract; never overrun
  const int dim = static_cast<int>(params.cache.head_dim);
  const int hidden = static_cast<int>(params.out.hidden_size);
  const int width = 3 * dim;
  const float* weights = params.key_projection + h * static_cast<std::int64_t>(width) * hidden;
  const float infinity = __int_as_float(0x7f800000);
  for (std::int64_t j = completed + blockIdx.x; j < target; j += gridDim.x) {
    const std::int64_t first = j * block;
    for (int d = thread; d < dim; d += kDecodeGateThreads) {
      float maximum = -infinity, minimum = infinity, sum = 0.0f;
      for (std::int64_t t = 0; t < block; ++t) {
        const float x = detail::load_element(params.cache.key(b, first + t, h) + d);
        maximum = fmaxf(maximum, x);
        minimum = fminf(minimum, x);
        sum += x;
      }
      pooled[d] = maximum;
      pooled[dim + d] = minimum;
      pooled[2 * dim + d] = sum / static_cast<float>(block);
    }
    __syncthreads();
    for (int o = thread; o < hidden; o += kDecodeGateThreads) {
      float accumulator = 0.0f;
      for (int i = 0; i < width; ++i)
        accumulator = fmaf(pooled[i], weights[static_cast<std::int64_t>(i) * hidden + o], accumulator);
      compressed[o] = accumulator;
    }
    __syncthreads();
    detail::finish_feature(compressed, hidden, params.key_norm, params.rms_norm_epsilon, params.rotate, params.rope,
                           first, 1.0f, scratch);
    float* row = params.out.rows + params.out.offset(b, j, h);
    for (int o = thread; o < hidden; o += kDecodeGateThreads) row[o] = compressed[o];
    __syncthreads();  // the next block reuses the shared buffers
  }
}

// completed[b] = max(completed[b], min(lengths[b] / B, max_blocks)), after the compression kernel. (A
// template, as every kernel in a header must be, so that TUs that include it do not define it twice.)
template <int = 0>
__global__ void __launch_bounds__(kDecodeGateThreads)
    advance_completed_blocks_kernel(const std::int32_t* lengths, DeviceCompressedKeys out, std::int64_t block_size) {
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(kDecodeGateThreads) + threadIdx.x; b < out.batch;
       b += static_cast<std::int64_t>(gridDim.x) * kDecodeGateThreads) {
    std::int64_t target = static_cast<std::int64_t>(lengths[b]) / block_size;
    if (target > out.max_blocks) target = out.max_blocks;
    if (target > out.completed_blocks[b]) out.completed_blocks[b] = static_cast<std::int32_t>(target);
  }
}

// completed[b] = 0 for b in [first, last).
template <int = 0>
__global__ void __launch_bounds__(kDecodeGateThreads)
    reset_completed_blocks_kernel(std::int32_t* completed_blocks, std::int64_t first, std::int64_t last) {
  for (std::int64_t b = first + blockIdx.x * static_cast<std::int64_t>(kDecodeGateThreads) + threadIdx.x; b < last;
       b += static_cast<std::int64_t>(gridDim.x) * kDecodeGateThreads)
    completed_blocks[b] = 0;
}

// ---- Selection ------------------------------------------------------------------------------------

template <class T, class Policy>
struct DecodeSelectParams {
  SequenceBatch<const T> q;  // device memory, the step's pre-RoPE query tokens
  const std::int32_t* lengths = nullptr;
  DeviceCompressedKeys keys;
  const float* query_projection = nullptr;  // null for Qavg
  const float* query_norm = nullptr;        // [dg] or null
  int pooling = 0;                          // QueryHeadPooling
  std::int64_t group = 1;
  double rms_norm_epsilon = 1e-6;
  bool rotate = false;
  DeviceRope rope;
  std::int64_t block_size = 64;
  Policy policy;
  DeviceDecodeBlockListBuffers output;
  float* scores = nullptr;  // workspace [batch, Hkv, max_blocks]
};

// Grid (Hkv, batch): one CTA per (sequence, KV head) row.
template <class T, class Policy>
__global__ void __launch_bounds__(kDecodeGateThreads) decode_select_kernel(const DecodeSelectParams<T, Policy> params) {
  __shared__ float input[kDecodeGateMaxQueryInput];
  __shared__ __align__(16) float queries[kDecodeGateMaxStepTokens * kDecodeGateMaxHiddenSize];
  __shared__ float float_scratch[kDecodeGateThreads];
  __shared__ float float_scratch_2[kDecodeGateThreads];
  __shared__ int int_scratch[kDecodeGateThreads];
  __shared__ int histogram[256];
  __shared__ float token_peak[kDecodeGateMaxStepTokens];
  __shared__ float token_log_normaliser[kDecodeGateMaxStepTokens];
  __shared__ unsigned radix_prefix;
  __shared__ std::int64_t radix_remaining;

  const std::int64_t h = blockIdx.x, b = blockIdx.y;
  const std::int64_t kv_heads = params.keys.kv_heads;
  const std::int64_t row = b * kv_heads + h;
  const int thread = static_cast<int>(threadIdx.x);
  const std::int64_t block = params.block_size;
  const std::int64_t length = params.lengths[b];
  std::int64_t step = params.q.length(b);
  if (step > kDecodeGateMaxStepTokens) step = kDecodeGateMaxStepTokens;  // outside the contract; stay in bounds
  if (step <= 0 || length <= 0) {                                        // an idle slot: empty row
    if (thread == 0) params.output.counts[row] = 0;
    return;
  }
  std::int64_t scored = (length - 1) / block;  // decode_scored_blocks(length - 1, B)
  if (scored > params.keys.max_blocks) scored = params.keys.max_blocks;
  const int dim = static_cast<int>(params.q.head_dim);
  const int hidden = static_cast<int>(params.keys.hidden_size);
  const std::int64_t group = params.group;

  // 1. The step's gate queries, pre-scaled by 1 / sqrt(dg).
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(hidden)));
  const int input_width =
      params.pooling == static_cast<int>(QueryHeadPooling::projection) ? static_cast<int>(group) * dim : dim;
  for (std::int64_t i = 0; i < step; ++i) {
    const std::int64_t position = length - step + i;
    for (int k = thread; k < input_width; k += kDecodeGateThreads) {
      if (params.pooling == static_cast<int>(QueryHeadPooling::projection)) {
        const std::int64_t head = h * group + k / dim;
        input[k] = detail::load_element(params.q.vector(b, i, head) + k % dim);
      } else {
        float sum = 0.0f;
        for (std::int64_t g = 0; g < group; ++g) sum += detail::load_element(params.q.vector(b, i, h * group + g) + k);
        input[k] = sum / static_cast<float>(group);
      }
    }
    __syncthreads();
    float* query = queries + i * hidden;
    if (params.query_projection == nullptr) {
      for (int o = thread; o < hidden; o += kDecodeGateThreads) query[o] = input[o];
    } else {
      const float* weights = params.query_projection + h * static_cast<std::int64_t>(input_width) * hidden;
      for (int o = thread; o < hidden; o += kDecodeGateThreads) {
        float accumulator = 0.0f;
        for (int k = 0; k < input_width; ++k)
          accumulator = fmaf(input[k], weights[static_cast<std::int64_t>(k) * hidden + o], accumulator);
        query[o] = accumulator;
      }
    }
    __syncthreads();
    detail::finish_feature(query, hidden, params.query_norm, params.rms_norm_epsilon, params.rotate, params.rope,
                           position, scale, float_scratch);
  }

  // Blocks token i scores: j < (length - step + i) / B.
  std::int64_t token_blocks[kDecodeGateMaxStepTokens];
#pragma unroll
  for (int i = 0; i < kDecodeGateMaxStepTokens; ++i) {
    const std::int64_t position = length - step + i;
    token_blocks[i] = i < step && position > 0 ? position / block : 0;
    if (token_blocks[i] > scored) token_blocks[i] = scored;
  }
  const float* keys = params.keys.rows + params.keys.offset(b, 0, h);
  const std::int64_t key_stride = params.keys.block_stride();
  const float infinity = __int_as_float(0x7f800000);
  // logits[i] of block j for every token (those that do not score j are computed and ignored).
  auto block_logits = [&](std::int64_t j, float(&logits)[kDecodeGateMaxStepTokens]) {
#pragma unroll
    for (int i = 0; i < kDecodeGateMaxStepTokens; ++i) logits[i] = 0.0f;
    const float4* key = reinterpret_cast<const float4*>(keys + j * key_stride);
    for (int d4 = 0; d4 < hidden / 4; ++d4) {
      const float4 k = key[d4];
#pragma unroll
      for (int i = 0; i < kDecodeGateMaxStepTokens; ++i) {
        if (i >= step) break;
        const float4 q = reinterpret_cast<const float4*>(queries + i * hidden)[d4];
        logits[i] = fmaf(q.x, k.x, fmaf(q.y, k.y, fmaf(q.z, k.z, fmaf(q.w, k.w, logits[i]))));
      }
    }
  };

  // 2. Pass 1: each token's softmax peak and normaliser (thread-local online pairs, then combined).
  float peak[kDecodeGateMaxStepTokens], total[kDecodeGateMaxStepTokens];
#pragma unroll
  for (int i = 0; i < kDecodeGateMaxStepTokens; ++i) {
    peak[i] = -infinity;
    total[i] = 0.0f;
  }
  for (std::int64_t j = thread; j < scored; j += kDecodeGateThreads) {
    float logits[kDecodeGateMaxStepTokens];
    block_logits(j, logits);
#pragma unroll
    for (int i = 0; i < kDecodeGateMaxStepTokens; ++i) {
      if (j >= token_blocks[i]) continue;
      if (logits[i] > peak[i]) {
        total[i] = total[i] * expf(peak[i] - logits[i]) + 1.0f;
        peak[i] = logits[i];
      } else {
        total[i] += expf(logits[i] - peak[i]);
      }
    }
  }
  for (int i = 0; i < static_cast<int>(step); ++i) {
    float_scratch[thread] = peak[i];
    float_scratch_2[thread] = total[i];
    __syncthreads();
    for (int half = kDecodeGateThreads / 2; half > 0; half /= 2) {
      if (thread < half) {
        const float a = float_scratch[thread], c = float_scratch[thread + half];
        const float m = fmaxf(a, c);
        const float sum_a = a == -infinity ? 0.0f : float_scratch_2[thread] * expf(a - m);
        const float sum_c = c == -infinity ? 0.0f : float_scratch_2[thread + half] * expf(c - m);
        float_scratch[thread] = m;
        float_scratch_2[thread] = sum_a + sum_c;
      }
      __syncthreads();
    }
    if (thread == 0) {
      token_peak[i] = float_scratch[0];
      token_log_normaliser[i] = float_scratch[0] + logf(float_scratch_2[0]);
    }
    __syncthreads();
  }

  // 3. Pass 2: the row score of block j = max over the tokens that score it of their probability.
  float* scores = params.scores + row * params.keys.max_blocks;
  for (std::int64_t j = thread; j < scored; j += kDecodeGateThreads) {
    float logits[kDecodeGateMaxStepTokens];
    block_logits(j, logits);
    float score = 0.0f;
#pragma unroll
    for (int i = 0; i < kDecodeGateMaxStepTokens; ++i)
      if (j < token_blocks[i]) score = fmaxf(score, expf(logits[i] - token_log_normaliser[i]));
    scores[j] = score;
  }
  __syncthreads();  // the scores (global memory) are visible to the whole CTA after the barrier

  // 4. The policy's rule. Scores are >= 0, so their bit patterns order like their values.
  constexpr bool kBudget = std::is_same_v<Policy, TokenBudget>;
  bool keep_all_scored = false, keep_none = false;
  if (thread == 0) {
    radix_prefix = 0u;
    radix_remaining = 0;
  }
  __syncthreads();
  if constexpr (kBudget) {
    const std::int64_t budget = params.policy.tokens / block;
    keep_all_scored = budget >= scored;
    keep_none = budget == 0;
    if (!keep_all_scored && !keep_none) {
      // Radix select of the budget-th largest score, 8 bits at a time from the top.
      if (thread == 0) {
        radix_prefix = 0u;
        radix_remaining = budget;
      }
      unsigned mask = 0u;
      for (int shift = 24; shift >= 0; shift -= 8) {
        histogram[thread] = 0;
        __syncthreads();
        const unsigned prefix = radix_prefix;
        for (std::int64_t j = thread; j < scored; j += kDecodeGateThreads) {
          const unsigned bits = __float_as_uint(scores[j]);
          if ((bits & mask) == prefix) atomicAdd(&histogram[(bits >> shift) & 255u], 1);
        }
        __syncthreads();
        if (thread == 0) {
          std::int64_t above = 0;
          for (int digit = 255; digit >= 0; --digit) {
            if (above + histogram[digit] >= radix_remaining) {
              radix_remaining -= above;
              radix_prefix = prefix | (static_cast<unsigned>(digit) << shift);
              break;
            }
            above += histogram[digit];
          }
        }
        mask |= 255u << shift;
        __syncthreads();
      }
    }
  }
  const unsigned kth_bits = radix_prefix;              // the budget-th largest score (select mode)
  const std::int64_t equal_to_take = radix_remaining;  // how many scores equal to it are kept, lowest first

  // 5. Ascending write: policy blocks plus block 0 and the blocks of the step's tokens.
  const std::int64_t first_step_block = (length - step) / block, newest_block = (length - 1) / block;
  const std::int64_t key_block_count = newest_block + 1;
  std::int32_t* out = params.output.key_blocks + row * params.output.capacity;
  std::int64_t equal_seen = 0, written = 0;
  for (std::int64_t base = 0; base < key_block_count; base += kDecodeGateThreads) {
    const std::int64_t j = base + thread;
    const bool is_scored = j < scored;
    const float score = is_scored ? scores[j] : 0.0f;
    bool policy_keeps = false;
    bool equal = false;
    if constexpr (kBudget) {
      const unsigned bits = __float_as_uint(score);
      const bool select_mode = !keep_all_scored && !keep_none;
      equal = select_mode && is_scored && bits == kth_bits;
      int equal_total = 0;
      const int equal_rank = detail::decode_gate_exclusive_scan(equal ? 1 : 0, int_scratch, equal_total);
      policy_keeps =
          is_scored &&
          (keep_all_scored || (select_mode && (bits > kth_bits || (equal && equal_seen + equal_rank < equal_to_take))));
      equal_seen += equal_total;
    } else {
      policy_keeps = is_scored && static_cast<double>(score) > params.policy.tau;  // DecodeThreshold::keeps
    }
    const bool forced = j < key_block_count && (j == 0 || (j >= first_step_block && j <= newest_block));
    const bool keep = policy_keeps || forced;
    int kept_total = 0;
    const int position = detail::decode_gate_exclusive_scan(keep ? 1 : 0, int_scratch, kept_total);
    if (keep && written + position < params.output.capacity) out[written + position] = static_cast<std::int32_t>(j);
    written += kept_total;
  }
  if (thread == 0)
    params.output.counts[row] =
        static_cast<std::int32_t>(written < params.output.capacity ? written : params.output.capacity);
}

// ---- Host side ------------------------------------------------------------------------------------

// Owning compressed-key storage (allocation and zeroing are synchronous: once, outside the hot path).
class DeviceKCompressionCache {
 public:
  DeviceKCompressionCache(std::int64_t batch, std::int64_t max_blocks, const DeviceDecodeGate& gate) {
    require(batch >= 0, "batch", "is ", batch, ", expected >= 0");
    require(max_blocks >= 0 && max_blocks <= 2147483647, "max_blocks", "is ", max_blocks,
            ", expected 0 to 2^31 - 1 blocks");
    view_.batch = batch;
    view_.max_blocks = max_blocks;
    view_.kv_heads = gate.num_kv_heads();
    view_.hidden_size = gate.hidden_size();
    try {
      const std::int64_t elements = std::max<std::int64_t>(1, batch * max_blocks * view_.kv_heads * view_.hidden_size);
      view_.rows = static_cast<float*>(
          vendor::device_allocate(static_cast<std::size_t>(elements) * sizeof(float), "compressed key rows"));
      const std::size_t counter_bytes =
          static_cast<std::size_t>(std::max<std::int64_t>(1, batch)) * sizeof(std::int32_t);
      view_.completed_blocks =
          static_cast<std::int32_t*>(vendor::device_allocate(counter_bytes, "compressed block counters"));
      vendor::fill_device_bytes(view_.completed_blocks, 0, counter_bytes, "compressed block counters (zero)");
      vendor::synchronize(nullptr, "compressed block counters (zero)");  // the fill is asynchronous
    } catch (...) {
      release();
      throw;
    }
  }
  DeviceKCompressionCache(const DeviceKCompressionCache&) = delete;
  DeviceKCompressionCache& operator=(const DeviceKCompressionCache&) = delete;
  ~DeviceKCompressionCache() { release(); }

  const DeviceCompressedKeys& view() const { return view_; }

 private:
  void release() noexcept {
    vendor::device_release(view_.rows);
    vendor::device_release(view_.completed_blocks);
    view_.rows = nullptr;
    view_.completed_blocks = nullptr;
  }
  DeviceCompressedKeys view_;
};

namespace detail {

inline void validate_compressed_keys(const DeviceDecodeGate& gate, const DeviceCompressedKeys& keys) {
  require(keys.batch >= 0 && keys.batch <= 65535, "compressed", "batch is ", keys.batch, ", expected 0 to 65535");
  require(keys.max_blocks >= 0, "compressed", "max_blocks is ", keys.max_blocks, ", expected >= 0");
  require(keys.kv_heads == gate.num_kv_heads(), "compressed", "has ", keys.kv_heads, " KV heads, the gate ",
          gate.num_kv_heads());
  require(keys.hidden_size == gate.hidden_size(), "compressed", "hidden size is ", keys.hidden_size, ", the gate's ",
          gate.hidden_size());
  require(keys.rows != nullptr || keys.batch == 0, "compressed", "rows pointer is null");
  require(reinterpret_cast<std::uintptr_t>(keys.rows) % 16 == 0, "compressed", "rows must be 16-byte aligned");
  require(keys.completed_blocks != nullptr || keys.batch == 0, "compressed", "completed_blocks pointer is null");
}

template <class T>
void validate_decode_gate_element() {
  static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "the GPU decode gate reads seer::bfloat16 or seer::half elements");
}

}  // namespace detail

// Compresses every key block completed since the last call (see the file comment). keys: a KvCacheView
// of DEVICE memory (contiguous or paged; lengths and page table on the device), pre-RoPE keys.
template <class T>
void compress_key_blocks(const DeviceDecodeGate& gate, KvCacheView<const T> keys,
                         const DeviceCompressedKeys& compressed, vendor::stream_t stream) {
  detail::validate_decode_gate_element<T>();
  detail::validate_compressed_keys(gate, compressed);
  require(keys.batch == compressed.batch, "keys", "batch is ", keys.batch, ", the compressed cache's ",
          compressed.batch);
  require(keys.heads == gate.num_kv_heads(), "keys", "has ", keys.heads, " KV heads, the gate ", gate.num_kv_heads());
  require(keys.head_dim == gate.head_dim(), "keys", "head_dim is ", keys.head_dim, ", the gate's ", gate.head_dim());
  require(keys.keys != nullptr || keys.batch == 0, "keys", "key pointer is null");
  require(keys.lengths != nullptr || keys.batch == 0, "keys", "lengths pointer is null");
  require(keys.max_length >= 0 && keys.max_length / gate.block_size() <= compressed.max_blocks, "keys", "max_length ",
          keys.max_length, " holds ", keys.max_length / gate.block_size(), " complete blocks, above the cache's ",
          compressed.max_blocks);
  if (keys.batch == 0 || compressed.max_blocks == 0) return;
  CompressKeysParams<T> params;
  params.cache = keys;
  params.out = compressed;
  params.key_projection = gate.key_projection();
  params.key_norm = gate.use_qk_norm() ? gate.key_norm() : nullptr;
  params.rms_norm_epsilon = gate.rms_norm_epsilon();
  params.rotate = gate.use_rope();
  params.rope = gate.rope();
  params.block_size = gate.block_size();
  const std::int64_t slices = std::min<std::int64_t>(kDecodeGateCompressionSlices, compressed.max_blocks);
  compress_key_blocks_kernel<T><<<dim3(static_cast<unsigned>(slices), static_cast<unsigned>(compressed.kv_heads),
                                       static_cast<unsigned>(compressed.batch)),
                                  kDecodeGateThreads, 0, stream>>>(params);
  vendor::check_last_launch("compress_key_blocks_kernel launch");
  const std::int64_t ctas = (compressed.batch + kDecodeGateThreads - 1) / kDecodeGateThreads;
  advance_completed_blocks_kernel<>
      <<<static_cast<unsigned>(ctas), kDecodeGateThreads, 0, stream>>>(keys.lengths, compressed, gate.block_size());
  vendor::check_last_launch("advance_completed_blocks_kernel launch");
}

// Forgets sequences [first, first + count) of the compressed cache (new sequences take those slots);
// their next compress_key_blocks compresses from block 0. Stream-ordered.
inline void reset_compressed_blocks(const DeviceCompressedKeys& compressed, std::int64_t first, std::int64_t count,
                                    vendor::stream_t stream) {
  require(compressed.completed_blocks != nullptr || compressed.batch == 0, "compressed",
          "completed_blocks pointer is null");
  require(first >= 0 && first <= compressed.batch, "first", "is ", first, ", expected in [0, ", compressed.batch, "]");
  require(count >= 0 && first + count <= compressed.batch, "count", "is ", count, ", expected in [0, ",
          compressed.batch - first, "]");
  if (count == 0) return;
  const std::int64_t ctas = (count + kDecodeGateThreads - 1) / kDecodeGateThreads;
  reset_completed_blocks_kernel<><<<static_cast<unsigned>(ctas), kDecodeGateThreads, 0, stream>>>(
      compressed.completed_blocks, first, first + count);
  vendor::check_last_launch("reset_completed_blocks_kernel launch");
}

// Device workspace select_decode_blocks needs: one fp32 score per (sequence, KV head, block).
inline std::int64_t decode_selection_workspace_bytes(const DeviceCompressedKeys& compressed) {
  require(compressed.batch >= 0 && compressed.kv_heads >= 0 && compressed.max_blocks >= 0, "compressed",
          "has a negative extent");
  return std::max<std::int64_t>(
      256, compressed.batch * compressed.kv_heads * compressed.max_blocks * static_cast<std::int64_t>(sizeof(float)));
}

// Runs the gate for one decode step and writes every row of `output` (batch x Hkv rows, ascending).
// q_before_rope: DEVICE memory, [.., Hq, D] pre-RoPE queries of the step (padded with max_length
// tokens each, or packed with DEVICE cu_seqlens; 1 to 8 tokens, dim stride 1). lengths: DEVICE
// [batch] cached tokens including the step's (the KV cache's), bounded by max_length (host-known).
// output.capacity must be at least decode_block_capacity(policy, max_length, B, q.max_length).
template <class T, class Policy>
DecodeBlockListView select_decode_blocks(const DeviceDecodeGate& gate, const DeviceCompressedKeys& compressed,
                                         SequenceBatch<const T> q_before_rope, const std::int32_t* lengths,
                                         std::int64_t max_length, const Policy& policy,
                                         const DeviceDecodeBlockListBuffers& output, void* workspace,
                                         std::int64_t workspace_bytes, vendor::stream_t stream) {
  detail::validate_decode_gate_element<T>();
  static_assert(std::is_same_v<Policy, TokenBudget> || std::is_same_v<Policy, DecodeThreshold>,
                "decode policies are TokenBudget and DecodeThreshold");
  policy.validate();
  detail::validate_compressed_keys(gate, compressed);
  const auto& q = q_before_rope;
  const std::int64_t block = gate.block_size();
  require(q.batch == compressed.batch, "q_before_rope", "batch is ", q.batch, ", the compressed cache's ",
          compressed.batch);
  require(q.heads == gate.num_q_heads(), "q_before_rope", "has ", q.heads, " heads, expected the gate's ",
          gate.num_q_heads());
  require(q.head_dim == gate.head_dim(), "q_before_rope", "head dim is ", q.head_dim, ", expected the gate's ",
          gate.head_dim());
  require(q.dim_stride == 1, "q_before_rope", "dim stride is ", q.dim_stride, ", expected 1");
  require(q.max_length >= 1 && q.max_length <= kDecodeGateMaxStepTokens, "q_before_rope", "max_length is ",
          q.max_length, ", expected 1 to ", kDecodeGateMaxStepTokens, " step tokens");
  require(q.data != nullptr || q.batch == 0, "q_before_rope", "data pointer is null");
  require(lengths != nullptr || q.batch == 0, "lengths", "is null");
  require(max_length >= 0, "max_length", "is ", max_length, ", expected >= 0");
  require(decode_scored_blocks(max_length - 1, block) <= compressed.max_blocks, "max_length", max_length,
          " tokens score up to ", decode_scored_blocks(max_length - 1, block),
          " blocks, above the compressed cache's max_blocks ", compressed.max_blocks);
  require(output.batch == compressed.batch && output.kv_heads == gate.num_kv_heads() && output.block_size == block,
          "output", "is shaped for batch ", output.batch, ", ", output.kv_heads, " KV heads, block ", output.block_size,
          "; expected ", compressed.batch, ", ", gate.num_kv_heads(), ", ", block);
  const std::int64_t needed = decode_block_capacity(policy, max_length, block, q.max_length);
  require(output.capacity >= needed, "output", "capacity ", output.capacity, " is below the ", needed,
          " blocks a row may keep (use decode_block_capacity)");
  require(output.key_blocks != nullptr && output.counts != nullptr, "output", "has a null device pointer");
  require(workspace != nullptr, "workspace", "is null; allocate decode_selection_workspace_bytes() bytes");
  require(reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0, "workspace", "must be 16-byte aligned");
  require(workspace_bytes >= decode_selection_workspace_bytes(compressed), "workspace_bytes", "is ", workspace_bytes,
          ", the call needs ", decode_selection_workspace_bytes(compressed));
  const DecodeBlockListView view = output.view();
  if (q.batch == 0) return view;

  DecodeSelectParams<T, Policy> params;
  params.q = q;
  params.lengths = lengths;
  params.keys = compressed;
  params.query_projection = gate.query_head_pooling() == QueryHeadPooling::average ? nullptr : gate.query_projection();
  params.query_norm = gate.use_qk_norm() ? gate.query_norm() : nullptr;
  params.pooling = static_cast<int>(gate.query_head_pooling());
  params.group = gate.group_size();
  params.rms_norm_epsilon = gate.rms_norm_epsilon();
  params.rotate = gate.use_rope();
  params.rope = gate.rope();
  params.block_size = block;
  params.policy = policy;
  params.output = output;
  params.scores = static_cast<float*>(workspace);
  decode_select_kernel<T, Policy><<<dim3(static_cast<unsigned>(gate.num_kv_heads()), static_cast<unsigned>(q.batch)),
                                    kDecodeGateThreads, 0, stream>>>(params);
  vendor::check_last_launch("decode_select_kernel launch");
  return view;
}

}  // namespace seer::gpu
