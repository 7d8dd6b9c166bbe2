// libFuzzer target: the ZIP reader, central directory, local headers and every entry's data.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "seer/io/zip_archive.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto archive = seer::io::ZipArchive::from_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const auto& entry : archive.entries()) {
      try {
        (void)archive.read(entry);
      } catch (const seer::FormatError&) {  // one bad entry; try the others
      }
    }
  } catch (const seer::Error&) {
  }
  return 0;
}
