// Reading and writing safetensors files, and sharded checkpoints described by
// model.safetensors.index.json, without Python.
//
// Layout of a safetensors file: an 8-byte little-endian header length N, N bytes of JSON mapping
// tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the byte after
// the header) plus an optional "__metadata__" object of strings, then the raw little-endian data.
// Every field is checked before use: the header must fit the file, every tensor's byte range must
// lie inside the data section and match its shape and dtype exactly, and shape products must not
// overflow. A file is read lazily: opening reads only the header, read_* reads one tensor.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/io/json.hpp"

namespace seer::io {

enum class DType { float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, boolean };

inline std::int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::float64:
    case DType::int64:
      return 8;
    case DType::float32:
    case DType::int32:
      return 4;
    case DType::float16:
    case DType::bfloat16:
    case DType::int16:
      return 2;
    case DType::int8:
    case DType::uint8:
    case DType::boolean:
      return 1;
  }
  return 1;
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float64:
      return "F64";
    case DType::float32:
      return "F32";
    case DType::float16:
      return "F16";
    case DType::bfloat16:
      return "BF16";
    case DType::int64:
      return "I64";
    case DType::int32:
      return "I32";
    case DType::int16:
      return "I16";
    case DType::int8:
      return "I8";
    case DType::uint8:
      return "U8";
    case DType::boolean:
      return "BOOL";
  }
  return "?";
}

inline bool parse_dtype(const std::string& name, DType& dtype) {
  static const std::pair<const char*, DType> known[] = {
      {"F64", DType::float64}, {"F32", DType::float32}, {"F16", DType::float16}, {"BF16", DType::bfloat16},
      {"I64", DType::int64},   {"I32", DType::int32},   {"I16", DType::int16},   {"I8", DType::int8},
      {"U8", DType::uint8},    {"BOOL", DType::boolean}};
  for (const auto& entry : known)
    if (name == entry.first) {
      dtype = entry.second;
      return true;
    }
  return false;
}

struct TensorInfo {
  std::string name;
  DType dtype = DType::float32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte range inside the data section
  std::uint64_t end = 0;

  std::int64_t elements() const {
    std::int64_t count = 1;
    for (auto extent : shape) count *= extent;
    return count;
  }
};

namespace detail {

// Bytes of a safetensors file, from disk or from memory (tests, fuzzing).
class ByteSource {
 public:
  static std::shared_ptr<ByteSource> from_file(const std::string& path) {
    auto source = std::shared_ptr<ByteSource>(new ByteSource);
    source->name_ = path;
    source->file_ = std::make_shared<std::ifstream>(path, std::ios::binary);
    if (!*source->file_) throw FormatError(path, "cannot open the file for reading");
    source->file_->seekg(0, std::ios::end);
    const std::streamoff size = source->file_->tellg();
    if (size < 0) throw FormatError(path, "cannot determine the file size");
    source->size_ = static_cast<std::uint64_t>(size);
    return source;
  }
  static std::shared_ptr<ByteSource> from_memory(std::vector<std::uint8_t> bytes, const std::string& name) {
    auto source = std::shared_ptr<ByteSource>(new ByteSource);
    source->name_ = name;
    source->size_ = bytes.size();
    source->memory_ = std::move(bytes);
    return source;
  }

  std::uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }

  void read(std::uint64_t offset, std::uint64_t count, void* destination) const {
    if (offset > size_ || count > size_ - offset)
      throw FormatError(name_, "read of " + std::to_string(count) + " bytes at offset " + std::to_string(offset) +
                                   " runs past the end of the file (" + std::to_string(size_) + " bytes)");
    if (count == 0) return;
    if (file_) {
      file_->clear();
      file_->seekg(static_cast<std::streamoff>(offset));
      file_->read(static_cast<char*>(destination), static_cast<std::streamsize>(count));
      if (!*file_) throw FormatError(name_, "read error at offset " + std::to_string(offset));
    } else {
      std::memcpy(destination, memory_.data() + offset, count);
    }
  }

