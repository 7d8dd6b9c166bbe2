// Hugging Face config.json for Llama-family models, including RoPE scaling and the SeerAttention
// `seerattn_*` keys.
//
// RoPE settings appear in two spellings and both are accepted:
//   older configs: top-level "rope_theta" and an optional "rope_scaling" object whose type is under
//                  "rope_type" (or the legacy "type");
//   newer configs (transformers 5): a "rope_parameters" object holding "rope_theta", "rope_type"
//                  and the scaling fields.
// For dynamic-NTK, llama3 and YaRN scaling the pre-training context length defaults to the config's
// max_position_embeddings when the scaling entry does not name original_max_position_embeddings
// (transformers does the same).
#pragma once

#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include "seer/core/error.hpp"
#include "seer/gate/rotary_embedding.hpp"
#include "seer/io/json.hpp"

namespace seer::io {

// The `seerattn_*` keys of a SeerAttention gate config (§7 of the reference). Absent keys keep the
// defaults of the original configuration classes.
struct SeerAttentionConfig {
  bool present = false;                           // any seerattn_* key was found
  std::string sparsity_method = "threshold";      // prefill: threshold | nz_ratio; decode: threshold | token_budget
  double threshold = 0.0;                         // seerattn_threshold
  double nz_ratio = 1.0;                          // seerattn_nz_ratio (target density for TopK)
  std::string gate_type = "Qavg_Kmaxminavg";      // seerattn_gate_type
  std::int64_t gate_block_size = 64;              // seerattn_gate_block_size
  std::int64_t gate_hidden_size = 128;            // seerattn_gate_hidden_size
  bool last_block_dense = true;                   // seerattn_last_block_dense (2 dense rows)
  bool gate_force_double = false;                 // seerattn_gate_force_double
  std::int64_t token_budget = 4096;               // decode: seerattn_token_budget
  bool use_rope = true;                           // decode: seerattn_use_rope
  bool use_qk_norm = false;                       // decode: seerattn_use_qk_norm
  std::string k_seq_pooling_type = "Kmaxminavg";  // decode: seerattn_k_seq_pooling_type
  std::string q_head_pooling_type = "Qproj";      // decode: seerattn_q_head_pooling_type
  std::int64_t start_layer = 0;                   // decode: seerattn_start_layer
};

struct ModelConfig {
  std::string model_type;
  std::int64_t hidden_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_q_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  RopeConfig rope;
  SeerAttentionConfig seer;
};

namespace detail {

inline std::int64_t integer_member(const JsonValue& object, const char* key, const std::string& source,
                                   std::optional<std::int64_t> fallback = std::nullopt) {
  const JsonValue* value = object.find(key);
  if (value == nullptr || value->is_null()) {
    if (fallback) return *fallback;
    throw FormatError(source, std::string("missing required key \"") + key + "\"");
  }
  return value->as_integer(source + " " + key);
}

inline double number_member(const JsonValue& object, const char* key, const std::string& source, double fallback) {
  const JsonValue* value = object.find(key);
  return value == nullptr || value->is_null() ? fallback : value->as_number(source + " " + key);
}

inline bool boolean_member(const JsonValue& object, const char* key, const std::string& source, bool fallback) {
  const JsonValue* value = object.find(key);
  return value == nullptr || value->is_null() ? fallback : value->as_boolean(source + " " + key);
}

inline std::string string_member(const JsonValue& object, const char* key, const std::string& source,
                                 const std::string& fallback) {
  const JsonValue* value = object.find(key);
  return value == nullptr || value->is_null() ? fallback : value->as_string(source + " " + key);
}

// Fills `scaling` from a rope_scaling / rope_parameters object.
inline void read_rope_scaling(const JsonValue& entry, const std::string& source, std::int64_t max_positions,
                              RopeScaling& scaling) {
  scaling.type = string_member(entry, "rope_type", source, string_member(entry, "type", source, "default"));
  scaling.factor = number_member(entry, "factor", source, 1.0);
  scaling.original_max_position_embeddings =
      integer_member(entry, "original_max_position_embeddings", source, max_positions);
  scaling.low_freq_factor = number_member(entry, "low_freq_factor", source, scaling.low_freq_factor);
  scaling.high_freq_factor = number_member(entry, "high_freq_factor", source, scaling.high_freq_factor);
  scaling.beta_fast = number_member(entry, "beta_fast", source, scaling.beta_fast);
  scaling.beta_slow = number_member(entry, "beta_slow", source, scaling.beta_slow);
  scaling.mscale = number_member(entry, "mscale", source, scaling.mscale);
  scaling.mscale_all_dim = number_member(entry, "mscale_all_dim", source, scaling.mscale_all_dim);
  if (const JsonValue* factor = entry.find("attention_factor"); factor && !factor->is_null())
    scaling.attention_factor = factor->as_number(source + " attention_factor");
  scaling.truncate = boolean_member(entry, "truncate", source, scaling.truncate);
}

}  // namespace detail

// Larger head dims are rejected as corrupt: the RoPE tables are sized by head_dim.
constexpr std::int64_t max_head_dim = 65536;

inline ModelConfig parse_model_config(const std::string& text, const std::string& source) {
  using namespace detail;
  const JsonValue root = parse_json(text, source);
  root.as_object(source);
  ModelConfig config;
  config.model_type = string_member(root, "model_type", source, "");
  config.hidden_size = integer_member(root, "hidden_size", source);
  config.num_layers = integer_member(root, "num_hidden_layers", source);
  config.num_q_heads = integer_member(root, "num_attention_heads", source);
  config.num_kv_heads = integer_member(root, "num_key_value_heads", source, config.num_q_heads);
  if (config.num_q_heads <= 0 || config.num_kv_heads <= 0 || config.num_q_heads % config.num_kv_heads != 0)
    throw FormatError(source, "num_attention_heads (" + std::to_string(config.num_q_heads) +
                                  ") must be a positive multiple of num_key_value_heads (" +
                                  std::to_string(config.num_kv_heads) + ")");
  if (config.hidden_size <= 0) throw FormatError(source, "hidden_size must be positive");
  config.head_dim = integer_member(root, "head_dim", source, config.hidden_size / config.num_q_heads);
  config.intermediate_size = integer_member(root, "intermediate_size", source, 0);
  config.vocab_size = integer_member(root, "vocab_size", source, 0);
  config.max_position_embeddings = integer_member(root, "max_position_embeddings", source, 0);
  config.rms_norm_eps = number_member(root, "rms_norm_eps", source, config.rms_norm_eps);
  config.tie_word_embeddings = boolean_member(root, "tie_word_embeddings", source, false);
  config.attention_bias = boolean_member(root, "attention_bias", source, false);
  if (config.num_layers <= 0 || config.head_dim <= 0 || config.head_dim % 2 != 0)
    throw FormatError(source, "num_hidden_layers must be positive and head_dim positive and even");
  // Real models use head dims of a few hundred; the bound keeps a corrupt config from sizing huge RoPE tables.
  if (config.head_dim > max_head_dim)
    throw FormatError(source, "head_dim " + std::to_string(config.head_dim) + " exceeds the limit of " +
                                  std::to_string(max_head_dim));

  config.rope.head_dim = config.head_dim;
  if (const JsonValue* parameters = root.find("rope_parameters"); parameters && !parameters->is_null()) {
    parameters->as_object(source + " rope_parameters");
    config.rope.theta = number_member(*parameters, "rope_theta", source, 10000.0);
    read_rope_scaling(*parameters, source + " rope_parameters", config.max_position_embeddings, config.rope.scaling);
  } else {
    config.rope.theta = number_member(root, "rope_theta", source, 10000.0);
    if (const JsonValue* scaling = root.find("rope_scaling"); scaling && !scaling->is_null()) {
      scaling->as_object(source + " rope_scaling");
      read_rope_scaling(*scaling, source + " rope_scaling", config.max_position_embeddings, config.rope.scaling);
    }
  }
  try {
    RotaryEmbedding check(config.rope);
    (void)check;
  } catch (const InvalidArgument& error) {
    throw FormatError(source, std::string("unusable RoPE settings: ") + error.what());
  }

  SeerAttentionConfig& seer = config.seer;
  for (const auto& member : root.as_object(source))
    if (member.first.rfind("seerattn_", 0) == 0) seer.present = true;
  seer.sparsity_method = string_member(root, "seerattn_sparsity_method", source, seer.sparsity_method);
  seer.threshold = number_member(root, "seerattn_threshold", source, seer.threshold);
  seer.nz_ratio = number_member(root, "seerattn_nz_ratio", source, seer.nz_ratio);
  seer.gate_type = string_member(root, "seerattn_gate_type", source, seer.gate_type);
  seer.gate_block_size = integer_member(root, "seerattn_gate_block_size", source, seer.gate_block_size);
  seer.gate_hidden_size = integer_member(root, "seerattn_gate_hidden_size", source, seer.gate_hidden_size);
  seer.last_block_dense = boolean_member(root, "seerattn_last_block_dense", source, seer.last_block_dense);
  seer.gate_force_double = boolean_member(root, "seerattn_gate_force_double", source, seer.gate_force_double);
  seer.token_budget = integer_member(root, "seerattn_token_budget", source, seer.token_budget);
  seer.use_rope = boolean_member(root, "seerattn_use_rope", source, seer.use_rope);
  seer.use_qk_norm = boolean_member(root, "seerattn_use_qk_norm", source, seer.use_qk_norm);
  seer.k_seq_pooling_type = string_member(root, "seerattn_k_seq_pooling_type", source, seer.k_seq_pooling_type);
  seer.q_head_pooling_type = string_member(root, "seerattn_q_head_pooling_type", source, seer.q_head_pooling_type);
  seer.start_layer = integer_member(root, "seerattn_start_layer", source, seer.start_layer);
  return config;
}

inline ModelConfig read_model_config(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw FormatError(path, "cannot open the file for reading");
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return parse_model_config(text, path);
}

}  // namespace seer::io
