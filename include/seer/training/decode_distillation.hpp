// The SeerAttention-R decode-gate distillation loss (§4.2, §5.2 of the reference) and its exact
// gradient with respect to every trainable DecodeGate tensor, on the CPU, in double.
//
// The model is frozen, so what the gate reads is constant during training: the head-pooled pre-RoPE
// queries of the trained tokens and the [max | min | mean] pooled pre-RoPE keys of the complete
// blocks (DecodeGateInputs). The target is the one-dimensional ground truth of the POST-RoPE q and k
// (cpu/ground_truth.hpp): per KV head and token t, the GQA-maxed block maxima of the attention
// probabilities over the complete blocks j < t / B, normalised. For one sequence of length L at one
// layer, with Hkv KV heads and nb = ceil(L / B):
//
//   trained tokens t in [floor(L * loss_slice_ratio), L) (the original keeps [int(len * 0.5), len));
//   logits         z[t, j] = q_t . k_j / sqrt(dg) for the complete blocks j < t / B (DecodeGate);
//   prediction     log p[t, j] = log_softmax over those blocks (the original masks the others with
//                  -1e20, which gives them probability 0, so the softmax is the same);
//   loss           scale / count * sum_{c, t, j : GT > 0} GT (log GT - log p), count = Hkv * trained
//                  tokens * nb: torch KLDivLoss(reduction='mean') over the [Hkv, tokens, nb] map of
//                  one sequence, times the original's factor 10. (The original's map is padded to the
//                  pack's longest sequence, so its nb is that sequence's block count; with one sequence
//                  per pack, or equal block counts, the two agree.) The original averages over the
//                  sequences of a pack and sums over layers; callers do that with `weight`.
//
// Gradient, per (c, t): d z[t, j] = scale / count * (p[t, j] * sum_j' GT[t, j'] - GT[t, j]). Then
// through the 1/sqrt(dg) dot product to q_t and k_j; through RoPE (a rotation times YaRN's factor a,
// whose transpose is a R(-p)); through RMSNorm y = w * u * s with s = (mean(u^2) + eps)^(-1/2):
// dw += dy * u * s and du = w * s * dy - s^3 / dg * u * sum(dy * w * u); and through the projection:
// dW[i, o] += x[i] * du[o]. The norm weights are shared by every head, so their gradient sums over
// heads; each head's projection slice gets only its own head's terms.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/error.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/cpu/ground_truth.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/training/distillation_loss.hpp"

namespace seer::training {

struct DecodeDistillationOptions {
  double loss_scale = 10.0;       // the original trainer's gate loss factor
  double loss_slice_ratio = 0.5;  // seerattn_loss_slice_ratio of the training script (0 by default there)
};

// What a decode gate reads for one sequence at one layer, pooled once.
struct DecodeGateInputs {
  std::int64_t length = 0;        // L
  std::int64_t first_token = 0;   // trained tokens are [first_token, L)
  std::vector<double> queries;    // [L - first_token, Hkv, query_input_width]: head-pooled pre-RoPE q
  std::vector<double> key_pools;  // [Hkv, L / B, 3D]: pooled pre-RoPE keys of the complete blocks
};

struct DecodeDistillationExample {
  DecodeGateInputs inputs;
  // The 1-D ground truth of the trained tokens against all keys: a batch of one sequence with
  // q_len = L - first_token and k_len = L (bottom-right aligned, so local row r is token first_token + r).
  cpu::OneDimensionalGroundTruth target;
};

// Gradient buffers shaped like the gate's tensors (double).
struct DecodeGateGradient {
  std::vector<double> q_projection, k_projection, q_norm, k_norm;

