// Ground truth for gate distillation: block-level attention maps from the exact softmax, in double.
//
// Notation. For sequence b and query head h, P_i[j] is the attention weight of query row i on key j
// in dense attention: the softmax, over the keys j that row i can see (BlockGeometry::visible,
// bottom-right aligned when causal), of scale * q_i . k_j. B is the block size; key block n holds
// keys [n B, (n + 1) B), the last block possibly partial.
//
// Two-dimensional ground truth (the prefill gate's target, SeerAttention §4.1). For query block m
// and key block n,
//     raw[n] = max { P_i[j] : i a row of block m, j in key block n, visible(i, j) },
// raw[n] = 0 when no row of block m sees a key of block n, and the row is normalised over n:
//     GT[b, h, m, n] = raw[n] / sum_n' raw[n'].
// Only partial blocks' valid rows and keys take part (the original requires S % B == 0). A row holds
// the visible key blocks [0, visible_key_blocks(m)), exactly the candidates a gate scores; a query
// block none of whose rows sees a key has an empty row.
//
// Mass pooling (BlockTargetPooling::mass, a seer option, not in the paper). Instead of the largest
// weight, the mean over the rows of block m of the attention mass that key block n receives:
//     raw[n] = (1 / rows) sum_{i in block m} sum_{j in key block n, visible(i, j)} P_i[j],
// already normalised (each row's weights sum to 1). Keeping the k blocks of largest mass keeps the
// most attention, which is what a TopK selection's output error depends on; the max-pooled target
// instead rewards blocks holding one sharp weight.
//
// One-dimensional ground truth (the decode gate's target, SeerAttention-R §4.2). For KV head c and
// query token t at key position p = t + k_len - q_len (bottom-right aligned, so p = t when
// q_len == k_len), over the complete key blocks strictly before the block holding p, n < p / B:
//     raw[n] = max over the g query heads h of KV head c of  max_{j in key block n} P_{h,t}[j],
//     GT[b, c, t, n] = raw[n] / (sum_n' raw[n'] + 1e-9).
// The current (partial) block and the future are excluded because a decode step always attends to
// its own block densely. The 1e-9 is kept from the original, where it stops 0 / 0 = NaN on tokens of
// the first block (all entries masked); here those tokens simply have empty rows, and on any other
// row it changes values by a relative ~1e-9, which keeps targets comparable with the original's.
//
// Unlike the original kernels, which store the per-row maxima in bf16 (up to 19% error per entry),
// everything here is double. Memory: one (b, h) or (b, c) work unit holds one query block's
// probabilities, [B, keys], at a time; the results are compressed rows of visible blocks only.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"

