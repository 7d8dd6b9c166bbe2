// Decode attention on the CPU: the float64 oracle (decode_attention_reference) and a fast executor
// (decode_attention) over a KV cache (seer/decode/kv_cache.hpp) and per-KV-head kept blocks
// (seer/decode/decode_block_list.hpp).
//
// Semantics (every decode executor implements exactly these; the GPU kernels are tested against the
// oracle):
//   q: a SequenceBatch of the new query tokens, padded [B, q_len, Hq, D] or packed varlen with
//      per-sequence lengths q_len(b) (1 to 8 for the GPU kernels: speculative decoding). Hq is a
//      multiple of the cache's Hkv; query head h reads KV head h / (Hq / Hkv).
//   Query token t of sequence b sits at cache position p = lengths[b] - q_len(b) + t (its own K/V are
//   already in the cache) and attends to the cache tokens j <= p (bottom-right aligned causal mask,
//   seer::BlockGeometry{q_len(b), lengths[b], 64, causal}.last_visible_key(t); options.causal = false
//   lets every token see all lengths[b] cached tokens) that lie in the kept blocks of row
//   (b, h / (Hq / Hkv)) of `blocks`: block n covers tokens [n * block_size, (n + 1) * block_size).
//   blocks == nullptr is dense decoding: every token j <= p.
//   Over the attended tokens s_j = scale * q . k_j (scale = options.scale_for(D)),
//   out = sum_j softmax(s)_j v_j and lse = log(sum_j exp(s_j)) (natural log). A token that attends to
//   nothing gets out = 0 and lse = -inf.
//   out has q's shape and layout; lse is a [Hq, total_q] view indexed by global query token
//   (q.start(b) + t), or empty (data == nullptr).
//   lengths[b] >= q_len(b) is required (checked here, where lengths are host memory).
//
// The reference widens everything to double and handles one query token at a time. The fast
// executor works on items (sequence, KV head): the g query heads x q_len tokens of the group are
// stacked into one float tile, each kept block's K and V rows are converted to float once per item
// and used by all of the group's rows (the GQA sharing the GPU kernel relies on too), the softmax
// is online (FlashAttention style) in float, and items run on parallel_for threads. Only kept blocks
// are read.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"

