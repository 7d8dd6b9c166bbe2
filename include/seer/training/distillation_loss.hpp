// The SeerAttention prefill distillation loss (§5.1 of the reference) and its exact gradient with
// respect to a LearnedGate's weights, on the CPU, in double.
//
// The model is frozen, so everything a gate reads is a constant of training: the block-pooled pre-RoPE
// q and k (GatePooledInputs) and the target, the two-dimensional ground truth of the POST-RoPE q and k
// the attention uses (cpu/ground_truth.hpp). Only the projections change. For one sequence and one
// layer, with nb = key blocks, rows = the trained query-block rows and Hq query heads:
//
//   trained rows   m in [query_blocks / 4, query_blocks): the original drops the first quarter
//                  (`[:, :, nb // 4:]`), whose rows see few blocks and would dominate the gradient;
//   logits         z[m, n] = dot(Qg[m], Kg[n]) / sqrt(dg) over the visible key blocks n (the gate's
//                  score_row); masked future blocks get probability 0, as finfo.min does in the original;
//   prediction     log p[m, n] = log_softmax(z[m, :]);
//   loss           scale / count * sum_{h, m, n : GT > 0} GT[h, m, n] * (log GT[h, m, n] - log p[m, n]),
//                  count = Hq * rows * nb, i.e. torch KLDivLoss(reduction='mean'), which divides by every
//                  element of the [Hq, rows, nb] map including the zero targets, times gate_loss_scale.
//
// The original sums this over layers and averages it over the sequences of a step (batch 1 with
// gradient accumulation); distill_gates does the same by calling this once per (sequence, layer)
// with weight 1 / sequences.
//
// Gradient. d loss / d z[m, n] = scale / count * (p[m, n] * sum_n' GT[m, n'] - GT[m, n]) (the target row
// sums to 1). Back through the 1/sqrt(dg) dot product to Qg and Kg, through block RoPE (a fixed
// rotation times YaRN's attention factor a, whose transpose is a rotation by the negative position),
// and through the linear projection: dW[i, o] = sum_blocks pooled[block, i] * d projected[block, o].
// Single-linear layout (every released gate): one k projection per query head, reading the features
// of KV head h / g. Double-linear layout: a q projection per query head and a k projection per KV
// head whose gradient sums over the GQA group.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/cpu/ground_truth.hpp"
#include "seer/gate/block_pooling.hpp"
#include "seer/gate/learned_gate.hpp"

namespace seer::training {

struct DistillationOptions {
  double loss_scale = 10.0;              // gate_loss_scale of the original trainer
  std::int64_t skipped_row_divisor = 4;  // the first query_blocks / divisor rows are not trained (0 = none)
};

// What a gate reads for one sequence, pooled once: constants of training because the model is frozen.
struct GatePooledInputs {
  BlockGeometry geometry;
  std::vector<double> query_pools;  // [Hq, query_blocks, query_input_width]
  std::vector<double> key_pools;    // [Hkv, key_blocks, key_input_width]
};

// One training example: the pooled inputs of one sequence at one layer and its target rows.
struct DistillationExample {
  GatePooledInputs inputs;
  cpu::TwoDimensionalGroundTruth target;  // a batch of one sequence, rows (h, m) of visible blocks
};

// Gradient buffers shaped like the gate's weights ([heads, in, out], double).
struct GateGradient {
  std::vector<double> k_projection;
  std::vector<double> q_projection;

