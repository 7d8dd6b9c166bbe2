// A minimal, safe reader for the Python pickles inside torch.save files (data.pkl).
//
// Python's own unpickler imports and CALLS whatever a pickle names, so loading an untrusted .pth
// with it can run arbitrary code. This reader never calls anything: it runs the pickle machine only
// as far as building a tree of plain values, and it knows only the opcodes that torch.save emits
// for a (possibly Ordered) dict of tensors, protocols 2 to 5:
//   PROTO FRAME STOP MARK EMPTY_DICT EMPTY_TUPLE TUPLE TUPLE1-3 SETITEM SETITEMS BINUNICODE
//   SHORT_BINUNICODE BINUNICODE8 BININT BININT1 BININT2 LONG1 NEWTRUE NEWFALSE NONE GLOBAL
//   STACK_GLOBAL BINPERSID REDUCE BUILD BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET.
// Any other opcode is a FormatError naming it. GLOBAL/STACK_GLOBAL must name a "module.name" from the
// caller's allow-list (checked when the global is read, before it could be used). REDUCE does not
// call: it records (callable, arguments) as a `call` node for the caller to interpret, except that
// collections.OrderedDict() becomes an (ordered) dict, because SETITEMS must fill it in place.
// BUILD attaches its state to the object it applies to. BINPERSID records the persistent id (torch
// uses it for storages).
//
// Values live in an arena and refer to each other by index, so a malicious pickle that puts a dict
// inside itself creates no ownership cycle; consumers walk the tree with a depth limit. Every read is
// bounds-checked, and the work and memory are linear in the input (one node per opcode at most).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"

namespace seer::io {

struct PickleNode {
  enum class Kind { none, boolean, integer, string, tuple, dict, global, persistent_id, call };
  static constexpr std::size_t no_state = static_cast<std::size_t>(-1);

  Kind kind = Kind::none;
  bool boolean = false;
  std::int64_t integer = 0;
  std::string text;                // string: its value; global: "module.name"
  std::vector<std::size_t> items;  // tuple: elements; dict: key, value, key, value...; call: callable, args;
                                   // persistent_id: the id
  bool ordered = false;            // dict made by collections.OrderedDict()
  std::size_t state = no_state;    // BUILD state (dict or call)
};

inline const char* pickle_kind_name(PickleNode::Kind kind) {
  switch (kind) {
    case PickleNode::Kind::none:
      return "None";
    case PickleNode::Kind::boolean:
      return "bool";
    case PickleNode::Kind::integer:
      return "int";
    case PickleNode::Kind::string:
      return "str";
    case PickleNode::Kind::tuple:
      return "tuple";
    case PickleNode::Kind::dict:
      return "dict";
    case PickleNode::Kind::global:
      return "global";
    case PickleNode::Kind::persistent_id:
      return "persistent id";
    case PickleNode::Kind::call:
      return "call";
  }
  return "value";
}

// The result of unpickling: an arena of nodes and the index of the root object.
struct PickleDocument {
  std::vector<PickleNode> nodes;
  std::size_t root = 0;

  const PickleNode& node(std::size_t index) const { return nodes.at(index); }
  const PickleNode& root_node() const { return nodes.at(root); }
};

class PickleReader {
 public:
  static constexpr std::size_t max_global_name_bytes = 256;

  PickleReader(const std::uint8_t* data, std::size_t size, std::string source, std::vector<std::string> allowed_globals)
      : data_(data), size_(size), source_(std::move(source)), allowed_(std::move(allowed_globals)) {}

