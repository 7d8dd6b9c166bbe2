// Shared by the libFuzzer targets: the one exception type a parser may throw on bad input, and a
// stored-ZIP writer that wraps fuzzed bytes into a torch.save-shaped archive.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "seer/io/zip_archive.hpp"

namespace seer_fuzz {

inline void put(std::vector<std::uint8_t>& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

struct Record {
  std::string name;
  std::vector<std::uint8_t> data;
};

// A ZIP archive of stored records with CRCs, as torch.save writes (without its alignment padding).
inline std::vector<std::uint8_t> stored_zip(const std::vector<Record>& records) {
  std::vector<std::uint8_t> out, directory;
  for (const auto& record : records) {
    const std::uint64_t offset = out.size();
    const auto crc = seer::io::detail::crc32_update(0, record.data.data(), record.data.size());
    for (int central = 0; central < 2; ++central) {
      auto& target = central ? directory : out;
      put(target, central ? 0x02014b50 : 0x04034b50, 4);
      if (central) put(target, 45, 2);
      put(target, 45, 2);  // version needed
      put(target, 0, 2);   // flags
      put(target, 0, 2);   // stored
      put(target, 0, 4);   // time, date
      put(target, crc, 4);
      put(target, record.data.size(), 4);
      put(target, record.data.size(), 4);
      put(target, record.name.size(), 2);
      put(target, 0, 2);  // extra
      if (central) {
        put(target, 0, 2);  // comment
        put(target, 0, 2);  // disk
        put(target, 0, 2);  // internal attributes
        put(target, 0, 4);  // external attributes
        put(target, offset, 4);
      }
      target.insert(target.end(), record.name.begin(), record.name.end());
      if (!central) target.insert(target.end(), record.data.begin(), record.data.end());
    }
  }
  const std::uint64_t directory_offset = out.size();
  out.insert(out.end(), directory.begin(), directory.end());
  put(out, 0x06054b50, 4);
  put(out, 0, 4);
  put(out, records.size(), 2);
  put(out, records.size(), 2);
  put(out, directory.size(), 4);
  put(out, directory_offset, 4);
  put(out, 0, 2);
  return out;
}

}  // namespace seer_fuzz
