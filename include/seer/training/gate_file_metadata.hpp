// The "__metadata__" block that seer's gate files (gate_file.hpp: prefill gates, decode_gate_file.hpp:
// decode gates) share: typed reads that fail with a FormatError naming the file and the key, and the
// model shape (layers, heads, head dim) written by one and checked by the other.
#pragma once

#include <cstdint>
#include <exception>
#include <map>
#include <string>
#include <utility>

#include "seer/core/error.hpp"
#include "seer/io/model_config.hpp"

namespace seer::training {

class GateFileMetadata {
 public:
  GateFileMetadata(std::string path, const std::map<std::string, std::string>& metadata)
      : path_(std::move(path)), metadata_(metadata) {}

  const std::string& text(const char* key) const {
    const auto it = metadata_.find(key);
    if (it == metadata_.end()) throw FormatError(path_, std::string("metadata has no \"") + key + "\" entry");
    return it->second;
  }
  std::int64_t integer(const char* key) const {
    const std::string& value = text(key);
    std::size_t used = 0;
    long long parsed = 0;
    try {
      parsed = std::stoll(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != value.size() || value.empty())
      throw FormatError(path_, std::string("metadata \"") + key + "\" is \"" + value + "\", expected an integer");
    return static_cast<std::int64_t>(parsed);
  }
  bool boolean(const char* key) const {
    const std::string& value = text(key);
    if (value != "true" && value != "false")
      throw FormatError(path_, std::string("metadata \"") + key + "\" is \"" + value + "\", expected true or false");
    return value == "true";
  }
  void expect_format(const char* format) const {
    if (text("format") != format)
      throw FormatError(path_, "metadata format is \"" + text("format") + "\", expected " + format);
  }

  // The file's gates must be for this model's layers, heads and head dim.
  void expect_model_shape(const io::ModelConfig& model, const char* what) const {
    const std::int64_t layers = integer("num_layers");
    if (layers != model.num_layers || integer("num_q_heads") != model.num_q_heads ||
        integer("num_kv_heads") != model.num_kv_heads || integer("head_dim") != model.head_dim)
      throw FormatError(
          path_, std::string(what) + " are for " + std::to_string(layers) + " layers, " + text("num_q_heads") + "/" +
                     text("num_kv_heads") + " heads, head dim " + text("head_dim") + "; the model has " +
                     std::to_string(model.num_layers) + " layers, " + std::to_string(model.num_q_heads) + "/" +
                     std::to_string(model.num_kv_heads) + " heads, head dim " + std::to_string(model.head_dim));
  }

  // The shape keys every gate file writes.
  static void add_model_shape(std::map<std::string, std::string>& metadata, std::size_t layers, std::int64_t q_heads,
                              std::int64_t kv_heads, std::int64_t head_dim) {
    metadata["num_layers"] = std::to_string(layers);
    metadata["num_q_heads"] = std::to_string(q_heads);
    metadata["num_kv_heads"] = std::to_string(kv_heads);
    metadata["head_dim"] = std::to_string(head_dim);
  }

 private:
  std::string path_;
  const std::map<std::string, std::string>& metadata_;
};

}  // namespace seer::training
