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
#include "seer/training/gate_file_metadata.hpp"

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
  GateFileMetadata::add_model_shape(metadata, gates.size(), first.num_q_heads(), first.num_kv_heads(),
                                    first.head_dim());
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
  const GateFileMetadata read(path, metadata);
  read.expect_format("seer-learned-gates/1");
  // The file's gate settings stand in for the seerattn_* keys; heads, head dim and RoPE are the model's.
  io::ModelConfig described = model;
  described.seer.gate_type = read.text("gate_type");
  described.seer.gate_block_size = read.integer("block_size");
  described.seer.gate_hidden_size = read.integer("hidden_size");
  described.seer.gate_force_double = read.text("force_double") == "true";
  read.expect_model_shape(model, "gates");
  GateFile result;
  result.metadata = metadata;
  result.gates = io::load_prefill_gates(io::GateWeightFile(file), described);
  return result;
}

}  // namespace seer::training
