// LearnedGate: the SeerAttention prefill AttnGate (arXiv 2410.13276; microsoft/SeerAttention
// seer_attn/prefill_sparse/attn_gate.py), scoring query blocks against key blocks per query head.
//
// For each sequence, with B = block_size, D = head_dim, dg = hidden_size, g = Hq / Hkv:
//   1. Pool the PRE-RoPE q and k over blocks of B tokens (block_pooling.hpp; a partial last block
//      pools its valid tokens). The gate type "Q<pools>_K<pools>" (pools from max, min, avg, always
//      in that order, e.g. the released "Qavg_Kmaxminavg") names the poolings; features of one
//      block are concatenated in that order: Qp is |q pools| * D wide, Kp |k pools| * D wide.
//   2. Project, no bias, no activation. Two layouts exist, as in the original:
//      - "double linear" (|q pools| > 1, dg != D or force_double): q projection [Hq, |q pools|*D, dg]
//        per query head, k projection [Hkv, |k pools|*D, dg] per KV head; query head h then reads
//        the key features of KV head h / g.
//      - otherwise (every released checkpoint): no q projection (the gate's query is the pooled q
//        itself) and a k projection [Hq, |k pools|*D, dg] per QUERY head, applied to the pooled
//        features of KV head h / g.
//      Weights are row-major [heads, in, out], the checkpoint's `mask_linear_{q,k}.weight`.
//   3. RoPE with the model's own settings (rotary_embedding.hpp) on the gate's query and key, at the
//      position of each block's first token: key block n at n * B, query block m at
//      (k_len - q_len) + m * B (its first token's absolute position; m * B when q_len == k_len, as
//      in the original, and right for a query chunk at the end of a longer key sequence). The RoPE
//      tables have D entries, so the gate requires dg == D (the original silently needs it too).
//      With dynamic NTK scaling the tables depend on a sequence length: the gate uses
//      config.rope.scaling.sequence_length as given. (transformers would evaluate the gate's own
//      rotary module at the largest block position + 1 of the call, keeping the largest length seen;
//      pass that value to reproduce it.)
//   4. logits(m, n) = dot(Qg[m], Kg[n]) / sqrt(dg) for the visible key blocks n of query block m
//      (BlockGeometry::visible_key_blocks; the diagonal block stays a candidate).
//
// score() computes steps 1-3 once per (sequence, head), O(S/B * D * dg) work and O(S/B * dg)
// memory per head, in double; step 4 runs per row inside select_blocks, so the (S/B)^2 matrix is
// never stored. The original computes in bf16; seer's double results are the exact reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gate/block_feature_scores.hpp"
#include "seer/gate/block_pooling.hpp"
#include "seer/gate/rotary_embedding.hpp"

namespace seer {

using LearnedGateScores = BlockFeatureScores;

struct LearnedGateConfig {
  std::string gate_type = "Qavg_Kmaxminavg";  // seerattn_gate_type
  std::int64_t block_size = 64;               // seerattn_gate_block_size
  std::int64_t hidden_size = 128;             // seerattn_gate_hidden_size (dg)
  bool force_double = false;                  // seerattn_gate_force_double
  RopeConfig rope;                            // the model's rope_theta / rope_scaling; head_dim = dg
};

// The poolings named by a gate type such as "Qavg_Kmaxminavg".
struct GateType {
  std::vector<BlockPooling> query_pools;
  std::vector<BlockPooling> key_pools;

  static GateType parse(const std::string& name) {
    GateType result;
    std::size_t at = 0;
    auto expect = [&](const char* text) {
      const std::string token(text);
      if (name.compare(at, token.size(), token) != 0) return false;
      at += token.size();
      return true;
    };
    // Pools appear at most once each, in the order max, min, avg (the original's class names).
    auto pools = [&](std::vector<BlockPooling>& out) {
      if (expect("max")) out.push_back(BlockPooling::max);
      if (expect("min")) out.push_back(BlockPooling::min);
      if (expect("avg")) out.push_back(BlockPooling::mean);
      return !out.empty();
    };
    const bool valid =
        expect("Q") && pools(result.query_pools) && expect("_K") && pools(result.key_pools) && at == name.size();
    require(valid, "config.gate_type", "'", name,
            "' is not a gate type; expected Q<pools>_K<pools> with pools a non-empty subsequence of max, min, avg "
            "in that order, e.g. Qavg_Kmaxminavg");
    return result;
  }
};

// The weight shapes a gate configuration implies, known before any weight exists, so that loaders
// can check a checkpoint against its config and the gate itself uses the same rule. The released
// gates are single-linear (no q projection, k projection per query head); extra Q pools, dg != D or
// force_double select the double-linear layout (q projection per query head, k projection per KV head).
struct LearnedGateLayout {
  bool double_linear = false;
  std::vector<std::int64_t> k_shape;  // [key heads, |k pools| * D, dg]
  std::vector<std::int64_t> q_shape;  // [Hq, |q pools| * D, dg], empty when there is no q projection

