// Reading a torch.save'd dict of tensors (a .pth / .pt file) without Python.
//
// A torch.save file is a ZIP archive (zip_archive.hpp) holding, under one top folder named after the
// file it was first saved as:
//   <top>/data.pkl     the pickled object (pickle.hpp);
//   <top>/data/<key>   the raw bytes of each storage, little-endian;
//   <top>/byteorder    "little" (recent PyTorch), plus version and bookkeeping records.
// Each tensor pickles as torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
// requires_grad, backward_hooks[, metadata]), where `storage` is a persistent id
// ('storage', torch.<Type>Storage, key, location, numel); an nn.Parameter wraps that in
// torch._utils._rebuild_parameter(tensor, requires_grad, hooks) (or ..._with_state(..., state)). Views
// are saved as views: a tensor may start at an offset into a storage shared with other tensors and
// have any (non-negative) strides. This reader honours offsets and strides, gathering elements into
// row-major order, and checks that every element lies inside its storage. A view with more elements
// than its storage (stride 0, overlapping) is rejected, which also bounds memory by the file size.
//
// A tensor that covers its whole storage is checked against the archive's CRC-32; a view of part of
// a larger storage reads only its span (no CRC), so large shared storages are not read per tensor.
//
// Only a top-level dict (or OrderedDict, e.g. a module's state_dict()) is read; entries that are not
// tensors are listed in skipped_entries(). Every problem is a FormatError naming the file and entry.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/io/pickle.hpp"
#include "seer/io/safetensors.hpp"  // DType
#include "seer/io/zip_archive.hpp"

namespace seer::io {

struct TorchTensorInfo {
  std::string name;
  DType dtype = DType::float32;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // in elements
  std::int64_t storage_offset = 0;    // in elements
  std::string storage_key;            // the archive entry <top>/data/<storage_key>
  std::int64_t storage_elements = 0;
  bool requires_grad = false;

  std::int64_t elements() const {
    std::int64_t count = 1;
    for (auto extent : shape) count *= extent;
    return count;
  }
  bool is_contiguous() const {
    std::int64_t expected = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
};

// The globals a torch.save'd dict of tensors may name.
inline std::vector<std::string> torch_checkpoint_globals() {
  return {"collections.OrderedDict",
          "torch._utils._rebuild_tensor_v2",
          "torch._utils._rebuild_parameter",
          "torch._utils._rebuild_parameter_with_state",
          "torch.BFloat16Storage",
          "torch.HalfStorage",
          "torch.FloatStorage",
          "torch.DoubleStorage",
          "torch.LongStorage",
          "torch.IntStorage",
          "torch.ShortStorage",
          "torch.CharStorage",
          "torch.ByteStorage",
          "torch.BoolStorage"};
}

namespace detail {

inline bool torch_storage_dtype(const std::string& global, DType& dtype) {
  static const std::pair<const char*, DType> known[] = {
      {"torch.BFloat16Storage", DType::bfloat16}, {"torch.HalfStorage", DType::float16},
      {"torch.FloatStorage", DType::float32},     {"torch.DoubleStorage", DType::float64},
      {"torch.LongStorage", DType::int64},        {"torch.IntStorage", DType::int32},
      {"torch.ShortStorage", DType::int16},       {"torch.CharStorage", DType::int8},
      {"torch.ByteStorage", DType::uint8},        {"torch.BoolStorage", DType::boolean}};
  for (const auto& entry : known)
    if (global == entry.first) {
      dtype = entry.second;
      return true;
    }
  return false;
}

inline float element_to_float(DType dtype, const std::uint8_t* p) {
  switch (dtype) {
    case DType::float32: {
      float value;
      std::memcpy(&value, p, 4);
      return value;
    }
    case DType::float64: {
      double value;
      std::memcpy(&value, p, 8);
      return static_cast<float>(value);
    }
    case DType::float16:
      return to_float(half{static_cast<std::uint16_t>(p[0] | (p[1] << 8))});
    case DType::bfloat16:
      return to_float(bfloat16{static_cast<std::uint16_t>(p[0] | (p[1] << 8))});
    default:
      return 0.0f;  // callers reject non-float dtypes first
  }
}

}  // namespace detail

class TorchCheckpoint {
 public:
  static constexpr std::uint64_t max_pickle_bytes = 256u << 20;
  static constexpr int max_rank = 32;

  static TorchCheckpoint open(const std::string& path) { return TorchCheckpoint(ZipArchive::open(path)); }
  static TorchCheckpoint from_bytes(std::vector<std::uint8_t> bytes, const std::string& name = "torch checkpoint") {
    return TorchCheckpoint(ZipArchive::from_bytes(std::move(bytes), name));
  }

