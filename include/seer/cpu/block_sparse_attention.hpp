// The fast CPU executor: block-sparse (or dense) attention with an online softmax over kept blocks.
//
// Semantics are exactly those of reference_attention (same arguments, same masking through
// BlockGeometry, empty rows give output 0 and log-sum-exp -inf); only the arithmetic differs: fp32
// tiles and fp32 accumulation, FlashAttention-style.
//
// Work is split into items (sequence b, KV head, query block m), handed out dynamically to the
// worker threads, heaviest rows of each head first. One item handles all g = Hq / Hkv query heads of the KV head at
// once: their query rows are stacked into one [g * rows, D] tile, so each K/V block is loaded (and converted from
// 16-bit types) once per item and, where the heads keep the same block, multiplied in one larger matrix product. Key
// blocks are visited in ascending order, the union of the kept blocks of the group's heads; for each block the
// contiguous runs of heads that keep it are processed together. Per run:
//     S = Q K^T (Eigen GEMM), running max/sum update over the visible keys of each row,
//     P = exp(scale * S - max) (0 where masked), O = O * exp(old max - new max) + P V.
// Only key blocks at or past BlockGeometry::first_masked_key_block(m) (the causal boundary and a
// ragged tail) pay for mask arithmetic; a partial block is simply a smaller tile.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/validate_host_attention.hpp"

namespace seer::cpu {

namespace detail {

using FloatRowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using FloatTile = Eigen::Map<FloatRowMatrix>;
using ConstFloatTile = Eigen::Map<const FloatRowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

// Eigen's reductions peel to the vector alignment, so their summation order depends on addresses:
// aligned buffers make results independent of where a thread's workspace happens to land.
using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;

// Buffers of one worker thread, sized once for the largest tile: no item or key block allocates.
struct AttentionWorkspace {
  AlignedFloats queries;                         // [group * block, dim], pre-converted query rows of all heads
  AlignedFloats accumulators;                    // [group * block, dim], unnormalised outputs
  AlignedFloats scores;                          // [group * block, block], scores, then probabilities
  AlignedFloats keys, values;                    // [block, dim], converted K/V tiles (unused for contiguous float)
  AlignedFloats running_max, running_sum;        // [group * block] per stacked row
  std::vector<const std::int32_t*> cursor, end;  // [group] position in each head's row