  static LearnedGateLayout of(const GateType& type, const LearnedGateConfig& config, std::int64_t num_q_heads,
                              std::int64_t num_kv_heads, std::int64_t head_dim) {
    LearnedGateLayout layout;
    layout.double_linear = type.query_pools.size() > 1 || config.hidden_size != head_dim || config.force_double;
    layout.k_shape = {layout.double_linear ? num_kv_heads : num_q_heads,
                      static_cast<std::int64_t>(type.key_pools.size()) * head_dim, config.hidden_size};
    if (layout.double_linear)
      layout.q_shape = {num_q_heads, static_cast<std::int64_t>(type.query_pools.size()) * head_dim, config.hidden_size};
    return layout;
  }
};

class LearnedGate {
 public:
  LearnedGate(LearnedGateConfig config, std::int64_t num_q_heads, std::int64_t num_kv_heads, std::int64_t head_dim,
              std::vector<float> k_projection, std::vector<float> q_projection = {})
      : config_(std::move(config)),
        type_(GateType::parse(config_.gate_type)),
        num_q_heads_(num_q_heads),
        num_kv_heads_(num_kv_heads),
        head_dim_(head_dim),
        rope_(checked_rope(config_, num_q_heads, num_kv_heads, head_dim)),
        double_linear_(LearnedGateLayout::of(type_, config_, num_q_heads, num_kv_heads, head_dim).double_linear),
        k_projection_(std::move(k_projection)),
        q_projection_(std::move(q_projection)) {
    const std::int64_t dg = config_.hidden_size;
    const std::int64_t k_size = key_heads() * key_input_width() * dg;
    require(static_cast<std::int64_t>(k_projection_.size()) == k_size, "k_projection", "holds ", k_projection_.size(),
            " values, expected [", key_heads(), ", ", key_input_width(), ", ", dg, "] = ", k_size,
            has_q_projection() ? " (double-linear layout: one projection per KV head)"
                               : " (single-linear layout: one projection per query head)");
    if (has_q_projection()) {
      const std::int64_t q_size = num_q_heads_ * query_input_width() * dg;
      require(static_cast<std::int64_t>(q_projection_.size()) == q_size, "q_projection", "holds ", q_projection_.size(),
              " values, expected [", num_q_heads_, ", ", query_input_width(), ", ", dg, "] = ", q_size);
    } else {
      require(q_projection_.empty(), "q_projection", "holds ", q_projection_.size(), " values, but gate type ",
              config_.gate_type, " with hidden_size == head_dim and force_double off has no q projection");
    }
    require_finite(k_projection_, "k_projection");
    require_finite(q_projection_, "q_projection");
  }

  // Gate logits for every (sequence, query head, query block) row; see the file comment.
  template <class T>
  LearnedGateScores score(SequenceBatch<const T> q_before_rope, SequenceBatch<const T> k_before_rope,
                          bool causal = true, int threads = 0) const {
    static_assert(is_element_type_v<T>, "the gate reads float, double, half or bfloat16");
    const auto& q = q_before_rope;
    const auto& k = k_before_rope;
    require(q.heads == num_q_heads_, "q_before_rope", "has ", q.heads, " heads, expected the gate's ", num_q_heads_);
    require(k.heads == num_kv_heads_, "k_before_rope", "has ", k.heads, " heads, expected the gate's ", num_kv_heads_);
    require(q.head_dim == head_dim_, "q_before_rope", "head dim is ", q.head_dim, ", expected ", head_dim_);
    require(k.head_dim == head_dim_, "k_before_rope", "head dim is ", k.head_dim, ", expected ", head_dim_);
    require(q.batch >= 0, "q_before_rope", "batch is ", q.batch, ", expected >= 0");
    require(k.batch == q.batch, "k_before_rope", "batch is ", k.batch, " but q_before_rope has batch ", q.batch);
    validate_host_lengths(q, "q_before_rope");
    validate_host_lengths(k, "k_before_rope");
    require(q.data != nullptr || q.total_tokens() == 0, "q_before_rope", "data pointer is null");
    require(k.data != nullptr || k.total_tokens() == 0, "k_before_rope", "data pointer is null");

    const std::int64_t dg = config_.hidden_size;
    const std::int64_t block = config_.block_size;
    LearnedGateScores scores(sequence_geometries(q, k, block, causal), num_q_heads_, key_heads(), dg,
                             1.0 / std::sqrt(static_cast<double>(dg)));
    const std::int64_t group = num_q_heads_ / num_kv_heads_;
    // One unit per (sequence, KV head): its keys are pooled once and serve the whole GQA group.
    parallel_for(q.batch * num_kv_heads_, threads, [&](std::int64_t unit) {
      const std::int64_t b = unit / num_kv_heads_, kv_head = unit % num_kv_heads_;
      const BlockGeometry& g = scores.sequences()[b];
      std::vector<double> pooled(static_cast<std::size_t>(g.key_blocks() * key_input_width()));
      detail::pool_blocks_into(k, b, kv_head, block, type_.key_pools, pooled.data());
      const std::int64_t first_key_head = has_q_projection() ? kv_head : kv_head * group;
      const std::int64_t key_head_count = has_q_projection() ? 1 : group;
      for (std::int64_t key_head = first_key_head; key_head < first_key_head + key_head_count; ++key_head)
        for (std::int64_t n = 0; n < g.key_blocks(); ++n) {
          double* feature = scores.key_feature(b, key_head, n);
          project(pooled.data() + n * key_input_width(), key_weights(key_head), key_input_width(), feature);
          rope_.apply(feature, n * block);
        }

      pooled.resize(static_cast<std::size_t>(g.query_blocks() * query_input_width()));
      for (std::int64_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
        detail::pool_blocks_into(q, b, h, block, type_.query_pools, pooled.data());
        for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
          double* feature = scores.query_feature(b, h, m);
          const double* source = pooled.data() + m * query_input_width();
          if (has_q_projection()) {
            project(source, query_weights(h), query_input_width(), feature);
          } else {
            for (std::int64_t d = 0; d < dg; ++d) feature[d] = source[d];  // width D == dg
          }
          rope_.apply(feature, g.diagonal_offset() + g.first_row(m));
        }
      }
    });
    return scores;
  }

