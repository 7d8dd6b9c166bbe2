// Test helpers shared by the CPU attention and ground-truth tests: owning batches of random inputs,
// NaN-poisoned outputs, and a naive attention loop written independently of the executors.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/reference_attention.hpp"

namespace seer::testing {

// Owning storage for a SequenceBatch: padded [B, S, H, D] (or [B, H, S, D] when head_major, to test
// strides) or packed [total, H, D] with cu_seqlens.
template <class T>
struct OwnedBatch {
  std::vector<T> storage;
  std::vector<std::int32_t> cu_seqlens;  // empty for padded
  std::int64_t batch = 0, length = 0, heads = 0, dim = 0;
  bool head_major = false;

  SequenceBatch<T> view() {
    if (!cu_seqlens.empty()) {
      const std::int64_t total = cu_seqlens.back();
      return packed_batch(TensorView<T, 3>::contiguous(storage.data(), {total, heads, dim}), cu_seqlens, "batch");
    }
    auto tensor = TensorView<T, 4>::contiguous(storage.data(), {batch, length, heads, dim});
    if (head_major) tensor.stride = {heads * length * dim, dim, length * dim, 1};
    return padded_batch(tensor, "batch");
  }
  SequenceBatch<const T> const_view() { return view(); }
  std::int64_t total_tokens() const { return cu_seqlens.empty() ? batch * length : cu_seqlens.back(); }
};

template <class T>
OwnedBatch<T> padded(std::int64_t batch, std::int64_t length, std::int64_t heads, std::int64_t dim,
                     bool head_major = false) {
  OwnedBatch<T> result;
  result.batch = batch;
  result.length = length;
  result.heads = heads;
  result.dim = dim;
  result.head_major = head_major;
  result.storage.resize(static_cast<std::size_t>(batch * length * heads * dim));
  return result;
}

template <class T>
OwnedBatch<T> packed(const std::vector<std::int32_t>& lengths, std::int64_t heads, std::int64_t dim) {
  OwnedBatch<T> result;
  result.batch = static_cast<std::int64_t>(lengths.size());
  result.heads = heads;
  result.dim = dim;
  result.cu_seqlens.push_back(0);
  for (auto length : lengths) {
    result.cu_seqlens.push_back(result.cu_seqlens.back() + length);
    result.length = std::max<std::int64_t>(result.length, length);
  }
  result.storage.resize(static_cast<std::size_t>(result.cu_seqlens.back() * heads * dim));
  return result;
}

// Normal values (never exactly zero after rounding to T), scaled by `spread`.
template <class T>
void fill_random(OwnedBatch<T>& batch, std::mt19937& rng, double spread = 1.0) {
  std::normal_distribution<float> normal(0.0f, static_cast<float>(spread));
  for (auto& x : batch.storage) {
    float value = 0.0f;
    while (value == 0.0f) value = round_to<T>(normal(rng));
    x = from_float<T>(value);
  }
}

template <class T>
T poison_value() {
  return from_float<T>(std::numeric_limits<float>::quiet_NaN());
}

template <class T>
void poison(OwnedBatch<T>& batch) {
  std::fill(batch.storage.begin(), batch.storage.end(), poison_value<T>());
}

template <class T>
double as_double(T value) {
  return static_cast<double>(to_float(value));
}

// Attention inputs: q [.., Hq, D], k and v [.., Hkv, D].
template <class T>
struct AttentionInputs {
  OwnedBatch<T> q, k, v;