  static GateGradient zeros_like(const LearnedGate& gate) {
    return GateGradient{std::vector<double>(gate.k_projection().size(), 0.0),
                        std::vector<double>(gate.q_projection().size(), 0.0)};
  }
  void set_zero() {
    std::fill(k_projection.begin(), k_projection.end(), 0.0);
    std::fill(q_projection.begin(), q_projection.end(), 0.0);
  }
};

// Pools sequence b of a batch the way `gate` does (its gate type and block size).
template <class T>
GatePooledInputs pool_gate_inputs(const LearnedGate& gate, SequenceBatch<const T> q_before_rope,
                                  SequenceBatch<const T> k_before_rope, std::int64_t b, bool causal = true) {
  require(q_before_rope.heads == gate.num_q_heads(), "q_before_rope", "has ", q_before_rope.heads,
          " heads, expected the gate's ", gate.num_q_heads());
  require(k_before_rope.heads == gate.num_kv_heads(), "k_before_rope", "has ", k_before_rope.heads,
          " heads, expected the gate's ", gate.num_kv_heads());
  require(q_before_rope.head_dim == gate.head_dim() && k_before_rope.head_dim == gate.head_dim(), "q_before_rope",
          "head dims ", q_before_rope.head_dim, " / ", k_before_rope.head_dim, " differ from the gate's ",
          gate.head_dim());
  require(k_before_rope.batch == q_before_rope.batch, "k_before_rope", "batch is ", k_before_rope.batch,
          " but q_before_rope has batch ", q_before_rope.batch);
  const std::int64_t block = gate.config().block_size;
  validate_pooling_arguments(q_before_rope, b, 0, block, "q_before_rope");
  validate_pooling_arguments(k_before_rope, b, 0, block, "k_before_rope");
  GatePooledInputs inputs;
  inputs.geometry = BlockGeometry{q_before_rope.length(b), k_before_rope.length(b), block, causal};
  const std::int64_t query_blocks = inputs.geometry.query_blocks(), key_blocks = inputs.geometry.key_blocks();
  inputs.query_pools.resize(static_cast<std::size_t>(gate.num_q_heads() * query_blocks * gate.query_input_width()));
  inputs.key_pools.resize(static_cast<std::size_t>(gate.num_kv_heads() * key_blocks * gate.key_input_width()));
  for (std::int64_t h = 0; h < gate.num_q_heads() && query_blocks > 0; ++h)
    detail::pool_blocks_into(q_before_rope, b, h, block, gate.gate_type().query_pools,
                             inputs.query_pools.data() + h * query_blocks * gate.query_input_width());
  for (std::int64_t c = 0; c < gate.num_kv_heads() && key_blocks > 0; ++c)
    detail::pool_blocks_into(k_before_rope, b, c, block, gate.gate_type().key_pools,
                             inputs.key_pools.data() + c * key_blocks * gate.key_input_width());
  return inputs;
}

// The examples of every sequence of a batch at one layer: pooled pre-RoPE inputs plus the ground
// truth of the post-RoPE q and k (what the attention computes).
template <class T>
std::vector<DistillationExample> make_distillation_examples(
    const LearnedGate& gate, SequenceBatch<const T> q_before_rope, SequenceBatch<const T> k_before_rope,
    SequenceBatch<const T> q_after_rope, SequenceBatch<const T> k_after_rope, const AttentionOptions& options = {},
    int threads = 0, cpu::BlockTargetPooling target_pooling = cpu::BlockTargetPooling::max) {
  require(q_after_rope.batch == q_before_rope.batch, "q_after_rope", "batch is ", q_after_rope.batch,
          ", expected q_before_rope's ", q_before_rope.batch);
  std::vector<DistillationExample> examples;
  for (std::int64_t b = 0; b < q_before_rope.batch; ++b) {
    require(q_after_rope.length(b) == q_before_rope.length(b) && k_after_rope.length(b) == k_before_rope.length(b),
            "q_after_rope", "sequence ", b, " has a different length before and after RoPE");
    DistillationExample example;
    example.inputs = pool_gate_inputs(gate, q_before_rope, k_before_rope, b, options.causal);
    // One sequence at a time keeps each example a self-contained batch of one.
    auto one = [b](SequenceBatch<const T> batch) {
      SequenceBatch<const T> single = batch;
      single.data = batch.vector(b, 0, 0);
      single.batch = 1;
      single.max_length = batch.length(b);
      single.cu_seqlens = nullptr;
      single.batch_stride = 0;
      return single;
    };
    example.target = cpu::two_dimensional_ground_truth(one(q_after_rope), one(k_after_rope), options,
                                                       gate.config().block_size, threads, target_pooling);
    examples.push_back(std::move(example));
  }
  return examples;
}

namespace detail {

// out[n, :] = in[n, :] * W for n < count (in [count, in_width], W [in_width, out_width] floats).
inline void project_rows(const double* in, std::int64_t count, std::int64_t in_width, const float* weights,
                         std::int64_t out_width, double* out) {
  using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using FloatMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<Matrix>(out, count, out_width).noalias() =
      Eigen::Map<const Matrix>(in, count, in_width) *
      Eigen::Map<const FloatMatrix>(weights, in_width, out_width).cast<double>();
}

// gradient[in_width, out_width] += in^T * d_out (in [count, in_width], d_out [count, out_width]).
inline void accumulate_weight_gradient(const double* in, std::int64_t count, std::int64_t in_width, const double* d_out,
                                       std::int64_t out_width, double weight, double* gradient) {
  using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<Matrix>(gradient, in_width, out_width).noalias() +=
      weight *
      (Eigen::Map<const Matrix>(in, count, in_width).transpose() * Eigen::Map<const Matrix>(d_out, count, out_width));
}

}  // namespace detail

// Loss of one example, times `weight`; adds weight * d loss / d weights to *gradient when it is not
// null. Heads run in parallel (`threads` as parallel_for); the result does not depend on threads.
inline double distillation_loss(const LearnedGate& gate, const DistillationExample& example,
                                const DistillationOptions& options = {}, GateGradient* gradient = nullptr,
                                double weight = 1.0, int threads = 1) {
  const BlockGeometry& g = example.inputs.geometry;
  const std::int64_t heads = gate.num_q_heads(), kv_heads = gate.num_kv_heads(), group = heads / kv_heads;
  const std::int64_t dg = gate.config().hidden_size, block = gate.config().block_size;
  const std::int64_t query_blocks = g.query_blocks(), key_blocks = g.key_blocks();
  const std::int64_t q_width = gate.query_input_width(), k_width = gate.key_input_width();
  const bool double_linear = gate.has_q_projection();
  require(options.skipped_row_divisor >= 0, "options.skipped_row_divisor", "is ", options.skipped_row_divisor,
          ", expected >= 0");
  require(std::isfinite(options.loss_scale), "options.loss_scale", "is ", options.loss_scale, ", expected finite");
  require(g.block_size == block, "example", "was pooled with block size ", g.block_size, ", the gate uses ", block);
  require(static_cast<std::int64_t>(example.inputs.query_pools.size()) == heads * query_blocks * q_width &&
              static_cast<std::int64_t>(example.inputs.key_pools.size()) == kv_heads * key_blocks * k_width,
          "example", "pooled inputs do not match the gate's heads and gate type");
  const auto& target = example.target;
  require(target.sequences.size() == 1 && target.heads == heads && target.sequences[0].q_len == g.q_len &&
              target.sequences[0].k_len == g.k_len && target.sequences[0].block_size == block,
          "example", "target is not the ground truth of this sequence (one sequence, ", heads, " heads, block ", block,
          ")");
  if (gradient != nullptr)
    require(gradient->k_projection.size() == gate.k_projection().size() &&
                gradient->q_projection.size() == gate.q_projection().size(),
            "gradient", "is not shaped like the gate's weights (use GateGradient::zeros_like)");

  const std::int64_t first_row = options.skipped_row_divisor > 0 ? query_blocks / options.skipped_row_divisor : 0;
  const std::int64_t rows = query_blocks - first_row;
  if (rows <= 0 || key_blocks == 0) return 0.0;
  const double count = static_cast<double>(heads * rows * key_blocks);
  const double row_scale = options.loss_scale / count;
  const double logit_scale = 1.0 / std::sqrt(static_cast<double>(dg));
  const RotaryEmbedding& rope = gate.rotary_embedding();

  // Per query head: its loss and the gradients of its projected key / query features. Reduced in
  // head order afterwards, so the result is deterministic.
  std::vector<double> head_loss(static_cast<std::size_t>(heads), 0.0);
  std::vector<std::vector<double>> key_feature_gradient(static_cast<std::size_t>(heads));
  std::vector<std::vector<double>> query_feature_gradient(static_cast<std::size_t>(heads));
  parallel_for(heads, threads, [&](std::int64_t h) {
    const std::int64_t kv_head = h / group;
    const std::int64_t key_head = double_linear ? kv_head : h;
    // Key features Kg[n] = RoPE(n B) (pooled K[n] W_k), [key_blocks, dg].
    std::vector<double> keys(static_cast<std::size_t>(key_blocks * dg));
    detail::project_rows(example.inputs.key_pools.data() + kv_head * key_blocks * k_width, key_blocks, k_width,
                         gate.k_projection().data() + key_head * k_width * dg, dg, keys.data());
    for (std::int64_t n = 0; n < key_blocks; ++n) rope.apply(keys.data() + n * dg, n * block);
    // Query features Qg[m] (only the trained rows are needed).
    std::vector<double> queries(static_cast<std::size_t>(rows * dg));
    const double* pooled_queries = example.inputs.query_pools.data() + (h * query_blocks + first_row) * q_width;
    if (double_linear) {
      detail::project_rows(pooled_queries, rows, q_width, gate.q_projection().data() + h * q_width * dg, dg,
                           queries.data());
    } else {
      std::copy(pooled_queries, pooled_queries + rows * dg, queries.begin());
    }
    for (std::int64_t r = 0; r < rows; ++r)
      rope.apply(queries.data() + r * dg, g.diagonal_offset() + g.first_row(first_row + r));

    std::vector<double> d_keys(static_cast<std::size_t>(key_blocks * dg), 0.0);
    std::vector<double> d_queries(static_cast<std::size_t>(double_linear ? rows * dg : 0), 0.0);
    std::vector<double> logits(static_cast<std::size_t>(key_blocks));
    double loss = 0.0;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t m = first_row + r;
      const std::int64_t visible = g.visible_key_blocks(m);
      if (visible == 0) continue;
      const double* query = queries.data() + r * dg;
      double peak = -std::numeric_limits<double>::infinity();
      for (std::int64_t n = 0; n < visible; ++n) {
        const double* key = keys.data() + n * dg;
        double dot = 0.0;
        for (std::int64_t d = 0; d < dg; ++d) dot += query[d] * key[d];
        logits[n] = dot * logit_scale;
        peak = std::max(peak, logits[n]);
      }
      double total = 0.0;
      for (std::int64_t n = 0; n < visible; ++n) total += std::exp(logits[n] - peak);
      const double log_normaliser = peak + std::log(total);
      const double* truth = target.row(0, h, m);
      double truth_mass = 0.0;
      for (std::int64_t n = 0; n < visible; ++n) {
        truth_mass += truth[n];
        if (truth[n] > 0.0) loss += truth[n] * (std::log(truth[n]) - (logits[n] - log_normaliser));
      }
      if (gradient == nullptr) continue;
      for (std::int64_t n = 0; n < visible; ++n) {
        const double d_logit =
            weight * row_scale * (std::exp(logits[n] - log_normaliser) * truth_mass - truth[n]) * logit_scale;
        const double* key = keys.data() + n * dg;
        double* d_key = d_keys.data() + n * dg;
        for (std::int64_t d = 0; d < dg; ++d) d_key[d] += d_logit * query[d];
        if (double_linear) {
          double* d_query = d_queries.data() + r * dg;
          for (std::int64_t d = 0; d < dg; ++d) d_query[d] += d_logit * key[d];
        }
      }
    }
    head_loss[h] = loss * row_scale * weight;
    if (gradient == nullptr) return;
    // Undo the rotations (transpose of a * R(p) is a * R(-p)); the projections' gradients follow.
    for (std::int64_t n = 0; n < key_blocks; ++n) rope.apply(d_keys.data() + n * dg, -n * block);
    for (std::int64_t r = 0; r < static_cast<std::int64_t>(d_queries.size()) / dg; ++r)
      rope.apply(d_queries.data() + r * dg, -(g.diagonal_offset() + g.first_row(first_row + r)));
    key_feature_gradient[h] = std::move(d_keys);
    query_feature_gradient[h] = std::move(d_queries);
  });

  double loss = 0.0;
  for (double value : head_loss) loss += value;
  if (gradient == nullptr) return loss;
  for (std::int64_t h = 0; h < heads; ++h) {
    const std::int64_t kv_head = h / group;
    const std::int64_t key_head = double_linear ? kv_head : h;
    detail::accumulate_weight_gradient(example.inputs.key_pools.data() + kv_head * key_blocks * k_width, key_blocks,
                                       k_width, key_feature_gradient[h].data(), dg, 1.0,
                                       gradient->k_projection.data() + key_head * k_width * dg);
    if (double_linear)
      detail::accumulate_weight_gradient(example.inputs.query_pools.data() + (h * query_blocks + first_row) * q_width,
                                         rows, q_width, query_feature_gradient[h].data(), dg, 1.0,
                                         gradient->q_projection.data() + h * q_width * dg);
  }
  return loss;
}

}  // namespace seer::training
