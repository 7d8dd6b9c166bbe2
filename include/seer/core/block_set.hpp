// BlockSet: which key blocks each query block attends to, in compressed rows.
//
// One row per (sequence b, head h, query block m), rows ordered by b, then h, then m. A row lists
// ascending, unique key-block indices. Memory is O(rows + kept blocks) and never O((S/B)^2): at 1M
// tokens a dense boolean mask would take 256 MiB per head, the rows of a 10%-dense BlockSet 26 MiB.
//
// Row index of (b, h, m):  heads * query_block_offsets[b] + h * query_blocks(b) + m,
// where query_block_offsets[b+1] - query_block_offsets[b] = ceil(q_len(b) / block_size).
//
// `heads` is the number of query heads (one mask per query head, as the SeerAttention prefill gate
// produces) or the number of KV heads (one mask shared by the query heads of a GQA group, as the
// SeerAttention-R decode gate produces and as GQA-packed kernels prefer). Executors accept both.
//
// BlockSetView is the non-owning form that executors take; its pointers may refer to device memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"
#include "seer/core/sequence_batch.hpp"

namespace seer {

struct BlockSetView {
  const std::int64_t* row_offsets = nullptr;          // [rows + 1]
  const std::int32_t* key_blocks = nullptr;           // [row_offsets[rows]]
  const std::int32_t* query_block_offsets = nullptr;  // [batch + 1]
  std::int64_t batch = 0;
  std::int64_t heads = 0;
  std::int64_t block_size = 64;

  SEER_HOST_DEVICE std::int64_t row(std::int64_t b, std::int64_t h, std::int64_t m) const {
    const std::int64_t first = query_block_offsets[b];
    const std::int64_t count = query_block_offsets[b + 1] - first;
    return heads * first + h * count + m;
  }
  SEER_HOST_DEVICE std::int64_t rows() const { return heads * query_block_offsets[batch]; }
};

// The block geometry of every sequence of a (q, k) batch pair.
template <class Q, class K>
std::vector<BlockGeometry> sequence_geometries(const SequenceBatch<Q>& q, const SequenceBatch<K>& k,
                                               std::int64_t block_size, bool causal) {
  require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
  require(q.batch == k.batch, "k", "batch is ", k.batch, " but q has batch ", q.batch);
  std::vector<BlockGeometry> result(static_cast<std::size_t>(q.batch));
  for (std::int64_t b = 0; b < q.batch; ++b) result[b] = BlockGeometry{q.length(b), k.length(b), block_size, causal};
  return result;
}

class BlockSet {
 public:
  BlockSet() = default;

  // An empty set of rows for these sequences; fill it with append_row in row order.
  BlockSet(std::int64_t heads, std::int64_t block_size, const std::vector<BlockGeometry>& sequences)
      : heads_(heads), block_size_(block_size), sequences_(sequences) {
    require(heads > 0, "heads", "is ", heads, ", expected > 0");
    require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
    query_block_offsets_.push_back(0);
    for (const auto& s : sequences) {
      require(s.block_size == block_size, "sequences", "geometry block size ", s.block_size, " differs from ",
              block_size);
      query_block_offsets_.push_back(query_block_offsets_.back() + static_cast<std::int32_t>(s.query_blocks()));
    }
    row_offsets_.reserve(static_cast<std::size_t>(rows() + 1));
    row_offsets_.push_back(0);
  }

  std::int64_t batch() const { return static_cast<std::int64_t>(sequences_.size()); }
  std::int64_t heads() const { return heads_; }
  std::int64_t block_size() const { return block_size_; }
  const std::vector<BlockGeometry>& sequences() const { return sequences_; }
  std::int64_t rows() const { return heads_ * query_block_offsets_.back(); }
  std::int64_t rows_filled() const { return static_cast<std::int64_t>(row_offsets_.size()) - 1; }
  bool complete() const { return rows_filled() == rows(); }
  std::int64_t kept_blocks() const { return row_offsets_.back(); }

