// JSON, safetensors and config.json readers: round trips, exact values, and malformed input.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "seer/io/json.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"

namespace {

template <class Fn>
bool throws_format_error(Fn&& fn) {
  try {
    fn();
  } catch (const seer::FormatError&) {
    return true;
  }
  return false;
}

std::vector<std::uint8_t> sample_file() {
  using seer::io::TensorToWrite;
  TensorToWrite bf16{"b", seer::io::DType::bfloat16, {3}, {}};
  for (float value : {1.0f, -2.5f, 0.15625f}) {
    const auto bits = seer::from_float<seer::bfloat16>(value).bits;
    bf16.bytes.push_back(static_cast<std::uint8_t>(bits & 0xff));
    bf16.bytes.push_back(static_cast<std::uint8_t>(bits >> 8));
  }
  return seer::io::serialize_safetensors({TensorToWrite::from_float("a", {2, 3}, {1, 2, 3, 4, 5, -6}), bf16},
                                         {{"format", "pt"}});
}

}  // namespace

TEST_CASE("JSON: values, escapes and exact integers") {
  const auto doc = seer::io::parse_json(
      R"( {"a": [1, -2.5e1, true, false, null], "s": "x\"\\\u00e9\ud83d\ude00", "big": 9007199254740993, "f": 2.0} )",
      "doc");
  const auto& array = doc.find("a")->as_array("a");
  CHECK(array[0].as_integer("a0") == 1);
  CHECK(array[1].as_number("a1") == -25.0);
  CHECK(array[2].as_boolean("a2"));
  CHECK(array[4].is_null());
  CHECK(doc.find("s")->as_string("s") == "x\"\\\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(doc.find("big")->as_integer("big") == 9007199254740993LL);  // not representable as a double
  CHECK(doc.find("f")->as_integer("f") == 2);
  CHECK(doc.find("missing") == nullptr);
}

TEST_CASE("JSON: malformed documents are FormatErrors") {
  for (const char* bad : {"", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "01", "1.", "-", "\"\\x\"", "\"\\ud800\"", "tru",
                          "{\"a\":1}x", "{\"a\":1,\"a\":2}", "\"\x01\"", "1e999", "99999999999999999999",
                          "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]"
                          "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"}) {
    CAPTURE(bad);
    CHECK(throws_format_error([&] { seer::io::parse_json(bad, "doc"); }));
  }
  CHECK(throws_format_error([] { seer::io::parse_json("\"s\"", "doc").as_integer("value"); }));
}

TEST_CASE("safetensors: write, read back, convert bf16") {
  const auto file = seer::io::SafetensorsFile::from_bytes(sample_file());
  CHECK(file.tensors().size() == 2);
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.read_float("a", {2, 3}) == std::vector<float>{1, 2, 3, 4, 5, -6});
  CHECK(file.read_float("b") == std::vector<float>{1.0f, -2.5f, 0.15625f});
  CHECK_THROWS_AS(file.read_float("a", {3, 2}), seer::InvalidArgument);
  CHECK_THROWS_AS(file.read_float("nope"), seer::InvalidArgument);
}

