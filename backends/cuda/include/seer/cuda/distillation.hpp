// seer::cuda distillation step for the prefill gate: the loss of seer/training/distillation_loss.hpp and
// its gradient with respect to the gate's weights, and the AdamW update of seer/training/adam_w.hpp, on
// an NVIDIA GPU in fp32 (kernels: seer/gpu/distillation_kernels.hpp).
//
//   DistillationPlan plan(gate, geometry, loss_scale = 10, skipped_row_divisor = 4);   // allocates
//   distillation_loss_and_gradient(plan, inputs, weight, loss, k_gradient, q_gradient, workspace, bytes, stream)
//   adam_w_step(parameters, gradient, first_moment, second_moment, count, learning_rate, step, options, stream)
//
// The plan holds what depends only on the gate and the sequence's block geometry: the shapes and the
// RoPE tables (a cos, a sin of every key and trained query block position, computed in double on the
// host, as seer::RotaryEmbedding does). Building it allocates and uploads; the two calls are
// stream-ordered and allocate nothing. Invalid arguments throw seer::InvalidArgument naming the
// argument; CUDA failures throw seer::BackendError.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gpu/device_upload.hpp"
#include "seer/gpu/distillation_kernels.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/training/adam_w.hpp"

namespace seer::cuda {

// Device inputs of one example (one sequence at one layer), fp32 device memory.
struct DistillationInputs {
  const float* query_pools = nullptr;   // [Hq, query_blocks, query_input_width]: the gate's pooled pre-RoPE q
  const float* key_pools = nullptr;     // [Hkv, key_blocks, key_input_width]: pooled pre-RoPE k
  const float* target = nullptr;        // [Hq, query_blocks, key_blocks]: block_ground_truth_2d's target of
                                        // the post-RoPE q, k (one sequence), 0 outside the visible blocks
  const float* k_projection = nullptr;  // the gate's weights, its layout ([key_heads, key_input_width, dg])
  const float* q_projection = nullptr;  // [Hq, query_input_width, dg], double-linear layout only (else null)
};

class DistillationPlan {
 public:
  DistillationPlan(const LearnedGate& gate, const BlockGeometry& geometry, double loss_scale = 10.0,
                   std::int64_t skipped_row_divisor = 4) {
    require(geometry.block_size == gate.config().block_size, "geometry", "has block size ", geometry.block_size,
            ", the gate uses ", gate.config().block_size);
    require(geometry.q_len >= 0 && geometry.k_len >= 0, "geometry", "has negative lengths");
    require(skipped_row_divisor >= 0, "skipped_row_divisor", "is ", skipped_row_divisor, ", expected >= 0");
    require(std::isfinite(loss_scale), "loss_scale", "is ", loss_scale, ", expected finite");
    const RotaryEmbedding& rope = gate.rotary_embedding();
    gpu::DistillationParams& p = params_;
    p.heads = gate.num_q_heads();
    p.kv_heads = gate.num_kv_heads();
    p.group = p.heads / p.kv_heads;
    p.key_heads = gate.key_heads();
    p.double_linear = gate.has_q_projection();
    p.hidden = gate.config().hidden_size;
    require(rope.dim() == p.hidden && p.hidden % 2 == 0, "gate", "rotary dimension ", rope.dim(),
            " differs from the hidden size ", p.hidden);
    p.query_width = gate.query_input_width();
    p.key_width = gate.key_input_width();
    p.geometry = geometry;
    p.query_blocks = geometry.query_blocks();
    p.key_blocks = geometry.key_blocks();
    p.first_row = skipped_row_divisor > 0 ? p.query_blocks / skipped_row_divisor : 0;
    p.rows = p.query_blocks - p.first_row;
    p.logit_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.hidden)));
    const double count = static_cast<double>(p.heads * p.rows * p.key_blocks);
    p.row_scale = count > 0.0 ? static_cast<float>(loss_scale / count) : 0.0f;
    k_weights_ = p.key_heads * p.key_width * p.hidden;
    q_weights_ = p.double_linear ? p.heads * p.query_width * p.hidden : 0;

    // a cos(p inv_i), a sin(p inv_i) for the key positions n B and the trained query positions.
    std::vector<float> table(static_cast<std::size_t>((p.key_blocks + p.rows) * p.hidden));
    auto fill = [&](std::int64_t slot, std::int64_t position) {
      const auto& inverse = rope.inverse_frequencies();
      for (std::size_t i = 0; i < inverse.size(); ++i) {
        const double angle = static_cast<double>(position) * inverse[i];
        table[static_cast<std::size_t>(slot * p.hidden) + 2 * i] =
            static_cast<float>(std::cos(angle) * rope.attention_factor());
        table[static_cast<std::size_t>(slot * p.hidden) + 2 * i + 1] =
            static_cast<float>(std::sin(angle) * rope.attention_factor());
      }
    };
    for (std::int64_t n = 0; n < p.key_blocks; ++n) fill(n, n * geometry.block_size);
    for (std::int64_t r = 0; r < p.rows; ++r)
      fill(p.key_blocks + r, geometry.diagonal_offset() + geometry.first_row(p.first_row + r));
    rotation_ = gpu::upload_to_device(table, "RoPE tables");
    p.key_rotation = rotation_;
    p.query_rotation = rotation_ + p.key_blocks * p.hidden;
  }
  DistillationPlan(const DistillationPlan&) = delete;
  DistillationPlan& operator=(const DistillationPlan&) = delete;
  ~DistillationPlan() { gpu::vendor::device_release(rotation_); }

  // Bytes of workspace a call needs.
  std::size_t workspace_bytes() const {
    const gpu::DistillationParams& p = params_;
    const std::int64_t floats = p.key_heads * p.key_blocks * p.hidden + p.heads * p.rows * p.hidden +
                                p.heads * p.rows * p.key_blocks + p.heads * p.key_blocks * p.hidden +
                                (p.double_linear ? p.heads * p.rows * p.hidden : 0) + p.heads * p.rows;
    return static_cast<std::size_t>(floats) * sizeof(float);
  }
  std::int64_t k_weights() const { return k_weights_; }  // values of the k projection (and its gradient)
  std::int64_t q_weights() const { return q_weights_; }  // 0 in the single-linear layout
  const gpu::DistillationParams& params() const { return params_; }

 private:
  gpu::DistillationParams params_;
  float* rotation_ = nullptr;
  std::int64_t k_weights_ = 0, q_weights_ = 0;
};