namespace seer::cpu {

// Host-side checks of a decode call whose lengths, page table and block lists are host memory.
template <class T, class O, class L>
void validate_host_decode(const SequenceBatch<const T>& q, const KvCacheView<const T>& cache,
                          const DecodeBlockListView* blocks, const AttentionOptions& options,
                          const SequenceBatch<O>& out, const TensorView<L, 2>& lse) {
  require(q.data != nullptr, "q", "data pointer is null");
  require(out.data != nullptr, "out", "data pointer is null");
  require(cache.keys != nullptr && cache.values != nullptr, "cache", "keys or values pointer is null");
  require(cache.lengths != nullptr, "cache", "lengths pointer is null");
  require(q.heads > 0, "q", "has ", q.heads, " heads, expected > 0");
  require(cache.heads > 0, "cache", "has ", cache.heads, " KV heads, expected > 0");
  require(q.heads % cache.heads == 0, "cache", "has ", cache.heads, " KV heads, which does not divide the ", q.heads,
          " query heads (GQA needs num_q_heads % num_kv_heads == 0)");
  require(q.head_dim > 0, "q", "head dim is ", q.head_dim, ", expected > 0");
  require(cache.head_dim == q.head_dim, "cache", "head dim is ", cache.head_dim, ", expected q's ", q.head_dim);
  require(cache.batch == q.batch, "cache", "holds ", cache.batch, " sequences, expected q's ", q.batch);
  require(out.heads == q.heads && out.head_dim == q.head_dim, "out", "shape [.., ", out.heads, ", ", out.head_dim,
          "] differs from q's [.., ", q.heads, ", ", q.head_dim, "]");
  require(out.batch == q.batch, "out", "batch ", out.batch, " differs from q's ", q.batch);
  require(out.is_packed() == q.is_packed(), "out", "must use q's layout (padded or packed)");
  require(!out.is_packed() || out.cu_seqlens == q.cu_seqlens, "out", "packed out must share q's cu_seqlens");
  require(out.max_length == q.max_length, "out", "max length ", out.max_length, " differs from q's ", q.max_length);
  require(std::isfinite(options.softmax_scale) && options.softmax_scale >= 0.0, "options.softmax_scale", "is ",
          options.softmax_scale, ", expected a finite value > 0 (or 0 for 1/sqrt(head_dim))");
  validate_host_lengths(q, "q");
  validate_host_kv_cache(cache);
  for (std::int64_t b = 0; b < q.batch; ++b)
    require(cache.length(b) >= q.length(b), "lengths", "sequence ", b, " caches ", cache.length(b),
            " tokens but decodes ", q.length(b), " new ones; the cache must already hold the new tokens");
  if (lse.data != nullptr) {
    validate_view(lse, "lse");
    require(lse.extent[0] == q.heads, "lse", "has ", lse.extent[0], " rows, expected one per query head (", q.heads,
            ")");
    require(lse.extent[1] >= q.total_tokens(), "lse", "has ", lse.extent[1], " columns, expected one per query token (",
            q.total_tokens(), ")");
  }
  if (blocks != nullptr) {
    require(blocks->key_blocks != nullptr && blocks->counts != nullptr, "blocks", "has a null pointer");
    require(blocks->batch == q.batch, "blocks", "covers ", blocks->batch, " sequences, expected ", q.batch);
    require(blocks->kv_heads == cache.heads, "blocks", "has ", blocks->kv_heads, " KV heads, expected the cache's ",
            cache.heads);
    require(blocks->block_size > 0, "blocks", "block_size is ", blocks->block_size, ", expected > 0");
    validate_host_decode_blocks(*blocks, cache.lengths);
  }
}

namespace decode_detail {

// Kept-block flags of row (b, kv_head) over the sequence's blocks; all set when blocks is null.
inline void kept_block_flags(const DecodeBlockListView* blocks, std::int64_t b, std::int64_t kv_head,
                             std::int64_t block_count, std::vector<char>& kept) {
  kept.assign(static_cast<std::size_t>(block_count), blocks == nullptr ? 1 : 0);
  if (blocks == nullptr) return;
  const std::int64_t row = blocks->row(b, kv_head);
  const std::int32_t* indices = blocks->row_begin(row);
  for (std::int64_t i = 0; i < blocks->row_size(row); ++i) kept[static_cast<std::size_t>(indices[i])] = 1;
}

template <class O>
void store_element(O& destination, double value) {
  if constexpr (std::is_same_v<O, float> || std::is_same_v<O, double>) {
    destination = static_cast<O>(value);
  } else {
    destination = from_float<O>(static_cast<float>(value));
  }
}

}  // namespace decode_detail

// The float64 oracle: one query token at a time, two-pass softmax over the attended tokens.
template <class T, class O, class L>
void decode_attention_reference(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                                const AttentionOptions& options, SequenceBatch<O> out, TensorView<L, 2> lse) {
  static_assert(is_element_type_v<T> && is_element_type_v<O>, "elements must be float, double, half or bfloat16");
  static_assert(std::is_same_v<L, float> || std::is_same_v<L, double>, "the log-sum-exp must be float or double");
  validate_host_decode(q, cache, blocks, options, out, lse);
  const double scale = options.scale_for(q.head_dim);
  const std::int64_t group = q.heads / cache.heads;
  const std::int64_t block_size = blocks != nullptr ? blocks->block_size : 64;
  const std::int64_t dim = q.head_dim;
  const double negative_infinity = -std::numeric_limits<double>::infinity();
  std::vector<char> kept;
  std::vector<double> scores, output(static_cast<std::size_t>(dim));

  for (std::int64_t b = 0; b < q.batch; ++b) {
    const BlockGeometry geometry{q.length(b), cache.length(b), block_size, options.causal};
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const std::int64_t kv_head = h / group;
      decode_detail::kept_block_flags(blocks, b, kv_head, geometry.key_blocks(), kept);
      for (std::int64_t t = 0; t < geometry.q_len; ++t) {
        const T* query = q.vector(b, t, h);
        const std::int64_t last = geometry.last_visible_key(t);
        scores.assign(static_cast<std::size_t>(last + 1), negative_infinity);
        double peak = negative_infinity;
        for (std::int64_t j = 0; j <= last; ++j) {
          if (!kept[static_cast<std::size_t>(j / block_size)]) continue;
          const T* key = cache.key(b, j, kv_head);
          double dot = 0.0;
          for (std::int64_t d = 0; d < dim; ++d)
            dot += static_cast<double>(to_float(query[d * q.dim_stride])) * static_cast<double>(to_float(key[d]));
          scores[static_cast<std::size_t>(j)] = scale * dot;
          peak = std::max(peak, scale * dot);
        }
        std::fill(output.begin(), output.end(), 0.0);
        double log_sum_exp = negative_infinity;
        if (peak != negative_infinity) {
          double total = 0.0;
          for (std::int64_t j = 0; j <= last; ++j) {
            if (scores[static_cast<std::size_t>(j)] == negative_infinity) continue;
            const double weight = std::exp(scores[static_cast<std::size_t>(j)] - peak);
            total += weight;
            const T* value = cache.value(b, j, kv_head);
            for (std::int64_t d = 0; d < dim; ++d)
              output[static_cast<std::size_t>(d)] += weight * static_cast<double>(to_float(value[d]));
          }
          for (double& x : output) x /= total;
          log_sum_exp = peak + std::log(total);
        }
        O* destination = out.vector(b, t, h);
        for (std::int64_t d = 0; d < dim; ++d)
          decode_detail::store_element(destination[d * out.dim_stride], output[static_cast<std::size_t>(d)]);
        if (lse.data != nullptr) lse(h, q.start(b) + t) = static_cast<L>(log_sum_exp);
      }
    }
  }
}

