// Loading SeerAttention-R decode gate weights into seer::DecodeGate objects, one per layer.
//
// The released decode-gate repositories ship config.json (the base model's config plus seerattn_*
// keys) and attn_gate_weights.pth (§7 of the reference); the same tensors in safetensors form load the
// same way (GateWeightFile). Keys for each layer i (row-major, as DecodeGate stores them):
//   model.layers.{i}.self_attn.attn_gate.attngate_linear_q.weight  Qproj [Hkv, g, D, dg]; Qavgproj [Hkv, D, dg]
//   model.layers.{i}.self_attn.attn_gate.attngate_linear_k.weight  [Hkv, 3D, dg]
//   model.layers.{i}.self_attn.attn_gate.attngate_qnorm.weight     [dg] (seerattn_use_qk_norm only)
//   model.layers.{i}.self_attn.attn_gate.attngate_knorm.weight     [dg] (seerattn_use_qk_norm only)
// The config decides the layout (seerattn_q_head_pooling_type, seerattn_use_qk_norm,
// seerattn_gate_hidden_size, seerattn_gate_block_size, seerattn_use_rope). Norm weights present while
// seerattn_use_qk_norm is false are an error: the original's strict=False load would silently drop
// them and run the gates without the norm they were trained with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/io/gate_weights.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"

namespace seer::io {

// which = "attngate_linear_q", "attngate_linear_k", "attngate_qnorm" or "attngate_knorm".
inline std::string decode_gate_key(std::int64_t layer, const std::string& which) {
  return "model.layers." + std::to_string(layer) + ".self_attn.attn_gate." + which + ".weight";
}

// The DecodeGate settings a config.json describes.
inline DecodeGateConfig decode_gate_config(const ModelConfig& config, const std::string& source = "config") {
  DecodeGateConfig gate;
  gate.block_size = config.seer.gate_block_size;
  gate.hidden_size = config.seer.gate_hidden_size;
  try {
    gate.query_head_pooling = parse_query_head_pooling(config.seer.q_head_pooling_type);
  } catch (const InvalidArgument& error) {
    throw FormatError(source, std::string("seerattn_q_head_pooling_type: ") + error.what());
  }
  if (config.seer.k_seq_pooling_type != "Kmaxminavg")
    throw FormatError(source, "seerattn_k_seq_pooling_type is \"" + config.seer.k_seq_pooling_type +
                                  "\"; seer's DecodeGate implements Kmaxminavg (the released and default type)");
  gate.use_qk_norm = config.seer.use_qk_norm;
  gate.use_rope = config.seer.use_rope;
  gate.rope = config.rope;
  return gate;
}

inline std::vector<DecodeGate> load_decode_gates(const GateWeightFile& weights, const ModelConfig& config) {
  const std::string& source = weights.source();
  const DecodeGateConfig gate_config = decode_gate_config(config, source);
  const std::int64_t hq = config.num_q_heads, hkv = config.num_kv_heads, dim = config.head_dim;
  const DecodeGateLayout layout = DecodeGateLayout::of(gate_config, hq, hkv, dim);
  for (const auto& name : weights.names()) {
    if (name.find(".attn_gate.mask_linear_") != std::string::npos)
      throw FormatError(
          source, "tensor \"" + name + "\" belongs to a SeerAttention prefill gate; DecodeGate loads attngate_* keys");
    const std::string prefix = "model.layers.";
    if (name.compare(0, prefix.size(), prefix) != 0 || name.find(".attn_gate.") == std::string::npos) continue;
    std::int64_t layer = 0;
    std::size_t at = prefix.size();
    while (at < name.size() && name[at] >= '0' && name[at] <= '9' && layer < (std::int64_t{1} << 40))
      layer = layer * 10 + (name[at++] - '0');
    if (layer >= config.num_layers)
      throw FormatError(source, "tensor \"" + name + "\" is for layer " + std::to_string(layer) +
                                    ", but the config has " + std::to_string(config.num_layers) + " layers");
  }
  auto read = [&](const std::string& key, const std::vector<std::int64_t>& expected) {
    if (expected.empty()) {
      if (weights.contains(key))
        throw FormatError(source, "gate weight \"" + key + "\" is present, but the config (" +
                                      config.seer.q_head_pooling_type + ", seerattn_use_qk_norm " +
                                      (gate_config.use_qk_norm ? "true" : "false") +
                                      ") has no such tensor; check seerattn_q_head_pooling_type and "
                                      "seerattn_use_qk_norm");
      return std::vector<float>{};
    }
    if (!weights.contains(key)) throw FormatError(source, "missing decode gate weight \"" + key + "\"");
    const auto shape = weights.shape(key);
    if (shape != expected)
      throw FormatError(source, "decode gate weight \"" + key + "\" has shape " + SafetensorsFile::shape_string(shape) +
                                    ", but the config (" + std::to_string(hq) + " query heads, " + std::to_string(hkv) +
                                    " KV heads, head_dim " + std::to_string(dim) + ", " +
                                    config.seer.q_head_pooling_type + ", hidden size " +
                                    std::to_string(gate_config.hidden_size) + ") needs " +
                                    SafetensorsFile::shape_string(expected));
    return weights.read_float(key);
  };
  std::vector<DecodeGate> gates;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    DecodeGateWeights tensors;
    tensors.q_projection = read(decode_gate_key(layer, "attngate_linear_q"), layout.q_shape);
    tensors.k_projection = read(decode_gate_key(layer, "attngate_linear_k"), layout.k_shape);
    tensors.q_norm = read(decode_gate_key(layer, "attngate_qnorm"), layout.norm_shape);
    tensors.k_norm = read(decode_gate_key(layer, "attngate_knorm"), layout.norm_shape);
    try {
      gates.emplace_back(gate_config, hq, hkv, dim, std::move(tensors));
    } catch (const InvalidArgument& error) {
      throw FormatError(source, "decode gate of layer " + std::to_string(layer) + ": " + error.what());
    }
  }
  return gates;
}

// Reads config.json and the weights (attn_gate_weights.pth, a .safetensors file or a checkpoint directory).
inline std::vector<DecodeGate> load_decode_gates(const std::string& weights_path, const std::string& config_path) {
  return load_decode_gates(GateWeightFile::open(weights_path), read_model_config(config_path));
}

}  // namespace seer::io
