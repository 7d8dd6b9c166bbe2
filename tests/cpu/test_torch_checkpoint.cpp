// torch.save reader (ZIP, pickle, tensor dicts) and the SeerAttention gate-weight loader, against
// fixtures written by PyTorch 2.11 (tests/fixtures/make_fixtures.py), hand-made archives and pickles,
// and truncated or corrupted files.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "seer/io/gate_weights.hpp"
#include "seer/io/json.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/pickle.hpp"
#include "seer/io/safetensors.hpp"
#include "seer/io/torch_checkpoint.hpp"
#include "seer/io/zip_archive.hpp"

namespace {

std::string fixture(const std::string& name) {
#ifdef SEER_TEST_FIXTURES_DIR
  return std::string(SEER_TEST_FIXTURES_DIR) + "/" + name;
#else
  // CMake passes absolute source paths, so the fixtures sit at ../fixtures from this file.
  std::string here = __FILE__;
  here = here.substr(0, here.find_last_of('/'));
  return here + "/../fixtures/" + name;
#endif
}

std::vector<std::uint8_t> file_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  REQUIRE_MESSAGE(file, "cannot open fixture ", path);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

std::string file_text(const std::string& path) {
  const auto bytes = file_bytes(path);
  return std::string(bytes.begin(), bytes.end());
}

template <class Fn>
std::string format_error_of(Fn&& fn) {
  try {
    fn();
  } catch (const seer::FormatError& error) {
    return error.what();
  }
  return "";
}

// Opens a checkpoint and reads every tensor, as a user would.
void read_everything(const std::vector<std::uint8_t>& bytes) {
  const auto checkpoint = seer::io::TorchCheckpoint::from_bytes(bytes, "mutated");
  for (const auto& tensor : checkpoint.tensors()) (void)checkpoint.read_bytes(tensor.name);
}

// ---- A minimal stored-ZIP writer for hand-made archives ------------------------------------------
void put(std::vector<std::uint8_t>& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

struct ZipRecord {
  std::string name;
  std::vector<std::uint8_t> data;
  std::uint16_t method = 0;
  std::uint64_t claimed_size = 0;  // the central directory's uncompressed size; 0: data.size()
};

// zip64: the central directory stores sizes and offsets as 0xffffffff with a ZIP64 extra field, and
// the archive ends with ZIP64 end records, as large torch.save files do.
std::vector<std::uint8_t> make_zip(const std::vector<ZipRecord>& records, bool zip64) {
  std::vector<std::uint8_t> out, directory;
  for (const auto& record : records) {
    const std::uint64_t offset = out.size();
    const auto crc = seer::io::detail::crc32_update(0, record.data.data(), record.data.size());
    put(out, 0x04034b50, 4);
    put(out, 20, 2);
    put(out, 0, 2);
    put(out, record.method, 2);
    put(out, 0, 4);
    put(out, crc, 4);
    put(out, record.data.size(), 4);
    put(out, record.data.size(), 4);
    put(out, record.name.size(), 2);
    put(out, 0, 2);
    out.insert(out.end(), record.name.begin(), record.name.end());
    out.insert(out.end(), record.data.begin(), record.data.end());

    put(directory, 0x02014b50, 4);
    put(directory, 45, 2);
    put(directory, 45, 2);
    put(directory, 0, 2);
    put(directory, record.method, 2);
    put(directory, 0, 4);
    put(directory, crc, 4);
    const std::uint64_t size = record.claimed_size != 0 ? record.claimed_size : record.data.size();
    put(directory, zip64 ? 0xffffffffu : record.data.size(), 4);
    put(directory, zip64 ? 0xffffffffu : size, 4);
    put(directory, record.name.size(), 2);
    put(directory, zip64 ? 28 : 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 4);
    put(directory, zip64 ? 0xffffffffu : offset, 4);
    directory.insert(directory.end(), record.name.begin(), record.name.end());
    if (zip64) {
      put(directory, 0x0001, 2);
      put(directory, 24, 2);
      put(directory, size, 8);
      put(directory, record.data.size(), 8);
      put(directory, offset, 8);
    }
  }
  const std::uint64_t directory_offset = out.size();
  out.insert(out.end(), directory.begin(), directory.end());
  if (zip64) {
    const std::uint64_t record_offset = out.size();
    put(out, 0x06064b50, 4);
    put(out, 44, 8);
    put(out, 45, 2);
    put(out, 45, 2);
    put(out, 0, 4);
    put(out, 0, 4);
    put(out, records.size(), 8);
    put(out, records.size(), 8);
    put(out, directory.size(), 8);
    put(out, directory_offset, 8);
    put(out, 0x07064b50, 4);
    put(out, 0, 4);
    put(out, record_offset, 8);
    put(out, 1, 4);
  }
  put(out, 0x06054b50, 4);
  put(out, 0, 2);
  put(out, 0, 2);
  put(out, zip64 ? 0xffff : records.size(), 2);
  put(out, zip64 ? 0xffff : records.size(), 2);
  put(out, zip64 ? 0xffffffffu : directory.size(), 4);
  put(out, zip64 ? 0xffffffffu : directory_offset, 4);
  put(out, 0, 2);
  return out;
}

// ---- A small pickle writer for hand-made tensor dicts ------------------------------------------
struct PickleWriter {
  std::vector<std::uint8_t> bytes{0x80, 0x02};
  void op(std::uint8_t code) { bytes.push_back(code); }
  void text(const std::string& value) {
    op('X');
    put(bytes, value.size(), 4);
    bytes.insert(bytes.end(), value.begin(), value.end());
  }
  void integer(std::int64_t value) {
    if (value >= INT32_MIN && value <= INT32_MAX) {
      op('J');
      put(bytes, static_cast<std::uint32_t>(static_cast<std::int32_t>(value)), 4);
    } else {
      op(0x8a);  // LONG1, 8 bytes
      op(8);
      put(bytes, static_cast<std::uint64_t>(value), 8);
    }
  }
  void global(const std::string& module, const std::string& name) {
    op('c');
    const std::string line = module + "\n" + name + "\n";
    bytes.insert(bytes.end(), line.begin(), line.end());
  }
  void int_tuple(const std::vector<std::int64_t>& values) {
    op('(');
    for (auto value : values) integer(value);
    op('t');
  }
  // One `name: tensor` item (to be closed by SETITEMS).
  void tensor(const std::string& name, const std::string& storage_type, const std::string& key, std::int64_t numel,
              std::int64_t offset, const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& stride) {
    text(name);
    global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    op('(');
    text("storage");
    global("torch", storage_type);
    text(key);
    text("cpu");
    integer(numel);
    op('t');
    op('Q');
    integer(offset);
    int_tuple(shape);
    int_tuple(stride);
    op(0x89);
    global("collections", "OrderedDict");
    op(')');
    op('R');
    op('t');
    op('R');
  }
};

// The bytes of a string literal, embedded NULs included.
template <std::size_t N>
std::vector<std::uint8_t> raw(const char (&text)[N]) {
  return std::vector<std::uint8_t>(text, text + N - 1);
}

std::vector<std::uint8_t> floats_bytes(const std::vector<float>& values) {
  std::vector<std::uint8_t> out(values.size() * 4);
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

seer::io::DType dtype_from_torch_name(const std::string& name) {
  if (name == "float32") return seer::io::DType::float32;
  if (name == "float64") return seer::io::DType::float64;
  if (name == "float16") return seer::io::DType::float16;
  if (name == "bfloat16") return seer::io::DType::bfloat16;
  if (name == "int64") return seer::io::DType::int64;
  FAIL("unexpected dtype ", name);
  return seer::io::DType::uint8;
}

}  // namespace

TEST_CASE("torch checkpoint: views.pth gives exactly the values PyTorch saved") {
  const auto checkpoint = seer::io::TorchCheckpoint::open(fixture("views.pth"));
  const auto expected = seer::io::parse_json(file_text(fixture("views_expected.json")), "views_expected.json");
  CHECK_FALSE(checkpoint.ordered());
  CHECK(checkpoint.skipped_entries() == std::vector<std::string>{"step"});
  CHECK(checkpoint.tensors().size() == expected.as_object("expected").size());
  for (const auto& member : expected.as_object("expected")) {
    const std::string& name = member.first;
    const seer::io::JsonValue& entry = member.second;
    CAPTURE(name);
    const auto& info = checkpoint.info(name);
    CHECK(info.dtype == dtype_from_torch_name(entry.find("dtype")->as_string("dtype")));
    std::vector<std::int64_t> shape, stride;
    for (const auto& e : entry.find("shape")->as_array("shape")) shape.push_back(e.as_integer("shape"));
    for (const auto& e : entry.find("stride")->as_array("stride")) stride.push_back(e.as_integer("stride"));
    CHECK(info.shape == shape);
    CHECK(info.strides == stride);
    CHECK(info.storage_offset == entry.find("storage_offset")->as_integer("storage_offset"));
    const auto& values = entry.find("values")->as_array("values");
    REQUIRE(static_cast<std::int64_t>(values.size()) == info.elements());
    if (info.dtype == seer::io::DType::int64) {
      const auto bytes = checkpoint.read_bytes(name);
      for (std::size_t i = 0; i < values.size(); ++i) {
        std::int64_t value;
        std::memcpy(&value, bytes.data() + 8 * i, 8);
        CHECK(value == values[i].as_integer("value"));
      }
      CHECK_THROWS_AS(checkpoint.read_float(name), seer::InvalidArgument);
    } else {
      const auto floats = checkpoint.read_float(name, shape);
      for (std::size_t i = 0; i < values.size(); ++i)
        CHECK(floats[i] == static_cast<float>(values[i].as_number("value")));
    }
  }
  // Views share their storage with "base"; the parameter keeps requires_grad.
  CHECK(checkpoint.info("transposed").storage_key == checkpoint.info("base").storage_key);
  CHECK_FALSE(checkpoint.info("transposed").is_contiguous());
  CHECK(checkpoint.info("param").requires_grad);
  CHECK_FALSE(checkpoint.info("base").requires_grad);
  CHECK_THROWS_AS(checkpoint.read_float("base", {6, 4}), seer::InvalidArgument);
  CHECK_THROWS_AS(checkpoint.read_float("step"), seer::InvalidArgument);
}

TEST_CASE("torch checkpoint: gate weights match the float32 copies, in .pth and safetensors") {
  const auto pth = seer::io::TorchCheckpoint::open(fixture("gate_tiny.pth"));
  const auto bf16 = seer::io::SafetensorsFile::open(fixture("gate_tiny.safetensors"));
  const auto expected = seer::io::SafetensorsFile::open(fixture("gate_tiny_expected.safetensors"));
  REQUIRE(pth.tensors().size() == 2);
  for (const auto& tensor : expected.tensors()) {
    CAPTURE(tensor.name);
    CHECK(pth.info(tensor.name).dtype == seer::io::DType::bfloat16);
    const auto values = expected.read_float(tensor.name, tensor.shape);
    CHECK(pth.read_float(tensor.name, tensor.shape) == values);
    CHECK(bf16.read_float(tensor.name, tensor.shape) == values);
  }
  // A module's state_dict(): an OrderedDict with _metadata applied by BUILD.
  const auto ordered = seer::io::TorchCheckpoint::open(fixture("gate_double.pth"));
  CHECK(ordered.ordered());
  CHECK(ordered.tensors().size() == 4);
  CHECK(ordered.tensors()[0].name == "model.layers.0.self_attn.attn_gate.mask_linear_q.weight");
  CHECK(ordered.info("model.layers.1.self_attn.attn_gate.mask_linear_k.weight").shape ==
        std::vector<std::int64_t>{2, 24, 8});
}

TEST_CASE("gate weights: loaded gates score exactly like gates built from the same weights") {
  const auto config = seer::io::read_model_config(fixture("gate_tiny_config.json"));
  const auto expected = seer::io::SafetensorsFile::open(fixture("gate_tiny_expected.safetensors"));
  const auto from_pth = seer::io::load_prefill_gates(fixture("gate_tiny.pth"), fixture("gate_tiny_config.json"));
  const auto from_safetensors =
      seer::io::load_prefill_gates(seer::io::GateWeightFile::open(fixture("gate_tiny.safetensors")), config);
  REQUIRE(from_pth.size() == 2);
  REQUIRE(from_safetensors.size() == 2);

  const std::int64_t length = 19, hq = 4, hkv = 2, dim = 8;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> q(static_cast<std::size_t>(length * hq * dim)), k(static_cast<std::size_t>(length * hkv * dim));
  for (auto& x : q) x = normal(rng);
  for (auto& x : k) x = normal(rng);
  const auto q_batch =
      seer::padded_batch(seer::TensorView<const float, 4>::contiguous(q.data(), {1, length, hq, dim}), "q");
  const auto k_batch =
      seer::padded_batch(seer::TensorView<const float, 4>::contiguous(k.data(), {1, length, hkv, dim}), "k");
  for (std::int64_t layer = 0; layer < 2; ++layer) {
    CAPTURE(layer);
    const std::string key = seer::io::prefill_gate_key(layer, "mask_linear_k");
    const seer::LearnedGate direct(seer::io::learned_gate_config(config), hq, hkv, dim, expected.read_float(key));
    CHECK(from_pth[layer].k_projection() == direct.k_projection());
    CHECK(from_pth[layer].config().rope.scaling.type == "llama3");
    const auto reference = direct.score(q_batch, k_batch);
    const auto loaded = from_pth[layer].score(q_batch, k_batch);
    const auto loaded_safetensors = from_safetensors[layer].score(q_batch, k_batch);
    const auto& geometry = reference.sequences()[0];
    int rows = 0;
    for (std::int64_t h = 0; h < hq; ++h)
      for (std::int64_t m = 0; m < geometry.query_blocks(); ++m) {
        const auto count = static_cast<std::size_t>(geometry.visible_key_blocks(m));
        std::vector<double> a(count), b(count, std::nan("")), c(count, std::nan(""));
        reference.score_row(0, h, m, a.data());
        loaded.score_row(0, h, m, b.data());
        loaded_safetensors.score_row(0, h, m, c.data());
        CHECK(a == b);
        CHECK(a == c);
        CHECK(a.back() != 0.0);
        ++rows;
      }
    CHECK(rows == hq * 5);  // ceil(19 / 4) query blocks per head
  }

  // A checkpoint directory holding model.safetensors loads the same weights.
  const auto directory = std::filesystem::temp_directory_path() / "seer_test_gate_directory";
  std::filesystem::create_directories(directory);
  std::filesystem::copy_file(fixture("gate_tiny.safetensors"), directory / "model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  const auto from_directory = seer::io::load_prefill_gates(seer::io::GateWeightFile::open(directory.string()), config);
  std::filesystem::remove_all(directory);
  REQUIRE(from_directory.size() == 2);
  CHECK(from_directory[1].k_projection() == from_pth[1].k_projection());

  // The double-linear layout (Qmaxavg: a q projection, k per KV head) from an OrderedDict.
  const auto doubles = seer::io::load_prefill_gates(fixture("gate_double.pth"), fixture("gate_double_config.json"));
  REQUIRE(doubles.size() == 2);
  CHECK(doubles[1].has_q_projection());
  CHECK(doubles[1].q_projection() == seer::io::TorchCheckpoint::open(fixture("gate_double.pth"))
                                         .read_float(seer::io::prefill_gate_key(1, "mask_linear_q")));
}

TEST_CASE("gate weights: config mismatches name the offending key") {
  const std::string base = file_text(fixture("gate_tiny_config.json"));
  const auto weights = seer::io::GateWeightFile::open(fixture("gate_tiny.pth"));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = base;
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    return seer::io::parse_model_config(text, "config");
  };
  std::string message = format_error_of(
      [&] { seer::io::load_prefill_gates(weights, with("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")); });
  CHECK(message.find("missing gate weight \"model.layers.2.self_attn.attn_gate.mask_linear_k.weight\"") !=
        std::string::npos);
  message = format_error_of(
      [&] { seer::io::load_prefill_gates(weights, with("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1")); });
  CHECK(message.find("model.layers.1.self_attn.attn_gate.mask_linear_k.weight\" is for layer 1") != std::string::npos);
  message = format_error_of(
      [&] { seer::io::load_prefill_gates(weights, with("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4")); });
  CHECK(message.empty());  // single linear: the k projection is per query head whatever Hkv is
  message = format_error_of([&] {
    seer::io::load_prefill_gates(
        weights, with("\"seerattn_gate_type\": \"Qavg_Kmaxminavg\"", "\"seerattn_gate_type\": \"Qavg_Kmaxavg\""));
  });
  CHECK(message.find("\"model.layers.0.self_attn.attn_gate.mask_linear_k.weight\" has shape [4, 24, 8]") !=
        std::string::npos);
  CHECK(message.find("needs [4, 16, 8]") != std::string::npos);
  message = format_error_of([&] {
    seer::io::load_prefill_gates(weights,
                                 with("\"seerattn_gate_force_double\": false", "\"seerattn_gate_force_double\": true"));
  });
  CHECK(message.find("needs [2, 24, 8]") != std::string::npos);
  message = format_error_of([&] {
    seer::io::load_prefill_gates(
        weights, with("\"seerattn_gate_type\": \"Qavg_Kmaxminavg\"", "\"seerattn_gate_type\": \"Qmedian_K\""));
  });
  CHECK(message.find("seerattn_gate_type") != std::string::npos);
  // Prefill weights under a double-linear config: the q projection is missing.
  const auto tiny = seer::io::read_model_config(fixture("gate_tiny_config.json"));
  const auto double_weights = seer::io::GateWeightFile::open(fixture("gate_double.pth"));
  message = format_error_of([&] { seer::io::load_prefill_gates(double_weights, tiny); });
  CHECK(message.find("mask_linear_k.weight\" has shape [2, 24, 8]") != std::string::npos);
  // Paths that hold no gate weights.
  CHECK(format_error_of([] { seer::io::GateWeightFile::open(fixture("")); }).find("is a directory without") !=
        std::string::npos);
  CHECK(format_error_of([] { seer::io::GateWeightFile::open(fixture("no_such_file.pth")); }).find("cannot open") !=
        std::string::npos);
  // A corrupt head_dim is refused before it sizes anything.
  CHECK(format_error_of([&] { with("\"head_dim\": 8", "\"head_dim\": 1099511627776"); }).find("exceeds the limit") !=
        std::string::npos);
  // A decode gate is recognised.
  const auto decode = seer::io::SafetensorsFile::from_bytes(seer::io::serialize_safetensors(
      {seer::io::TensorToWrite::from_float("model.layers.0.self_attn.attn_gate.attngate_linear_k.weight", {1}, {1})}));
  message = format_error_of([&] { seer::io::load_prefill_gates(seer::io::GateWeightFile(decode), tiny); });
  CHECK(message.find("decode gate") != std::string::npos);
}

TEST_CASE("torch checkpoint: every truncation and random corruption is a FormatError, never a crash") {
  for (const char* name : {"gate_tiny.pth", "views.pth", "gate_double.pth"}) {
    CAPTURE(name);
    const auto good = file_bytes(fixture(name));
    CHECK_NOTHROW(read_everything(good));
    int truncations_rejected = 0;
    for (std::size_t size = 0; size < good.size(); ++size) {
      const std::vector<std::uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size));
      if (!format_error_of([&] { read_everything(cut); }).empty()) ++truncations_rejected;
    }
    CHECK(truncations_rejected == static_cast<int>(good.size()));
    std::mt19937 rng(17);
    int rejected = 0;
    for (int trial = 0; trial < 1500; ++trial) {
      auto mutated = good;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int flip = 0; flip < flips; ++flip)
        mutated[rng() % mutated.size()] ^= static_cast<std::uint8_t>(1 + rng() % 255);
      try {
        read_everything(mutated);
      } catch (const seer::FormatError&) {
        ++rejected;
      }
    }
    CHECK(rejected > 0);
  }
}

