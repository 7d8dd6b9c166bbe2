// DecodeGate: the SeerAttention-R decode AttnGate (arXiv 2506.08889; microsoft/SeerAttention
// seer_attn/decode_sparse/attn_gate_*.py), scoring the cached key blocks for one decode query per
// KV head. The score is shared by the g = Hq / Hkv query heads of the group, so one block list per KV
// head serves the whole group.
//
// With D = head_dim, dg = hidden_size, B = block_size, for KV head c:
//   query   x = the g pre-RoPE query vectors of heads c*g .. c*g+g-1 pooled over the heads:
//             Qproj    concatenation [g*D], u = x . Wq[c] with Wq [Hkv, g, D, dg] (einsum 'kgi,kgio->ko');
//             Qavgproj mean over the g heads [D], u = x . Wq[c] with Wq [Hkv, D, dg];
//             Qavg     mean over the g heads, u = x (no weights; needs dg == D).
//   key     p = [max | min | mean] of the pre-RoPE keys of block j of KV head c [3D] (a complete block),
//             v = p . Wk[c] with Wk [Hkv, 3D, dg].
//   norm    optional RMSNorm (use_qk_norm) of u and of v: w * x / sqrt(mean(x^2) + eps), one learned
//           weight vector of dg values for the query branch and one for the key branch, shared by every
//           head (the checkpoint's attngate_qnorm.weight / attngate_knorm.weight are [dg]).
//   RoPE    optional (use_rope), the model's own RoPE (rotary_embedding.hpp): the query at its token
//           position t, key block j at its block start j*B. The RoPE tables are the model's head_dim
//           wide, so use_rope needs dg == D, as in the original.
//   logit   z[j] = q . k[j] / sqrt(dg), probabilities softmax(z) over the scored blocks.
//
// Which blocks a query scores. The training convention (§3 "Training mask" of the reference): the
// query at position t scores the complete blocks j < t / B only. Its own block (partial, or just
// completed by t itself) is not scored: the decode step always reads it (DecodeBlockList's forced
// newest block), so the gate never spends probability on it. This is what the gates were trained
// on; the original inference code instead puts the partial block into the softmax with logit 0, and
// ropes blocks completed during decoding at 64j+63 (the reference's §9 items 4 and 5). seer does
// neither: every key block, whenever it completes, is roped at j*B.
//
// Everything is computed in double (the original runs in bf16 with an fp32 RMSNorm), so this is the
// exact reference the GPU paths compare against. The gate reads Q and K before RoPE and after any
// per-head q/k norm of the model (Qwen3's q_norm / k_norm), which is what the original feeds it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/gate/rotary_embedding.hpp"

namespace seer {

// How the g query heads of a KV head become the gate's query (seerattn_q_head_pooling_type).
enum class QueryHeadPooling {
  projection,          // "Qproj": concatenate the g heads, project [g*D -> dg]
  average_projection,  // "Qavgproj": average the g heads, project [D -> dg]
  average,             // "Qavg": average the g heads, no projection (dg == D)
};

inline const char* query_head_pooling_name(QueryHeadPooling pooling) {
  switch (pooling) {
    case QueryHeadPooling::projection:
      return "Qproj";
    case QueryHeadPooling::average_projection:
      return "Qavgproj";
    case QueryHeadPooling::average:
      return "Qavg";
  }
  return "unknown";
}

inline QueryHeadPooling parse_query_head_pooling(const std::string& name) {
  if (name == "Qproj") return QueryHeadPooling::projection;
  if (name == "Qavgproj") return QueryHeadPooling::average_projection;
  if (name == "Qavg") return QueryHeadPooling::average;
  throw InvalidArgument("q_head_pooling_type",
                        "'" + name + "' is not a decode-gate query head pooling; expected Qproj, Qavgproj or Qavg");
}

struct DecodeGateConfig {
  std::int64_t block_size = 64;                                        // seerattn_gate_block_size
  std::int64_t hidden_size = 128;                                      // seerattn_gate_hidden_size (dg)
  QueryHeadPooling query_head_pooling = QueryHeadPooling::projection;  // seerattn_q_head_pooling_type
  bool use_qk_norm = false;  // seerattn_use_qk_norm (config default; the training script turns it on)
  bool use_rope = true;      // seerattn_use_rope
  double rms_norm_epsilon = 1e-6;
  RopeConfig rope;  // the model's rope_theta / rope_scaling, head_dim = the model's head_dim
};

// The trainable tensors, row-major, float (the original's names in brackets).
struct DecodeGateWeights {
  std::vector<float> q_projection;  // [attngate_linear_q] Qproj [Hkv, g, D, dg]; Qavgproj [Hkv, D, dg]; Qavg: empty
  std::vector<float> k_projection;  // [attngate_linear_k] [Hkv, 3D, dg]
  std::vector<float> q_norm;        // [attngate_qnorm] [dg] with use_qk_norm, else empty
  std::vector<float> k_norm;        // [attngate_knorm] [dg] with use_qk_norm, else empty
};

// The tensor shapes a configuration implies (empty shape = tensor absent), so loaders and the gate
// apply one rule.
struct DecodeGateLayout {
  std::vector<std::int64_t> q_shape;
  std::vector<std::int64_t> k_shape;
  std::vector<std::int64_t> norm_shape;

