// Argument checks of the host (CPU) attention executors, run before any memory is read.
//
// The shared checks (validate_attention_shapes, validate_blocks_host) cannot read cu_seqlens, which
// may live on a device. On the host it can be read, so host executors also check the sequence
// lengths and that the log-sum-exp view has a column for every query token it will be written to.
// (v and out need no length check of their own: the shared checks tie them to k's and q's lengths.)
#pragma once

#include <cstdint>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"

namespace seer::cpu {

template <class T, class O, class L>
void validate_host_attention(const SequenceBatch<const T>& q, const SequenceBatch<const T>& k,
                             const SequenceBatch<const T>& v, const BlockSet* blocks, const AttentionOptions& options,
                             const SequenceBatch<O>& out, const TensorView<L, 2>& lse) {
  validate_attention_shapes(q, k, v, out, lse, options);
  validate_host_lengths(q, "q");
  validate_host_lengths(k, "k");
  if (lse.data != nullptr)
    require(lse.extent[1] >= q.total_tokens(), "lse", "has ", lse.extent[1], " columns, expected one per query token (",
            q.total_tokens(), ")");
  if (blocks != nullptr) validate_blocks_host(*blocks, q, k, options.causal);
}

}  // namespace seer::cpu
