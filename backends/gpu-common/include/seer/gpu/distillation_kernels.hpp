// The prefill gate's distillation step on the GPU: the loss of seer/training/distillation_loss.hpp
// (definitions there: trained rows m >= query_blocks / divisor, KL over the visible key blocks, the
// original's mean over Hq * rows * nb elements, times loss_scale) and its gradient with respect to the
// gate's weights, plus the AdamW update of seer/training/adam_w.hpp. Everything is fp32 (the CPU
// reference is double). Portable device code (vendor layer only): the same source builds for HIP.
//
// The kernels are templates on their CTA size (kDistillationThreads; 256 for AdamW) so that a header
// included by several translation units defines them once. One (sequence, layer) example in five launches, each a plain
// loop over its outputs; the work is ~Hq * (S/B)^2 * dg multiply-adds, small next to the attention forward that
// produces the target:
//   1. gate_feature_kernel      K features RoPE(nB)(pooled K W_k) and Q features (projected or pooled
//                               Q, rotated to its block position), into the workspace;
//   2. distillation_row_kernel  per trained row (h, m): logits, log-softmax, the row's KL term, and
//                               d loss / d logit (the row of logits is staged in its own gradient row);
//   3. feature_gradient_kernel  d K-feature = D^T Q and d Q-feature = D K, rotated back (the transpose
//                               of a * R(p) is a * R(-p));
//   4. weight_gradient_kernel   dW += pooled^T d feature, summed over the heads that share a projection
//                               (added to the caller's gradient buffers: accumulation over examples);
//   5. loss_sum_kernel          the loss: the row terms summed in a fixed order (deterministic).
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

inline constexpr int kDistillationThreads = 128;

// Everything the distillation kernels read, passed by value. Device pointers only.
struct DistillationParams {
  // Shape (from the gate and the sequence's geometry).
  std::int64_t heads = 0, kv_heads = 0, group = 1, key_heads = 0;
  bool double_linear = false;
  std::int64_t hidden = 0;  // dg; RoPE rotates pairs (i, i + dg / 2)
  std::int64_t query_width = 0, key_width = 0;
  BlockGeometry geometry;  // block_size = the gate's block size
  std::int64_t first_row = 0, rows = 0, query_blocks = 0, key_blocks = 0;
  float logit_scale = 0.0f;               // 1 / sqrt(dg)
  float row_scale = 0.0f;                 // loss_scale / (Hq * rows * key_blocks)
  const float* key_rotation = nullptr;    // [key_blocks, dg / 2, 2]: a cos, a sin at position n B
  const float* query_rotation = nullptr;  // [rows, dg / 2, 2] at diagonal_offset + (first_row + r) B
  // The call.
  const float* query_pools = nullptr;   // [Hq, query_blocks, query_width]
  const float* key_pools = nullptr;     // [Hkv, key_blocks, key_width]
  const float* target = nullptr;        // [Hq, query_blocks, key_blocks], 0 outside the visible blocks
  const float* k_projection = nullptr;  // [key_heads, key_width, dg]
  const float* q_projection = nullptr;  // [Hq, query_width, dg] (double-linear layout only)
  float weight = 1.0f;
  float* loss = nullptr;        // one float, overwritten
  float* k_gradient = nullptr;  // like k_projection, accumulated
  float* q_gradient = nullptr;  // like q_projection, accumulated (double-linear layout only)
  // Workspace.
  float* keys = nullptr;                    // [key_heads, key_blocks, dg]
  float* queries = nullptr;                 // [Hq, rows, dg]
  float* logit_gradient = nullptr;          // [Hq, rows, key_blocks]
  float* key_feature_gradient = nullptr;    // [Hq, key_blocks, dg]
  float* query_feature_gradient = nullptr;  // [Hq, rows, dg]
  float* row_loss = nullptr;                // [Hq * rows]
};

