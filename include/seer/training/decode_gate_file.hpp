// Saving and loading the DecodeGates of every layer of a model: seer's decode gate file.
//
// Format: one safetensors file (io/safetensors.hpp) with the original SeerAttention-R state-dict names
// (io/decode_gate_weights.hpp), so converting to attn_gate_weights.pth needs no renaming:
//   model.layers.{i}.self_attn.attn_gate.attngate_linear_q.weight   F32 (Qproj / Qavgproj only)
//   model.layers.{i}.self_attn.attn_gate.attngate_linear_k.weight   F32 [Hkv, 3D, dg]
//   model.layers.{i}.self_attn.attn_gate.attngate_{q,k}norm.weight  F32 [dg] (use_qk_norm only)
// plus "__metadata__" strings: format = "seer-decode-gates/1", q_head_pooling_type, block_size,
// hidden_size, use_qk_norm, use_rope ("true"/"false"), num_layers, num_q_heads, num_kv_heads, head_dim,
// and any keys the writer adds. RoPE settings are the model's (its config.json), as for prefill gates.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/io/decode_gate_weights.hpp"
#include "seer/io/gate_weights.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"
#include "seer/training/gate_file_metadata.hpp"

namespace seer::training {

inline void write_decode_gate_file(const std::string& path, const std::vector<DecodeGate>& gates,
                                   const std::map<std::string, std::string>& extra_metadata = {}) {
  require(!gates.empty(), "gates", "is empty; expected one decode gate per layer");
  const DecodeGate& first = gates.front();
  const DecodeGateConfig& c = first.config();
  const DecodeGateLayout layout = DecodeGateLayout::of(c, first.num_q_heads(), first.num_kv_heads(), first.head_dim());
  std::vector<io::TensorToWrite> tensors;
  for (std::size_t layer = 0; layer < gates.size(); ++layer) {
    const DecodeGate& gate = gates[layer];
    const DecodeGateConfig& g = gate.config();
    require(g.block_size == c.block_size && g.hidden_size == c.hidden_size &&
                g.query_head_pooling == c.query_head_pooling && g.use_qk_norm == c.use_qk_norm &&
                g.use_rope == c.use_rope && gate.num_q_heads() == first.num_q_heads() &&
                gate.num_kv_heads() == first.num_kv_heads() && gate.head_dim() == first.head_dim(),
            "gates", "layer ", layer, " has a different decode gate configuration from layer 0");
    const auto l = static_cast<std::int64_t>(layer);
    const DecodeGateWeights& w = gate.weights();
    if (!layout.q_shape.empty())
      tensors.push_back(
          io::TensorToWrite::from_float(io::decode_gate_key(l, "attngate_linear_q"), layout.q_shape, w.q_projection));
    tensors.push_back(
        io::TensorToWrite::from_float(io::decode_gate_key(l, "attngate_linear_k"), layout.k_shape, w.k_projection));
    if (!layout.norm_shape.empty()) {
      tensors.push_back(
          io::TensorToWrite::from_float(io::decode_gate_key(l, "attngate_qnorm"), layout.norm_shape, w.q_norm));
      tensors.push_back(
          io::TensorToWrite::from_float(io::decode_gate_key(l, "attngate_knorm"), layout.norm_shape, w.k_norm));
    }
  }
  std::map<std::string, std::string> metadata = extra_metadata;
  metadata["format"] = "seer-decode-gates/1";
  metadata["q_head_pooling_type"] = query_head_pooling_name(c.query_head_pooling);
  metadata["block_size"] = std::to_string(c.block_size);
  metadata["hidden_size"] = std::to_string(c.hidden_size);
  metadata["use_qk_norm"] = c.use_qk_norm ? "true" : "false";
  metadata["use_rope"] = c.use_rope ? "true" : "false";
  GateFileMetadata::add_model_shape(metadata, gates.size(), first.num_q_heads(), first.num_kv_heads(),
                                    first.head_dim());
  io::write_safetensors(path, tensors, metadata);
}

struct DecodeGateFile {
  std::vector<DecodeGate> gates;  // one per layer
  std::map<std::string, std::string> metadata;
};

// Reads a decode gate file for `model` (heads, head dim and RoPE come from the model; they must match).
inline DecodeGateFile read_decode_gate_file(const std::string& path, const io::ModelConfig& model) {
  const auto file = io::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const GateFileMetadata read(path, metadata);
  read.expect_format("seer-decode-gates/1");
  io::ModelConfig described = model;
  described.seer.q_head_pooling_type = read.text("q_head_pooling_type");
  described.seer.k_seq_pooling_type = "Kmaxminavg";
  described.seer.gate_block_size = read.integer("block_size");
  described.seer.gate_hidden_size = read.integer("hidden_size");
  described.seer.use_qk_norm = read.boolean("use_qk_norm");
  described.seer.use_rope = read.boolean("use_rope");
  read.expect_model_shape(model, "decode gates");
  DecodeGateFile result;
  result.metadata = metadata;
  result.gates = io::load_decode_gates(io::GateWeightFile(file), described);
  return result;
}

}  // namespace seer::training
