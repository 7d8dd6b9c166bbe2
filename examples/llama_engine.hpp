// A small CPU inference engine for Hugging Face Llama checkpoints, written the way an engine
// builder would plug seer in.
//
// The engine owns the model (embeddings, RMSNorm, projections, RoPE, SwiGLU MLP) and hands each
// layer's attention to a caller-supplied function. That function sees everything an attention
// backend needs, including the pre-RoPE Q and K that the SeerAttention gate reads, and writes the
// attention output. Dense attention, seer's block-sparse attention with any gate and selection
// policy, or a GPU backend are just different functions (see examples/prefill_pipeline.cpp).
//
// Two ways to run it, both over one sequence with float32 activations (weights converted from the
// checkpoint's bf16 to float once at load time):
//   forward(tokens, backend)          a whole-prompt prefill; the backend gets Q, K, V of the prompt.
//   extend(cache, tokens, backend)    appends tokens to a KV cache (a prompt, then one or a few tokens
//                                     per decode step); the backend gets the new queries and the cache
//                                     as a seer::KvCacheView, which is what a decode kernel reads.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gate/rotary_embedding.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"

namespace engine {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// What an attention backend gets for one layer. All views are [1, tokens, heads, head_dim].
struct LayerAttention {
  std::int64_t layer = 0;
  seer::SequenceBatch<const float> q_before_rope;  // what the SeerAttention gate pools
  seer::SequenceBatch<const float> k_before_rope;
  seer::SequenceBatch<const float> q;  // after RoPE: what attention reads
  seer::SequenceBatch<const float> k;
  seer::SequenceBatch<const float> v;
  seer::SequenceBatch<float> out;  // [1, tokens, q_heads, head_dim], written by the backend
};

using AttentionBackend = std::function<void(const LayerAttention&)>;

// One layer's attention during extend(): `new_tokens` queries at positions [position, position +
// new_tokens) against a cache that already holds them. The cache stores keys after RoPE (what
// attention reads) and, beside them, the keys before RoPE (what the SeerAttention-R decode gate pools
// into its K-compression cache); both views share the values and the lengths.
struct CachedLayerAttention {
  std::int64_t layer = 0;
  std::int64_t position = 0;                       // tokens cached before this call
  seer::SequenceBatch<const float> q_before_rope;  // [1, new_tokens, q_heads, head_dim]
  seer::SequenceBatch<const float> q;
  seer::KvCacheView<const float> cache;              // lengths[0] = position + new_tokens
  seer::KvCacheView<const float> cache_before_rope;  // keys before RoPE, same values
  seer::SequenceBatch<float> out;                    // [1, new_tokens, q_heads, head_dim]
};

using CachedAttentionBackend = std::function<void(const CachedLayerAttention&)>;

// The per-layer key/value cache of one sequence, contiguous, with a fixed capacity.
class KvCache {
 public:
  KvCache(const seer::io::ModelConfig& config, std::int64_t capacity)
      : capacity_(capacity), heads_(config.num_kv_heads), head_dim_(config.head_dim) {
    seer::require(capacity > 0, "capacity", "is ", capacity, ", expected > 0");
    const auto size = static_cast<std::size_t>(capacity * heads_ * head_dim_);
    layers_.resize(static_cast<std::size_t>(config.num_layers));
    for (auto& layer : layers_) {
      layer.keys.assign(size, 0.0f);
      layer.keys_before_rope.assign(size, 0.0f);
      layer.values.assign(size, 0.0f);
    }
  }

  std::int64_t length() const { return length_[0]; }
  std::int64_t capacity() const { return capacity_; }

 private:
  friend class LlamaModel;
  struct Layer {
    std::vector<float> keys, keys_before_rope, values;
  };
  seer::KvCacheView<const float> view(const std::vector<float>& keys, const std::vector<float>& values) const {
    const auto layout = [&](const std::vector<float>& data) {
      return seer::TensorView<const float, 4>::contiguous(data.data(), {1, capacity_, heads_, head_dim_});
    };
    return seer::contiguous_kv_cache(layout(keys), layout(values), length_.data(), capacity_);
  }
  float* slot(std::vector<float>& data, std::int64_t position) { return data.data() + position * heads_ * head_dim_; }