  static DecodeGateLayout of(const DecodeGateConfig& config, std::int64_t num_q_heads, std::int64_t num_kv_heads,
                             std::int64_t head_dim) {
    DecodeGateLayout layout;
    const std::int64_t dg = config.hidden_size;
    const std::int64_t group = num_kv_heads > 0 ? num_q_heads / num_kv_heads : 0;
    if (config.query_head_pooling == QueryHeadPooling::projection) layout.q_shape = {num_kv_heads, group, head_dim, dg};
    if (config.query_head_pooling == QueryHeadPooling::average_projection)
      layout.q_shape = {num_kv_heads, head_dim, dg};
    layout.k_shape = {num_kv_heads, 3 * head_dim, dg};
    if (config.use_qk_norm) layout.norm_shape = {dg};
    return layout;
  }

  static std::int64_t elements(const std::vector<std::int64_t>& shape) {
    if (shape.empty()) return 0;
    std::int64_t count = 1;
    for (auto extent : shape) count *= extent;
    return count;
  }
};

class DecodeGate {
 public:
  DecodeGate(DecodeGateConfig config, std::int64_t num_q_heads, std::int64_t num_kv_heads, std::int64_t head_dim,
             DecodeGateWeights weights)
      : config_(std::move(config)),
        num_q_heads_(num_q_heads),
        num_kv_heads_(num_kv_heads),
        head_dim_(head_dim),
        rope_(checked_rope(config_, num_q_heads, num_kv_heads, head_dim)),
        weights_(std::move(weights)) {
    const DecodeGateLayout layout = DecodeGateLayout::of(config_, num_q_heads, num_kv_heads, head_dim);
    check_tensor(weights_.q_projection, layout.q_shape, "weights.q_projection");
    check_tensor(weights_.k_projection, layout.k_shape, "weights.k_projection");
    check_tensor(weights_.q_norm, layout.norm_shape, "weights.q_norm");
    check_tensor(weights_.k_norm, layout.norm_shape, "weights.k_norm");
  }

  const DecodeGateConfig& config() const { return config_; }
  std::int64_t num_q_heads() const { return num_q_heads_; }
  std::int64_t num_kv_heads() const { return num_kv_heads_; }
  std::int64_t head_dim() const { return head_dim_; }
  std::int64_t group_size() const { return num_q_heads_ / num_kv_heads_; }
  std::int64_t hidden_size() const { return config_.hidden_size; }
  std::int64_t block_size() const { return config_.block_size; }
  // The RoPE the gate applies; null when use_rope is off.
  const RotaryEmbedding* rotary_embedding() const { return rope_ ? &*rope_ : nullptr; }
  const DecodeGateWeights& weights() const { return weights_; }

  // Width of the head-pooled query input: g*D for Qproj, D otherwise.
  std::int64_t query_input_width() const {
    return config_.query_head_pooling == QueryHeadPooling::projection ? group_size() * head_dim_ : head_dim_;
  }
  // Width of a pooled key block: [max | min | mean] = 3D.
  std::int64_t key_input_width() const { return 3 * head_dim_; }

  // Mutable weight storage for a trainer (sizes are fixed by the layout; values only).
  float* q_projection_data() { return weights_.q_projection.data(); }
  float* k_projection_data() { return weights_.k_projection.data(); }
  float* q_norm_data() { return weights_.q_norm.data(); }
  float* k_norm_data() { return weights_.k_norm.data(); }

  // --- Query branch -----------------------------------------------------------------------------

  // Pools the g pre-RoPE query vectors of one KV head's group (head i at first_head + i * head_stride,
  // unit dim stride) into the gate's query input [query_input_width()].
  template <class T>
  void pool_query_heads(const T* first_head, std::int64_t head_stride, double* input) const {
    static_assert(is_element_type_v<T>, "the gate reads float, double, half or bfloat16");
    const std::int64_t group = group_size();
    if (config_.query_head_pooling == QueryHeadPooling::projection) {
      for (std::int64_t i = 0; i < group; ++i)
        for (std::int64_t d = 0; d < head_dim_; ++d)
          input[i * head_dim_ + d] = static_cast<double>(to_float(first_head[i * head_stride + d]));
      return;
    }
    for (std::int64_t d = 0; d < head_dim_; ++d) input[d] = 0.0;
    for (std::int64_t i = 0; i < group; ++i)
      for (std::int64_t d = 0; d < head_dim_; ++d)
        input[d] += static_cast<double>(to_float(first_head[i * head_stride + d]));
    for (std::int64_t d = 0; d < head_dim_; ++d) input[d] /= static_cast<double>(group);
  }