namespace seer::cpu {

// How the 2-D ground truth pools a (query block, key block) tile of attention weights.
enum class BlockTargetPooling {
  max,   // SeerAttention §4.1: the largest weight in the tile
  mass,  // the mean over the tile's rows of the weight mass in the tile
};

// Checks the arguments every ground-truth entry point takes (q [.., Hq, D], k [.., Hkv, D]).
template <class T>
void validate_ground_truth_inputs(const SequenceBatch<const T>& q, const SequenceBatch<const T>& k,
                                  const AttentionOptions& options, std::int64_t block_size) {
  require(q.data != nullptr, "q", "data pointer is null");
  require(k.data != nullptr, "k", "data pointer is null");
  require(q.heads > 0 && k.heads > 0 && q.heads % k.heads == 0, "k", "has ", k.heads,
          " heads, which does not divide the ", q.heads, " query heads (GQA needs num_q_heads % num_kv_heads == 0)");
  require(q.head_dim > 0, "q", "head dim is ", q.head_dim, ", expected > 0");
  require(k.head_dim == q.head_dim, "k", "head dim is ", k.head_dim, ", expected q's ", q.head_dim);
  require(k.batch == q.batch, "k", "batch is ", k.batch, " but q has batch ", q.batch);
  require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
  require(std::isfinite(options.softmax_scale) && options.softmax_scale >= 0.0, "options.softmax_scale", "is ",
          options.softmax_scale, ", expected > 0 (or 0 for 1/sqrt(head_dim))");
  validate_host_lengths(q, "q");
  validate_host_lengths(k, "k");
}

// Buffers for one query block's probabilities. They only grow, so a caller that reuses one workspace
// allocates once for its largest query block.
struct GroundTruthWorkspace {
  std::vector<double> queries;        // [rows, dim]
  std::vector<double> keys;           // [keys, dim]
  std::vector<double> probabilities;  // [rows, keys]
  std::int64_t rows = 0;
  std::int64_t key_count = 0;  // keys [0, key_count) are visible to some row of the block
};

namespace detail {

using DoubleRowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
void load_double_rows(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t first, std::int64_t count,
                      std::int64_t h, std::vector<double>& destination) {
  destination.resize(static_cast<std::size_t>(count * batch.head_dim));
  double* row = destination.data();
  for (std::int64_t t = 0; t < count; ++t, row += batch.head_dim) {
    const T* source = batch.vector(b, first + t, h);
    for (std::int64_t d = 0; d < batch.head_dim; ++d)
      row[d] = static_cast<double>(to_float(source[d * batch.dim_stride]));
  }
}

// P_i over the keys [0, work.key_count) for every row i of query block m of head h, into
// work.probabilities ([work.rows, work.key_count]); 0 where row i cannot see key j, and an all-zero
// row where it sees none.
template <class T>
void query_block_probabilities(const SequenceBatch<const T>& q, const SequenceBatch<const T>& k,
                               const BlockGeometry& geometry, double scale, std::int64_t b, std::int64_t h,
                               std::int64_t m, GroundTruthWorkspace& work) {
  const std::int64_t first_row = geometry.first_row(m);
  const std::int64_t kv_head = h / (q.heads / k.heads);
  work.rows = geometry.last_row(m) - first_row + 1;
  work.key_count = geometry.last_visible_key(geometry.last_row(m)) + 1;
  load_double_rows(q, b, first_row, work.rows, h, work.queries);
  load_double_rows(k, b, 0, work.key_count, kv_head, work.keys);
  work.probabilities.resize(static_cast<std::size_t>(work.rows * work.key_count));
  const Eigen::Map<const DoubleRowMatrix> queries(work.queries.data(), work.rows, q.head_dim);
  const Eigen::Map<const DoubleRowMatrix> keys(work.keys.data(), work.key_count, q.head_dim);
  Eigen::Map<DoubleRowMatrix> probabilities(work.probabilities.data(), work.rows, work.key_count);
  probabilities.noalias() = scale * (queries * keys.transpose());
  for (std::int64_t r = 0; r < work.rows; ++r) {
    const std::int64_t visible = geometry.last_visible_key(first_row + r) + 1;
    auto row = probabilities.row(r);
    if (visible == 0) {
      row.setZero();
      continue;
    }
    const double peak = row.head(visible).maxCoeff();
    row.head(visible) = (row.head(visible).array() - peak).exp().matrix();
    row.head(visible) /= row.head(visible).sum();
    row.tail(work.key_count - visible).setZero();
  }
}

// Complete key blocks strictly before the block holding query token t's key position.
inline std::int64_t complete_blocks_before(const BlockGeometry& geometry, std::int64_t t) {
  const std::int64_t position = t + geometry.diagonal_offset();
  return position <= 0 ? 0 : position / geometry.block_size;
}

}  // namespace detail

// One row of the two-dimensional ground truth: GT[b, h, m, n] for n in [0, visible_key_blocks(m))
// written to `out`. Safe to call concurrently with separate workspaces.
template <class T>
void two_dimensional_ground_truth_row(const SequenceBatch<const T>& q, const SequenceBatch<const T>& k,
                                      const BlockGeometry& geometry, double scale, std::int64_t b, std::int64_t h,
                                      std::int64_t m, GroundTruthWorkspace& work, double* out,
                                      BlockTargetPooling pooling = BlockTargetPooling::max) {
  const std::int64_t count = geometry.visible_key_blocks(m);
  if (count == 0) return;
  detail::query_block_probabilities(q, k, geometry, scale, b, h, m, work);
  std::fill(out, out + count, 0.0);
  for (std::int64_t r = 0; r < work.rows; ++r) {
    const double* row = work.probabilities.data() + r * work.key_count;
    for (std::int64_t j = 0; j < work.key_count; ++j) {
      double& pooled = out[j / geometry.block_size];
      pooled = pooling == BlockTargetPooling::max ? std::max(pooled, row[j]) : pooled + row[j];
    }
  }
  double total = 0.0;
  for (std::int64_t n = 0; n < count; ++n) total += out[n];
  for (std::int64_t n = 0; n < count; ++n) out[n] /= total;  // total > 0: the last row sees a key
}

// Values in compressed rows, like a BlockSet's indices: row r covers key blocks [0, size(r)).
struct BlockRows {
  std::vector<std::int64_t> offsets{0};  // [rows + 1]
  std::vector<double> values;