  const std::string& source() const { return archive_.source(); }
  const std::vector<TorchTensorInfo>& tensors() const { return tensors_; }
  // Names of top-level entries that are not tensors (ints, strings, nested containers), in file order.
  const std::vector<std::string>& skipped_entries() const { return skipped_; }
  bool ordered() const { return ordered_; }

  const TorchTensorInfo* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const TorchTensorInfo& info(const std::string& name) const {
    const TorchTensorInfo* tensor = find(name);
    require(tensor != nullptr, "name", "tensor \"", name, "\" is not in ", source());
    return *tensor;
  }

  // The tensor's elements in row-major order as little-endian bytes of its dtype (views gathered).
  std::vector<std::uint8_t> read_bytes(const std::string& name) const {
    const TorchTensorInfo& tensor = info(name);
    const std::int64_t element_bytes = dtype_size(tensor.dtype);
    const std::int64_t count = tensor.elements();
    std::vector<std::uint8_t> out(static_cast<std::size_t>(count * element_bytes));
    if (count == 0) return out;
    // The span of storage elements the view touches (validated against the storage when opening).
    std::int64_t last = tensor.storage_offset;
    for (std::size_t d = 0; d < tensor.shape.size(); ++d) last += (tensor.shape[d] - 1) * tensor.strides[d];
    const ZipEntry& entry = *archive_.find(storage_entry(tensor.storage_key));
    std::vector<std::uint8_t> span;
    const std::int64_t span_elements = last - tensor.storage_offset + 1;
    if (tensor.storage_offset == 0 && span_elements == tensor.storage_elements) {
      span = archive_.read(entry);  // the whole storage: CRC-checked
    } else {
      span.resize(static_cast<std::size_t>(span_elements * element_bytes));
      archive_.read_range(entry, static_cast<std::uint64_t>(tensor.storage_offset * element_bytes), span.size(),
                          span.data());
    }
    if (tensor.is_contiguous()) {
      std::memcpy(out.data(), span.data(), out.size());
      return out;
    }
    // Odometer over the row-major index, tracking the storage position incrementally.
    const std::size_t rank = tensor.shape.size();
    std::vector<std::int64_t> index(rank, 0);
    std::int64_t position = 0;
    for (std::int64_t i = 0; i < count; ++i) {
      std::memcpy(out.data() + i * element_bytes, span.data() + position * element_bytes,
                  static_cast<std::size_t>(element_bytes));
      for (std::size_t d = rank; d-- > 0;) {
        if (++index[d] < tensor.shape[d]) {
          position += tensor.strides[d];
          break;
        }
        position -= (tensor.shape[d] - 1) * tensor.strides[d];
        index[d] = 0;
      }
    }
    return out;
  }

  // One floating-point tensor converted to float, optionally checked against an expected shape.
  std::vector<float> read_float(const std::string& name, const std::vector<std::int64_t>& expected_shape = {}) const {
    const TorchTensorInfo& tensor = info(name);
    if (!expected_shape.empty())
      require(tensor.shape == expected_shape, "name", "tensor \"", name, "\" in ", source(), " has shape ",
              SafetensorsFile::shape_string(tensor.shape), ", expected ",
              SafetensorsFile::shape_string(expected_shape));
    const DType dtype = tensor.dtype;
    require(dtype == DType::float32 || dtype == DType::float64 || dtype == DType::float16 || dtype == DType::bfloat16,
            "name", "tensor \"", name, "\" has dtype ", dtype_name(dtype), ", expected a floating-point dtype");
    const auto bytes = read_bytes(name);
    const std::size_t element_bytes = static_cast<std::size_t>(dtype_size(dtype));
    std::vector<float> values(bytes.size() / element_bytes);
    for (std::size_t i = 0; i < values.size(); ++i)
      values[i] = detail::element_to_float(dtype, &bytes[i * element_bytes]);
    return values;
  }

 private:
  explicit TorchCheckpoint(ZipArchive archive) : archive_(std::move(archive)) { parse(); }

  [[noreturn]] void fail(const std::string& message) const { throw FormatError(source(), message); }

  std::string storage_entry(const std::string& key) const { return top_ + "/data/" + key; }

