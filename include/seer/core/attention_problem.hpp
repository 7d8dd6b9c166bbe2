// The arguments of one attention call and their validation, shared by every executor.
//
// q: [.., Hq, D] sequences; k, v: [.., Hkv, D] sequences with Hq % Hkv == 0 (query head h reads KV
// head h / (Hq / Hkv): GQA/MQA without repeating K/V). Output o has q's shape. The log-sum-exp
// (natural log, of the scaled scores) is a [Hq, total_q_tokens] view indexed by global query token,
// or empty (data == nullptr) when not wanted. A BlockSet may be absent (dense attention) or have one
// row set per query head or per KV head.
#pragma once

#include <cmath>
#include <cstdint>

#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"

namespace seer {

struct AttentionOptions {
  bool causal = true;
  double softmax_scale = 0.0;  // 0 selects 1/sqrt(head_dim)

  double scale_for(std::int64_t head_dim) const {
    return softmax_scale != 0.0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }
};

// Checks shapes and options common to all executors. Does not read cu_seqlens (it may live on a
// device); host executors call validate_host_lengths and validate_blocks_host in addition.
template <class Q, class K, class V, class O, class L>
void validate_attention_shapes(const SequenceBatch<Q>& q, const SequenceBatch<K>& k, const SequenceBatch<V>& v,
                               const SequenceBatch<O>& o, const TensorView<L, 2>& lse,
                               const AttentionOptions& options) {
  require(q.data != nullptr, "q", "data pointer is null");
  require(k.data != nullptr, "k", "data pointer is null");
  require(v.data != nullptr, "v", "data pointer is null");
  require(o.data != nullptr, "out", "data pointer is null");
  require(q.heads > 0, "q", "has ", q.heads, " heads, expected > 0");
  require(k.heads > 0, "k", "has ", k.heads, " heads, expected > 0");
  require(q.heads % k.heads == 0, "k", "has ", k.heads, " heads, which does not divide the ", q.heads,
          " query heads (GQA needs num_q_heads % num_kv_heads == 0)");
  require(v.heads == k.heads, "v", "has ", v.heads, " heads, expected the ", k.heads, " heads of k");
  require(q.head_dim > 0, "q", "head dim is ", q.head_dim, ", expected > 0");
  require(k.head_dim == q.head_dim, "k", "head dim is ", k.head_dim, ", expected q's ", q.head_dim);
  require(v.head_dim == q.head_dim, "v", "head dim is ", v.head_dim, ", expected q's ", q.head_dim);
  require(o.heads == q.heads && o.head_dim == q.head_dim, "out", "shape [.., ", o.heads, ", ", o.head_dim,
          "] differs from q's [.., ", q.heads, ", ", q.head_dim, "]");
  require(k.batch == q.batch && v.batch == q.batch && o.batch == q.batch, "k", "batch sizes differ: q ", q.batch,
          ", k ", k.batch, ", v ", v.batch, ", out ", o.batch);
  require(k.is_packed() == v.is_packed(), "v", "k and v must share one layout (both padded or both packed)");
  require(o.is_packed() == q.is_packed(), "out", "must use q's layout (padded or packed)");
  require(!v.is_packed() || v.cu_seqlens == k.cu_seqlens, "v", "packed v must share k's cu_seqlens");
  require(!o.is_packed() || o.cu_seqlens == q.cu_seqlens, "out", "packed out must share q's cu_seqlens");
  require(v.max_length == k.max_length, "v", "max length ", v.max_length, " differs from k's ", k.max_length);
  require(o.max_length == q.max_length, "out", "max length ", o.max_length, " differs from q's ", q.max_length);
  require(std::isfinite(options.softmax_scale), "options.softmax_scale", "is not finite");
  require(options.softmax_scale >= 0.0, "options.softmax_scale", "is ", options.softmax_scale,
          ", expected > 0 (or 0 for 1/sqrt(head_dim))");
  if (lse.data != nullptr) {
    validate_view(lse, "lse");
    require(lse.extent[0] == q.heads, "lse", "has ", lse.extent[0], " rows, expected one per query head (", q.heads,
            ")");
  }
}

// Host check that a BlockSet matches the batch: same sequences (block grids), a head count equal to
// the query heads or the KV heads, rows within each sequence's key grid (BlockSet guarantees the
// rest when it was built on the host).
template <class Q, class K>
void validate_blocks_host(const BlockSet& blocks, const SequenceBatch<Q>& q, const SequenceBatch<K>& k, bool causal) {
  require(blocks.complete(), "blocks", "only ", blocks.rows_filled(), " of ", blocks.rows(), " rows are filled");
  require(blocks.heads() == q.heads || blocks.heads() == k.heads, "blocks", "has ", blocks.heads(),
          " heads, expected the ", q.heads, " query heads or the ", k.heads, " KV heads");
  require(blocks.batch() == q.batch, "blocks", "covers ", blocks.batch(), " sequences, expected ", q.batch);
  for (std::int64_t b = 0; b < q.batch; ++b) {
    const BlockGeometry& g = blocks.sequences()[b];
    require(g.q_len == q.length(b) && g.k_len == k.length(b), "blocks", "sequence ", b, " was built for q_len ",
            g.q_len, ", k_len ", g.k_len, " but the inputs have q_len ", q.length(b), ", k_len ", k.length(b));
    require(g.causal == causal, "blocks", "sequence ", b, " was built with causal=", g.causal,
            " but the attention call has causal=", causal);
  }
}

}  // namespace seer