namespace distillation_detail {

// The CTA's reduction of one float per thread (blockDim.x a multiple of the warp width, at most
// kDistillationThreads), in a fixed order. `scratch` holds one float per warp; it is free again on return.
template <class Combine>
__device__ inline float block_reduce(float value, float* scratch, Combine combine) {
  for (int offset = vendor::warp_size / 2; offset > 0; offset /= 2)
    value = combine(value, vendor::shuffle_xor(value, offset));
  const int warps = static_cast<int>(blockDim.x) / vendor::warp_size;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (vendor::lane_index() == 0) scratch[vendor::warp_index()] = value;
  __syncthreads();
  float result = scratch[0];
  for (int w = 1; w < warps; ++w) result = combine(result, scratch[w]);
  return result;
}

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// vector[0, dg) (in shared memory) rotated by the table's angles (sign +1) or back (sign -1), into out.
__device__ inline void rotate(const float* vector, const float* rotation, std::int64_t hidden, float sign, float* out) {
  const std::int64_t half = hidden / 2;
  for (std::int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float c = rotation[2 * i], s = sign * rotation[2 * i + 1];
    const float first = vector[i], second = vector[i + half];
    out[i] = first * c - second * s;
    out[i + half] = second * c + first * s;
  }
}

}  // namespace distillation_detail

// Grid (max(key_blocks, rows), key_heads + Hq); dynamic shared memory dg floats.
template <int Threads>
__global__ void __launch_bounds__(Threads) gate_feature_kernel(const DistillationParams p) {
  extern __shared__ float feature[];
  const std::int64_t index = blockIdx.x, head = blockIdx.y;
  const bool key = head < p.key_heads;
  if (index >= (key ? p.key_blocks : p.rows)) return;
  const float* pooled;
  const float* weights = nullptr;
  std::int64_t width;
  if (key) {
    const std::int64_t kv_head = p.double_linear ? head : head / p.group;
    width = p.key_width;
    pooled = p.key_pools + (kv_head * p.key_blocks + index) * width;
    weights = p.k_projection + head * width * p.hidden;
  } else {
    const std::int64_t h = head - p.key_heads;
    width = p.query_width;
    pooled = p.query_pools + (h * p.query_blocks + p.first_row + index) * width;
    if (p.double_linear) weights = p.q_projection + h * width * p.hidden;
  }
  for (std::int64_t o = threadIdx.x; o < p.hidden; o += blockDim.x) {
    float sum = 0.0f;
    if (weights == nullptr) {
      sum = pooled[o];  // single-linear layout: the pooled query (width dg) is the feature
    } else {
      for (std::int64_t i = 0; i < width; ++i) sum = fmaf(pooled[i], weights[i * p.hidden + o], sum);
    }
    feature[o] = sum;
  }
  __syncthreads();
  if (key)
    distillation_detail::rotate(feature, p.key_rotation + index * p.hidden, p.hidden, 1.0f,
                                p.keys + (head * p.key_blocks + index) * p.hidden);
  else
    distillation_detail::rotate(feature, p.query_rotation + index * p.hidden, p.hidden, 1.0f,
                                p.queries + ((head - p.key_heads) * p.rows + index) * p.hidden);
}