 private:
  ByteSource() = default;
  std::string name_;
  std::uint64_t size_ = 0;
  std::shared_ptr<std::ifstream> file_;
  std::vector<std::uint8_t> memory_;
};

inline std::uint64_t read_le64(const std::uint8_t* bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

}  // namespace detail

class SafetensorsFile {
 public:
  // Headers larger than this are rejected before allocation (real headers are kilobytes).
  static constexpr std::uint64_t max_header_bytes = 100u << 20;

  static SafetensorsFile open(const std::string& path) { return SafetensorsFile(detail::ByteSource::from_file(path)); }
  static SafetensorsFile from_bytes(std::vector<std::uint8_t> bytes, const std::string& name = "safetensors buffer") {
    return SafetensorsFile(detail::ByteSource::from_memory(std::move(bytes), name));
  }

  const std::string& source() const { return source_->name(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  const TensorInfo* find(const std::string& name) const {
    for (const auto& tensor : tensors_)
      if (tensor.name == name) return &tensor;
    return nullptr;
  }

  const TensorInfo& info(const std::string& name) const {
    const TensorInfo* tensor = find(name);
    require(tensor != nullptr, "name", "tensor \"", name, "\" is not in ", source());
    return *tensor;
  }

  // The raw little-endian bytes of one tensor.
  std::vector<std::uint8_t> read_bytes(const std::string& name) const {
    const TensorInfo& tensor = info(name);
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(tensor.end - tensor.begin));
    source_->read(data_start_ + tensor.begin, bytes.size(), bytes.data());
    return bytes;
  }

  // One floating-point tensor converted to float, optionally checked against an expected shape.
  std::vector<float> read_float(const std::string& name, const std::vector<std::int64_t>& expected_shape = {}) const {
    const TensorInfo& tensor = info(name);
    if (!expected_shape.empty())
      require(tensor.shape == expected_shape, "name", "tensor \"", name, "\" in ", source(), " has shape ",
              shape_string(tensor.shape), ", expected ", shape_string(expected_shape));
    const auto bytes = read_bytes(name);
    const auto count = static_cast<std::size_t>(tensor.elements());
    std::vector<float> values(count);
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint8_t* p = bytes.data() + i * static_cast<std::size_t>(dtype_size(tensor.dtype));
      switch (tensor.dtype) {
        case DType::float32: {
          float value;
          std::memcpy(&value, p, 4);
          values[i] = value;
          break;
        }
        case DType::float64: {
          double value;
          std::memcpy(&value, p, 8);
          values[i] = static_cast<float>(value);
          break;
        }
        case DType::float16:
          values[i] = to_float(half{static_cast<std::uint16_t>(p[0] | (p[1] << 8))});
          break;
        case DType::bfloat16:
          values[i] = to_float(bfloat16{static_cast<std::uint16_t>(p[0] | (p[1] << 8))});
          break;
        default:
          throw InvalidArgument("name", "tensor \"" + name + "\" has dtype " + dtype_name(tensor.dtype) +
                                            ", expected a floating-point dtype");
      }
    }
    return values;
  }

  static std::string shape_string(const std::vector<std::int64_t>& shape) {
    std::string text = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + "]";
  }

 private:
  explicit SafetensorsFile(std::shared_ptr<detail::ByteSource> source) : source_(std::move(source)) { parse_header(); }