TEST_CASE("pickle: only allow-listed globals, no code runs") {
  // pickle.dumps of a reduce to os.system, protocol 2.
  const auto bytes = raw("\x80\x02\x63os\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.");
  const std::string message = format_error_of(
      [&] { seer::io::read_pickle(bytes.data(), bytes.size(), "data.pkl", seer::io::torch_checkpoint_globals()); });
  CHECK(message.find("'os.system'") != std::string::npos);
  CHECK(message.find("allow-list") != std::string::npos);
  // Inside a torch archive as well.
  const auto archive = make_zip({{"archive/data.pkl", bytes}}, false);
  CHECK(format_error_of([&] { seer::io::TorchCheckpoint::from_bytes(archive); }).find("'os.system'") !=
        std::string::npos);
  // STACK_GLOBAL is checked too (protocol 4 spelling, with FRAME and MEMOIZE).
  const auto stacked_bytes =
      raw("\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08"
          "builtins\x94\x8c\x04"
          "eval\x94\x93\x94.");
  CHECK(format_error_of([&] {
          seer::io::read_pickle(stacked_bytes.data(), stacked_bytes.size(), "p", seer::io::torch_checkpoint_globals());
        }).find("'builtins.eval'") != std::string::npos);
}

TEST_CASE("pickle: values, memo and malformed input") {
  // {"a": (1, -2, 300, 70000, -129 as LONG1, True, None), "b": OrderedDict()} with memo reuse.
  const std::string text = std::string("\x80\x02}q\x00(X\x01\x00\x00\x00", 11) + "aq\x01(K\x01J" +
                           std::string("\xfe\xff\xff\xff", 4) + "M" + std::string("\x2c\x01", 2) + "J" +
                           std::string("\x70\x11\x01\x00", 4) + std::string("\x8a\x02\x7f\xff", 4) + "\x88Ntq\x02" +
                           "X" + std::string("\x01\x00\x00\x00", 4) + "bccollections\nOrderedDict\n)Rh\x02\x85" + "bu.";
  const std::vector<std::uint8_t> bytes(text.begin(), text.end());
  const auto document = seer::io::read_pickle(bytes.data(), bytes.size(), "p", seer::io::torch_checkpoint_globals());
  const auto& root = document.root_node();
  REQUIRE(root.kind == seer::io::PickleNode::Kind::dict);
  REQUIRE(root.items.size() == 4);
  const auto& tuple = document.node(root.items[1]);
  REQUIRE(tuple.items.size() == 7);
  const std::int64_t integers[] = {1, -2, 300, 70000, -129};
  for (int i = 0; i < 5; ++i) CHECK(document.node(tuple.items[i]).integer == integers[i]);
  CHECK(document.node(tuple.items[5]).boolean);
  CHECK(document.node(tuple.items[6]).kind == seer::io::PickleNode::Kind::none);
  const auto& ordered = document.node(root.items[3]);
  CHECK(ordered.ordered);
  CHECK(document.node(ordered.state).items == std::vector<std::size_t>{root.items[1]});  // BUILD state, memo reuse

  const std::vector<std::vector<std::uint8_t>> bad_pickles = {raw(""),
                                                              raw("\x80\x02"),
                                                              raw("\x80\x02N"),
                                                              raw("\x80\x09N."),
                                                              raw("\x80\x02NN."),
                                                              raw("\x80\x02(N."),
                                                              raw("\x80\x02t."),
                                                              raw("\x80\x02h\x05."),
                                                              raw("\x80\x02s."),
                                                              raw("\x80\x02Ns."),
                                                              raw("\x80\x02N\x85\x85u."),
                                                              raw("\x80\x02X\xff\xff\xff\x7f"),
                                                              raw("\x80\x02\x8a\x09"),
                                                              raw("\x80\x02]."),
                                                              raw("\x80\x02NNR."),
                                                              raw("\x80\x02Nb."),
                                                              raw("\x80\x02\x63torch\nFloatStorage"),
                                                              raw("\x80\x02q\x00."),
                                                              raw("\x80\x02\x95\xff\x00\x00\x00\x00\x00\x00\x00N.")};
  for (std::size_t i = 0; i < bad_pickles.size(); ++i) {
    CAPTURE(i);
    const auto& b = bad_pickles[i];
    CHECK_FALSE(format_error_of([&] {
                  seer::io::read_pickle(b.data(), b.size(), "p", seer::io::torch_checkpoint_globals());
                }).empty());
  }
  // A dict that contains itself is representable (indices, no ownership cycle) and rejected by the reader.
  const auto archive = make_zip({{"a/data.pkl", raw("\x80\x02}q\x00h\x00h\x00s.")}}, false);
  CHECK(format_error_of([&] { seer::io::TorchCheckpoint::from_bytes(archive); }).find("expected a string") !=
        std::string::npos);
}

