// The exact attention oracle: dense or block-sparse attention computed in float64, one query row at a
// time, written to be obviously right rather than fast. Every other executor is tested against it.
//
// Query row i of sequence b, head h attends to key j iff
//     geometry.visible(i, j)                                (causal, bottom-right aligned; BlockGeometry)
//     and, when a BlockSet is given, key block j / B is kept in row (b, block head, i / B),
// where the block head is h for a BlockSet with one row set per query head and h / (Hq / Hkv) for one
// shared by a GQA group. Over the attended keys,
//     s_j = scale * q_i . k_j,   out_i = sum_j softmax(s)_j v_j,   lse_i = log(sum_j exp(s_j))  (natural log).
// A row that attends to no key gets out_i = 0 and lse_i = -inf.
//
// Inputs of any element type are widened to double before use; outputs are rounded once on store.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/validate_host_attention.hpp"

namespace seer::cpu {

namespace detail {

template <class T>
double widen(T value) {
  return static_cast<double>(to_float(value));
}

// Stores a double into any element type: float and double by a cast, 16-bit types through float.
template <class O>
void store_rounded(O& destination, double value) {
  if constexpr (std::is_same_v<O, float> || std::is_same_v<O, double>) {
    destination = static_cast<O>(value);
  } else {
    destination = from_float<O>(static_cast<float>(value));
  }
}

// Vectors (b, t, h) for t in [0, count) as the rows of a double matrix.
template <class T>
Eigen::MatrixXd load_head_rows(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h,
                               std::int64_t count) {
  Eigen::MatrixXd rows(count, batch.head_dim);
  for (std::int64_t t = 0; t < count; ++t) {
    const T* vector = batch.vector(b, t, h);
    for (std::int64_t d = 0; d < batch.head_dim; ++d) rows(t, d) = widen(vector[d * batch.dim_stride]);
  }
  return rows;
}

}  // namespace detail

template <class T, class O, class L>
void reference_attention(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                         const BlockSet* blocks, const AttentionOptions& options, SequenceBatch<O> out,
                         TensorView<L, 2> lse) {
  static_assert(is_element_type_v<T>, "inputs must be float, double, half or bfloat16");
  static_assert(is_element_type_v<O>, "outputs must be float, double, half or bfloat16");
  static_assert(std::is_same_v<L, float> || std::is_same_v<L, double>, "the log-sum-exp must be float or double");
  validate_host_attention(q, k, v, blocks, options, out, lse);

  const double scale = options.scale_for(q.head_dim);
  const std::int64_t group = q.heads / k.heads;
  const std::int64_t block_size = blocks != nullptr ? blocks->block_size() : 64;
  const double negative_infinity = -std::numeric_limits<double>::infinity();

  for (std::int64_t b = 0; b < q.batch; ++b) {
    const BlockGeometry geometry{q.length(b), k.length(b), block_size, options.causal};
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const std::int64_t kv_head = h / group;
      const std::int64_t block_head = blocks != nullptr && blocks->heads() == q.heads ? h : kv_head;
      const Eigen::MatrixXd keys = detail::load_head_rows(k, b, kv_head, geometry.k_len);
      const Eigen::MatrixXd values = detail::load_head_rows(v, b, kv_head, geometry.k_len);
      const Eigen::MatrixXd queries = detail::load_head_rows(q, b, h, geometry.q_len);
      std::vector<char> key_block_kept(static_cast<std::size_t>(geometry.key_blocks()), 1);

      for (std::int64_t i = 0; i < geometry.q_len; ++i) {
        if (blocks != nullptr && i % block_size == 0) {
          const std::int64_t row = blocks->row_index(b, block_head, i / block_size);
          std::fill(key_block_kept.begin(), key_block_kept.end(), 0);
          for (auto it = blocks->row_begin(row); it != blocks->row_end(row); ++it) key_block_kept[*it] = 1;
        }
        const Eigen::VectorXd scores = scale * (keys * queries.row(i).transpose());
        Eigen::VectorXd weights = Eigen::VectorXd::Zero(geometry.k_len);
        double peak = negative_infinity;
        for (std::int64_t j = 0; j < geometry.k_len; ++j)
          if (geometry.visible(i, j) && key_block_kept[j / block_size]) peak = std::max(peak, scores(j));

        Eigen::VectorXd output = Eigen::VectorXd::Zero(q.head_dim);
        double log_sum_exp = negative_infinity;
        if (peak != negative_infinity) {
          for (std::int64_t j = 0; j < geometry.k_len; ++j)
            if (geometry.visible(i, j) && key_block_kept[j / block_size]) weights(j) = std::exp(scores(j) - peak);
          const double total = weights.sum();
          output = values.transpose() * weights / total;
          log_sum_exp = peak + std::log(total);
        }
        O* destination = out.vector(b, i, h);
        for (std::int64_t d = 0; d < q.head_dim; ++d) detail::store_rounded(destination[d * out.dim_stride], output(d));
        if (lse.data != nullptr) lse(h, q.start(b) + i) = static_cast<L>(log_sum_exp);
      }
    }
  }
}

}  // namespace seer::cpu