  SequenceBatch<const T> q_view() { return q.const_view(); }
  SequenceBatch<const T> k_view() { return k.const_view(); }
  // Packed v must share k's cu_seqlens array (the executors check the pointer).
  SequenceBatch<const T> v_view() {
    auto view = v.const_view();
    view.cu_seqlens = k_view().cu_seqlens;
    return view;
  }
};

// An output view of `out` that shares q's cu_seqlens array, as packed outputs must.
template <class O, class T>
SequenceBatch<O> output_view(OwnedBatch<O>& out, OwnedBatch<T>& q) {
  auto view = out.view();
  view.cu_seqlens = q.view().cu_seqlens;
  return view;
}

struct CaseShape {
  std::vector<std::int32_t> q_lengths, k_lengths;  // one per sequence
  bool packed = false;                             // padded needs equal lengths per tensor
  std::int64_t q_heads = 1, kv_heads = 1, dim = 16;
  bool head_major = false;  // padded only: [B, H, S, D] strides
};

// A batch shaped like `shape` for the given lengths and heads, of element type E.
template <class E>
OwnedBatch<E> shaped_batch(const CaseShape& shape, const std::vector<std::int32_t>& lengths, std::int64_t heads) {
  if (shape.packed) return packed<E>(lengths, heads, shape.dim);
  return padded<E>(static_cast<std::int64_t>(lengths.size()), lengths.empty() ? 0 : lengths.front(), heads, shape.dim,
                   shape.head_major);
}

template <class T>
AttentionInputs<T> make_inputs(const CaseShape& shape, std::mt19937& rng) {
  AttentionInputs<T> result;
  result.q = shaped_batch<T>(shape, shape.q_lengths, shape.q_heads);
  result.k = shaped_batch<T>(shape, shape.k_lengths, shape.kv_heads);
  result.v = shaped_batch<T>(shape, shape.k_lengths, shape.kv_heads);
  fill_random(result.q, rng);
  fill_random(result.k, rng);
  fill_random(result.v, rng);
  return result;
}

// An output batch laid out like q.
template <class O, class T>
OwnedBatch<O> output_like(const OwnedBatch<T>& q) {
  OwnedBatch<O> result;
  result.cu_seqlens = q.cu_seqlens;
  result.batch = q.batch;
  result.length = q.length;
  result.heads = q.heads;
  result.dim = q.dim;
  result.head_major = q.head_major;
  result.storage.resize(q.storage.size());
  return result;
}

// Output as doubles in [global token][head][dim] order.
template <class O>
std::vector<double> gather(OwnedBatch<O>& batch) {
  const auto view = batch.const_view();
  std::vector<double> result;
  for (std::int64_t b = 0; b < view.batch; ++b)
    for (std::int64_t t = 0; t < view.length(b); ++t)
      for (std::int64_t h = 0; h < view.heads; ++h)
        for (std::int64_t d = 0; d < view.head_dim; ++d)
          result.push_back(as_double(view.vector(b, t, h)[d * view.dim_stride]));
  return result;
}

// True when no NaN is left: every output element and log-sum-exp entry was written.
inline bool fully_written(const std::vector<double>& values) {
  return std::none_of(values.begin(), values.end(), [](double x) { return std::isnan(x); });
}

inline double max_abs_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = a.size() == b.size() ? 0.0 : std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (std::isinf(a[i]) && a[i] == b[i]) continue;  // -inf log-sum-exp on both sides
    const double difference = std::abs(a[i] - b[i]);
    worst = std::isnan(difference) ? std::numeric_limits<double>::infinity() : std::max(worst, difference);
  }
  return worst;
}

template <class L>
std::vector<double> to_doubles(const std::vector<L>& values) {
  return std::vector<double>(values.begin(), values.end());
}

// (b, h, i, j) -> does query row i of head h attend to key j.
using AttendsFunction = std::function<bool(std::int64_t, std::int64_t, std::int64_t, std::int64_t)>;

// The token mask of a BlockSet, built from its dense block mask (not from the executors' row walk).
inline AttendsFunction token_mask(const BlockSet& blocks, std::int64_t q_heads, std::int64_t kv_heads) {
  auto mask = std::make_shared<DenseBlockMask>(to_dense_mask(blocks));
  const auto sequences = blocks.sequences();
  const std::int64_t group = q_heads / kv_heads;
  const bool per_query_head = blocks.heads() == q_heads;
  return [=](std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
    const BlockGeometry& g = sequences[b];
    const std::int64_t block_head = per_query_head ? h : h / group;
    return g.visible(i, j) && (*mask)(b, block_head, i / g.block_size, j / g.block_size) != 0;
  };
}

inline AttendsFunction causal_mask(bool causal, const std::vector<std::int32_t>& q_lengths,
                                   const std::vector<std::int32_t>& k_lengths) {
  return [=](std::int64_t b, std::int64_t, std::int64_t i, std::int64_t j) {
    return BlockGeometry{q_lengths[b], k_lengths[b], 64, causal}.visible(i, j);
  };
}

// Vectors (b, 0 .. length(b), h) of a batch as a [length][dim] array in precision Acc.
template <class Acc, class T>
std::vector<Acc> head_rows(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h) {
  std::vector<Acc> rows;
  rows.reserve(static_cast<std::size_t>(batch.length(b) * batch.head_dim));
  for (std::int64_t t = 0; t < batch.length(b); ++t)
    for (std::int64_t d = 0; d < batch.head_dim; ++d)
      rows.push_back(static_cast<Acc>(as_double(batch.vector(b, t, h)[d * batch.dim_stride])));
  return rows;
}

