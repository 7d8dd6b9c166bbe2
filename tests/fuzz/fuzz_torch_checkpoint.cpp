// libFuzzer target: a whole torch.save file (ZIP + pickle + storages), every tensor read, and the
// gate-weight loader on top of it.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "seer/io/gate_weights.hpp"
#include "seer/io/torch_checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto checkpoint = seer::io::TorchCheckpoint::from_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const auto& tensor : checkpoint.tensors()) {
      (void)checkpoint.read_bytes(tensor.name);
      try {
        (void)checkpoint.read_float(tensor.name);
      } catch (const seer::InvalidArgument&) {  // an integer tensor
      }
    }
    // The tiny gate of tests/fixtures/gate_tiny_config.json (2 layers, Hq 4, Hkv 2, D = dg = 8).
    static const auto config = seer::io::parse_model_config(
        R"({"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,
            "seerattn_gate_block_size":4,"seerattn_gate_hidden_size":8})",
        "fuzz config");
    (void)seer::io::load_prefill_gates(seer::io::GateWeightFile(std::move(checkpoint)), config);
  } catch (const seer::Error&) {
  }
  return 0;
}