  AttentionWorkspace(std::int64_t group, std::int64_t block, std::int64_t dim)
      : queries(static_cast<std::size_t>(group * block * dim)),
        accumulators(queries.size()),
        scores(static_cast<std::size_t>(group * block * block)),
        keys(static_cast<std::size_t>(block * dim)),
        values(keys.size()),
        running_max(static_cast<std::size_t>(group * block)),
        running_sum(running_max.size()),
        cursor(static_cast<std::size_t>(group)),
        end(cursor.size()) {}
};

// Vectors (b, first .. first + count, h) as a row-major float tile. Contiguous float rows are read in
// place; anything else is converted into `buffer` (16-bit and double inputs, strided head dims).
template <class T>
ConstFloatTile float_rows(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t first, std::int64_t count,
                          std::int64_t h, AlignedFloats& buffer) {
  const std::int64_t dim = batch.head_dim;
  if constexpr (std::is_same_v<T, float>) {
    if (batch.dim_stride == 1)
      return ConstFloatTile(batch.vector(b, first, h), count, dim, Eigen::OuterStride<>(batch.token_stride));
  }
  float* destination = buffer.data();
  for (std::int64_t t = 0; t < count; ++t, destination += dim) {
    const T* source = batch.vector(b, first + t, h);
    for (std::int64_t d = 0; d < dim; ++d) destination[d] = static_cast<float>(to_float(source[d * batch.dim_stride]));
  }
  return ConstFloatTile(buffer.data(), count, dim, Eigen::OuterStride<>(dim));
}

// Where one query block's stacked rows sit in the sequence, for the mask.
struct QueryBlockRows {
  const BlockGeometry* geometry;
  std::int64_t first_row;      // sequence index of the block's first query row
  std::int64_t rows_per_head;  // rows of the block (a last block may be partial)
};

// Online-softmax update of stacked rows [row_begin, row_begin + row_count) with one key block.
inline void attend_key_block(AttentionWorkspace& work, std::int64_t dim, const QueryBlockRows& block,
                             std::int64_t row_begin, std::int64_t row_count, const ConstFloatTile& keys,
                             const ConstFloatTile& values, std::int64_t key_start, bool masked, float scale) {
  const std::int64_t key_count = keys.rows();
  const FloatTile queries(work.queries.data() + row_begin * dim, row_count, dim);
  FloatTile scores(work.scores.data(), row_count, key_count);
  scores.noalias() = queries * keys.transpose();

  // Row by row, so every Eigen expression runs along a contiguous row and vectorises (a per-row
  // shift broadcast across a row-major tile would fall back to scalar code, scalar expf included).
  // Masked keys are the tail of each row (the causal limit); their probabilities are set to exactly
  // 0 rather than computed as exp(-inf), which Eigen's vectorised exp returns as ~1e-38, not 0.
  float* running_max = work.running_max.data() + row_begin;
  float* running_sum = work.running_sum.data() + row_begin;
  FloatTile accumulators(work.accumulators.data() + row_begin * dim, row_count, dim);
  for (std::int64_t r = 0; r < row_count; ++r) {
    std::int64_t visible = key_count;
    if (masked) {
      const std::int64_t i = block.first_row + (row_begin + r) % block.rows_per_head;
      visible = std::clamp<std::int64_t>(block.geometry->last_visible_key(i) + 1 - key_start, 0, key_count);
    }
    auto row = scores.row(r).array();
    row.tail(key_count - visible).setZero();
    if (visible == 0) continue;  // the row sees nothing here: its state is unchanged
    auto seen = row.head(visible);
    const float new_max = std::max(running_max[r], seen.maxCoeff() * scale);
    // Once a row's max settles it rarely moves: skip the scalar exp and the rescaling then. A row's
    // first keys rescale its empty state by exp(-inf) = 0.
    const float rescale = running_max[r] == new_max ? 1.0f : std::exp(running_max[r] - new_max);
    running_max[r] = new_max;
    seen = (seen * scale - new_max).exp();
    running_sum[r] = running_sum[r] * rescale + seen.sum();
    if (rescale != 1.0f) accumulators.row(r) *= rescale;
  }
  accumulators.noalias() += scores * values;
}

template <class T, class O, class L>
void attend_query_block(const SequenceBatch<const T>& q, const SequenceBatch<const T>& k,
                        const SequenceBatch<const T>& v, const BlockSet* blocks, const BlockGeometry& geometry,
                        const std::vector<std::int32_t>& every_key_block, float scale, std::int64_t b,
                        std::int64_t kv_head, std::int64_t m, const SequenceBatch<O>& out, const TensorView<L, 2>& lse,
                        AttentionWorkspace& work) {
  const std::int64_t dim = q.head_dim;
  const std::int64_t group = q.heads / k.heads;
  const std::int64_t first_head = kv_head * group;
  const QueryBlockRows block{&geometry, geometry.first_row(m), geometry.last_row(m) - geometry.first_row(m) + 1};
  const std::int64_t rows = block.rows_per_head;
  const std::int64_t stacked_rows = group * rows;

  // The queries are copied even when contiguous: the stacked tile must be one dense matrix.
  for (std::int64_t head = 0; head < group; ++head)
    FloatTile(work.queries.data() + head * rows * dim, rows, dim) =
        float_rows(q, b, block.first_row, rows, first_head + head, work.keys);
  std::fill_n(work.running_max.begin(), stacked_rows, -std::numeric_limits<float>::infinity());
  std::fill_n(work.running_sum.begin(), stacked_rows, 0.0f);
  std::fill_n(work.accumulators.begin(), stacked_rows * dim, 0.0f);

  const std::int64_t visible_blocks = geometry.visible_key_blocks(m);
  const std::int64_t first_masked = geometry.first_masked_key_block(m);
  for (std::int64_t head = 0; head < group; ++head) {
    if (blocks == nullptr) {
      work.cursor[head] = every_key_block.data();
      work.end[head] = every_key_block.data() + visible_blocks;
    } else {
      const std::int64_t block_head = blocks->heads() == q.heads ? first_head + head : kv_head;
      const std::int64_t row = blocks->row_index(b, block_head, m);
      work.cursor[head] = blocks->row_begin(row);
      work.end[head] = blocks->row_end(row);
    }
  }
  auto keeps = [&](std::int64_t head, std::int64_t n) {
    return work.cursor[head] != work.end[head] && *work.cursor[head] == n;
  };

  const std::int64_t block_size = geometry.block_size;
  for (;;) {
    std::int64_t n = std::numeric_limits<std::int64_t>::max();
    for (std::int64_t head = 0; head < group; ++head)
      if (work.cursor[head] != work.end[head]) n = std::min<std::int64_t>(n, *work.cursor[head]);
    // Rows are ascending, so once the smallest next block is beyond the visible ones all are.
    if (n >= visible_blocks) break;
    const std::int64_t key_start = n * block_size;
    const std::int64_t key_count = std::min(block_size, geometry.k_len - key_start);
    const ConstFloatTile keys = float_rows(k, b, key_start, key_count, kv_head, work.keys);
    const ConstFloatTile values = float_rows(v, b, key_start, key_count, kv_head, work.values);
    const bool masked = n >= first_masked;
    for (std::int64_t head = 0; head < group;) {
      if (!keeps(head, n)) {
        ++head;
        continue;
      }
      const std::int64_t run_begin = head;
      for (; head < group && keeps(head, n); ++head) ++work.cursor[head];
      attend_key_block(work, dim, block, run_begin * rows, (head - run_begin) * rows, keys, values, key_start, masked,
                       scale);
    }
  }

  for (std::int64_t head = 0; head < group; ++head)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t stacked = head * rows + r;
      const float total = work.running_sum[stacked];
      const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
      const float* accumulator = work.accumulators.data() + stacked * dim;
      O* destination = out.vector(b, block.first_row + r, first_head + head);
      for (std::int64_t d = 0; d < dim; ++d) destination[d * out.dim_stride] = from_float<O>(accumulator[d] * inverse);
      if (lse.data != nullptr)
        lse(first_head + head, q.start(b) + block.first_row + r) =
            total > 0.0f ? static_cast<L>(static_cast<double>(work.running_max[stacked]) + std::log(double{total}))
                         : -std::numeric_limits<L>::infinity();
    }
}

}  // namespace detail

