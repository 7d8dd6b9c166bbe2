// A small, strict JSON reader for configuration files and safetensors headers.
//
// seer reads three kinds of JSON: Hugging Face config.json, model.safetensors.index.json and the
// header of a safetensors file. All three may come from untrusted downloads, so the parser is
// defensive: it never reads past the input, bounds nesting depth, rejects trailing garbage, and
// reports every problem as a FormatError that names the source and the byte offset. Numbers keep
// their exact integer value when they are integral (byte offsets in safetensors headers exceed
// 2^31 and must not pass through a double).
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"

namespace seer::io {

class JsonValue {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  JsonValue() = default;

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_number() const { return kind_ == Kind::number; }
  bool is_integer() const { return kind_ == Kind::number && integral_; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }
  bool is_boolean() const { return kind_ == Kind::boolean; }

  bool as_boolean(const std::string& what) const {
    expect(Kind::boolean, what);
    return boolean_;
  }
  double as_number(const std::string& what) const {
    expect(Kind::number, what);
    return number_;
  }
  std::int64_t as_integer(const std::string& what) const {
    expect(Kind::number, what);
    if (!integral_) throw FormatError(what, "expected an integer, got " + std::to_string(number_));
    return integer_;
  }
  const std::string& as_string(const std::string& what) const {
    expect(Kind::string, what);
    return string_;
  }
  const std::vector<JsonValue>& as_array(const std::string& what) const {
    expect(Kind::array, what);
    return array_;
  }
  // Members in document order (duplicate keys are rejected by the parser).
  const std::vector<std::pair<std::string, JsonValue>>& as_object(const std::string& what) const {
    expect(Kind::object, what);
    return object_;
  }

  // Member lookup in an object; nullptr when absent (or when this is not an object).
  const JsonValue* find(std::string_view key) const {
    if (kind_ != Kind::object) return nullptr;
    for (const auto& member : object_)
      if (member.first == key) return &member.second;
    return nullptr;
  }

 private:
  friend class JsonParser;

  void expect(Kind wanted, const std::string& what) const {
    if (kind_ != wanted)
      throw FormatError(what, std::string("expected a JSON ") + name(wanted) + ", got " + name(kind_));
  }
  static const char* name(Kind kind) {
    switch (kind) {
      case Kind::null:
        return "null";
      case Kind::boolean:
        return "boolean";
      case Kind::number:
        return "number";
      case Kind::string:
        return "string";
      case Kind::array:
        return "array";
      case Kind::object:
        return "object";
    }
    return "value";
  }

  Kind kind_ = Kind::null;
  bool boolean_ = false;
  bool integral_ = false;
  double number_ = 0.0;
  std::int64_t integer_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::vector<std::pair<std::string, JsonValue>> object_;
};

class JsonParser {
 public:
  static constexpr int max_depth = 64;

  JsonParser(std::string_view text, std::string source) : text_(text), source_(std::move(source)) {}

  JsonValue parse_document() {
    JsonValue value = parse_value(0);
    skip_whitespace();
    if (position_ != text_.size()) fail("unexpected trailing characters");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw FormatError(source_, message + " at byte " + std::to_string(position_));
  }