  // The linear step of the query branch: input [query_input_width()] -> out [dg] (a copy for Qavg).
  void project_query(const double* input, std::int64_t kv_head, double* out) const {
    if (config_.query_head_pooling == QueryHeadPooling::average) {
      for (std::int64_t d = 0; d < head_dim_; ++d) out[d] = input[d];
      return;
    }
    project(input, weights_.q_projection.data() + kv_head * query_input_width() * config_.hidden_size,
            query_input_width(), out);
  }

  // The gate's query feature from a head-pooled input: linear -> RMSNorm -> RoPE at `position`.
  void query_from_input(const double* input, std::int64_t kv_head, std::int64_t position, double* out) const {
    check_head(kv_head);
    project_query(input, kv_head, out);
    if (config_.use_qk_norm) rms_normalize(out, weights_.q_norm.data());
    rotate(out, position);
  }

  // The gate's query feature [dg] of KV head `kv_head` for the decode token at `position` (its index
  // in the sequence), from the g pre-RoPE query vectors of the group (see pool_query_heads).
  template <class T>
  void query(const T* first_head, std::int64_t head_stride, std::int64_t kv_head, std::int64_t position,
             double* out) const {
    require(first_head != nullptr, "first_head", "is null");
    require(position >= 0, "position", "is ", position, ", expected >= 0");
    std::vector<double> input(static_cast<std::size_t>(query_input_width()));
    pool_query_heads(first_head, head_stride, input.data());
    query_from_input(input.data(), kv_head, position, out);
  }

  // --- Key branch -------------------------------------------------------------------------------

  // The linear step of the key branch: pooled [3D] -> out [dg].
  void project_key(const double* pooled, std::int64_t kv_head, double* out) const {
    project(pooled, weights_.k_projection.data() + kv_head * key_input_width() * config_.hidden_size, key_input_width(),
            out);
  }

  // The compressed key [dg] of block `block` of KV head `kv_head` from its pooled pre-RoPE keys
  // [max | min | mean] (3D): linear -> RMSNorm -> RoPE at the block start block * block_size. The
  // position is derived from the block index so that every caller ropes at the block start (the
  // training convention), however late the block completes.
  void compress_key_block(const double* pooled, std::int64_t kv_head, std::int64_t block, double* out) const {
    check_head(kv_head);
    require(block >= 0, "block", "is ", block, ", expected >= 0");
    project_key(pooled, kv_head, out);
    if (config_.use_qk_norm) rms_normalize(out, weights_.k_norm.data());
    rotate(out, block * config_.block_size);
  }

  // --- Scores -----------------------------------------------------------------------------------

  // logits[j] = query . keys[j] / sqrt(dg) for j < count; key j starts at keys + j * key_stride.
  template <class S>
  void logits(const double* query_feature, const S* keys, std::int64_t key_stride, std::int64_t count,
              double* out) const {
    const std::int64_t dg = config_.hidden_size;
    const double scale = 1.0 / std::sqrt(static_cast<double>(dg));
    for (std::int64_t j = 0; j < count; ++j) {
      const S* key = keys + j * key_stride;
      double dot = 0.0;
      for (std::int64_t d = 0; d < dg; ++d) dot += query_feature[d] * static_cast<double>(to_float(key[d]));
      out[j] = dot * scale;
    }
  }

  // The gate's RoPE of a dg vector at `position` (nothing without use_rope), and its transpose, which
  // a gradient passes through: RoPE is a rotation R(p) times YaRN's factor a, so the transpose is a R(-p).
  void rotate(double* vector, std::int64_t position) const {
    if (rope_) rope_->apply(vector, position);
  }
  void rotate_transposed(double* vector, std::int64_t position) const {
    if (rope_) rope_->apply(vector, -position);
  }

  // The RMSNorm of the gate in place on a dg vector with weight [dg].
  void rms_normalize(double* vector, const float* weight) const {
    const std::int64_t dg = config_.hidden_size;
    double square_sum = 0.0;
    for (std::int64_t d = 0; d < dg; ++d) square_sum += vector[d] * vector[d];
    const double inverse_rms = 1.0 / std::sqrt(square_sum / static_cast<double>(dg) + config_.rms_norm_epsilon);
    for (std::int64_t d = 0; d < dg; ++d) vector[d] *= inverse_rms * static_cast<double>(weight[d]);
  }