// Grid (rows, Hq); dynamic shared memory dg floats.
template <int Threads>
__global__ void __launch_bounds__(Threads) distillation_row_kernel(const DistillationParams p) {
  extern __shared__ float query[];
  __shared__ float scratch[Threads / 32];
  const std::int64_t r = blockIdx.x, h = blockIdx.y, m = p.first_row + r;
  const std::int64_t key_head = p.double_linear ? h / p.group : h;
  const std::int64_t visible = p.geometry.visible_key_blocks(m);
  float* const row = p.logit_gradient + (h * p.rows + r) * p.key_blocks;  // logits first, then their gradient
  const float* const truth = p.target + (h * p.query_blocks + m) * p.key_blocks;
  for (std::int64_t d = threadIdx.x; d < p.hidden; d += blockDim.x)
    query[d] = p.queries[(h * p.rows + r) * p.hidden + d];
  __syncthreads();

  const float negative_infinity = -__int_as_float(0x7f800000);
  float peak = negative_infinity;
  for (std::int64_t n = threadIdx.x; n < visible; n += blockDim.x) {
    const float* key = p.keys + (key_head * p.key_blocks + n) * p.hidden;
    float dot = 0.0f;
    for (std::int64_t d = 0; d < p.hidden; ++d) dot = fmaf(query[d], key[d], dot);
    row[n] = dot * p.logit_scale;
    peak = fmaxf(peak, row[n]);
  }
  peak = distillation_detail::block_reduce(peak, scratch, distillation_detail::Max{});
  float total = 0.0f;
  for (std::int64_t n = threadIdx.x; n < visible; n += blockDim.x) total += expf(row[n] - peak);
  total = distillation_detail::block_reduce(total, scratch, distillation_detail::Add{});
  const float log_normaliser = peak + logf(total);
  float mass = 0.0f, loss = 0.0f;
  for (std::int64_t n = threadIdx.x; n < visible; n += blockDim.x) {
    const float t = truth[n];
    mass += t;
    if (t > 0.0f) loss += t * (logf(t) - (row[n] - log_normaliser));
  }
  mass = distillation_detail::block_reduce(mass, scratch, distillation_detail::Add{});
  loss = distillation_detail::block_reduce(loss, scratch, distillation_detail::Add{});
  // d loss / d z[n] = scale / count * (p[n] * mass - GT[n]), then through z = dot / sqrt(dg).
  const float factor = p.weight * p.row_scale * p.logit_scale;
  for (std::int64_t n = threadIdx.x; n < p.key_blocks; n += blockDim.x)
    row[n] = n < visible ? factor * (expf(row[n] - log_normaliser) * mass - truth[n]) : 0.0f;
  if (threadIdx.x == 0) p.row_loss[h * p.rows + r] = visible > 0 ? loss * p.row_scale * p.weight : 0.0f;
}

// Grid (max(key_blocks, rows), Hq, 2): z = 0 key features, z = 1 query features (double-linear only).
// Dynamic shared memory dg floats.
template <int Threads>
__global__ void __launch_bounds__(Threads) feature_gradient_kernel(const DistillationParams p) {
  extern __shared__ float gradient[];
  const std::int64_t index = blockIdx.x, h = blockIdx.y;
  const bool key = blockIdx.z == 0;
  if (index >= (key ? p.key_blocks : p.rows) || (!key && !p.double_linear)) return;
  const float* const logits = p.logit_gradient + h * p.rows * p.key_blocks;  // D[h]: [rows, key_blocks]
  for (std::int64_t d = threadIdx.x; d < p.hidden; d += blockDim.x) {
    float sum = 0.0f;
    if (key) {  // sum_r D[r, n] Q[r, d]
      const float* const queries = p.queries + h * p.rows * p.hidden;
      for (std::int64_t r = 0; r < p.rows; ++r)
        sum = fmaf(logits[r * p.key_blocks + index], queries[r * p.hidden + d], sum);
    } else {  // sum_n D[r, n] K[n, d]
      const float* const keys = p.keys + (h / p.group) * p.key_blocks * p.hidden;
      for (std::int64_t n = 0; n < p.key_blocks; ++n)
        sum = fmaf(logits[index * p.key_blocks + n], keys[n * p.hidden + d], sum);
    }
    gradient[d] = sum;
  }
  __syncthreads();
  if (key)
    distillation_detail::rotate(gradient, p.key_rotation + index * p.hidden, p.hidden, -1.0f,
                                p.key_feature_gradient + (h * p.key_blocks + index) * p.hidden);
  else
    distillation_detail::rotate(gradient, p.query_rotation + index * p.hidden, p.hidden, -1.0f,
                                p.query_feature_gradient + (h * p.rows + index) * p.hidden);
}

