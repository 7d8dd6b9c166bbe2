// libFuzzer target: the JSON reader. Any input either parses or raises seer::Error.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "seer/io/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto value = seer::io::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)value.kind();
  } catch (const seer::Error&) {
  }
  return 0;
}
