// Loading published SeerAttention prefill gate weights into seer::LearnedGate objects, one per layer.
//
// The released gate repositories ship config.json (the base model's config plus the seerattn_* keys)
// and attn_gate_weights.pth, a torch.save'd dict of bf16 tensors (§7 of the reference). The same
// tensors in safetensors form (one file or a sharded checkpoint directory) load the same way. Keys,
// for each layer i (weights row-major [heads, in, out], as LearnedGate stores them):
//   model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight   single linear (released): [Hq, |k pools|*D, dg]
//                                                               double linear: [Hkv, |k pools|*D, dg]
//   model.layers.{i}.self_attn.attn_gate.mask_linear_q.weight   double linear only: [Hq, |q pools|*D, dg]
// The layout follows from the config exactly as LearnedGate decides it (more than one query pool,
// dg != D or seerattn_gate_force_double). Every layer of the config must have its weights; shapes
// are checked against the config, and each error names the offending key. Decode gates
// (SeerAttention-R, attngate_linear_* keys) are recognised and refused: LearnedGate is the prefill gate.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"
#include "seer/io/torch_checkpoint.hpp"

namespace seer::io {

// The tensors of a gate checkpoint, whichever format holds them.
class GateWeightFile {
 public:
  // A torch.save file (recognised by its ZIP signature), a safetensors file, or a directory holding
  // model.safetensors or a sharded checkpoint with model.safetensors.index.json.
  static GateWeightFile open(const std::string& path) {
    std::error_code error;
    if (std::filesystem::is_directory(path, error)) {
      if (std::filesystem::exists(path + "/model.safetensors", error) ||
          std::filesystem::exists(path + "/model.safetensors.index.json", error))
        return GateWeightFile(Checkpoint::open(path));
      throw FormatError(path, "is a directory without model.safetensors or model.safetensors.index.json");
    }
    std::ifstream file(path, std::ios::binary);
    if (!file) throw FormatError(path, "cannot open the file for reading");
    char magic[4] = {0, 0, 0, 0};
    file.read(magic, 4);
    if (file.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4)
      return GateWeightFile(TorchCheckpoint::open(path));
    return GateWeightFile(SafetensorsFile::open(path));
  }
  explicit GateWeightFile(TorchCheckpoint file)
      : torch_(std::make_shared<TorchCheckpoint>(std::move(file))), source_(torch_->source()) {}
  explicit GateWeightFile(SafetensorsFile file)
      : safetensors_(std::make_shared<SafetensorsFile>(std::move(file))), source_(safetensors_->source()) {}
  explicit GateWeightFile(Checkpoint checkpoint)
      : checkpoint_(std::make_shared<Checkpoint>(std::move(checkpoint))), source_("safetensors checkpoint") {}

  const std::string& source() const { return source_; }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    if (torch_)
      for (const auto& tensor : torch_->tensors()) out.push_back(tensor.name);
    if (safetensors_)
      for (const auto& tensor : safetensors_->tensors()) out.push_back(tensor.name);
    if (checkpoint_) out = checkpoint_->tensor_names();
    return out;
  }
  bool contains(const std::string& name) const {
    if (torch_) return torch_->find(name) != nullptr;
    if (safetensors_) return safetensors_->find(name) != nullptr;
    return checkpoint_->contains(name);
  }
  std::vector<std::int64_t> shape(const std::string& name) const {
    if (torch_) return torch_->info(name).shape;
    if (safetensors_) return safetensors_->info(name).shape;
    return checkpoint_->file_of(name).info(name).shape;
  }
  std::vector<float> read_float(const std::string& name) const {
    if (torch_) return torch_->read_float(name);
    if (safetensors_) return safetensors_->read_float(name);
    return checkpoint_->read_float(name);
  }

 private:
  std::shared_ptr<TorchCheckpoint> torch_;
  std::shared_ptr<SafetensorsFile> safetensors_;
  std::shared_ptr<Checkpoint> checkpoint_;
  std::string source_;
};

// The state-dict key of one gate weight: which = "mask_linear_k" or "mask_linear_q".
inline std::string prefill_gate_key(std::int64_t layer, const std::string& which) {
  return "model.layers." + std::to_string(layer) + ".self_attn.attn_gate." + which + ".weight";
}

