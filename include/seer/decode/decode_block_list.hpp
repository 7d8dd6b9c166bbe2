// DecodeBlockList: which KV blocks each (sequence, KV head) reads during a decode step.
//
// SeerAttention-R selects one list per KV head, shared by the query heads of its GQA group, so the
// decode kernel loads each kept KV tile once for the whole group. Rows have a fixed capacity (known
// before the step: token budget / block + the forced first and newest blocks, or every block for a
// threshold policy) and a count, so a GPU selection kernel writes them in place with no prefix sum and
// no host synchronisation, and a CUDA graph captured once replays for every step.
//
// Row (b, h) = b * kv_heads + h holds counts[row] strictly ascending block indices in
// key_blocks[row * capacity, row * capacity + counts[row]); the rest of the row is unused.
// Block j covers cache tokens [j * block_size, (j + 1) * block_size) ∩ [0, lengths[b]).
// The view's pointers may refer to device memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"

namespace seer {

struct DecodeBlockListView {
  const std::int32_t* key_blocks = nullptr;  // [batch * kv_heads * capacity]
  const std::int32_t* counts = nullptr;      // [batch * kv_heads]
  std::int64_t batch = 0;
  std::int64_t kv_heads = 0;
  std::int64_t capacity = 0;
  std::int64_t block_size = 64;

  SEER_HOST_DEVICE std::int64_t row(std::int64_t b, std::int64_t h) const { return b * kv_heads + h; }
  SEER_HOST_DEVICE const std::int32_t* row_begin(std::int64_t row) const { return key_blocks + row * capacity; }
  SEER_HOST_DEVICE std::int64_t row_size(std::int64_t row) const { return counts[row]; }
};

namespace detail {
// Row (b, h) holds `count` indices: strictly ascending, inside [0, key_block_count), at most `capacity`.
inline void check_decode_row(const std::int32_t* indices, std::int64_t count, std::int64_t capacity,
                             std::int64_t key_block_count, std::int64_t b, std::int64_t h) {
  require(count >= 0 && count <= capacity, "blocks", "row (", b, ", ", h, ") has ", count,
          " blocks, outside [0, capacity ", capacity, "]");
  for (std::int64_t i = 0; i < count; ++i) {
    require(indices[i] >= 0 && indices[i] < key_block_count, "blocks", "index ", indices[i], " in row (", b, ", ", h,
            ") is outside [0, ", key_block_count, ")");
    require(i == 0 || indices[i] > indices[i - 1], "blocks", "row (", b, ", ", h, ") is not strictly ascending");
  }
}
}  // namespace detail

// Owning host form. Fill rows with set_row in any order; view() hands it to executors.
class DecodeBlockList {
 public:
  DecodeBlockList() = default;
  DecodeBlockList(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t block_size = 64)
      : batch_(batch), kv_heads_(kv_heads), capacity_(capacity), block_size_(block_size) {
    require(batch >= 0, "batch", "is ", batch, ", expected >= 0");
    require(kv_heads > 0, "kv_heads", "is ", kv_heads, ", expected > 0");
    require(capacity > 0, "capacity", "is ", capacity, ", expected > 0");
    require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
    key_blocks_.assign(static_cast<std::size_t>(batch * kv_heads * capacity), -1);
    counts_.assign(static_cast<std::size_t>(batch * kv_heads), 0);
  }

  std::int64_t batch() const { return batch_; }
  std::int64_t kv_heads() const { return kv_heads_; }
  std::int64_t capacity() const { return capacity_; }
  std::int64_t block_size() const { return block_size_; }

  // Replaces row (b, h). Indices must be strictly ascending and below key_block_count (the blocks
  // that hold cached tokens of sequence b).
  void set_row(std::int64_t b, std::int64_t h, const std::vector<std::int32_t>& blocks, std::int64_t key_block_count) {
    require(b >= 0 && b < batch_, "b", "is ", b, ", expected in [0, ", batch_, ")");
    require(h >= 0 && h < kv_heads_, "h", "is ", h, ", expected in [0, ", kv_heads_, ")");
    const auto count = static_cast<std::int64_t>(blocks.size());
    detail::check_decode_row(blocks.data(), count, capacity_, key_block_count, b, h);
    const std::int64_t row = b * kv_heads_ + h;
    std::copy(blocks.begin(), blocks.end(), key_blocks_.begin() + row * capacity_);
    counts_[static_cast<std::size_t>(row)] = static_cast<std::int32_t>(count);
  }

  std::vector<std::int32_t> row(std::int64_t b, std::int64_t h) const {
    const std::int64_t index = b * kv_heads_ + h;
    const auto first = key_blocks_.begin() + index * capacity_;
    return {first, first + counts_[static_cast<std::size_t>(index)]};
  }

  // Kept blocks over blocks holding cached tokens, for the lengths the rows were built for.
  double density(const std::vector<std::int32_t>& lengths) const {
    std::int64_t kept = 0, available = 0;
    for (std::int64_t b = 0; b < batch_; ++b) {
      available += kv_heads_ * ((lengths[static_cast<std::size_t>(b)] + block_size_ - 1) / block_size_);
      for (std::int64_t h = 0; h < kv_heads_; ++h) kept += counts_[static_cast<std::size_t>(b * kv_heads_ + h)];
    }
    return available == 0 ? 0.0 : static_cast<double>(kept) / static_cast<double>(available);
  }

  DecodeBlockListView view() const {
    return {key_blocks_.data(), counts_.data(), batch_, kv_heads_, capacity_, block_size_};
  }
  const std::vector<std::int32_t>& key_blocks() const { return key_blocks_; }
  const std::vector<std::int32_t>& counts() const { return counts_; }

 private:
  std::int64_t batch_ = 0, kv_heads_ = 0, capacity_ = 0, block_size_ = 64;
  std::vector<std::int32_t> key_blocks_;
  std::vector<std::int32_t> counts_;
};

// Host check that a view's rows are ascending and inside each sequence's cached blocks.
inline void validate_host_decode_blocks(const DecodeBlockListView& blocks, const std::int32_t* lengths) {
  for (std::int64_t b = 0; b < blocks.batch; ++b) {
    const std::int64_t key_block_count = (lengths[b] + blocks.block_size - 1) / blocks.block_size;
    for (std::int64_t h = 0; h < blocks.kv_heads; ++h) {
      const std::int64_t row = blocks.row(b, h);
      detail::check_decode_row(blocks.row_begin(row), blocks.row_size(row), blocks.capacity, key_block_count, b, h);
    }
  }
}

}  // namespace seer
