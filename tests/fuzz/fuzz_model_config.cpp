// libFuzzer target: the Hugging Face config.json reader (shapes, both RoPE spellings, seerattn_* keys),
// followed by the gate settings derived from it.
#include <cstddef>
#include <cstdint>
#include <string>

#include "seer/io/gate_weights.hpp"
#include "seer/io/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto config = seer::io::parse_model_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)seer::io::learned_gate_config(config);
  } catch (const seer::Error&) {
  }
  return 0;
}