  std::int64_t row_index(std::int64_t b, std::int64_t h, std::int64_t m) const {
    const std::int64_t first = query_block_offsets_[b];
    return heads_ * first + h * (query_block_offsets_[b + 1] - first) + m;
  }

  // Appends the next row. Indices must be ascending, unique and inside the sequence's key grid.
  void append_row(const std::int32_t* key_blocks, std::int64_t count) {
    require(rows_filled() < rows(), "key_blocks", "all ", rows(), " rows are already filled");
    const std::int64_t limit = key_block_limit(rows_filled());
    for (std::int64_t i = 0; i < count; ++i) {
      require(key_blocks[i] >= 0 && key_blocks[i] < limit, "key_blocks", "index ", key_blocks[i], " in row ",
              rows_filled(), " is outside [0, ", limit, ")");
      require(i == 0 || key_blocks[i] > key_blocks[i - 1], "key_blocks", "row ", rows_filled(),
              " is not strictly ascending");
    }
    key_blocks_.insert(key_blocks_.end(), key_blocks, key_blocks + count);
    row_offsets_.push_back(static_cast<std::int64_t>(key_blocks_.size()));
  }
  void append_row(const std::vector<std::int32_t>& key_blocks) {
    append_row(key_blocks.data(), static_cast<std::int64_t>(key_blocks.size()));
  }

  // Key blocks of row (b, h, m).
  const std::int32_t* row_begin(std::int64_t row) const { return key_blocks_.data() + row_offsets_[row]; }
  const std::int32_t* row_end(std::int64_t row) const { return key_blocks_.data() + row_offsets_[row + 1]; }
  std::int64_t row_size(std::int64_t row) const { return row_offsets_[row + 1] - row_offsets_[row]; }

  // Kept blocks over causally visible blocks: the "density" SeerAttention reports.
  double density() const {
    std::int64_t visible = 0;
    for (const auto& s : sequences_)
      for (std::int64_t m = 0; m < s.query_blocks(); ++m) visible += s.visible_key_blocks(m);
    visible *= heads_;
    return visible == 0 ? 0.0 : static_cast<double>(kept_blocks()) / static_cast<double>(visible);
  }

  BlockSetView view() const {
    require(complete(), "blocks", "only ", rows_filled(), " of ", rows(), " rows are filled");
    return BlockSetView{row_offsets_.data(), key_blocks_.data(), query_block_offsets_.data(), batch(), heads_,
                        block_size_};
  }

  const std::vector<std::int64_t>& row_offsets() const { return row_offsets_; }
  const std::vector<std::int32_t>& key_blocks() const { return key_blocks_; }
  const std::vector<std::int32_t>& query_block_offsets() const { return query_block_offsets_; }

 private:
  // Key-block count of the sequence that the next appended row belongs to (rows arrive in order).
  std::int64_t key_block_limit(std::int64_t row) {
    while (heads_ * query_block_offsets_[append_sequence_ + 1] <= row) ++append_sequence_;
    return sequences_[append_sequence_].key_blocks();
  }

  std::int64_t heads_ = 0;
  std::int64_t block_size_ = 64;
  std::int64_t append_sequence_ = 0;
  std::vector<BlockGeometry> sequences_;
  std::vector<std::int32_t> query_block_offsets_;
  std::vector<std::int64_t> row_offsets_;
  std::vector<std::int32_t> key_blocks_;
};

// A dense boolean block mask [batch, heads, query_blocks, key_blocks] (padded to the longest
// sequence), for tests and interop with code that speaks masks. O((S/B)^2): not for long inputs.
struct DenseBlockMask {
  std::int64_t batch = 0, heads = 0, query_blocks = 0, key_blocks = 0;
  std::vector<std::uint8_t> bits;

  DenseBlockMask() = default;
  DenseBlockMask(std::int64_t batch_, std::int64_t heads_, std::int64_t query_blocks_, std::int64_t key_blocks_)
      : batch(batch_),
        heads(heads_),
        query_blocks(query_blocks_),
        key_blocks(key_blocks_),
        bits(static_cast<std::size_t>(batch_ * heads_ * query_blocks_ * key_blocks_), 0) {}