  void parse() {
    // The pickle is <top>/data.pkl, with <top> a single folder name.
    const ZipEntry* pickle = nullptr;
    for (const auto& entry : archive_.entries()) {
      const std::string suffix = "/data.pkl";
      if (entry.name.size() <= suffix.size() ||
          entry.name.compare(entry.name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const std::string top = entry.name.substr(0, entry.name.size() - suffix.size());
      if (top.find('/') != std::string::npos) continue;
      if (pickle != nullptr) fail("holds more than one <folder>/data.pkl record");
      pickle = &entry;
      top_ = top;
    }
    if (pickle == nullptr) fail("is a zip archive but not a torch.save file: it has no <folder>/data.pkl record");
    if (const ZipEntry* byteorder = archive_.find(top_ + "/byteorder")) {
      if (byteorder->size > 16) fail("the byteorder record is too long");
      const auto bytes = archive_.read(*byteorder);
      const std::string order(bytes.begin(), bytes.end());
      if (order != "little") fail("byte order is \"" + order + "\"; only little-endian checkpoints are supported");
    }
    if (pickle->size > max_pickle_bytes) fail("data.pkl is larger than " + std::to_string(max_pickle_bytes) + " bytes");
    const auto bytes = archive_.read(*pickle);
    const PickleDocument document =
        read_pickle(bytes.data(), bytes.size(), source() + " (" + pickle->name + ")", torch_checkpoint_globals());
    interpret(document);
  }

  void interpret(const PickleDocument& document) {
    const PickleNode& root = document.root_node();
    if (root.kind != PickleNode::Kind::dict)
      fail(std::string("the saved object is a ") + pickle_kind_name(root.kind) + ", expected a dict of tensors");
    ordered_ = root.ordered;
    for (std::size_t i = 0; i + 1 < root.items.size(); i += 2) {
      const PickleNode& key = document.node(root.items[i]);
      if (key.kind != PickleNode::Kind::string)
        fail(std::string("a key of the saved dict is a ") + pickle_kind_name(key.kind) + ", expected a string");
      TorchTensorInfo tensor;
      tensor.name = key.text;
      // Python dicts keep the last value of a repeated key.
      const auto existing = index_.find(tensor.name);
      if (!read_tensor(document, root.items[i + 1], tensor, 0)) {
        if (existing != index_.end()) fail("entry \"" + tensor.name + "\" is repeated with a non-tensor value");
        skipped_.push_back(tensor.name);
        continue;
      }
      if (existing != index_.end()) {
        tensors_[existing->second] = std::move(tensor);
      } else {
        index_.emplace(tensor.name, tensors_.size());
        tensors_.push_back(std::move(tensor));
      }
    }
  }

  // Fills `tensor` when the node is a tensor (or parameter) rebuild call; false when it is no tensor.
  bool read_tensor(const PickleDocument& document, std::size_t index, TorchTensorInfo& tensor, int depth) {
    const PickleNode& value = document.node(index);
    if (value.kind != PickleNode::Kind::call) return false;
    const std::string where = "entry \"" + tensor.name + "\"";
    const std::string& function = document.node(value.items[0]).text;
    const std::vector<std::size_t>& args = document.node(value.items[1]).items;
    if (function == "torch._utils._rebuild_parameter" || function == "torch._utils._rebuild_parameter_with_state") {
      if (depth > 0) fail(where + ": a parameter nested in a parameter");
      if (args.size() < 2) fail(where + ": " + function + " needs (tensor, requires_grad, ...)");
      if (!read_tensor(document, args[0], tensor, depth + 1)) fail(where + ": the parameter holds no tensor");
      tensor.requires_grad = boolean(document, args[1], where + " requires_grad");
      return true;
    }
    if (function != "torch._utils._rebuild_tensor_v2") fail(where + ": unexpected call of " + function);
    if (args.size() != 6 && args.size() != 7)
      fail(where + ": _rebuild_tensor_v2 takes 6 or 7 arguments, got " + std::to_string(args.size()));

    // The storage: persistent id ('storage', torch.<Type>Storage, key, location, numel).
    const PickleNode& storage = document.node(args[0]);
    if (storage.kind != PickleNode::Kind::persistent_id) fail(where + ": the storage is not a persistent id");
    const PickleNode& id = document.node(storage.items[0]);
    if (id.kind != PickleNode::Kind::tuple || id.items.size() != 5 ||
        document.node(id.items[0]).kind != PickleNode::Kind::string || document.node(id.items[0]).text != "storage")
      fail(where + ": the storage id is not ('storage', type, key, location, numel)");
    const PickleNode& type = document.node(id.items[1]);
    if (type.kind != PickleNode::Kind::global || !detail::torch_storage_dtype(type.text, tensor.dtype))
      fail(where + ": unknown storage type");
    const PickleNode& key = document.node(id.items[2]);
    if (key.kind != PickleNode::Kind::string) fail(where + ": the storage key is not a string");
    tensor.storage_key = key.text;
    tensor.storage_elements = integer(document, id.items[4], where + " storage numel");
    if (tensor.storage_elements < 0) fail(where + ": negative storage size");

    const ZipEntry* entry = archive_.find(storage_entry(tensor.storage_key));
    if (entry == nullptr) fail(where + ": its storage record " + storage_entry(tensor.storage_key) + " is missing");
    const std::uint64_t element_bytes = static_cast<std::uint64_t>(dtype_size(tensor.dtype));
    if (entry->size / element_bytes != static_cast<std::uint64_t>(tensor.storage_elements) ||
        entry->size % element_bytes != 0)
      fail(where + ": storage " + tensor.storage_key + " holds " + std::to_string(entry->size) + " bytes, but " +
           std::to_string(tensor.storage_elements) + " elements of " + dtype_name(tensor.dtype) + " need " +
           std::to_string(tensor.storage_elements * static_cast<std::int64_t>(element_bytes)));
    const auto shared = storage_dtypes_.emplace(tensor.storage_key, tensor.dtype);
    if (shared.first->second != tensor.dtype)
      fail(where + ": storage " + tensor.storage_key + " is read as two dtypes");

    tensor.storage_offset = integer(document, args[1], where + " storage offset");
    tensor.shape = integer_tuple(document, args[2], where + " size");
    tensor.strides = integer_tuple(document, args[3], where + " stride");
    tensor.requires_grad = boolean(document, args[4], where + " requires_grad");
    if (tensor.shape.size() != tensor.strides.size()) fail(where + ": size and stride have different lengths");
    if (tensor.shape.size() > static_cast<std::size_t>(max_rank)) fail(where + ": more than 32 dimensions");
    if (tensor.storage_offset < 0) fail(where + ": negative storage offset");
    // Elements, and the last storage element the view touches, without overflow.
    std::int64_t count = 1;
    bool empty = false;
    for (std::size_t d = 0; d < tensor.shape.size(); ++d) {
      if (tensor.shape[d] < 0 || tensor.strides[d] < 0) fail(where + ": negative size or stride");
      if (tensor.shape[d] == 0) empty = true;
    }
    if (!empty) {
      std::int64_t last = tensor.storage_offset;
      const std::int64_t limit = tensor.storage_elements;
      if (last >= limit) fail(where + ": storage offset " + std::to_string(last) + " is outside its storage");
      for (std::size_t d = 0; d < tensor.shape.size(); ++d) {
        if (tensor.shape[d] > limit / count)
          fail(where + ": the view has more elements than its storage (overlapping view)");
        count *= tensor.shape[d];
        // last + (shape - 1) * stride < limit, checked by division so that nothing overflows.
        if (tensor.strides[d] > 0 && tensor.shape[d] - 1 > (limit - 1 - last) / tensor.strides[d])
          fail(where + ": the view reaches outside its storage");
        last += (tensor.shape[d] - 1) * tensor.strides[d];
        if (last >= limit) fail(where + ": the view reaches outside its storage");
      }
    }
    return true;
  }

  std::int64_t integer(const PickleDocument& document, std::size_t index, const std::string& what) const {
    const PickleNode& value = document.node(index);
    if (value.kind != PickleNode::Kind::integer)
      fail(what + " is a " + pickle_kind_name(value.kind) + ", expected an int");
    return value.integer;
  }
  bool boolean(const PickleDocument& document, std::size_t index, const std::string& what) const {
    const PickleNode& value = document.node(index);
    if (value.kind != PickleNode::Kind::boolean)
      fail(what + " is a " + pickle_kind_name(value.kind) + ", expected a bool");
    return value.boolean;
  }
  std::vector<std::int64_t> integer_tuple(const PickleDocument& document, std::size_t index,
                                          const std::string& what) const {
    const PickleNode& value = document.node(index);
    if (value.kind != PickleNode::Kind::tuple)
      fail(what + " is a " + pickle_kind_name(value.kind) + ", expected a tuple of ints");
    std::vector<std::int64_t> out;
    for (std::size_t item : value.items) out.push_back(integer(document, item, what));
    return out;
  }

  ZipArchive archive_;
  std::string top_;
  std::vector<TorchTensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, DType> storage_dtypes_;
  std::vector<std::string> skipped_;
  bool ordered_ = false;
};

}  // namespace seer::io