 private:
  static std::optional<RotaryEmbedding> checked_rope(const DecodeGateConfig& config, std::int64_t num_q_heads,
                                                     std::int64_t num_kv_heads, std::int64_t head_dim) {
    require(config.block_size > 0, "config.block_size", "is ", config.block_size, ", expected > 0");
    require(config.hidden_size > 0, "config.hidden_size", "is ", config.hidden_size, ", expected > 0");
    require(num_q_heads > 0, "num_q_heads", "is ", num_q_heads, ", expected > 0");
    require(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, "num_kv_heads", "is ", num_kv_heads,
            ", expected a divisor of num_q_heads (", num_q_heads, ")");
    require(head_dim > 0, "head_dim", "is ", head_dim, ", expected > 0");
    require(std::isfinite(config.rms_norm_epsilon) && config.rms_norm_epsilon > 0.0, "config.rms_norm_epsilon", "is ",
            config.rms_norm_epsilon, ", expected a finite value > 0");
    require(config.query_head_pooling == QueryHeadPooling::projection ||
                config.query_head_pooling == QueryHeadPooling::average_projection ||
                config.query_head_pooling == QueryHeadPooling::average,
            "config.query_head_pooling", "is not one of Qproj, Qavgproj, Qavg");
    if (config.query_head_pooling == QueryHeadPooling::average)
      require(config.hidden_size == head_dim, "config.hidden_size", "is ", config.hidden_size,
              ", but Qavg has no query projection, so the gate's width must equal head_dim (", head_dim, ")");
    if (config.use_rope) {
      require(config.hidden_size == head_dim, "config.hidden_size", "is ", config.hidden_size,
              ", but the gate's RoPE rotates hidden_size-wide features with the model's head_dim (", head_dim,
              ") tables, so it must equal head_dim (or set use_rope = false)");
      require(config.rope.head_dim == head_dim, "config.rope.head_dim", "is ", config.rope.head_dim,
              ", expected the model's head_dim (", head_dim, ")");
      return RotaryEmbedding(config.rope);
    }
    return std::nullopt;
  }

  static void check_tensor(const std::vector<float>& values, const std::vector<std::int64_t>& shape, const char* name) {
    const std::int64_t expected = DecodeGateLayout::elements(shape);
    std::string shape_text = "absent (empty)";
    if (!shape.empty()) {
      shape_text = "[";
      for (std::size_t i = 0; i < shape.size(); ++i) shape_text += (i ? ", " : "") + std::to_string(shape[i]);
      shape_text += "] = " + std::to_string(expected) + " values";
    }
    require(static_cast<std::int64_t>(values.size()) == expected, name, "holds ", values.size(), " values, expected ",
            shape_text);
    for (std::size_t i = 0; i < values.size(); ++i)
      require(std::isfinite(values[i]), name, "value ", i, " is ", values[i], ", expected finite weights");
  }

  void check_head(std::int64_t kv_head) const {
    require(kv_head >= 0 && kv_head < num_kv_heads_, "kv_head", "is ", kv_head, ", expected in [0, ", num_kv_heads_,
            ")");
  }

  // out[o] = sum_i in[i] * weights[i, o], o < dg.
  void project(const double* in, const float* weights, std::int64_t in_width, double* out) const {
    const std::int64_t dg = config_.hidden_size;
    for (std::int64_t o = 0; o < dg; ++o) out[o] = 0.0;
    for (std::int64_t i = 0; i < in_width; ++i) {
      const double x = in[i];
      const float* row = weights + i * dg;
      for (std::int64_t o = 0; o < dg; ++o) out[o] += x * static_cast<double>(row[o]);
    }
  }

  DecodeGateConfig config_;
  std::int64_t num_q_heads_;
  std::int64_t num_kv_heads_;
  std::int64_t head_dim_;
  std::optional<RotaryEmbedding> rope_;
  DecodeGateWeights weights_;
};

// log_softmax of logits[0, count) into out (out may alias logits). Returns nothing for count 0.
inline void decode_log_softmax(const double* logits, std::int64_t count, double* out) {
  if (count <= 0) return;
  double peak = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < count; ++j) peak = std::max(peak, logits[j]);
  double total = 0.0;
  for (std::int64_t j = 0; j < count; ++j) total += std::exp(logits[j] - peak);
  const double normaliser = peak + std::log(total);
  for (std::int64_t j = 0; j < count; ++j) out[j] = logits[j] - normaliser;
}

// Blocks the decode query at `position` scores: the complete blocks before its own block (training mask).
inline std::int64_t decode_scored_blocks(std::int64_t position, std::int64_t block_size) {
  return position <= 0 ? 0 : position / block_size;
}

}  // namespace seer