TEST_CASE("torch checkpoint: hand-made archives, ZIP64, views and storage checks") {
  const std::vector<float> storage = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  auto archive = [&](const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& stride,
                     std::int64_t offset, std::int64_t numel, bool zip64, std::uint16_t method = 0) {
    PickleWriter p;
    p.op('}');
    p.op('(');
    p.tensor("t", "FloatStorage", "0", numel, offset, shape, stride);
    p.op('u');
    p.op('.');
    return make_zip({{"x/data.pkl", p.bytes},
                     {"x/byteorder", {'l', 'i', 't', 't', 'l', 'e'}},
                     {"x/data/0", floats_bytes(storage), method}},
                    zip64);
  };
  for (bool zip64 : {false, true}) {
    CAPTURE(zip64);
    const auto checkpoint = seer::io::TorchCheckpoint::from_bytes(archive({3, 2}, {1, 4}, 1, 12, zip64));
    CHECK(checkpoint.read_float("t") == std::vector<float>{1, 5, 2, 6, 3, 7});
    const auto zip = seer::io::ZipArchive::from_bytes(archive({2}, {1}, 0, 12, zip64));
    REQUIRE(zip.entries().size() == 3);
    CHECK(zip.find("x/data/0")->size == 48);
  }
  CHECK(seer::io::TorchCheckpoint::from_bytes(archive({2, 0}, {5, 1}, 11, 12, false)).read_float("t").empty());
  auto rejects = [&](const std::vector<std::uint8_t>& bytes, const std::string& phrase) {
    const std::string message = format_error_of([&] { read_everything(bytes); });
    CAPTURE(message);
    CHECK(message.find(phrase) != std::string::npos);
  };
  // Stride 0 (an expanded view) is read when it has no more elements than its storage.
  CHECK(seer::io::TorchCheckpoint::from_bytes(archive({4}, {0}, 3, 12, false)).read_float("t") ==
        std::vector<float>{3, 3, 3, 3});
  rejects(archive({13}, {1}, 0, 12, false), "more elements than its storage");
  rejects(archive({4, 4}, {0, 0}, 0, 12, false), "more elements than its storage");
  rejects(archive({3, 2}, {5, 1}, 1, 12, false), "outside its storage");
  rejects(archive({2}, {1}, 12, 12, false), "outside its storage");
  rejects(archive({2, 2}, {1, 4611686018427387904}, 0, 12, false), "outside its storage");  // no overflow
  rejects(archive({2}, {-1}, 1, 12, false), "negative size or stride");
  rejects(archive({2}, {1, 1}, 0, 12, false), "different lengths");
  rejects(archive({2}, {1}, 0, 13, false), "holds 48 bytes");
  rejects(archive({2}, {1}, 0, 12, false, 8), "compressed");
  // A compressed entry may claim any size (its bytes in the file are the compressed ones): reading it is refused
  // before anything of that size is allocated (libFuzzer found a 4 GB allocation here).
  const auto huge = seer::io::ZipArchive::from_bytes(make_zip({{"x/data/0", {1, 2, 3}, 8, 1ull << 50}}, true));
  CHECK(huge.find("x/data/0")->size == 1ull << 50);
  const std::string refused = format_error_of([&] { (void)huge.read(*huge.find("x/data/0")); });
  CAPTURE(refused);
  CHECK(refused.find("compressed") != std::string::npos);
  rejects(std::vector<std::uint8_t>{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc}, "legacy torch.save format");
  rejects(make_zip({{"weights.bin", {1, 2, 3}}}, false), "no <folder>/data.pkl");
  auto corrupted = archive({2}, {1}, 0, 12, false);
  corrupted[corrupted.size() / 3] ^= 0x40;  // inside the storage data: the CRC catches it
  CHECK_FALSE(format_error_of([&] { read_everything(corrupted); }).empty());
}