// One thread per weight: the k projection's (key_heads * key_width * dg) then the q projection's.
template <int Threads>
__global__ void __launch_bounds__(Threads) weight_gradient_kernel(const DistillationParams p) {
  const std::int64_t k_count = p.key_heads * p.key_width * p.hidden;
  const std::int64_t q_count = p.double_linear ? p.heads * p.query_width * p.hidden : 0;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t index = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; index < k_count + q_count;
       index += stride) {
    float sum = 0.0f;
    if (index < k_count) {
      const std::int64_t o = index % p.hidden, i = index / p.hidden % p.key_width,
                         key_head = index / (p.hidden * p.key_width);
      // The query heads whose K features this projection made: the group of a KV head, or one head.
      const std::int64_t first = p.double_linear ? key_head * p.group : key_head;
      const std::int64_t count = p.double_linear ? p.group : 1;
      for (std::int64_t h = first; h < first + count; ++h) {
        const float* const pooled = p.key_pools + (h / p.group) * p.key_blocks * p.key_width + i;
        const float* const d_feature = p.key_feature_gradient + h * p.key_blocks * p.hidden + o;
        for (std::int64_t n = 0; n < p.key_blocks; ++n)
          sum = fmaf(pooled[n * p.key_width], d_feature[n * p.hidden], sum);
      }
      p.k_gradient[index] += sum;
    } else {
      const std::int64_t local = index - k_count;
      const std::int64_t o = local % p.hidden, i = local / p.hidden % p.query_width,
                         h = local / (p.hidden * p.query_width);
      const float* const pooled = p.query_pools + (h * p.query_blocks + p.first_row) * p.query_width + i;
      const float* const d_feature = p.query_feature_gradient + h * p.rows * p.hidden + o;
      for (std::int64_t r = 0; r < p.rows; ++r) sum = fmaf(pooled[r * p.query_width], d_feature[r * p.hidden], sum);
      p.q_gradient[local] += sum;
    }
  }
}

// One CTA.
template <int Threads>
__global__ void __launch_bounds__(Threads) loss_sum_kernel(const DistillationParams p) {
  __shared__ float scratch[Threads / 32];
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < p.heads * p.rows; i += blockDim.x) sum += p.row_loss[i];
  sum = distillation_detail::block_reduce(sum, scratch, distillation_detail::Add{});
  if (threadIdx.x == 0) *p.loss = sum;
}

// AdamW, one thread per parameter (PyTorch's order: decay, moments, bias-corrected update).
struct AdamWParams {
  float* parameters = nullptr;
  const float* gradient = nullptr;
  float* first_moment = nullptr;
  float* second_moment = nullptr;
  std::int64_t count = 0;
  float beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f;
  float one_minus_beta1 = 0.1f, one_minus_beta2 = 0.001f;  // from double: 1 - 0.999f is not 0.001
  float learning_rate = 0.0f;
  float decay = 1.0f;        // 1 - learning_rate * weight_decay
  float correction1 = 1.0f;  // 1 - beta1^t
  float correction2 = 1.0f;  // 1 - beta2^t
};

template <int Threads>
__global__ void __launch_bounds__(Threads) adam_w_kernel(const AdamWParams a) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.count; i += stride) {
    const float g = a.gradient[i];
    const float first = a.beta1 * a.first_moment[i] + a.one_minus_beta1 * g;
    const float second = a.beta2 * a.second_moment[i] + a.one_minus_beta2 * g * g;
    a.first_moment[i] = first;
    a.second_moment[i] = second;
    const float update = (first / a.correction1) / (sqrtf(second / a.correction2) + a.epsilon);
    a.parameters[i] = a.parameters[i] * a.decay - a.learning_rate * update;
  }
}

}  // namespace seer::gpu