  std::int64_t capacity_, heads_, head_dim_;
  std::vector<std::int32_t> length_{0};
  std::vector<Layer> layers_;
};

class LlamaModel {
 public:
  static LlamaModel load(const std::string& directory) {
    LlamaModel model;
    model.config_ = seer::io::read_model_config(directory + "/config.json");
    const auto& c = model.config_;
    seer::require(c.hidden_size == c.num_q_heads * c.head_dim, "config",
                  "this engine needs hidden_size == num_attention_heads * head_dim");
    const auto checkpoint = seer::io::Checkpoint::open(directory);
    auto matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
      const auto values = checkpoint.read_float(name, {rows, cols});
      return RowMatrix(Eigen::Map<const RowMatrix>(values.data(), rows, cols));
    };
    auto vector = [&](const std::string& name, std::int64_t size) {
      const auto values = checkpoint.read_float(name, {size});
      return Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(values.data(), size));
    };
    const std::int64_t hidden = c.hidden_size, q_width = c.num_q_heads * c.head_dim,
                       kv_width = c.num_kv_heads * c.head_dim;
    model.embedding_ = matrix("model.embed_tokens.weight", c.vocab_size, hidden);
    model.output_ = c.tie_word_embeddings ? model.embedding_ : matrix("lm_head.weight", c.vocab_size, hidden);
    model.final_norm_ = vector("model.norm.weight", hidden);
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      const std::string prefix = "model.layers." + std::to_string(l) + ".";
      Layer layer;
      layer.attention_norm = vector(prefix + "input_layernorm.weight", hidden);
      layer.mlp_norm = vector(prefix + "post_attention_layernorm.weight", hidden);
      layer.q_proj = matrix(prefix + "self_attn.q_proj.weight", q_width, hidden);
      layer.k_proj = matrix(prefix + "self_attn.k_proj.weight", kv_width, hidden);
      layer.v_proj = matrix(prefix + "self_attn.v_proj.weight", kv_width, hidden);
      layer.o_proj = matrix(prefix + "self_attn.o_proj.weight", hidden, q_width);
      layer.gate_proj = matrix(prefix + "mlp.gate_proj.weight", c.intermediate_size, hidden);
      layer.up_proj = matrix(prefix + "mlp.up_proj.weight", c.intermediate_size, hidden);
      layer.down_proj = matrix(prefix + "mlp.down_proj.weight", hidden, c.intermediate_size);
      model.layers_.push_back(std::move(layer));
    }
    return model;
  }

  const seer::io::ModelConfig& config() const { return config_; }

  // Runs the model over `tokens` and returns the logits [tokens, vocab]. `attention` computes each
  // layer's attention.
  RowMatrix forward(const std::vector<std::int32_t>& tokens, const AttentionBackend& attention) const {
    const auto n = static_cast<std::int64_t>(tokens.size());
    const RopeTable rope(config_.rope, n);
    return run_layers(tokens, rope, 0, [&](const LayerActivations& a) {
      LayerAttention call;
      call.layer = a.layer;
      call.q_before_rope = view(a.q_before_rope, config_.num_q_heads);
      call.k_before_rope = view(a.k_before_rope, config_.num_kv_heads);
      call.q = view(a.q, config_.num_q_heads);
      call.k = view(a.k, config_.num_kv_heads);
      call.v = view(a.v, config_.num_kv_heads);
      call.out = mutable_view(a.out, config_.num_q_heads);
      attention(call);
    });
  }

  // Appends `tokens` to `cache` and returns their logits [tokens, vocab]. Call it with a prompt, then
  // with one (or a few, for speculative decoding) tokens per decode step.
  RowMatrix extend(KvCache& cache, const std::vector<std::int32_t>& tokens,
                   const CachedAttentionBackend& attention) const {
    const auto n = static_cast<std::int64_t>(tokens.size());
    const std::int64_t position = cache.length();
    seer::require(n > 0, "tokens", "is empty; extend appends at least one token");
    seer::require(position + n <= cache.capacity(), "tokens", position + n, " tokens exceed the cache capacity ",
                  cache.capacity());
    seer::require(static_cast<std::int64_t>(cache.layers_.size()) == config_.num_layers, "cache",
                  "was made for another model (", cache.layers_.size(), " layers)");
    if (!cache_rope_ || cache_rope_->cos.rows() < cache.capacity())
      cache_rope_ = std::make_shared<RopeTable>(config_.rope, cache.capacity());
    const std::int64_t kv_width = config_.num_kv_heads * config_.head_dim;
    cache.length_[0] = static_cast<std::int32_t>(position + n);
    try {
      return run_layers(tokens, *cache_rope_, position, [&](const LayerActivations& a) {
        auto& layer = cache.layers_[static_cast<std::size_t>(a.layer)];
        std::copy(a.k.data(), a.k.data() + n * kv_width, cache.slot(layer.keys, position));
        std::copy(a.k_before_rope.data(), a.k_before_rope.data() + n * kv_width,
                  cache.slot(layer.keys_before_rope, position));
        std::copy(a.v.data(), a.v.data() + n * kv_width, cache.slot(layer.values, position));
        CachedLayerAttention call;
        call.layer = a.layer;
        call.position = position;
        call.q_before_rope = view(a.q_before_rope, config_.num_q_heads);
        call.q = view(a.q, config_.num_q_heads);
        call.cache = cache.view(layer.keys, layer.values);
        call.cache_before_rope = cache.view(layer.keys_before_rope, layer.values);
        call.out = mutable_view(a.out, config_.num_q_heads);
        attention(call);
      });
    } catch (...) {
      cache.length_[0] = static_cast<std::int32_t>(position);  // the cache stays as it was
      throw;
    }
  }

  // Mean negative log2-likelihood of each next token (bits per token; bits per byte for byte-level
  // models), skipping the first `skip` predictions.
  static double bits_per_token(const RowMatrix& logits, const std::vector<std::int32_t>& tokens,
                               std::int64_t skip = 0) {
    double bits = 0.0;
    std::int64_t count = 0;
    for (std::int64_t t = skip; t + 1 < static_cast<std::int64_t>(tokens.size()); ++t) {
      bits += bits_of_token(logits, t, tokens[t + 1]);
      ++count;
    }
    return count ? bits / static_cast<double>(count) : 0.0;
  }

  // -log2 of the probability that logits row `row` gives to `token`.
  static double bits_of_token(const RowMatrix& logits, Eigen::Index row, std::int32_t token) {
    const auto values = logits.row(row).cast<double>();
    const double peak = values.maxCoeff();
    const double log_total = peak + std::log((values.array() - peak).exp().sum());
    return (log_total - values(token)) / std::log(2.0);
  }

 private:
  struct Layer {
    Eigen::VectorXf attention_norm, mlp_norm;
    RowMatrix q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  };

  // One layer's projections for the tokens of a call, rows = tokens.
  struct LayerActivations {
    std::int64_t layer;
    const RowMatrix &q_before_rope, &k_before_rope, &q, &k, &v;
    RowMatrix& out;  // [tokens, q_heads * head_dim], filled by the attention step
  };
  struct RopeTable;

  // The transformer stack shared by forward() and extend(): embeddings, per layer RMSNorm -> QKV ->
  // RoPE at positions [first_position, ...) -> `attend` -> output projection -> SwiGLU MLP, then the
  // final norm and the LM head.
  template <class Attend>
  RowMatrix run_layers(const std::vector<std::int32_t>& tokens, const RopeTable& rope, std::int64_t first_position,
                       const Attend& attend) const {
    const auto& c = config_;
    const auto n = static_cast<std::int64_t>(tokens.size());
    RowMatrix x(n, c.hidden_size);
    for (std::int64_t t = 0; t < n; ++t) {
      seer::require(tokens[t] >= 0 && tokens[t] < c.vocab_size, "tokens", "token ", tokens[t], " at position ", t,
                    " is outside the vocabulary [0, ", c.vocab_size, ")");
      x.row(t) = embedding_.row(tokens[t]);
    }
    RowMatrix q_before(n, c.num_q_heads * c.head_dim), k_before(n, c.num_kv_heads * c.head_dim);
    RowMatrix q, k, v, attended(n, c.num_q_heads * c.head_dim), h;
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      const Layer& layer = layers_[l];
      h = rms_norm(x, layer.attention_norm);
      q_before.noalias() = h * layer.q_proj.transpose();
      k_before.noalias() = h * layer.k_proj.transpose();
      v.noalias() = h * layer.v_proj.transpose();
      q = q_before;
      k = k_before;
      rope.rotate(q, c.num_q_heads, c.head_dim, first_position);
      rope.rotate(k, c.num_kv_heads, c.head_dim, first_position);
      attend(LayerActivations{l, q_before, k_before, q, k, v, attended});
      x.noalias() += attended * layer.o_proj.transpose();
      h = rms_norm(x, layer.mlp_norm);
      RowMatrix gate = h * layer.gate_proj.transpose();
      const RowMatrix up = h * layer.up_proj.transpose();
      gate = gate.unaryExpr([](float value) { return value / (1.0f + std::exp(-value)); }).cwiseProduct(up);
      x.noalias() += gate * layer.down_proj.transpose();
    }
    h = rms_norm(x, final_norm_);
    return h * output_.transpose();
  }

  // cos/sin of the model's RoPE for positions [0, tokens), rotate_half pairing, YaRN attention
  // factor folded in (seer::RotaryEmbedding holds the formulas; this only tabulates them in float).
  struct RopeTable {
    RopeTable(const seer::RopeConfig& config, std::int64_t tokens) : half(config.head_dim / 2) {
      seer::RopeConfig at_length = config;
      at_length.scaling.sequence_length = tokens;  // dynamic NTK evaluates its base at the prompt length
      const seer::RotaryEmbedding rotary(at_length);
      cos.resize(tokens, half);
      sin.resize(tokens, half);
      for (std::int64_t p = 0; p < tokens; ++p)
        for (std::int64_t i = 0; i < half; ++i) {
          const double angle = static_cast<double>(p) * rotary.inverse_frequencies()[i];
          cos(p, i) = static_cast<float>(std::cos(angle) * rotary.attention_factor());
          sin(p, i) = static_cast<float>(std::sin(angle) * rotary.attention_factor());
        }
    }
    // Rotates row r of x as position first_position + r.
    void rotate(RowMatrix& x, std::int64_t heads, std::int64_t head_dim, std::int64_t first_position) const {
      for (std::int64_t r = 0; r < x.rows(); ++r)
        for (std::int64_t h = 0; h < heads; ++h) {
          const std::int64_t p = first_position + r;
          float* vector = x.data() + r * x.cols() + h * head_dim;
          for (std::int64_t i = 0; i < half; ++i) {
            const float a = vector[i], b = vector[i + half];
            vector[i] = a * cos(p, i) - b * sin(p, i);
            vector[i + half] = b * cos(p, i) + a * sin(p, i);
          }
        }
    }
    std::int64_t half;
    RowMatrix cos, sin;
  };

  RowMatrix rms_norm(const RowMatrix& x, const Eigen::VectorXf& weight) const {
    RowMatrix out(x.rows(), x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      const float mean_square = x.row(t).squaredNorm() / static_cast<float>(x.cols());
      const float inverse = 1.0f / std::sqrt(mean_square + static_cast<float>(config_.rms_norm_eps));
      out.row(t) = (x.row(t) * inverse).cwiseProduct(weight.transpose());
    }
    return out;
  }

  seer::SequenceBatch<const float> view(const RowMatrix& m, std::int64_t heads) const {
    return seer::padded_batch(
        seer::TensorView<const float, 4>::contiguous(m.data(), {1, m.rows(), heads, config_.head_dim}), "activations");
  }

  seer::SequenceBatch<float> mutable_view(RowMatrix& m, std::int64_t heads) const {
    return seer::padded_batch(seer::TensorView<float, 4>::contiguous(m.data(), {1, m.rows(), heads, config_.head_dim}),
                              "out");
  }

  seer::io::ModelConfig config_;
  mutable std::shared_ptr<RopeTable> cache_rope_;  // RoPE tables for extend(), up to the cache capacity
  RowMatrix embedding_, output_;
  Eigen::VectorXf final_norm_;
  std::vector<Layer> layers_;
};

// Bytes are tokens for the byte-level models this engine is tested with.
inline std::vector<std::int32_t> bytes_as_tokens(const std::string& text) {
  std::vector<std::int32_t> tokens;
  tokens.reserve(text.size());
  for (const unsigned char c : text) tokens.push_back(c);
  return tokens;
}

}  // namespace engine