  void parse_header() {
    const std::string& name = source_->name();
    std::uint8_t length_bytes[8];
    if (source_->size() < 8) throw FormatError(name, "file is shorter than the 8-byte header length");
    source_->read(0, 8, length_bytes);
    const std::uint64_t header_bytes = detail::read_le64(length_bytes);
    if (header_bytes > max_header_bytes)
      throw FormatError(name, "header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                                  std::to_string(max_header_bytes) + " bytes");
    if (header_bytes > source_->size() - 8)
      throw FormatError(name, "header length " + std::to_string(header_bytes) + " runs past the end of the file");
    std::string header(static_cast<std::size_t>(header_bytes), '\0');
    source_->read(8, header_bytes, header.data());
    data_start_ = 8 + header_bytes;
    const std::uint64_t data_bytes = source_->size() - data_start_;

    const JsonValue root = parse_json(header, name + " (header)");
    for (const auto& [key, value] : root.as_object(name + " header")) {
      if (key == "__metadata__") {
        for (const auto& [meta_key, meta_value] : value.as_object(name + " __metadata__"))
          metadata_[meta_key] = meta_value.as_string(name + " __metadata__." + meta_key);
        continue;
      }
      const std::string where = name + " tensor \"" + key + "\"";
      value.as_object(where);
      TensorInfo tensor;
      tensor.name = key;
      const JsonValue* dtype = value.find("dtype");
      const JsonValue* shape = value.find("shape");
      const JsonValue* offsets = value.find("data_offsets");
      if (!dtype || !shape || !offsets) throw FormatError(where, "needs dtype, shape and data_offsets");
      if (!parse_dtype(dtype->as_string(where + " dtype"), tensor.dtype))
        throw FormatError(where, "unknown dtype \"" + dtype->as_string(where) + "\"");
      std::int64_t elements = 1;
      for (const auto& extent : shape->as_array(where + " shape")) {
        const std::int64_t e = extent.as_integer(where + " shape");
        if (e < 0) throw FormatError(where, "negative extent in shape");
        if (e != 0 && elements > (std::int64_t{1} << 48) / e) throw FormatError(where, "shape product overflows");
        elements *= e;
        tensor.shape.push_back(e);
      }
      const auto& range = offsets->as_array(where + " data_offsets");
      if (range.size() != 2) throw FormatError(where, "data_offsets must hold two integers");
      const std::int64_t begin = range[0].as_integer(where + " data_offsets");
      const std::int64_t end = range[1].as_integer(where + " data_offsets");
      if (begin < 0 || end < begin) throw FormatError(where, "data_offsets are negative or reversed");
      tensor.begin = static_cast<std::uint64_t>(begin);
      tensor.end = static_cast<std::uint64_t>(end);
      if (tensor.end > data_bytes)
        throw FormatError(where, "data ends at byte " + std::to_string(tensor.end) + " but the data section holds " +
                                     std::to_string(data_bytes));
      if (tensor.end - tensor.begin != static_cast<std::uint64_t>(elements * dtype_size(tensor.dtype)))
        throw FormatError(where, "byte range of " + std::to_string(tensor.end - tensor.begin) +
                                     " does not match shape " + shape_string(tensor.shape) + " of dtype " +
                                     dtype_name(tensor.dtype));
      tensors_.push_back(std::move(tensor));
    }
  }

  std::shared_ptr<detail::ByteSource> source_;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: raw little-endian bytes with dtype and shape.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::float32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;

  static TensorToWrite from_float(std::string name, std::vector<std::int64_t> shape, const std::vector<float>& values) {
    TensorToWrite tensor{std::move(name), DType::float32, std::move(shape), {}};
    tensor.bytes.resize(values.size() * 4);
    std::memcpy(tensor.bytes.data(), values.data(), tensor.bytes.size());
    return tensor;
  }
};

inline std::string json_quote(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      static const char digits[] = "0123456789abcdef";
      out += "\\u00";
      out += digits[(c >> 4) & 0xf];
      out += digits[c & 0xf];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// Serialises tensors (in the given order) and string metadata to safetensors bytes.
inline std::vector<std::uint8_t> serialize_safetensors(const std::vector<TensorToWrite>& tensors,
                                                       const std::map<std::string, std::string>& metadata = {}) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first_entry = true;
    for (const auto& [key, value] : metadata) {
      header += (first_entry ? "" : ",") + json_quote(key) + ":" + json_quote(value);
      first_entry = false;
    }
    header += "}";
  }
  bool first = metadata.empty();
  std::uint64_t offset = 0;
  for (const auto& tensor : tensors) {
    std::int64_t elements = 1;
    for (auto e : tensor.shape) {
      require(e >= 0, "tensors", "tensor \"", tensor.name, "\" has a negative extent");
      elements *= e;
    }
    require(static_cast<std::uint64_t>(elements * dtype_size(tensor.dtype)) == tensor.bytes.size(), "tensors",
            "tensor \"", tensor.name, "\" holds ", tensor.bytes.size(), " bytes, its shape and dtype need ",
            elements * dtype_size(tensor.dtype));
    header += std::string(first ? "" : ",") + json_quote(tensor.name) + ":{\"dtype\":\"" + dtype_name(tensor.dtype) +
              "\",\"shape\":[";
    for (std::size_t i = 0; i < tensor.shape.size(); ++i) header += (i ? "," : "") + std::to_string(tensor.shape[i]);
    header +=
        "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + tensor.bytes.size()) + "]}";
    offset += tensor.bytes.size();
    first = false;
  }
  header += "}";
  while ((header.size() + 8) % 8 != 0) header += ' ';  // keep the data section 8-byte aligned
  // Sized up front and filled with memcpy: g++ 12 -O3 reports a false -Warray-bounds on
  // vector::insert of the header after the 8 length bytes.
  std::vector<std::uint8_t> out(8 + header.size());
  const std::uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(length >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (const auto& tensor : tensors) out.insert(out.end(), tensor.bytes.begin(), tensor.bytes.end());
  return out;
}