  static DecodeGateGradient zeros_like(const DecodeGate& gate) {
    const DecodeGateWeights& w = gate.weights();
    return DecodeGateGradient{std::vector<double>(w.q_projection.size(), 0.0),
                              std::vector<double>(w.k_projection.size(), 0.0),
                              std::vector<double>(w.q_norm.size(), 0.0), std::vector<double>(w.k_norm.size(), 0.0)};
  }
  void set_zero() {
    for (auto* tensor : {&q_projection, &k_projection, &q_norm, &k_norm})
      std::fill(tensor->begin(), tensor->end(), 0.0);
  }
};

inline std::int64_t decode_first_trained_token(std::int64_t length, double loss_slice_ratio) {
  require(std::isfinite(loss_slice_ratio) && loss_slice_ratio >= 0.0 && loss_slice_ratio < 1.0,
          "options.loss_slice_ratio", "is ", loss_slice_ratio, ", expected in [0, 1)");
  return static_cast<std::int64_t>(std::floor(static_cast<double>(length) * loss_slice_ratio));
}

// Pools sequence b of a batch the way `gate` reads it: head-pooled queries of the trained tokens and
// [max | min | mean] of the complete key blocks.
template <class T>
DecodeGateInputs pool_decode_gate_inputs(const DecodeGate& gate, SequenceBatch<const T> q_before_rope,
                                         SequenceBatch<const T> k_before_rope, std::int64_t b,
                                         const DecodeDistillationOptions& options = {}) {
  static_assert(is_element_type_v<T>, "the gate reads float, double, half or bfloat16");
  require(q_before_rope.heads == gate.num_q_heads(), "q_before_rope", "has ", q_before_rope.heads,
          " heads, expected the gate's ", gate.num_q_heads());
  require(k_before_rope.heads == gate.num_kv_heads(), "k_before_rope", "has ", k_before_rope.heads,
          " heads, expected the gate's ", gate.num_kv_heads());
  require(q_before_rope.head_dim == gate.head_dim() && k_before_rope.head_dim == gate.head_dim(), "q_before_rope",
          "head dims ", q_before_rope.head_dim, " / ", k_before_rope.head_dim, " differ from the gate's ",
          gate.head_dim());
  require(q_before_rope.dim_stride == 1 && k_before_rope.dim_stride == 1, "q_before_rope",
          "dim strides must be 1 (q: ", q_before_rope.dim_stride, ", k: ", k_before_rope.dim_stride, ")");
  require(k_before_rope.batch == q_before_rope.batch, "k_before_rope", "batch is ", k_before_rope.batch,
          " but q_before_rope has batch ", q_before_rope.batch);
  require(b >= 0 && b < q_before_rope.batch, "b", "is ", b, ", expected in [0, ", q_before_rope.batch, ")");
  validate_host_lengths(q_before_rope, "q_before_rope");
  validate_host_lengths(k_before_rope, "k_before_rope");
  require(q_before_rope.length(b) == k_before_rope.length(b), "k_before_rope", "sequence ", b, " has ",
          k_before_rope.length(b), " tokens, q_before_rope ", q_before_rope.length(b),
          "; decode distillation trains on self-attention of one sequence");
  require(q_before_rope.data != nullptr && k_before_rope.data != nullptr, "q_before_rope", "data pointer is null");
  const std::int64_t block = gate.block_size(), kv_heads = gate.num_kv_heads(), dim = gate.head_dim();
  DecodeGateInputs inputs;
  inputs.length = q_before_rope.length(b);
  inputs.first_token = decode_first_trained_token(inputs.length, options.loss_slice_ratio);
  const std::int64_t tokens = inputs.length - inputs.first_token, width = gate.query_input_width();
  inputs.queries.resize(static_cast<std::size_t>(tokens * kv_heads * width));
  for (std::int64_t r = 0; r < tokens; ++r)
    for (std::int64_t c = 0; c < kv_heads; ++c)
      gate.pool_query_heads(q_before_rope.vector(b, inputs.first_token + r, c * gate.group_size()),
                            q_before_rope.head_stride, inputs.queries.data() + (r * kv_heads + c) * width);
  const std::int64_t blocks = inputs.length / block;
  inputs.key_pools.resize(static_cast<std::size_t>(kv_heads * blocks * 3 * dim));
  for (std::int64_t c = 0; c < kv_heads; ++c)
    for (std::int64_t j = 0; j < blocks; ++j) {
      double* pooled = inputs.key_pools.data() + (c * blocks + j) * 3 * dim;
      for (std::int64_t t = 0; t < block; ++t) {
        const T* key = k_before_rope.vector(b, j * block + t, c);
        for (std::int64_t d = 0; d < dim; ++d) {
          const double x = static_cast<double>(to_float(key[d]));
          pooled[d] = t == 0 ? x : std::max(pooled[d], x);
          pooled[dim + d] = t == 0 ? x : std::min(pooled[dim + d], x);
          pooled[2 * dim + d] = t == 0 ? x : pooled[2 * dim + d] + x;
        }
      }
      for (std::int64_t d = 0; d < dim; ++d) pooled[2 * dim + d] /= static_cast<double>(block);
    }
  return inputs;
}

// The examples of every sequence of a batch at one layer: pooled pre-RoPE inputs plus the 1-D ground
// truth of the post-RoPE q and k (what the attention computes) for the trained tokens.
template <class T>
std::vector<DecodeDistillationExample> make_decode_distillation_examples(
    const DecodeGate& gate, SequenceBatch<const T> q_before_rope, SequenceBatch<const T> k_before_rope,
    SequenceBatch<const T> q_after_rope, SequenceBatch<const T> k_after_rope,
    const DecodeDistillationOptions& options = {}, const AttentionOptions& attention = {}, int threads = 0) {
  require(attention.causal, "attention", "decode distillation needs causal attention");
  require(q_after_rope.batch == q_before_rope.batch && k_after_rope.batch == q_before_rope.batch, "q_after_rope",
          "batch differs from q_before_rope's ", q_before_rope.batch);
  validate_host_lengths(q_after_rope, "q_after_rope");
  validate_host_lengths(k_after_rope, "k_after_rope");
  std::vector<DecodeDistillationExample> examples;
  for (std::int64_t b = 0; b < q_before_rope.batch; ++b) {
    require(q_after_rope.length(b) == q_before_rope.length(b) && k_after_rope.length(b) == k_before_rope.length(b),
            "q_after_rope", "sequence ", b, " has a different length before and after RoPE");
    DecodeDistillationExample example;
    example.inputs = pool_decode_gate_inputs(gate, q_before_rope, k_before_rope, b, options);
    // The trained tokens as queries at the end of the whole key sequence (bottom-right aligned).
    SequenceBatch<const T> queries = q_after_rope;
    queries.data = q_after_rope.vector(b, example.inputs.first_token, 0);
    queries.batch = 1;
    queries.max_length = example.inputs.length - example.inputs.first_token;
    queries.cu_seqlens = nullptr;
    queries.batch_stride = 0;
    SequenceBatch<const T> keys = k_after_rope;
    keys.data = k_after_rope.vector(b, 0, 0);
    keys.batch = 1;
    keys.max_length = example.inputs.length;
    keys.cu_seqlens = nullptr;
    keys.batch_stride = 0;
    if (queries.max_length > 0)
      example.target = cpu::one_dimensional_ground_truth(queries, keys, attention, gate.block_size(), threads);
    examples.push_back(std::move(example));
  }
  return examples;
}

namespace detail {

// RMSNorm backward for y = w * u * s: adds dy * u * s to d_weight and writes du (may alias dy).
inline void rms_norm_backward(const double* u, const float* weight, double epsilon, std::int64_t dg, const double* dy,
                              double* d_weight, double* du) {
  double square_sum = 0.0;
  for (std::int64_t d = 0; d < dg; ++d) square_sum += u[d] * u[d];
  const double s = 1.0 / std::sqrt(square_sum / static_cast<double>(dg) + epsilon);
  double projection = 0.0;
  for (std::int64_t d = 0; d < dg; ++d) {
    d_weight[d] += dy[d] * u[d] * s;
    projection += dy[d] * static_cast<double>(weight[d]) * u[d];
  }
  const double correction = s * s * s / static_cast<double>(dg) * projection;
  for (std::int64_t d = 0; d < dg; ++d) du[d] = static_cast<double>(weight[d]) * s * dy[d] - correction * u[d];
}

}  // namespace detail

// Loss of one example, times `weight`; adds weight * d loss / d tensors to *gradient when it is not
// null. KV heads run in parallel (`threads` as parallel_for); the result does not depend on threads.
inline double decode_distillation_loss(const DecodeGate& gate, const DecodeDistillationExample& example,
                                       const DecodeDistillationOptions& options = {},
                                       DecodeGateGradient* gradient = nullptr, double weight = 1.0, int threads = 1) {
  const DecodeGateInputs& in = example.inputs;
  const std::int64_t kv_heads = gate.num_kv_heads(), dg = gate.hidden_size(), block = gate.block_size();
  const std::int64_t q_width = gate.query_input_width(), k_width = gate.key_input_width();
  const std::int64_t tokens = in.length - in.first_token, blocks = in.length / block;
  require(std::isfinite(options.loss_scale), "options.loss_scale", "is ", options.loss_scale, ", expected finite");
  require(std::isfinite(weight), "weight", "is ", weight, ", expected finite");
  require(in.first_token == decode_first_trained_token(in.length, options.loss_slice_ratio), "example",
          "was pooled with a different loss_slice_ratio (first trained token ", in.first_token, ", options give ",
          decode_first_trained_token(in.length, options.loss_slice_ratio), ")");
  require(static_cast<std::int64_t>(in.queries.size()) == tokens * kv_heads * q_width &&
              static_cast<std::int64_t>(in.key_pools.size()) == kv_heads * blocks * k_width,
          "example", "pooled inputs do not match the gate's heads, query head pooling and block size");
  const auto& target = example.target;
  if (tokens > 0)
    require(target.sequences.size() == 1 && target.kv_heads == kv_heads && target.sequences[0].q_len == tokens &&
                target.sequences[0].k_len == in.length && target.sequences[0].block_size == block,
            "example", "target is not the ground truth of this sequence's trained tokens (one sequence, ", kv_heads,
            " KV heads, block ", block, ", ", tokens, " queries against ", in.length, " keys)");
  if (gradient != nullptr) {
    const DecodeGateWeights& w = gate.weights();
    require(gradient->q_projection.size() == w.q_projection.size() &&
                gradient->k_projection.size() == w.k_projection.size() && gradient->q_norm.size() == w.q_norm.size() &&
                gradient->k_norm.size() == w.k_norm.size(),
            "gradient", "is not shaped like the gate's tensors (use DecodeGateGradient::zeros_like)");
  }
  if (tokens <= 0 || blocks == 0) return 0.0;

  const double count = static_cast<double>(kv_heads * tokens * ((in.length + block - 1) / block));
  const double row_scale = options.loss_scale / count;
  const double logit_scale = 1.0 / std::sqrt(static_cast<double>(dg));
  const bool norm = gate.config().use_qk_norm;
  const bool has_q_projection = gate.config().query_head_pooling != QueryHeadPooling::average;
  const DecodeGateWeights& w = gate.weights();

  std::vector<double> head_loss(static_cast<std::size_t>(kv_heads), 0.0);
  std::vector<std::vector<double>> head_q_norm(static_cast<std::size_t>(kv_heads)),
      head_k_norm(static_cast<std::size_t>(kv_heads));
  parallel_for(kv_heads, threads, [&](std::int64_t c) {
    // Keys: pre-norm projections (for the norm's backward) and final features.
    const double* pooled_keys = in.key_pools.data() + c * blocks * k_width;
    std::vector<double> key_linear(static_cast<std::size_t>(blocks * dg)), keys;
    detail::project_rows(pooled_keys, blocks, k_width, w.k_projection.data() + c * k_width * dg, dg, key_linear.data());
    keys = key_linear;
    for (std::int64_t j = 0; j < blocks; ++j) {
      if (norm) gate.rms_normalize(keys.data() + j * dg, w.k_norm.data());
      gate.rotate(keys.data() + j * dg, j * block);
    }
    // Queries of the trained tokens, gathered for this head: [tokens, width].
    std::vector<double> query_inputs(static_cast<std::size_t>(tokens * q_width));
    for (std::int64_t r = 0; r < tokens; ++r)
      std::copy_n(in.queries.data() + (r * kv_heads + c) * q_width, q_width, query_inputs.data() + r * q_width);
    std::vector<double> query_linear(static_cast<std::size_t>(tokens * dg));
    if (has_q_projection) {
      detail::project_rows(query_inputs.data(), tokens, q_width, w.q_projection.data() + c * q_width * dg, dg,
                           query_linear.data());
    } else {
      query_linear = query_inputs;  // Qavg: width D == dg
    }
    std::vector<double> queries = query_linear;
    for (std::int64_t r = 0; r < tokens; ++r) {
      if (norm) gate.rms_normalize(queries.data() + r * dg, w.q_norm.data());
      gate.rotate(queries.data() + r * dg, in.first_token + r);
    }

    // All logits at once, [tokens, blocks] (row r uses its first decode_scored_blocks entries), and
    // their gradients in place; the products with Q and K run through Eigen.
    using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::Map<const Matrix> query_matrix(queries.data(), tokens, dg), key_matrix(keys.data(), blocks, dg);
    Matrix logits = (query_matrix * key_matrix.transpose()) * logit_scale;
    double loss = 0.0;
    for (std::int64_t r = 0; r < tokens; ++r) {
      const std::int64_t scored = decode_scored_blocks(in.first_token + r, block);
      double* row = logits.data() + r * blocks;
      if (scored > 0) {
        double peak = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < scored; ++j) peak = std::max(peak, row[j]);
        double total = 0.0;
        for (std::int64_t j = 0; j < scored; ++j) total += std::exp(row[j] - peak);
        const double log_normaliser = peak + std::log(total);
        const double* truth = target.row(0, c, r);
        double truth_mass = 0.0;
        for (std::int64_t j = 0; j < scored; ++j) {
          truth_mass += truth[j];
          if (truth[j] > 0.0) loss += truth[j] * (std::log(truth[j]) - (row[j] - log_normaliser));
        }
        // d loss / d (q . k) for this row, replacing the logits.
        for (std::int64_t j = 0; j < scored; ++j)
          row[j] = weight * row_scale * (std::exp(row[j] - log_normaliser) * truth_mass - truth[j]) * logit_scale;
      }
      std::fill(row + scored, row + blocks, 0.0);
    }
    head_loss[static_cast<std::size_t>(c)] = loss * row_scale * weight;
    if (gradient == nullptr) return;
    std::vector<double> d_keys(static_cast<std::size_t>(blocks * dg)), d_queries(static_cast<std::size_t>(tokens * dg));
    Eigen::Map<Matrix>(d_queries.data(), tokens, dg).noalias() = logits * key_matrix;
    Eigen::Map<Matrix>(d_keys.data(), blocks, dg).noalias() = logits.transpose() * query_matrix;

    // Back through RoPE and RMSNorm to the projections' outputs.
    std::vector<double> q_norm_gradient(static_cast<std::size_t>(norm ? dg : 0), 0.0),
        k_norm_gradient = q_norm_gradient;
    for (std::int64_t j = 0; j < blocks; ++j) {
      double* d_key = d_keys.data() + j * dg;
      gate.rotate_transposed(d_key, j * block);
      if (norm)
        detail::rms_norm_backward(key_linear.data() + j * dg, w.k_norm.data(), gate.config().rms_norm_epsilon, dg,
                                  d_key, k_norm_gradient.data(), d_key);
    }
    for (std::int64_t r = 0; r < tokens; ++r) {
      double* d_query = d_queries.data() + r * dg;
      gate.rotate_transposed(d_query, in.first_token + r);
      if (norm)
        detail::rms_norm_backward(query_linear.data() + r * dg, w.q_norm.data(), gate.config().rms_norm_epsilon, dg,
                                  d_query, q_norm_gradient.data(), d_query);
    }
    // Each head owns its projection slices, so heads write them concurrently without overlap.
    detail::accumulate_weight_gradient(pooled_keys, blocks, k_width, d_keys.data(), dg, 1.0,
                                       gradient->k_projection.data() + c * k_width * dg);
    if (has_q_projection)
      detail::accumulate_weight_gradient(query_inputs.data(), tokens, q_width, d_queries.data(), dg, 1.0,
                                         gradient->q_projection.data() + c * q_width * dg);
    head_q_norm[static_cast<std::size_t>(c)] = std::move(q_norm_gradient);
    head_k_norm[static_cast<std::size_t>(c)] = std::move(k_norm_gradient);
  });

  double loss = 0.0;
  for (double value : head_loss) loss += value;
  if (gradient != nullptr && norm)
    for (std::int64_t c = 0; c < kv_heads; ++c)  // head order: deterministic sums
      for (std::int64_t d = 0; d < dg; ++d) {
        gradient->q_norm[static_cast<std::size_t>(d)] +=
            head_q_norm[static_cast<std::size_t>(c)][static_cast<std::size_t>(d)];
        gradient->k_norm[static_cast<std::size_t>(d)] +=
            head_k_norm[static_cast<std::size_t>(c)][static_cast<std::size_t>(d)];
      }
  return loss;
}

}  // namespace seer::training