// The LearnedGate settings a config.json describes: the seerattn_* keys and the model's RoPE.
inline LearnedGateConfig learned_gate_config(const ModelConfig& config) {
  LearnedGateConfig gate;
  gate.gate_type = config.seer.gate_type;
  gate.block_size = config.seer.gate_block_size;
  gate.hidden_size = config.seer.gate_hidden_size;
  gate.force_double = config.seer.gate_force_double;
  gate.rope = config.rope;
  return gate;
}

// One LearnedGate per layer of `config`, from the weights in `weights`.
inline std::vector<LearnedGate> load_prefill_gates(const GateWeightFile& weights, const ModelConfig& config) {
  const std::string& source = weights.source();
  const LearnedGateConfig gate_config = learned_gate_config(config);
  const std::int64_t hq = config.num_q_heads, hkv = config.num_kv_heads, dim = config.head_dim;
  const std::int64_t dg = gate_config.hidden_size;
  // The layout LearnedGate will use, checked before any tensor is read (this also validates the
  // gate type and sizes and names the config key at fault).
  GateType type;
  try {
    type = GateType::parse(gate_config.gate_type);
  } catch (const InvalidArgument& error) {
    throw FormatError(source, std::string("seerattn_gate_type: ") + error.what());
  }
  const LearnedGateLayout layout = LearnedGateLayout::of(type, gate_config, hq, hkv, dim);
  const bool double_linear = layout.double_linear;
  const std::vector<std::int64_t>& k_shape = layout.k_shape;
  const std::vector<std::int64_t>& q_shape = layout.q_shape;

  // Recognise checkpoints that do not hold prefill gates at all, and layers beyond the config.
  for (const auto& name : weights.names()) {
    if (name.find(".attn_gate.attngate_linear_") != std::string::npos)
      throw FormatError(source, "tensor \"" + name +
                                    "\" belongs to a SeerAttention-R decode gate; seer's LearnedGate loads prefill "
                                    "gates (mask_linear_* keys) only");
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

  auto read_checked = [&](const std::string& key, const std::vector<std::int64_t>& expected) {
    if (!weights.contains(key)) throw FormatError(source, "missing gate weight \"" + key + "\"");
    const auto shape = weights.shape(key);
    if (shape != expected)
      throw FormatError(source, "gate weight \"" + key + "\" has shape " + SafetensorsFile::shape_string(shape) +
                                    ", but the config (" + std::to_string(hq) + " query heads, " + std::to_string(hkv) +
                                    " KV heads, head_dim " + std::to_string(dim) + ", gate type " +
                                    gate_config.gate_type + ", hidden size " + std::to_string(dg) +
                                    (double_linear ? ", double linear" : ", single linear") + ") needs " +
                                    SafetensorsFile::shape_string(expected));
    return weights.read_float(key);
  };

  std::vector<LearnedGate> gates;
  for (std::int64_t layer = 0; layer < config.num_layers; ++layer) {
    const std::string k_key = prefill_gate_key(layer, "mask_linear_k");
    const std::string q_key = prefill_gate_key(layer, "mask_linear_q");
    std::vector<float> k_projection = read_checked(k_key, k_shape);
    std::vector<float> q_projection;
    if (double_linear) {
      q_projection = read_checked(q_key, q_shape);
    } else if (weights.contains(q_key)) {
      throw FormatError(source, "gate weight \"" + q_key + "\" is present, but the config's gate (" +
                                    gate_config.gate_type +
                                    ", hidden size == head_dim, force_double off) has no q projection; check "
                                    "seerattn_gate_type, seerattn_gate_hidden_size and seerattn_gate_force_double");
    }
    try {
      gates.emplace_back(gate_config, hq, hkv, dim, std::move(k_projection), std::move(q_projection));
    } catch (const InvalidArgument& error) {
      throw FormatError(source, "layer " + std::to_string(layer) + " (" + k_key + "): " + error.what());
    }
  }
  return gates;
}

// Reads config.json and the weights (attn_gate_weights.pth, a .safetensors file or a checkpoint directory).
inline std::vector<LearnedGate> load_prefill_gates(const std::string& weights_path, const std::string& config_path) {
  return load_prefill_gates(GateWeightFile::open(weights_path), read_model_config(config_path));
}

}  // namespace seer::io