  const LearnedGateConfig& config() const { return config_; }
  const GateType& gate_type() const { return type_; }
  std::int64_t num_q_heads() const { return num_q_heads_; }
  std::int64_t num_kv_heads() const { return num_kv_heads_; }
  std::int64_t head_dim() const { return head_dim_; }
  const RotaryEmbedding& rotary_embedding() const { return rope_; }

  // True for the double-linear layout (a q projection exists and K is projected per KV head).
  bool has_q_projection() const { return double_linear_; }
  // Heads of the k projection: KV heads in the double-linear layout, query heads otherwise.
  std::int64_t key_heads() const { return has_q_projection() ? num_kv_heads_ : num_q_heads_; }
  std::int64_t query_input_width() const { return static_cast<std::int64_t>(type_.query_pools.size()) * head_dim_; }
  std::int64_t key_input_width() const { return static_cast<std::int64_t>(type_.key_pools.size()) * head_dim_; }

  // Weights, row-major [heads, in, out]. The mutable pointers let a trainer update them in place
  // (the sizes are fixed by the layout).
  const std::vector<float>& k_projection() const { return k_projection_; }
  const std::vector<float>& q_projection() const { return q_projection_; }
  float* k_projection_data() { return k_projection_.data(); }
  float* q_projection_data() { return q_projection_.data(); }

 private:
  // Validates everything the RoPE and the layout depend on; returns the RoPE to build.
  static RotaryEmbedding checked_rope(const LearnedGateConfig& config, std::int64_t num_q_heads,
                                      std::int64_t num_kv_heads, std::int64_t head_dim) {
    require(config.block_size > 0, "config.block_size", "is ", config.block_size, ", expected > 0");
    require(num_q_heads > 0, "num_q_heads", "is ", num_q_heads, ", expected > 0");
    require(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, "num_kv_heads", "is ", num_kv_heads,
            ", expected a divisor of num_q_heads (", num_q_heads, ")");
    require(head_dim > 0, "head_dim", "is ", head_dim, ", expected > 0");
    require(config.hidden_size == head_dim, "config.hidden_size", "is ", config.hidden_size,
            ", but the gate's RoPE rotates hidden_size-wide features with the model's head_dim (", head_dim,
            ") tables, so it must equal head_dim");
    require(config.rope.head_dim == head_dim, "config.rope.head_dim", "is ", config.rope.head_dim,
            ", expected the rotary dimension to equal head_dim (", head_dim, ")");
    return RotaryEmbedding(config.rope);
  }

  static void require_finite(const std::vector<float>& weights, const char* name) {
    for (std::size_t i = 0; i < weights.size(); ++i)
      require(std::isfinite(weights[i]), name, "value ", i, " is ", weights[i], ", expected finite weights");
  }

  const float* key_weights(std::int64_t key_head) const {
    return k_projection_.data() + key_head * key_input_width() * config_.hidden_size;
  }
  const float* query_weights(std::int64_t h) const {
    return q_projection_.data() + h * query_input_width() * config_.hidden_size;
  }

  // out[o] = sum_i in[i] * weights[i, o], o < hidden_size.
  void project(const double* in, const float* weights, std::int64_t in_width, double* out) const {
    const std::int64_t dg = config_.hidden_size;
    for (std::int64_t o = 0; o < dg; ++o) out[o] = 0.0;
    for (std::int64_t i = 0; i < in_width; ++i) {
      const double x = in[i];
      const float* row = weights + i * dg;
      for (std::int64_t o = 0; o < dg; ++o) out[o] += x * static_cast<double>(row[o]);
    }
  }

  LearnedGateConfig config_;
  GateType type_;
  std::int64_t num_q_heads_;
  std::int64_t num_kv_heads_;
  std::int64_t head_dim_;
  RotaryEmbedding rope_;
  bool double_linear_;
  std::vector<float> k_projection_;
  std::vector<float> q_projection_;
};

}  // namespace seer
