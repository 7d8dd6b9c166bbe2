// A read-only ZIP reader for the archives torch.save writes.
//
// torch.save (the default, zip-based format since PyTorch 1.6) writes every record uncompressed
// ("stored"), aligns record data to 64 bytes with padding in the local headers' extra field, and ends
// the archive with ZIP64 end records (needed once a checkpoint passes 4 GiB). This reader handles
// exactly that: stored entries, classic and ZIP64 end-of-central-directory records, and ZIP64 extra
// fields in central and local headers. Compressed or encrypted entries are listed but refuse to be
// read, with an error that says why.
//
// The central directory is the authority for names, sizes and offsets; each entry's local header is
// checked against it (signature, name, method) and only used to find where the data starts. Every
// offset and size is bounds-checked against the file before use, so a truncated or corrupted archive
// raises FormatError naming the archive, never reads out of bounds. Entry data is read lazily.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/io/safetensors.hpp"  // detail::ByteSource

namespace seer::io {

struct ZipEntry {
  std::string name;
  std::uint16_t method = 0;  // 0 = stored; anything else is refused by read()
  std::uint16_t flags = 0;   // bit 0 = encrypted
  std::uint32_t crc32 = 0;   // 0 when the writer skipped it (torch's set_crc32_options(False))
  std::uint64_t compressed_size = 0;
  std::uint64_t size = 0;
  std::uint64_t local_header_offset = 0;
  std::uint64_t data_offset = 0;  // first byte of the entry's data in the file
};

namespace detail {

inline std::uint32_t crc32_update(std::uint32_t crc, const std::uint8_t* data, std::size_t count) {
  static const auto table = [] {
    std::vector<std::uint32_t> entries(256);
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      entries[n] = c;
    }
    return entries;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < count; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

inline std::uint64_t read_le(const std::uint8_t* bytes, int count) {
  std::uint64_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

}  // namespace detail

class ZipArchive {
 public:
  static constexpr std::uint32_t local_header_signature = 0x04034b50;
  static constexpr std::uint32_t central_header_signature = 0x02014b50;
  static constexpr std::uint32_t end_signature = 0x06054b50;
  static constexpr std::uint32_t zip64_end_signature = 0x06064b50;
  static constexpr std::uint32_t zip64_locator_signature = 0x07064b50;
  // Sizes of the fixed parts of the records.
  static constexpr std::uint64_t local_header_bytes = 30;
  static constexpr std::uint64_t central_header_bytes = 46;
  static constexpr std::uint64_t end_bytes = 22;
  static constexpr std::uint64_t zip64_end_bytes = 56;
  static constexpr std::uint64_t zip64_locator_bytes = 20;

  static ZipArchive open(const std::string& path) { return ZipArchive(detail::ByteSource::from_file(path)); }
  static ZipArchive from_bytes(std::vector<std::uint8_t> bytes, const std::string& name = "zip buffer") {
    return ZipArchive(detail::ByteSource::from_memory(std::move(bytes), name));
  }

  const std::string& source() const { return source_->name(); }
  const std::vector<ZipEntry>& entries() const { return entries_; }

  const ZipEntry* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }

  // The whole entry, checked against its CRC-32 (unless the writer stored none).
  std::vector<std::uint8_t> read(const ZipEntry& entry) const {
    // First: only a stored entry's size is bounded by the file (a compressed one may claim any size).
    require_readable(entry);
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(entry.size));
    read_range(entry, 0, entry.size, bytes.data());
    if (entry.crc32 != 0 && detail::crc32_update(0, bytes.data(), bytes.size()) != entry.crc32)
      throw FormatError(source(), "entry \"" + entry.name + "\" fails its CRC-32 check (the file is corrupted)");
    return bytes;
  }

  // `count` bytes of the entry starting `offset` bytes into its data (no CRC check).
  void read_range(const ZipEntry& entry, std::uint64_t offset, std::uint64_t count, void* destination) const {
    require_readable(entry);
    if (offset > entry.size || count > entry.size - offset)
      throw FormatError(source(), "read of " + std::to_string(count) + " bytes at offset " + std::to_string(offset) +
                                      " runs past the end of entry \"" + entry.name + "\" (" +
                                      std::to_string(entry.size) + " bytes)");
    source_->read(entry.data_offset + offset, count, destination);
  }

 private:
  explicit ZipArchive(std::shared_ptr<detail::ByteSource> source) : source_(std::move(source)) { parse(); }

  [[noreturn]] void fail(const std::string& message) const { throw FormatError(source(), message); }

  void require_readable(const ZipEntry& entry) const {
    if (entry.flags & 1u) fail("entry \"" + entry.name + "\" is encrypted, which is not supported");
    if (entry.method != 0)
      fail("entry \"" + entry.name + "\" is compressed (method " + std::to_string(entry.method) +
           (entry.method == 8 ? ", deflate" : "") +
           "); only stored (uncompressed) entries are supported, as torch.save writes them");
  }

