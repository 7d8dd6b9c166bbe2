// Helpers shared by the gate distillation and evaluation examples: fixed-length byte windows cut
// from books, with the train/evaluation split both programs must agree on, and a progress line.
//
// Split: the first half of every book is for training (distill_gates), the second half for
// evaluation (evaluate_gates). No other text ships with the project, so the gates are trained on
// the same books they are evaluated on, but never on the same bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "seer/core/error.hpp"

namespace engine {

struct TextWindow {
  std::string book;         // file name
  std::int64_t offset = 0;  // first byte in the book
  std::string bytes;
};

enum class BookHalf { training, evaluation };

inline std::string read_text_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw seer::FormatError(path, "cannot open the text file");
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

// `count` windows of `length` bytes spread evenly over one half of the book (first window at the
// start of the half, last one ending at its end), never crossing the middle.
inline std::vector<TextWindow> book_windows(const std::string& directory, const std::string& book, BookHalf half,
                                            std::int64_t count, std::int64_t length) {
  const std::string text = read_text_file(directory + "/" + book);
  const auto size = static_cast<std::int64_t>(text.size());
  const std::int64_t middle = size / 2;
  const std::int64_t begin = half == BookHalf::training ? 0 : middle;
  const std::int64_t end = half == BookHalf::training ? middle : size;
  seer::require(end - begin >= length, "length", "windows of ", length, " bytes do not fit in half of ", book, " (",
                end - begin, " bytes)");
  std::vector<TextWindow> windows;
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int64_t span = end - begin - length;
    const std::int64_t offset = begin + (count == 1 ? 0 : span * i / (count - 1));
    windows.push_back(
        TextWindow{book, offset, text.substr(static_cast<std::size_t>(offset), static_cast<std::size_t>(length))});
  }
  return windows;
}

inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::string item;
  for (const char c : text + ",") {
    if (c == ',') {
      if (!item.empty()) items.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  return items;
}

class Stopwatch {
 public:
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

inline std::string format_duration(double seconds) {
  char text[32];
  const auto total = static_cast<long long>(seconds + 0.5);
  std::snprintf(text, sizeof(text), "%lldm%02llds", total / 60, total % 60);
  return text;
}

}  // namespace engine