// Writes weight * loss of the example to *loss (one device float) and adds weight * d loss / d weights
// to k_gradient (and q_gradient in the double-linear layout), fp32 device buffers shaped like the weights.
inline void distillation_loss_and_gradient(const DistillationPlan& plan, const DistillationInputs& inputs, float weight,
                                           float* loss, float* k_gradient, float* q_gradient, void* workspace,
                                           std::size_t workspace_bytes, cudaStream_t stream) {
  gpu::DistillationParams p = plan.params();
  require(inputs.query_pools != nullptr && inputs.key_pools != nullptr, "inputs", "has a null pooled input");
  require(inputs.target != nullptr, "inputs.target", "is null");
  require(inputs.k_projection != nullptr, "inputs.k_projection", "is null");
  require(!p.double_linear || inputs.q_projection != nullptr, "inputs.q_projection",
          "is null, but the gate has the double-linear layout");
  require(std::isfinite(weight), "weight", "is ", weight, ", expected finite");
  require(loss != nullptr, "loss", "is null");
  require(k_gradient != nullptr, "k_gradient", "is null");
  require(!p.double_linear || q_gradient != nullptr, "q_gradient",
          "is null, but the gate has the double-linear layout");
  require(workspace_bytes >= plan.workspace_bytes(), "workspace_bytes", "is ", workspace_bytes, ", the call needs ",
          plan.workspace_bytes());
  require(workspace != nullptr || plan.workspace_bytes() == 0, "workspace", "is null");
  require(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0, "workspace", "must be aligned for float");
  if (p.rows <= 0 || p.key_blocks == 0) {  // nothing trained: loss 0, gradients unchanged
    gpu::vendor::check(cudaMemsetAsync(loss, 0, sizeof(float), stream), "cudaMemsetAsync (loss)");
    return;
  }
  p.query_pools = inputs.query_pools;
  p.key_pools = inputs.key_pools;
  p.target = inputs.target;
  p.k_projection = inputs.k_projection;
  p.q_projection = inputs.q_projection;
  p.weight = weight;
  p.loss = loss;
  p.k_gradient = k_gradient;
  p.q_gradient = q_gradient;
  float* next = static_cast<float*>(workspace);
  auto take = [&](std::int64_t floats) {
    float* result = next;
    next += floats;
    return result;
  };
  p.keys = take(p.key_heads * p.key_blocks * p.hidden);
  p.queries = take(p.heads * p.rows * p.hidden);
  p.logit_gradient = take(p.heads * p.rows * p.key_blocks);
  p.key_feature_gradient = take(p.heads * p.key_blocks * p.hidden);
  p.query_feature_gradient = p.double_linear ? take(p.heads * p.rows * p.hidden) : nullptr;
  p.row_loss = take(p.heads * p.rows);

  constexpr int kThreads = gpu::kDistillationThreads;
  const std::size_t feature_bytes = static_cast<std::size_t>(p.hidden) * sizeof(float);
  require(feature_bytes <= 48 * 1024, "gate", "hidden size ", p.hidden, " is too large (at most 12288)");
  const unsigned blocks_or_rows = static_cast<unsigned>(p.key_blocks > p.rows ? p.key_blocks : p.rows);
  gpu::gate_feature_kernel<kThreads>
      <<<dim3(blocks_or_rows, static_cast<unsigned>(p.key_heads + p.heads)), kThreads, feature_bytes, stream>>>(p);
  gpu::vendor::check_last_launch("gate_feature_kernel launch");
  gpu::distillation_row_kernel<kThreads>
      <<<dim3(static_cast<unsigned>(p.rows), static_cast<unsigned>(p.heads)), kThreads, feature_bytes, stream>>>(p);
  gpu::vendor::check_last_launch("distillation_row_kernel launch");
  gpu::feature_gradient_kernel<kThreads>
      <<<dim3(blocks_or_rows, static_cast<unsigned>(p.heads), 2), kThreads, feature_bytes, stream>>>(p);
  gpu::vendor::check_last_launch("feature_gradient_kernel launch");
  const std::int64_t weights = plan.k_weights() + plan.q_weights();
  const unsigned weight_blocks =
      static_cast<unsigned>((weights + kThreads - 1) / kThreads < 65535 ? (weights + kThreads - 1) / kThreads : 65535);
  gpu::weight_gradient_kernel<kThreads><<<weight_blocks, kThreads, 0, stream>>>(p);
  gpu::vendor::check_last_launch("weight_gradient_kernel launch");
  gpu::loss_sum_kernel<kThreads><<<1, kThreads, 0, stream>>>(p);
  gpu::vendor::check_last_launch("loss_sum_kernel launch");
}