// The fast executor: same arguments and semantics, float arithmetic, `threads` workers (0 = all cores).
template <class T, class O, class L>
void decode_attention(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                      const AttentionOptions& options, SequenceBatch<O> out, TensorView<L, 2> lse, int threads = 0) {
  static_assert(is_element_type_v<T> && is_element_type_v<O>, "elements must be float, double, half or bfloat16");
  static_assert(std::is_same_v<L, float> || std::is_same_v<L, double>, "the log-sum-exp must be float or double");
  validate_host_decode(q, cache, blocks, options, out, lse);
  const float scale = static_cast<float>(options.scale_for(q.head_dim));
  const std::int64_t group = q.heads / cache.heads;
  const std::int64_t block_size = blocks != nullptr ? blocks->block_size : 64;
  const std::int64_t dim = q.head_dim;
  const float negative_infinity = -std::numeric_limits<float>::infinity();
  std::int64_t longest_query = 0;
  for (std::int64_t b = 0; b < q.batch; ++b) longest_query = std::max(longest_query, q.length(b));
  const std::int64_t max_rows = group * longest_query;

  parallel_for(q.batch * cache.heads, threads, [&](std::int64_t item) {
    const std::int64_t b = item / cache.heads;
    const std::int64_t kv_head = item % cache.heads;
    const BlockGeometry geometry{q.length(b), cache.length(b), block_size, options.causal};
    const std::int64_t rows = group * geometry.q_len;  // row r: head kv_head * group + r / q_len, token r % q_len
    if (rows == 0) return;
    // Per-item buffers (a few KB; an item reads at least one block of K and V, far more).
    std::vector<float> queries(static_cast<std::size_t>(max_rows * dim)), accumulators(queries.size(), 0.0f);
    std::vector<float> running_max(static_cast<std::size_t>(max_rows), negative_infinity);
    std::vector<float> running_sum(running_max.size(), 0.0f), scores(static_cast<std::size_t>(block_size));
    std::vector<float> keys(static_cast<std::size_t>(block_size * dim)), values(keys.size());
    std::vector<std::int64_t> last_visible(static_cast<std::size_t>(max_rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* query = q.vector(b, r % geometry.q_len, kv_head * group + r / geometry.q_len);
      for (std::int64_t d = 0; d < dim; ++d)
        queries[static_cast<std::size_t>(r * dim + d)] = static_cast<float>(to_float(query[d * q.dim_stride])) * scale;
      last_visible[static_cast<std::size_t>(r)] = geometry.last_visible_key(r % geometry.q_len);
    }
    const std::int64_t row_last = geometry.last_visible_key(geometry.q_len - 1);  // the latest token sees the most

    auto attend_block = [&](std::int64_t n) {
      const std::int64_t first = n * block_size;
      const std::int64_t count = std::min(block_size, row_last + 1 - first);
      if (count <= 0) return;
      for (std::int64_t j = 0; j < count; ++j) {  // one conversion per block, shared by the group's rows
        const T* key = cache.key(b, first + j, kv_head);
        const T* value = cache.value(b, first + j, kv_head);
        for (std::int64_t d = 0; d < dim; ++d) {
          keys[static_cast<std::size_t>(j * dim + d)] = static_cast<float>(to_float(key[d]));
          values[static_cast<std::size_t>(j * dim + d)] = static_cast<float>(to_float(value[d]));
        }
      }
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t visible = std::min(count, last_visible[static_cast<std::size_t>(r)] + 1 - first);
        if (visible <= 0) continue;
        const float* query = &queries[static_cast<std::size_t>(r * dim)];
        float block_max = negative_infinity;
        for (std::int64_t j = 0; j < visible; ++j) {
          const float* key = &keys[static_cast<std::size_t>(j * dim)];
          float dot = 0.0f;
          for (std::int64_t d = 0; d < dim; ++d) dot += query[d] * key[d];
          scores[static_cast<std::size_t>(j)] = dot;
          block_max = std::max(block_max, dot);
        }
        float& row_max = running_max[static_cast<std::size_t>(r)];
        const float new_max = std::max(row_max, block_max);
        const float rescale = std::exp(row_max - new_max);  // exp(-inf) = 0 on the first visit
        float* accumulator = &accumulators[static_cast<std::size_t>(r * dim)];
        if (rescale != 1.0f)
          for (std::int64_t d = 0; d < dim; ++d) accumulator[d] *= rescale;
        float block_sum = 0.0f;
        for (std::int64_t j = 0; j < visible; ++j) {
          const float weight = std::exp(scores[static_cast<std::size_t>(j)] - new_max);
          block_sum += weight;
          const float* value = &values[static_cast<std::size_t>(j * dim)];
          for (std::int64_t d = 0; d < dim; ++d) accumulator[d] += weight * value[d];
        }
        running_sum[static_cast<std::size_t>(r)] = running_sum[static_cast<std::size_t>(r)] * rescale + block_sum;
        row_max = new_max;
      }
    };

    if (blocks == nullptr) {
      for (std::int64_t n = 0; n * block_size <= row_last; ++n) attend_block(n);
    } else {
      const std::int64_t row = blocks->row(b, kv_head);
      const std::int32_t* indices = blocks->row_begin(row);
      for (std::int64_t i = 0; i < blocks->row_size(row); ++i) attend_block(indices[i]);
    }

    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = r % geometry.q_len, h = kv_head * group + r / geometry.q_len;
      const float sum = running_sum[static_cast<std::size_t>(r)];
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
      O* destination = out.vector(b, t, h);
      for (std::int64_t d = 0; d < dim; ++d)
        decode_detail::store_element(
            destination[d * out.dim_stride],
            static_cast<double>(accumulators[static_cast<std::size_t>(r * dim + d)] * inverse));
      if (lse.data != nullptr)
        lse(h, q.start(b) + t) = sum > 0.0f ? static_cast<L>(running_max[static_cast<std::size_t>(r)] + std::log(sum))
                                            : -std::numeric_limits<L>::infinity();
    }
  });
}

}  // namespace seer::cpu