template <class T, class O, class L>
void block_sparse_attention(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                            const BlockSet* blocks, const AttentionOptions& options, SequenceBatch<O> out,
                            TensorView<L, 2> lse, int threads = 0) {
  static_assert(is_element_type_v<T>, "inputs must be float, double, half or bfloat16");
  static_assert(is_element_type_v<O>, "outputs must be float, double, half or bfloat16");
  static_assert(std::is_same_v<L, float> || std::is_same_v<L, double>, "the log-sum-exp must be float or double");
  validate_host_attention(q, k, v, blocks, options, out, lse);

  const float scale = static_cast<float>(options.scale_for(q.head_dim));
  const std::int64_t block_size = blocks != nullptr ? blocks->block_size() : 64;
  const std::int64_t group = q.heads / k.heads;
  const std::vector<BlockGeometry> geometries =
      blocks != nullptr ? blocks->sequences() : sequence_geometries(q, k, block_size, options.causal);

  // Items of sequence b are [item_offsets[b], item_offsets[b + 1]).
  std::vector<std::int64_t> item_offsets(static_cast<std::size_t>(q.batch + 1), 0);
  std::int64_t most_key_blocks = 0;
  for (std::int64_t b = 0; b < q.batch; ++b) {
    item_offsets[b + 1] = item_offsets[b] + k.heads * geometries[b].query_blocks();
    most_key_blocks = std::max(most_key_blocks, geometries[b].key_blocks());
  }
  std::vector<std::int32_t> every_key_block(static_cast<std::size_t>(most_key_blocks));
  std::iota(every_key_block.begin(), every_key_block.end(), 0);

  // One task per worker thread, each with its own workspace (allocated once, not per item), pulling
  // items from a shared counter so uneven items still balance.
  const std::int64_t items = item_offsets.back();
  const int workers = static_cast<int>(std::min<std::int64_t>(threads > 0 ? threads : default_thread_count(), items));
  std::atomic<std::int64_t> next_item{0};
  parallel_for(workers, workers, [&](std::int64_t) {
    detail::AttentionWorkspace work(group, block_size, q.head_dim);
    for (std::int64_t item = next_item++; item < items; item = next_item++) {
      const std::int64_t b =
          std::upper_bound(item_offsets.begin(), item_offsets.end(), item) - item_offsets.begin() - 1;
      const std::int64_t local = item - item_offsets[b];
      const BlockGeometry& geometry = geometries[b];
      // KV head outermost, so threads working at the same time share one head's K/V in cache; within
      // a head the longest (last, under causality) query blocks go first so the tail balances.
      const std::int64_t kv_head = local / geometry.query_blocks();
      const std::int64_t m = geometry.query_blocks() - 1 - local % geometry.query_blocks();
      detail::attend_query_block(q, k, v, blocks, geometry, every_key_block, scale, b, kv_head, m, out, lse, work);
    }
  });
}

}  // namespace seer::cpu