// One AdamW step (step = 1, 2, ...: the bias corrections' t) on `count` fp32 device parameters with fp32
// moments, as training::AdamW::step (whose moments are double).
inline void adam_w_step(float* parameters, const float* gradient, float* first_moment, float* second_moment,
                        std::int64_t count, double learning_rate, std::int64_t step,
                        const training::AdamWOptions& options, cudaStream_t stream) {
  require(count >= 0, "count", "is ", count, ", expected >= 0");
  require(count == 0 ||
              (parameters != nullptr && gradient != nullptr && first_moment != nullptr && second_moment != nullptr),
          "parameters", "a parameter, gradient or moment pointer is null");
  require(std::isfinite(learning_rate) && learning_rate >= 0.0, "learning_rate", "is ", learning_rate,
          ", expected a finite value >= 0");
  require(step >= 1, "step", "is ", step, ", expected >= 1 (the first step is 1)");
  require(options.beta1 >= 0.0 && options.beta1 < 1.0, "options.beta1", "is ", options.beta1, ", expected in [0, 1)");
  require(options.beta2 >= 0.0 && options.beta2 < 1.0, "options.beta2", "is ", options.beta2, ", expected in [0, 1)");
  require(options.epsilon > 0.0, "options.epsilon", "is ", options.epsilon, ", expected > 0");
  require(options.weight_decay >= 0.0, "options.weight_decay", "is ", options.weight_decay, ", expected >= 0");
  if (count == 0) return;
  gpu::AdamWParams a;
  a.parameters = parameters;
  a.gradient = gradient;
  a.first_moment = first_moment;
  a.second_moment = second_moment;
  a.count = count;
  a.beta1 = static_cast<float>(options.beta1);
  a.beta2 = static_cast<float>(options.beta2);
  a.epsilon = static_cast<float>(options.epsilon);
  a.one_minus_beta1 = static_cast<float>(1.0 - options.beta1);
  a.one_minus_beta2 = static_cast<float>(1.0 - options.beta2);
  a.learning_rate = static_cast<float>(learning_rate);
  a.decay = static_cast<float>(1.0 - learning_rate * options.weight_decay);
  a.correction1 = static_cast<float>(1.0 - std::pow(options.beta1, static_cast<double>(step)));
  a.correction2 = static_cast<float>(1.0 - std::pow(options.beta2, static_cast<double>(step)));
  constexpr int kThreads = 256;
  const std::int64_t blocks = (count + kThreads - 1) / kThreads;
  gpu::adam_w_kernel<kThreads><<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0, stream>>>(a);
  gpu::vendor::check_last_launch("adam_w_kernel launch");
}

}  // namespace seer::cuda
