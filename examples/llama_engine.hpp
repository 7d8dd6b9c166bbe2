// A small CPU inference engine for Hugging Face Llama checkpoints, written the way an engine
// builder would plug seer in.
//
// The engine owns the model (embeddings, RMSNorm, projections, RoPE, SwiGLU MLP) and hands each
// layer's attention to a caller-supplied function. That function sees everything an attention
// backend needs, including the pre-RoPE Q and K that the SeerAttention gate reads, and writes the
// attention output. Dense attention, seer's block-sparse attention with any gate and selection
// policy, or a GPU backend are just different functions (see examples/prefill_pipeline.cpp).
//
// Only what a prefill needs is here: one sequence, float32 activations, weights converted from the
// checkpoint's bf16 to float once at load time.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
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
    const auto& c = config_;
    const auto n = static_cast<std::int64_t>(tokens.size());
    RowMatrix x(n, c.hidden_size);
    for (std::int64_t t = 0; t < n; ++t) {
      seer::require(tokens[t] >= 0 && tokens[t] < c.vocab_size, "tokens", "token ", tokens[t], " at position ", t,
                    " is outside the vocabulary [0, ", c.vocab_size, ")");
      x.row(t) = embedding_.row(tokens[t]);
    }
    const RopeTable rope(c.rope, n);
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
      rope.rotate(q, c.num_q_heads, c.head_dim);
      rope.rotate(k, c.num_kv_heads, c.head_dim);
      LayerAttention call;
      call.layer = l;
      call.q_before_rope = view(q_before, c.num_q_heads);
      call.k_before_rope = view(k_before, c.num_kv_heads);
      call.q = view(q, c.num_q_heads);
      call.k = view(k, c.num_kv_heads);
      call.v = view(v, c.num_kv_heads);
      call.out = seer::padded_batch(
          seer::TensorView<float, 4>::contiguous(attended.data(), {1, n, c.num_q_heads, c.head_dim}), "out");
      attention(call);
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

  // Mean negative log2-likelihood of each next token (bits per token; bits per byte for byte-level
  // models), skipping the first `skip` predictions.
  static double bits_per_token(const RowMatrix& logits, const std::vector<std::int32_t>& tokens,
                               std::int64_t skip = 0) {
    double bits = 0.0;
    std::int64_t count = 0;
    for (std::int64_t t = skip; t + 1 < static_cast<std::int64_t>(tokens.size()); ++t) {
      const auto row = logits.row(t).cast<double>();
      const double peak = row.maxCoeff();
      const double log_total = peak + std::log((row.array() - peak).exp().sum());
      bits += (log_total - row(tokens[t + 1])) / std::log(2.0);
      ++count;
    }
    return count ? bits / static_cast<double>(count) : 0.0;
  }

 private:
  struct Layer {
    Eigen::VectorXf attention_norm, mlp_norm;
    RowMatrix q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  };

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
    void rotate(RowMatrix& x, std::int64_t heads, std::int64_t head_dim) const {
      for (std::int64_t p = 0; p < x.rows(); ++p)
        for (std::int64_t h = 0; h < heads; ++h) {
          float* vector = x.data() + p * x.cols() + h * head_dim;
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

  seer::io::ModelConfig config_;
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
