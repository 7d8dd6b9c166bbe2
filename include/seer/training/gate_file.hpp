// Saving and loading the LearnedGates of every layer of a model: seer's gate file.
//
// Format: one safetensors file (io/safetensors.hpp), tensor names as in the original SeerAttention
// state dict, so converting to the original's attn_gate_weights.pth needs no renaming:
//   model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight   F32 [key_heads, |k pools| * D, dg]
//   model.layers.{i}.self_attn.attn_gate.mask_linear_q.weight   F32 [Hq, |q pools| * D, dg] (double-linear only)
// (key_heads = Hq in the single-linear layout of every released gate, Hkv in the double-linear one),
// plus "__metadata__" strings:
//   format = "seer-learned-gates/1", gate_type (e.g. Qavg_Kmaxminavg), block_size, hidden_size,
//   force_double ("true"/"false"), num_layers, num_q_heads, num_kv_heads, head_dim,
// and any further keys the writer adds (distill_gates records its training settings there). The
// RoPE settings are not stored: a gate uses its model's (read from the model's config.json).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/io/gate_weights.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"

namespace seer::training {

inline std::string gate_tensor_name(std::int64_t layer, const char* projection) {
  return io::prefill_gate_key(layer, std::string("mask_linear_") + projection);
}

inline void write_gate_file(const std::string& path, const std::vector<LearnedGate>& gates,
                            const std::map<std::string, std::string>& extra_metadata = {}) {
  require(!gates.empty(), "gates", "is empty; expected one gate per layer");
  const LearnedGate& first = gates.front();
  std::vector<io::TensorToWrite> tensors;
  for (std::size_t layer = 0; layer < gates.size(); ++layer) {
    const LearnedGate& gate = gates[layer];
    require(
        gate.config().gate_type == first.config().gate_type && gate.config().block_size == first.config().block_size &&
            gate.config().hidden_size == first.config().hidden_size &&
            gate.config().force_double == first.config().force_double && gate.num_q_heads() == first.num_q_heads() &&
            gate.num_kv_heads() == first.num_kv_heads() && gate.head_dim() == first.head_dim(),
        "gates", "layer ", layer, " has a different gate configuration from layer 0");
    const auto l = static_cast<std::int64_t>(layer);
    tensors.push_back(io::TensorToWrite::from_float(
        gate_tensor_name(l, "k"), {gate.key_heads(), gate.key_input_width(), gate.config().hidden_size},
        gate.k_projection()));
    if (gate.has_q_projection())
      tensors.push_back(io::TensorToWrite::from_float(
          gate_tensor_name(l, "q"), {gate.num_q_heads(), gate.query_input_width(), gate.config().hidden_size},
          gate.q_projection()));
  }
  std::map<std::string, std::string> metadata = extra_metadata;
  metadata["format"] = "seer-learned-gates/1";
  metadata["gate_type"] = first.config().gate_type;
  metadata["block_size"] = std::to_string(first.config().block_size);
  metadata["hidden_size"] = std::to_string(first.config().hidden_size);
  metadata["force_double"] = first.config().force_double ? "true" : "false";
  metadata["num_layers"] = std::to_string(gates.size());
  metadata["num_q_heads"] = std::to_string(first.num_q_heads());
  metadata["num_kv_heads"] = std::to_string(first.num_kv_heads());
  metadata["head_dim"] = std::to_string(first.head_dim());
  io::write_safetensors(path, tensors, metadata);
}

struct GateFile {
  std::vector<LearnedGate> gates;  // one per layer
  std::map<std::string, std::string> metadata;
};

// Reads a gate file for `model` (heads, head dim and RoPE come from the model; they must match the file).
inline GateFile read_gate_file(const std::string& path, const io::ModelConfig& model) {
  const auto file = io::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  auto entry = [&](const char* key) {
    const auto it = metadata.find(key);
    if (it == metadata.end()) throw FormatError(path, std::string("metadata has no \"") + key + "\" entry");
    return it->second;
  };
  auto integer = [&](const char* key) {
    const std::string text = entry(key);
    std::size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || text.empty())
      throw FormatError(path, std::string("metadata \"") + key + "\" is \"" + text + "\", expected an integer");
    return static_cast<std::int64_t>(value);
  };
  if (entry("format") != "seer-learned-gates/1")
    throw FormatError(path, "metadata format is \"" + entry("format") + "\", expected seer-learned-gates/1");
  // The file's gate settings stand in for the seerattn_* keys; heads, head dim and RoPE are the model's.
  io::ModelConfig described = model;
  described.seer.gate_type = entry("gate_type");
  described.seer.gate_block_size = integer("block_size");
  described.seer.gate_hidden_size = integer("hidden_size");
  described.seer.gate_force_double = entry("force_double") == "true";
  const std::int64_t layers = integer("num_layers");
  if (layers != model.num_layers || integer("num_q_heads") != model.num_q_heads ||
      integer("num_kv_heads") != model.num_kv_heads || integer("head_dim") != model.head_dim)
    throw FormatError(path, "gates are for " + std::to_string(layers) + " layers, " + entry("num_q_heads") + "/" +
                                entry("num_kv_heads") + " heads, head dim " + entry("head_dim") + "; the model has " +
                                std::to_string(model.num_layers) + " layers, " + std::to_string(model.num_q_heads) +
                                "/" + std::to_string(model.num_kv_heads) + " heads, head dim " +
                                std::to_string(model.head_dim));
  GateFile result;
  result.metadata = metadata;
  result.gates = io::load_prefill_gates(io::GateWeightFile(file), described);
  return result;
}

}  // namespace seer::training