  std::int64_t rows() const { return static_cast<std::int64_t>(offsets.size()) - 1; }
  std::int64_t size(std::int64_t r) const { return offsets[r + 1] - offsets[r]; }
  const double* row(std::int64_t r) const { return values.data() + offsets[r]; }
  double* row(std::int64_t r) { return values.data() + offsets[r]; }
};

struct TwoDimensionalGroundTruth {
  std::vector<BlockGeometry> sequences;
  std::int64_t heads = 0;                         // query heads
  std::vector<std::int64_t> query_block_offsets;  // [batch + 1], as in BlockSet
  BlockRows rows;                                 // row (b, h, m) holds visible_key_blocks(m) values

  std::int64_t row_index(std::int64_t b, std::int64_t h, std::int64_t m) const {
    return heads * query_block_offsets[b] + h * (query_block_offsets[b + 1] - query_block_offsets[b]) + m;
  }
  const double* row(std::int64_t b, std::int64_t h, std::int64_t m) const { return rows.row(row_index(b, h, m)); }

  // [batch, heads, most query blocks, most key blocks], 0 outside the visible blocks. O((S/B)^2): for tests.
  std::vector<float> dense(std::int64_t& query_blocks, std::int64_t& key_blocks) const {
    query_blocks = key_blocks = 0;
    for (const auto& s : sequences) {
      query_blocks = std::max(query_blocks, s.query_blocks());
      key_blocks = std::max(key_blocks, s.key_blocks());
    }
    std::vector<float> result(sequences.size() * static_cast<std::size_t>(heads * query_blocks * key_blocks), 0.0f);
    for (std::size_t b = 0; b < sequences.size(); ++b)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t m = 0; m < sequences[b].query_blocks(); ++m) {
          const std::int64_t r = row_index(static_cast<std::int64_t>(b), h, m);
          for (std::int64_t n = 0; n < rows.size(r); ++n)
            result[((static_cast<std::int64_t>(b) * heads + h) * query_blocks + m) * key_blocks + n] =
                static_cast<float>(rows.row(r)[n]);
        }
    return result;
  }
};

struct OneDimensionalGroundTruth {
  std::vector<BlockGeometry> sequences;
  std::int64_t kv_heads = 0;
  std::vector<std::int64_t> token_offsets;  // [batch + 1]: cumulative query lengths
  BlockRows rows;                           // row (b, c, t) holds complete_blocks_before(t) values

  std::int64_t row_index(std::int64_t b, std::int64_t c, std::int64_t t) const {
    return kv_heads * token_offsets[b] + c * (token_offsets[b + 1] - token_offsets[b]) + t;
  }
  const double* row(std::int64_t b, std::int64_t c, std::int64_t t) const { return rows.row(row_index(b, c, t)); }
  std::int64_t row_size(std::int64_t b, std::int64_t c, std::int64_t t) const { return rows.size(row_index(b, c, t)); }
};