  std::uint8_t& operator()(std::int64_t b, std::int64_t h, std::int64_t m, std::int64_t n) {
    return bits[static_cast<std::size_t>(((b * heads + h) * query_blocks + m) * key_blocks + n)];
  }
  std::uint8_t operator()(std::int64_t b, std::int64_t h, std::int64_t m, std::int64_t n) const {
    return bits[static_cast<std::size_t>(((b * heads + h) * query_blocks + m) * key_blocks + n)];
  }
};

inline DenseBlockMask to_dense_mask(const BlockSet& blocks) {
  std::int64_t max_q = 0, max_k = 0;
  for (const auto& s : blocks.sequences()) {
    max_q = std::max(max_q, s.query_blocks());
    max_k = std::max(max_k, s.key_blocks());
  }
  DenseBlockMask mask(blocks.batch(), blocks.heads(), max_q, max_k);
  for (std::int64_t b = 0; b < blocks.batch(); ++b)
    for (std::int64_t h = 0; h < blocks.heads(); ++h)
      for (std::int64_t m = 0; m < blocks.sequences()[b].query_blocks(); ++m) {
        const std::int64_t row = blocks.row_index(b, h, m);
        for (auto it = blocks.row_begin(row); it != blocks.row_end(row); ++it) mask(b, h, m, *it) = 1;
      }
  return mask;
}

// Set entries outside a sequence's own block grid (padding of shorter sequences) must be zero.
inline BlockSet from_dense_mask(const DenseBlockMask& mask, const std::vector<BlockGeometry>& sequences) {
  require(mask.batch == static_cast<std::int64_t>(sequences.size()), "mask", "batch is ", mask.batch,
          ", expected one per sequence (", sequences.size(), ")");
  require(mask.bits.size() == static_cast<std::size_t>(mask.batch * mask.heads * mask.query_blocks * mask.key_blocks),
          "mask", "holds ", mask.bits.size(), " entries, inconsistent with its shape");
  const std::int64_t block_size = sequences.empty() ? 64 : sequences.front().block_size;
  BlockSet blocks(mask.heads, block_size, sequences);
  std::vector<std::int32_t> row;
  for (std::int64_t b = 0; b < mask.batch; ++b) {
    const auto& s = sequences[b];
    require(s.query_blocks() <= mask.query_blocks && s.key_blocks() <= mask.key_blocks, "mask", "sequence ", b,
            " needs a ", s.query_blocks(), "x", s.key_blocks(), " block grid but the mask is ", mask.query_blocks, "x",
            mask.key_blocks);
    for (std::int64_t h = 0; h < mask.heads; ++h)
      for (std::int64_t m = 0; m < mask.query_blocks; ++m) {
        row.clear();
        for (std::int64_t n = 0; n < mask.key_blocks; ++n) {
          if (!mask(b, h, m, n)) continue;
          require(m < s.query_blocks() && n < s.key_blocks(), "mask", "entry (", b, ", ", h, ", ", m, ", ", n,
                  ") is set but lies outside sequence ", b, "'s block grid");
          row.push_back(static_cast<std::int32_t>(n));
        }
        if (m < s.query_blocks()) blocks.append_row(row);
      }
  }
  return blocks;
}

// Every block of the causally visible region: the BlockSet of dense attention.
inline BlockSet all_visible_blocks(std::int64_t heads, const std::vector<BlockGeometry>& sequences) {
  const std::int64_t block_size = sequences.empty() ? 64 : sequences.front().block_size;
  BlockSet blocks(heads, block_size, sequences);
  std::vector<std::int32_t> row;
  for (const auto& s : sequences)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t m = 0; m < s.query_blocks(); ++m) {
        row.resize(static_cast<std::size_t>(s.visible_key_blocks(m)));
        for (std::size_t n = 0; n < row.size(); ++n) row[n] = static_cast<std::int32_t>(n);
        blocks.append_row(row);
      }
  return blocks;
}

}  // namespace seer
