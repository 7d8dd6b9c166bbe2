// Flag parsing for the example programs: `--name value` pairs, typed reads with defaults, and one
// usage message for anything unknown or malformed.
//
//   engine::CommandLine args(argc, argv, "usage: program [--model DIR] [--tokens N]");
//   const std::string model = args.text("--model", "default/dir");
//   const std::int64_t tokens = args.integer("--tokens", 4096);
//   const bool plot_only = args.flag("--plot-only");   // a switch: given without a value
//   args.finish();  // rejects flags that were given but never read
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <utility>

namespace engine {

class CommandLine {
 public:
  CommandLine(int argc, char** argv, std::string usage) : usage_(std::move(usage)) {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag.rfind("--", 0) != 0) fail(flag + " is not a flag");
      const bool has_value = i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0;
      values_[flag] = has_value ? std::optional<std::string>(argv[++i]) : std::nullopt;
    }
  }

  std::string text(const std::string& flag, const std::string& fallback) { return take(flag).value_or(fallback); }
  std::int64_t integer(const std::string& flag, std::int64_t fallback) {
    const auto value = take(flag);
    if (!value) return fallback;
    char* end = nullptr;
    const long long parsed = std::strtoll(value->c_str(), &end, 10);
    if (end == value->c_str() || *end != '\0') fail(flag + " needs an integer, got '" + *value + "'");
    return parsed;
  }
  double real(const std::string& flag, double fallback) {
    const auto value = take(flag);
    if (!value) return fallback;
    char* end = nullptr;
    const double parsed = std::strtod(value->c_str(), &end);
    if (end == value->c_str() || *end != '\0') fail(flag + " needs a number, got '" + *value + "'");
    return parsed;
  }
  bool boolean(const std::string& flag, bool fallback) {
    const auto value = take(flag);
    if (!value) return fallback;
    if (*value != "true" && *value != "false") fail(flag + " needs true or false, got '" + *value + "'");
    return *value == "true";
  }
  // A switch: true when given (without a value).
  bool flag(const std::string& name) {
    read_[name] = true;
    const auto it = values_.find(name);
    if (it == values_.end()) return false;
    if (it->second) fail(name + " takes no value");
    return true;
  }

  // Every flag given must have been read by now.
  void finish() const {
    for (const auto& [flag, value] : values_)
      if (read_.count(flag) == 0) fail("unknown flag " + flag);
  }

 private:
  std::optional<std::string> take(const std::string& flag) {
    read_[flag] = true;
    const auto it = values_.find(flag);
    if (it == values_.end()) return std::nullopt;
    if (!it->second) fail(flag + " needs a value");
    return it->second;
  }
  [[noreturn]] void fail(const std::string& why) const {
    std::fprintf(stderr, "%s\n%s\n", why.c_str(), usage_.c_str());
    std::exit(2);
  }

  std::string usage_;
  std::map<std::string, std::optional<std::string>> values_;  // nullopt: given without a value
  std::map<std::string, bool> read_;
};

}  // namespace engine