template <class T>
TwoDimensionalGroundTruth two_dimensional_ground_truth(SequenceBatch<const T> q, SequenceBatch<const T> k,
                                                       const AttentionOptions& options, std::int64_t block_size,
                                                       int threads = 0,
                                                       BlockTargetPooling pooling = BlockTargetPooling::max) {
  validate_ground_truth_inputs(q, k, options, block_size);
  TwoDimensionalGroundTruth result;
  result.sequences = sequence_geometries(q, k, block_size, options.causal);
  result.heads = q.heads;
  result.query_block_offsets.push_back(0);
  for (const auto& s : result.sequences) {
    result.query_block_offsets.push_back(result.query_block_offsets.back() + s.query_blocks());
    for (std::int64_t h = 0; h < q.heads; ++h)
      for (std::int64_t m = 0; m < s.query_blocks(); ++m)
        result.rows.offsets.push_back(result.rows.offsets.back() + s.visible_key_blocks(m));
  }
  result.rows.values.resize(static_cast<std::size_t>(result.rows.offsets.back()));
  const double scale = options.scale_for(q.head_dim);
  parallel_for(q.batch * q.heads, threads, [&](std::int64_t unit) {
    const std::int64_t b = unit / q.heads, h = unit % q.heads;
    GroundTruthWorkspace work;
    const BlockGeometry& geometry = result.sequences[b];
    for (std::int64_t m = 0; m < geometry.query_blocks(); ++m)
      two_dimensional_ground_truth_row(q, k, geometry, scale, b, h, m, work, result.rows.row(result.row_index(b, h, m)),
                                       pooling);
  });
  return result;
}

template <class T>
OneDimensionalGroundTruth one_dimensional_ground_truth(SequenceBatch<const T> q, SequenceBatch<const T> k,
                                                       const AttentionOptions& options, std::int64_t block_size,
                                                       int threads = 0) {
  validate_ground_truth_inputs(q, k, options, block_size);
  OneDimensionalGroundTruth result;
  result.sequences = sequence_geometries(q, k, block_size, options.causal);
  result.kv_heads = k.heads;
  result.token_offsets.push_back(0);
  for (const auto& s : result.sequences) {
    result.token_offsets.push_back(result.token_offsets.back() + s.q_len);
    for (std::int64_t c = 0; c < k.heads; ++c)
      for (std::int64_t t = 0; t < s.q_len; ++t)
        result.rows.offsets.push_back(result.rows.offsets.back() + detail::complete_blocks_before(s, t));
  }
  result.rows.values.assign(static_cast<std::size_t>(result.rows.offsets.back()), 0.0);
  const double scale = options.scale_for(q.head_dim);
  const std::int64_t group = q.heads / k.heads;
  parallel_for(q.batch * k.heads, threads, [&](std::int64_t unit) {
    const std::int64_t b = unit / k.heads, c = unit % k.heads;
    const BlockGeometry& geometry = result.sequences[b];
    GroundTruthWorkspace work;
    for (std::int64_t m = 0; m < geometry.query_blocks(); ++m) {
      // Values start at 0 and are maxed over the heads of the group (probabilities are >= 0).
      for (std::int64_t h = c * group; h < (c + 1) * group; ++h) {
        detail::query_block_probabilities(q, k, geometry, scale, b, h, m, work);
        for (std::int64_t r = 0; r < work.rows; ++r) {
          const std::int64_t t = geometry.first_row(m) + r;
          double* pooled = result.rows.row(result.row_index(b, c, t));
          const double* probabilities = work.probabilities.data() + r * work.key_count;
          for (std::int64_t n = 0; n < detail::complete_blocks_before(geometry, t); ++n)
            for (std::int64_t j = n * block_size; j < (n + 1) * block_size; ++j)
              pooled[n] = std::max(pooled[n], probabilities[j]);
        }
      }
      for (std::int64_t t = geometry.first_row(m); t <= geometry.last_row(m); ++t) {
        const std::int64_t r = result.row_index(b, c, t);
        double* pooled = result.rows.row(r);
        double total = 0.0;
        for (std::int64_t n = 0; n < result.rows.size(r); ++n) total += pooled[n];
        for (std::int64_t n = 0; n < result.rows.size(r); ++n) pooled[n] /= total + 1e-9;
      }
    }
  });
  return result;
}

}  // namespace seer::cpu