  void skip_whitespace() {
    while (position_ < text_.size()) {
      const char c = text_[position_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++position_;
    }
  }

  char peek() {
    if (position_ >= text_.size()) fail("unexpected end of input");
    return text_[position_];
  }

  void consume_literal(std::string_view literal) {
    if (text_.substr(position_, literal.size()) != literal) fail("invalid literal");
    position_ += literal.size();
  }

  JsonValue parse_value(int depth) {
    if (depth > max_depth) fail("nesting deeper than " + std::to_string(max_depth));
    skip_whitespace();
    JsonValue value;
    const char c = peek();
    if (c == '{') {
      value.kind_ = JsonValue::Kind::object;
      ++position_;
      skip_whitespace();
      if (peek() == '}') {
        ++position_;
        return value;
      }
      while (true) {
        skip_whitespace();
        if (peek() != '"') fail("expected a string key");
        std::string key = parse_string();
        for (const auto& member : value.object_)
          if (member.first == key) fail("duplicate key \"" + key + "\"");
        skip_whitespace();
        if (peek() != ':') fail("expected ':'");
        ++position_;
        value.object_.emplace_back(std::move(key), parse_value(depth + 1));
        skip_whitespace();
        const char next = peek();
        ++position_;
        if (next == '}') break;
        if (next != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      value.kind_ = JsonValue::Kind::array;
      ++position_;
      skip_whitespace();
      if (peek() == ']') {
        ++position_;
        return value;
      }
      while (true) {
        value.array_.push_back(parse_value(depth + 1));
        skip_whitespace();
        const char next = peek();
        ++position_;
        if (next == ']') break;
        if (next != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      value.kind_ = JsonValue::Kind::string;
      value.string_ = parse_string();
    } else if (c == 't') {
      consume_literal("true");
      value.kind_ = JsonValue::Kind::boolean;
      value.boolean_ = true;
    } else if (c == 'f') {
      consume_literal("false");
      value.kind_ = JsonValue::Kind::boolean;
    } else if (c == 'n') {
      consume_literal("null");
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      parse_number(value);
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return value;
  }

  void parse_number(JsonValue& value) {
    const std::size_t begin = position_;
    auto digits = [&] {
      const std::size_t start = position_;
      while (position_ < text_.size() && text_[position_] >= '0' && text_[position_] <= '9') ++position_;
      if (position_ == start) fail("expected a digit");
    };
    bool integral = true;
    if (text_[position_] == '-') ++position_;
    if (position_ < text_.size() && text_[position_] == '0') {
      ++position_;
    } else {
      digits();
    }
    if (position_ < text_.size() && text_[position_] == '.') {
      integral = false;
      ++position_;
      digits();
    }
    if (position_ < text_.size() && (text_[position_] == 'e' || text_[position_] == 'E')) {
      integral = false;
      ++position_;
      if (position_ < text_.size() && (text_[position_] == '+' || text_[position_] == '-')) ++position_;
      digits();
    }
    const std::string token(text_.substr(begin, position_ - begin));
    value.kind_ = JsonValue::Kind::number;
    value.number_ = std::strtod(token.c_str(), nullptr);
    if (!std::isfinite(value.number_)) fail("number out of range");
    if (integral) {
      errno = 0;
      char* end = nullptr;
      const long long parsed = std::strtoll(token.c_str(), &end, 10);
      if (errno == ERANGE) fail("integer out of the 64-bit range");
      value.integral_ = true;
      value.integer_ = parsed;
    } else if (value.number_ == std::floor(value.number_) && std::fabs(value.number_) < 9007199254740992.0) {
      // 1.0 or 4e3 still name an integer exactly.
      value.integral_ = true;
      value.integer_ = static_cast<std::int64_t>(value.number_);
    }
  }

  unsigned parse_hex4() {
    if (text_.size() - position_ < 4) fail("truncated \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[position_++];
      code <<= 4;
      if (c >= '0' && c <= '9') {
        code |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        code |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        code |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        fail("invalid hex digit in \\u escape");
      }
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xc0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xe0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    }
  }

  std::string parse_string() {
    ++position_;  // opening quote
    std::string out;
    while (true) {
      const char c = peek();
      ++position_;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character inside a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      const char escape = peek();
      ++position_;
      switch (escape) {
        case '"':
        case '\\':
        case '/':
          out += escape;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned code = parse_hex4();
          if (code >= 0xd800 && code < 0xdc00) {  // high surrogate: a low one must follow
            if (text_.substr(position_, 2) != "\\u") fail("unpaired surrogate in \\u escape");
            position_ += 2;
            const unsigned low = parse_hex4();
            if (low < 0xdc00 || low >= 0xe000) fail("invalid low surrogate in \\u escape");
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
          } else if (code >= 0xdc00 && code < 0xe000) {
            fail("unpaired surrogate in \\u escape");
          }
          append_utf8(out, code);
          break;
        }
        default:
          fail("invalid escape");
      }
    }
  }

  std::string_view text_;
  std::string source_;
  std::size_t position_ = 0;
};

// Parses a whole JSON document; `source` names it in errors (a file path, "safetensors header").
inline JsonValue parse_json(std::string_view text, const std::string& source) {
  return JsonParser(text, source).parse_document();
}

}  // namespace seer::io