  PickleDocument run() {
    while (true) {
      if (position_ >= size_) fail("the pickle ends without a STOP opcode");
      opcode_position_ = position_;
      const std::uint8_t opcode = data_[position_++];
      switch (opcode) {
        case 0x80: {  // PROTO
          const std::uint8_t protocol = take(1)[0];
          if (protocol < 2 || protocol > 5) fail("unsupported pickle protocol " + std::to_string(protocol));
          break;
        }
        case 0x95: {  // FRAME: a length hint only
          const std::uint64_t length = little_endian(take(8), 8);
          if (length > size_ - position_) fail("FRAME length runs past the end of the pickle");
          break;
        }
        case '.': {  // STOP
          if (!marks_.empty()) fail("STOP with an unclosed MARK");
          if (stack_.size() != 1)
            fail("STOP with " + std::to_string(stack_.size()) + " values on the stack, expected 1");
          document_.root = stack_.back();
          return std::move(document_);
        }
        case '(':  // MARK
          marks_.push_back(stack_.size());
          break;
        case '}':  // EMPTY_DICT
          push(make(PickleNode::Kind::dict));
          break;
        case ')':  // EMPTY_TUPLE
          push(make(PickleNode::Kind::tuple));
          break;
        case 't': {  // TUPLE
          const std::size_t tuple = make(PickleNode::Kind::tuple);
          document_.nodes[tuple].items = pop_to_mark();
          push(tuple);
          break;
        }
        case 0x85:    // TUPLE1
        case 0x86:    // TUPLE2
        case 0x87: {  // TUPLE3
          const std::size_t count = static_cast<std::size_t>(opcode - 0x84);
          require_items(count);
          const std::size_t tuple = make(PickleNode::Kind::tuple);
          document_.nodes[tuple].items.assign(stack_.end() - static_cast<std::ptrdiff_t>(count), stack_.end());
          stack_.resize(stack_.size() - count);
          push(tuple);
          break;
        }
        case 's': {  // SETITEM
          require_items(3);
          const std::size_t value = pop(), key = pop();
          dict_on_top("SETITEM").items.insert(dict_on_top("SETITEM").items.end(), {key, value});
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<std::size_t> pairs = pop_to_mark();
          if (pairs.size() % 2 != 0) fail("SETITEMS with an odd number of values");
          require_items(1);
          auto& items = dict_on_top("SETITEMS").items;
          items.insert(items.end(), pairs.begin(), pairs.end());
          break;
        }
        case 'X':  // BINUNICODE
          push_string(little_endian(take(4), 4));
          break;
        case 0x8c:  // SHORT_BINUNICODE
          push_string(take(1)[0]);
          break;
        case 0x8d:  // BINUNICODE8
          push_string(little_endian(take(8), 8));
          break;
        case 'J': {  // BININT: signed 32-bit
          const std::uint64_t bits = little_endian(take(4), 4);
          push_integer(static_cast<std::int32_t>(static_cast<std::uint32_t>(bits)));
          break;
        }
        case 'K':  // BININT1
          push_integer(take(1)[0]);
          break;
        case 'M':  // BININT2
          push_integer(static_cast<std::int64_t>(little_endian(take(2), 2)));
          break;
        case 0x8a: {  // LONG1: n-byte little-endian two's complement
          const std::size_t count = take(1)[0];
          if (count > 8) fail("integer of " + std::to_string(count) + " bytes does not fit 64 bits");
          const std::uint8_t* bytes = take(count);
          std::uint64_t bits = little_endian(bytes, count);
          if (count > 0 && count < 8 && (bytes[count - 1] & 0x80)) bits |= ~std::uint64_t{0} << (8 * count);
          push_integer(static_cast<std::int64_t>(bits));
          break;
        }
        case 0x88:    // NEWTRUE
        case 0x89: {  // NEWFALSE
          const std::size_t value = make(PickleNode::Kind::boolean);
          document_.nodes[value].boolean = opcode == 0x88;
          push(value);
          break;
        }
        case 'N':  // NONE
          push(make(PickleNode::Kind::none));
          break;
        case 'c': {  // GLOBAL: "module\nname\n"
          std::string module = read_line();
          std::string name = read_line();
          push_global(module, name);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          require_items(2);
          const std::size_t name = pop(), module = pop();
          if (node(name).kind != PickleNode::Kind::string || node(module).kind != PickleNode::Kind::string)
            fail("STACK_GLOBAL needs two strings");
          push_global(node(module).text, node(name).text);
          break;
        }
        case 'Q': {  // BINPERSID
          require_items(1);
          const std::size_t id = pop();
          const std::size_t reference = make(PickleNode::Kind::persistent_id);
          document_.nodes[reference].items = {id};
          push(reference);
          break;
        }
        case 'R': {  // REDUCE
          require_items(2);
          const std::size_t arguments = pop(), callable = pop();
          if (node(callable).kind != PickleNode::Kind::global) fail("REDUCE of a value that is not a global");
          if (node(arguments).kind != PickleNode::Kind::tuple) fail("REDUCE with arguments that are not a tuple");
          if (node(callable).text == "collections.OrderedDict") {
            if (!node(arguments).items.empty()) fail("collections.OrderedDict called with arguments");
            const std::size_t dict = make(PickleNode::Kind::dict);
            document_.nodes[dict].ordered = true;
            push(dict);
          } else {
            const std::size_t call = make(PickleNode::Kind::call);
            document_.nodes[call].items = {callable, arguments};
            push(call);
          }
          break;
        }
        case 'b': {  // BUILD
          require_items(2);
          const std::size_t state = pop();
          PickleNode& target = document_.nodes[stack_.back()];
          if (target.kind != PickleNode::Kind::dict && target.kind != PickleNode::Kind::call)
            fail(std::string("BUILD on a ") + pickle_kind_name(target.kind));
          target.state = state;
          break;
        }
        case 'q':  // BINPUT
          memoize(take(1)[0]);
          break;
        case 'r':  // LONG_BINPUT
          memoize(little_endian(take(4), 4));
          break;
        case 0x94:  // MEMOIZE
          memoize(memo_.size());
          break;
        case 'h':  // BINGET
          recall(take(1)[0]);
          break;
        case 'j':  // LONG_BINGET
          recall(little_endian(take(4), 4));
          break;
        default:
          fail("unsupported pickle opcode 0x" + hex(opcode) +
               " (torch checkpoints of tensor dicts never use it; refusing to interpret the pickle)");
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw FormatError(source_, message + " (at byte " + std::to_string(opcode_position_) + ")");
  }

  static std::string hex(unsigned value) {
    static const char digits[] = "0123456789abcdef";
    return std::string{digits[(value >> 4) & 0xf], digits[value & 0xf]};
  }

  static std::uint64_t little_endian(const std::uint8_t* bytes, std::size_t count) {
    std::uint64_t value = 0;
    for (std::size_t i = count; i-- > 0;) value = (value << 8) | bytes[i];
    return value;
  }

  const std::uint8_t* take(std::uint64_t count) {
    if (count > size_ - position_) fail("the pickle is truncated");
    const std::uint8_t* at = data_ + position_;
    position_ += static_cast<std::size_t>(count);
    return at;
  }

  std::string read_line() {
    std::string line;
    while (true) {
      const char c = static_cast<char>(take(1)[0]);
      if (c == '\n') return line;
      if (line.size() >= max_global_name_bytes) fail("GLOBAL name is too long");
      line += c;
    }
  }

  const PickleNode& node(std::size_t index) const { return document_.nodes[index]; }

  std::size_t make(PickleNode::Kind kind) {
    document_.nodes.emplace_back();
    document_.nodes.back().kind = kind;
    return document_.nodes.size() - 1;
  }

  void push(std::size_t index) { stack_.push_back(index); }

  // Values above the innermost MARK.
  std::size_t available() const { return stack_.size() - (marks_.empty() ? 0 : marks_.back()); }
  void require_items(std::size_t count) const {
    if (available() < count) fail("stack underflow");
  }
  std::size_t pop() {
    require_items(1);
    const std::size_t index = stack_.back();
    stack_.pop_back();
    return index;
  }
  std::vector<std::size_t> pop_to_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<std::size_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  PickleNode& dict_on_top(const char* opcode) {
    require_items(1);
    PickleNode& target = document_.nodes[stack_.back()];
    if (target.kind != PickleNode::Kind::dict)
      fail(std::string(opcode) + " on a " + pickle_kind_name(target.kind) + ", expected a dict");
    return target;
  }

  void push_string(std::uint64_t length) {
    const std::uint8_t* bytes = take(length);
    const std::size_t value = make(PickleNode::Kind::string);
    document_.nodes[value].text.assign(reinterpret_cast<const char*>(bytes), static_cast<std::size_t>(length));
    push(value);
  }

  void push_integer(std::int64_t integer) {
    const std::size_t value = make(PickleNode::Kind::integer);
    document_.nodes[value].integer = integer;
    push(value);
  }

  void push_global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    bool allowed = false;
    for (const auto& entry : allowed_) allowed = allowed || entry == full;
    if (!allowed) {
      std::string list;
      for (const auto& entry : allowed_) list += (list.empty() ? "" : ", ") + entry;
      fail("the pickle names the global '" + full +
           "', which is not on the allow-list; refusing to load it (a pickle can run arbitrary code through "
           "globals). Allowed: " +
           list);
    }
    const std::size_t value = make(PickleNode::Kind::global);
    document_.nodes[value].text = full;
    push(value);
  }

  void memoize(std::uint64_t index) {
    require_items(1);
    memo_[index] = stack_.back();
  }

  void recall(std::uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " is read before it is written");
    push(it->second);
  }

  const std::uint8_t* data_;
  std::size_t size_;
  std::string source_;
  std::vector<std::string> allowed_;
  std::size_t position_ = 0;
  std::size_t opcode_position_ = 0;
  PickleDocument document_;
  std::vector<std::size_t> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, std::size_t> memo_;
};

// Unpickles `size` bytes; `source` names them in errors; `allowed_globals` lists "module.name" entries.
inline PickleDocument read_pickle(const std::uint8_t* data, std::size_t size, const std::string& source,
                                  std::vector<std::string> allowed_globals) {
  return PickleReader(data, size, source, std::move(allowed_globals)).run();
}

}  // namespace seer::io