  std::vector<std::uint8_t> read_bytes(std::uint64_t offset, std::uint64_t count) const {
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(count));
    source_->read(offset, count, bytes.data());
    return bytes;
  }

  void parse() {
    const std::uint64_t file_size = source_->size();
    // The end record sits at the very end, followed only by its comment (at most 65535 bytes).
    const std::uint64_t window = std::min<std::uint64_t>(file_size, end_bytes + 0xffff);
    const std::vector<std::uint8_t> tail = read_bytes(file_size - window, window);
    std::uint64_t end_offset = file_size;  // not found
    for (std::uint64_t at = window >= end_bytes ? window - end_bytes + 1 : 0; at-- > 0;) {
      const std::uint8_t* p = tail.data() + at;
      if (detail::read_le(p, 4) == end_signature && at + end_bytes + detail::read_le(p + 20, 2) == window) {
        end_offset = file_size - window + at;
        break;
      }
    }
    if (end_offset == file_size) {
      std::uint8_t magic[2] = {0, 0};
      if (file_size >= 2) source_->read(0, 2, magic);
      if (magic[0] == 0x80 && magic[1] == 0x02)
        fail(
            "not a zip archive: this looks like the legacy torch.save format "
            "(_use_new_zipfile_serialization=False), which is not supported; re-save it with a current PyTorch");
      fail("not a zip archive: no end-of-central-directory record (truncated or not a zip file)");
    }
    const std::uint8_t* end = tail.data() + (end_offset - (file_size - window));
    const std::uint64_t disk = detail::read_le(end + 4, 2), directory_disk = detail::read_le(end + 6, 2);
    std::uint64_t entries_on_disk = detail::read_le(end + 8, 2);
    std::uint64_t entry_count = detail::read_le(end + 10, 2);
    std::uint64_t directory_size = detail::read_le(end + 12, 4);
    std::uint64_t directory_offset = detail::read_le(end + 16, 4);
    std::uint64_t directory_end = end_offset;  // where the central directory must end

    // ZIP64: a locator right before the end record points at the ZIP64 end record (torch always writes one).
    if (end_offset >= zip64_locator_bytes) {
      const auto locator = read_bytes(end_offset - zip64_locator_bytes, zip64_locator_bytes);
      if (detail::read_le(locator.data(), 4) == zip64_locator_signature) {
        const std::uint64_t record_offset = detail::read_le(locator.data() + 8, 8);
        const std::uint64_t locator_offset = end_offset - zip64_locator_bytes;
        if (record_offset > locator_offset || locator_offset - record_offset < zip64_end_bytes)
          fail("the ZIP64 end record offset " + std::to_string(record_offset) + " is out of bounds");
        const auto record = read_bytes(record_offset, zip64_end_bytes);
        if (detail::read_le(record.data(), 4) != zip64_end_signature)
          fail("no ZIP64 end-of-central-directory record where the locator points");
        if (detail::read_le(record.data() + 16, 4) != 0 || detail::read_le(record.data() + 20, 4) != 0 ||
            detail::read_le(locator.data() + 4, 4) != 0)
          fail("multi-disk archives are not supported");
        entries_on_disk = detail::read_le(record.data() + 24, 8);
        entry_count = detail::read_le(record.data() + 32, 8);
        directory_size = detail::read_le(record.data() + 40, 8);
        directory_offset = detail::read_le(record.data() + 48, 8);
        directory_end = record_offset;
      }
    }
    if (disk != 0 || directory_disk != 0 || entries_on_disk != entry_count)
      fail("multi-disk archives are not supported");
    if (directory_offset > directory_end || directory_size > directory_end - directory_offset)
      fail("the central directory (" + std::to_string(directory_size) + " bytes at offset " +
           std::to_string(directory_offset) + ") lies outside the file");
    if (entry_count > directory_size / central_header_bytes)
      fail("the end record claims " + std::to_string(entry_count) + " entries, more than a central directory of " +
           std::to_string(directory_size) + " bytes can hold");

    const std::vector<std::uint8_t> directory = read_bytes(directory_offset, directory_size);
    std::uint64_t at = 0;
    entries_.reserve(static_cast<std::size_t>(entry_count));
    for (std::uint64_t i = 0; i < entry_count; ++i) {
      const std::string where = "central directory entry " + std::to_string(i);
      if (directory.size() - at < central_header_bytes) fail(where + " runs past the end of the central directory");
      const std::uint8_t* p = directory.data() + at;
      if (detail::read_le(p, 4) != central_header_signature) fail(where + " has a bad signature");
      ZipEntry entry;
      entry.flags = static_cast<std::uint16_t>(detail::read_le(p + 8, 2));
      entry.method = static_cast<std::uint16_t>(detail::read_le(p + 10, 2));
      entry.crc32 = static_cast<std::uint32_t>(detail::read_le(p + 16, 4));
      entry.compressed_size = detail::read_le(p + 20, 4);
      entry.size = detail::read_le(p + 24, 4);
      const std::uint64_t name_length = detail::read_le(p + 28, 2);
      const std::uint64_t extra_length = detail::read_le(p + 30, 2);
      const std::uint64_t comment_length = detail::read_le(p + 32, 2);
      std::uint64_t start_disk = detail::read_le(p + 34, 2);
      entry.local_header_offset = detail::read_le(p + 42, 4);
      const std::uint64_t record_bytes = central_header_bytes + name_length + extra_length + comment_length;
      if (directory.size() - at < record_bytes) fail(where + " runs past the end of the central directory");
      entry.name.assign(reinterpret_cast<const char*>(p + central_header_bytes), static_cast<std::size_t>(name_length));
      const std::string named = "entry \"" + entry.name + "\"";
      read_zip64_extra(p + central_header_bytes + name_length, extra_length, entry, start_disk, named);
      if (start_disk != 0) fail(named + " starts on another disk; multi-disk archives are not supported");
      if (entry.method == 0 && entry.compressed_size != entry.size)
        fail(named + " is stored but its compressed size (" + std::to_string(entry.compressed_size) +
             ") differs from its size (" + std::to_string(entry.size) + ")");
      locate_data(entry, named, directory_offset);
      if (!index_.emplace(entry.name, entries_.size()).second) fail("duplicate " + named);
      entries_.push_back(std::move(entry));
      at += record_bytes;
    }
  }