TEST_CASE("safetensors: truncated and corrupted files are FormatErrors, never crashes") {
  const auto good = sample_file();
  // Every truncation fails cleanly (or, past the data, still parses).
  for (std::size_t size = 0; size < good.size(); ++size) {
    const std::vector<std::uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size));
    CAPTURE(size);
    CHECK(throws_format_error([&] { seer::io::SafetensorsFile::from_bytes(cut); }));
  }
  // A header length beyond the file.
  auto huge = good;
  huge[7] = 0x7f;
  CHECK(throws_format_error([&] { seer::io::SafetensorsFile::from_bytes(huge); }));
  // Random byte flips either parse into a valid, bounds-checked file or raise an error.
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    auto mutated = good;
    for (int flips = 0; flips < 3; ++flips) mutated[rng() % mutated.size()] = static_cast<std::uint8_t>(rng());
    try {
      const auto file = seer::io::SafetensorsFile::from_bytes(mutated);
      for (const auto& tensor : file.tensors()) (void)file.read_bytes(tensor.name);
    } catch (const seer::Error&) {
    }
  }
  // Hand-made bad headers.
  auto with_header = [](const std::string& header) {
    std::vector<std::uint8_t> bytes(8);
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<std::uint8_t>(header.size() >> (8 * i));
    bytes.insert(bytes.end(), header.begin(), header.end());
    bytes.resize(bytes.size() + 16, 0);
    return bytes;
  };
  for (const char* header :
       {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,9]}})",
        R"({"t":{"dtype":"F32","shape":[5],"data_offsets":[0,20]}})",
        R"({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})",
        R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
        R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", R"({"t":{"dtype":"F32","shape":[1]}})",
        R"({"t":[]})", R"([])", R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})"}) {
    CAPTURE(header);
    CHECK(throws_format_error([&] { seer::io::SafetensorsFile::from_bytes(with_header(header)); }));
  }
}

TEST_CASE("config.json: shapes and both RoPE spellings") {
  const auto modern = seer::io::parse_model_config(
      R"({"model_type":"llama","hidden_size":512,"num_hidden_layers":6,"num_attention_heads":8,
          "num_key_value_heads":2,"head_dim":64,"max_position_embeddings":8192,"rms_norm_eps":1e-05,
          "tie_word_embeddings":true,"rope_parameters":{"rope_theta":10000.0,"rope_type":"default"}})",
      "modern");
  CHECK(modern.num_q_heads == 8);
  CHECK(modern.num_kv_heads == 2);
  CHECK(modern.head_dim == 64);
  CHECK(modern.rope.theta == 10000.0);
  CHECK(modern.rope.scaling.type == "default");
  CHECK(modern.tie_word_embeddings);
  CHECK_FALSE(modern.seer.present);

  const auto legacy = seer::io::parse_model_config(
      R"({"hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
          "max_position_embeddings":131072,"rope_theta":500000.0,
          "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                          "original_max_position_embeddings":8192,"rope_type":"llama3"},
          "seerattn_sparsity_method":"nz_ratio","seerattn_nz_ratio":0.1,"seerattn_gate_type":"Qavg_Kmaxminavg",
          "seerattn_last_block_dense":false})",
      "legacy");
  CHECK(legacy.head_dim == 128);  // hidden_size / heads when head_dim is absent
  CHECK(legacy.rope.theta == 500000.0);
  CHECK(legacy.rope.scaling.type == "llama3");
  CHECK(legacy.rope.scaling.factor == 8.0);
  CHECK(legacy.rope.scaling.original_max_position_embeddings == 8192);
  CHECK(legacy.seer.present);
  CHECK(legacy.seer.sparsity_method == "nz_ratio");
  CHECK(legacy.seer.nz_ratio == 0.1);
  CHECK_FALSE(legacy.seer.last_block_dense);

  // The legacy "type" key and the dynamic default for the original context length.
  const auto dynamic = seer::io::parse_model_config(
      R"({"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":2048,
          "rope_scaling":{"type":"dynamic","factor":2.0}})",
      "dynamic");
  CHECK(dynamic.rope.scaling.type == "dynamic");
  CHECK(dynamic.rope.scaling.original_max_position_embeddings == 2048);
}

TEST_CASE("config.json: bad configs are FormatErrors") {
  for (const char* bad :
       {R"({"num_hidden_layers":1,"num_attention_heads":2})",
        R"({"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2})",
        R"({"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"weird"}})",
        R"({"hidden_size":"64","num_hidden_layers":1,"num_attention_heads":2})",
        R"({"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":2,"rope_theta":-1})"}) {
    CAPTURE(bad);
    CHECK(throws_format_error([&] { seer::io::parse_model_config(bad, "config"); }));
  }
}