inline void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  const auto bytes = serialize_safetensors(tensors, metadata);
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) throw FormatError(path, "cannot open the file for writing");
  file.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!file) throw FormatError(path, "write failed");
}

// A checkpoint directory: either one model.safetensors or shards listed by
// model.safetensors.index.json ({"weight_map": {tensor name: shard file name}}).
class Checkpoint {
 public:
  static Checkpoint open(const std::string& directory) {
    Checkpoint checkpoint;
    const std::string index_path = directory + "/model.safetensors.index.json";
    std::ifstream index(index_path, std::ios::binary);
    if (index) {
      const std::string text((std::istreambuf_iterator<char>(index)), std::istreambuf_iterator<char>());
      const JsonValue root = parse_json(text, index_path);
      const JsonValue* weight_map = root.find("weight_map");
      if (!weight_map) throw FormatError(index_path, "has no \"weight_map\" object");
      for (const auto& [tensor, shard] : weight_map->as_object(index_path + " weight_map")) {
        const std::string& file = shard.as_string(index_path + " weight_map." + tensor);
        if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
          throw FormatError(index_path, "shard name \"" + file + "\" must be a plain file name");
        if (!checkpoint.shards_.count(file))
          checkpoint.shards_.emplace(file, SafetensorsFile::open(directory + "/" + file));
        checkpoint.tensor_shard_[tensor] = file;
      }
      for (const auto& [tensor, file] : checkpoint.tensor_shard_)
        if (!checkpoint.shards_.at(file).find(tensor))
          throw FormatError(index_path, "maps \"" + tensor + "\" to " + file + ", which does not hold it");
    } else {
      const std::string file = "model.safetensors";
      checkpoint.shards_.emplace(file, SafetensorsFile::open(directory + "/" + file));
      for (const auto& tensor : checkpoint.shards_.at(file).tensors()) checkpoint.tensor_shard_[tensor.name] = file;
    }
    return checkpoint;
  }

  bool contains(const std::string& name) const { return tensor_shard_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const {
    const auto it = tensor_shard_.find(name);
    require(it != tensor_shard_.end(), "name", "tensor \"", name, "\" is not in the checkpoint");
    return shards_.at(it->second);
  }
  std::vector<float> read_float(const std::string& name, const std::vector<std::int64_t>& expected_shape = {}) const {
    return file_of(name).read_float(name, expected_shape);
  }
  std::vector<std::string> tensor_names() const {
    std::vector<std::string> names;
    for (const auto& entry : tensor_shard_) names.push_back(entry.first);
    return names;
  }

 private:
  std::map<std::string, SafetensorsFile> shards_;
  std::map<std::string, std::string> tensor_shard_;
};

}  // namespace seer::io