  // Replaces the 32-bit fields that hold 0xffffffff (0xffff for the disk) by their ZIP64 values.
  void read_zip64_extra(const std::uint8_t* extra, std::uint64_t length, ZipEntry& entry, std::uint64_t& start_disk,
                        const std::string& named) const {
    const bool need_size = entry.size == 0xffffffffu, need_compressed = entry.compressed_size == 0xffffffffu;
    const bool need_offset = entry.local_header_offset == 0xffffffffu, need_disk = start_disk == 0xffff;
    std::uint64_t at = 0;
    bool found = false;
    while (length - at >= 4) {
      const std::uint64_t id = detail::read_le(extra + at, 2), size = detail::read_le(extra + at + 2, 2);
      at += 4;
      if (size > length - at) fail(named + " has an extra field that runs past its header");
      if (id == 0x0001 && !found) {
        found = true;
        std::uint64_t field = 0;
        auto next = [&](std::uint64_t& value, int bytes) {
          if (size - field < static_cast<std::uint64_t>(bytes)) fail(named + " has a truncated ZIP64 extra field");
          value = detail::read_le(extra + at + field, bytes);
          field += static_cast<std::uint64_t>(bytes);
        };
        if (need_size) next(entry.size, 8);
        if (need_compressed) next(entry.compressed_size, 8);
        if (need_offset) next(entry.local_header_offset, 8);
        if (need_disk) next(start_disk, 4);
      }
      at += size;
    }
    if (!found && (need_size || need_compressed || need_offset || need_disk))
      fail(named + " needs a ZIP64 extra field for its sizes or offset, but has none");
  }

  // Checks the local header against the central directory and finds where the data begins.
  void locate_data(ZipEntry& entry, const std::string& named, std::uint64_t directory_offset) const {
    if (entry.local_header_offset > directory_offset ||
        directory_offset - entry.local_header_offset < local_header_bytes)
      fail(named + ": local header offset " + std::to_string(entry.local_header_offset) + " is out of bounds");
    std::uint8_t header[local_header_bytes];
    source_->read(entry.local_header_offset, local_header_bytes, header);
    if (detail::read_le(header, 4) != local_header_signature) fail(named + ": bad local header signature");
    if (detail::read_le(header + 8, 2) != entry.method)
      fail(named + ": the local header's compression method differs from the central directory's");
    const std::uint64_t name_length = detail::read_le(header + 26, 2);
    const std::uint64_t extra_length = detail::read_le(header + 28, 2);
    const std::uint64_t data_offset = entry.local_header_offset + local_header_bytes + name_length + extra_length;
    if (data_offset > directory_offset || entry.compressed_size > directory_offset - data_offset)
      fail(named + ": its data (" + std::to_string(entry.compressed_size) + " bytes) runs into the central directory");
    if (name_length != entry.name.size()) fail(named + ": the local header names a different entry");
    std::string local_name(static_cast<std::size_t>(name_length), '\0');
    source_->read(entry.local_header_offset + local_header_bytes, name_length, local_name.data());
    if (local_name != entry.name) fail(named + ": the local header names a different entry");
    entry.data_offset = data_offset;
  }

  std::shared_ptr<detail::ByteSource> source_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, std::size_t> index_;
};

}  // namespace seer::io
