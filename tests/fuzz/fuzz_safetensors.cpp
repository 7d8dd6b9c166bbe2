// libFuzzer target: the safetensors reader, header and every tensor's data.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "seer/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file = seer::io::SafetensorsFile::from_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const auto& tensor : file.tensors()) {
      (void)file.read_bytes(tensor.name);
      try {
        (void)file.read_float(tensor.name);
      } catch (const seer::InvalidArgument&) {  // an integer tensor
      }
    }
  } catch (const seer::Error&) {
  }
  return 0;
}