// Textbook attention in precision Acc: scores, max, exp, sum, weighted values. Output in
// [global token][head][dim] order; lse in [head][global token]. Rows attending nothing give 0 / -inf.
template <class Acc, class T>
void naive_attention(AttentionInputs<T>& c, const AttendsFunction& attends, double scale, std::vector<double>& output,
                     std::vector<double>& lse) {
  const auto q = c.q_view(), k = c.k_view(), v = c.v_view();
  const std::int64_t group = q.heads / k.heads, dim = q.head_dim;
  output.assign(static_cast<std::size_t>(q.total_tokens() * q.heads * dim), 0.0);
  lse.assign(static_cast<std::size_t>(q.heads * q.total_tokens()), 0.0);
  const Acc acc_scale = static_cast<Acc>(scale);
  for (std::int64_t b = 0; b < q.batch; ++b)
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const auto queries = head_rows<Acc>(q, b, h);
      const auto keys = head_rows<Acc>(k, b, h / group);
      const auto values = head_rows<Acc>(v, b, h / group);
      for (std::int64_t i = 0; i < q.length(b); ++i) {
        const std::int64_t token = q.start(b) + i;
        std::vector<Acc> scores(static_cast<std::size_t>(k.length(b)), 0);
        std::vector<char> attended(static_cast<std::size_t>(k.length(b)), 0);
        Acc peak = -std::numeric_limits<Acc>::infinity();
        for (std::int64_t j = 0; j < k.length(b); ++j) {
          if (!(attended[j] = attends(b, h, i, j))) continue;
          Acc dot = 0;
          for (std::int64_t d = 0; d < dim; ++d) dot += queries[i * dim + d] * keys[j * dim + d];
          scores[j] = dot * acc_scale;
          peak = std::max(peak, scores[j]);
        }
        double* row = output.data() + (token * q.heads + h) * dim;
        if (peak == -std::numeric_limits<Acc>::infinity()) {
          lse[h * q.total_tokens() + token] = -std::numeric_limits<double>::infinity();
          continue;
        }
        Acc total = 0;
        std::vector<Acc> accumulated(static_cast<std::size_t>(dim), 0);
        for (std::int64_t j = 0; j < k.length(b); ++j) {
          if (!attended[j]) continue;
          const Acc weight = std::exp(scores[j] - peak);
          total += weight;
          for (std::int64_t d = 0; d < dim; ++d) accumulated[d] += weight * values[j * dim + d];
        }
        for (std::int64_t d = 0; d < dim; ++d) row[d] = static_cast<double>(accumulated[d] / total);
        lse[h * q.total_tokens() + token] = static_cast<double>(peak + std::log(total));
      }
    }
}

// A random BlockSet: each visible key block kept with probability `density`, the diagonal always kept
// unless `keep_diagonal` is false.
inline BlockSet random_blocks(std::int64_t heads, const std::vector<BlockGeometry>& sequences, double density,
                              std::mt19937& rng, bool keep_diagonal = true) {
  const std::int64_t block_size = sequences.empty() ? 64 : sequences.front().block_size;
  BlockSet blocks(heads, block_size, sequences);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::int32_t> row;
  for (const auto& g : sequences)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
        row.clear();
        for (std::int64_t n = 0; n < g.visible_key_blocks(m); ++n) {
          const bool diagonal = n >= g.diagonal_first(m) && n <= g.diagonal_last(m);
          if ((keep_diagonal && diagonal) || uniform(rng) < density) row.push_back(static_cast<std::int32_t>(n));
        }
        blocks.append_row(row);
      }
  return blocks;
}

// Runs `call` and checks that it throws seer::InvalidArgument naming `argument`.
template <class Call>
void check_rejects(Call&& call, const std::string& argument) {
  try {
    call();
    FAIL("expected seer::InvalidArgument naming '", argument, "'");
  } catch (const InvalidArgument& error) {
    CHECK(error.argument() == argument);
    CHECK(std::string(error.what()).find("'" + argument + "'") != std::string::npos);
  }
}

// An executor's outputs, as doubles: out in [global token][head][dim], lse in [head][global token].
struct AttentionResult {
  std::vector<double> output, lse;
};

// Runs executor(q, k, v, blocks, options, out, lse) on fresh NaN-poisoned outputs of element types
// O and L laid out like q, and checks that every element was written.
template <class O, class L, class T, class Executor>
AttentionResult run_executor(AttentionInputs<T>& c, const BlockSet* blocks, const AttentionOptions& options,
                             Executor&& executor) {
  OwnedBatch<O> out = output_like<O>(c.q);
  poison(out);
  std::vector<L> lse(static_cast<std::size_t>(c.q.heads * c.q.total_tokens()), std::numeric_limits<L>::quiet_NaN());
  executor(c.q_view(), c.k_view(), c.v_view(), blocks, options, output_view(out, c.q),
           TensorView<L, 2>::contiguous(lse.data(), {c.q.heads, c.q.total_tokens()}));
  AttentionResult result{gather(out), to_doubles(lse)};
  CHECK(fully_written(result.output));
  CHECK(fully_written(result.lse));
  return result;
}

// The float64 reference as an executor callable, in the shape the test drivers take.
inline const auto reference = [](auto q, auto k, auto v, const BlockSet* blocks, const AttentionOptions& options,
                                 auto out, auto lse) { cpu::reference_attention(q, k, v, blocks, options, out, lse); };

}  // namespace seer::testing
