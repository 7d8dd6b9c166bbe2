// Host-side validation of a ground-truth call and the GroundTruthParams it becomes: the part of
// seer::cuda / seer::hip block_ground_truth_2d/1d that does not depend on the vendor (no GPU headers;
// nothing here reads device memory).
//
// Workspace (caller-provided device memory, ground_truth_workspace_bytes): the fp32 row maxima
// r[Hq, 64-key tiles of the longest k, query tokens] followed by an fp32 LSE [Hq, query tokens], used
// when the caller passes no lse. Query tokens: batch * max_length for a padded q, the view's stored
// tokens for a packed q. At 32k tokens and 32 heads that is 2 GiB (the original keeps the same
// [B, H, S, S/64] array in bf16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/gpu/ground_truth_params.hpp"
#include "seer/gpu/prefill_arguments.hpp"

namespace seer::gpu {

enum class GroundTruthTarget { two_dimensional, one_dimensional };

template <class T>
std::int64_t ground_truth_token_capacity(const SequenceBatch<T>& q) {
  return q.is_packed() ? q.stored_tokens : q.batch * q.max_length;
}

// Bytes of workspace a ground-truth call on these q and k needs (0 when there is nothing to compute).
template <class Q, class K>
std::size_t ground_truth_workspace_bytes(const SequenceBatch<Q>& q, const SequenceBatch<K>& k) {
  require(q.heads >= 0 && q.max_length >= 0 && k.max_length >= 0 && q.batch >= 0, "q", "has negative extents (heads ",
          q.heads, ", batch ", q.batch, ", max_length ", q.max_length, ")");
  const std::int64_t tokens = ground_truth_token_capacity(q);
  const std::int64_t key_tiles = (k.max_length + kGroundTruthTile - 1) / kGroundTruthTile;
  return static_cast<std::size_t>(q.heads * tokens * (key_tiles + 1)) * sizeof(float);
}

// Validates the call (throws seer::InvalidArgument naming the argument) and fills the parameters.
// target: 2-D [B, Hq, ceil(q.max_length / block_size), ceil(k.max_length / block_size)];
// 1-D [B, Hkv, q.max_length, ceil(k.max_length / block_size)].
template <class T>
GroundTruthParams<T> make_ground_truth_params(GroundTruthTarget kind, SequenceBatch<const T> q,
                                              SequenceBatch<const T> k, SequenceBatch<const T> v,
                                              const AttentionOptions& options, std::int64_t block_size,
                                              TensorView<float, 4> target, SequenceBatch<T> out,
                                              TensorView<float, 2> lse, void* workspace, std::size_t workspace_bytes) {
  GroundTruthParams<T> params;
  params.attention = make_prefill_params<T>(q, k, v, nullptr, options, out, lse);
  require(block_size > 0 && block_size % kGroundTruthTile == 0, "block_size", "is ", block_size,
          ", expected a positive multiple of ", kGroundTruthTile);
  const std::int64_t query_blocks = (q.max_length + block_size - 1) / block_size;
  const std::int64_t key_blocks = (k.max_length + block_size - 1) / block_size;
  const bool two_dimensional = kind == GroundTruthTarget::two_dimensional;
  const std::int64_t heads = two_dimensional ? q.heads : k.heads;
  const std::int64_t rows = two_dimensional ? query_blocks : q.max_length;
  validate_view(target, "target");
  require(
      target.extent[0] == q.batch && target.extent[1] == heads && target.extent[2] == rows &&
          target.extent[3] == key_blocks,
      "target", "has extents [", target.extent[0], ", ", target.extent[1], ", ", target.extent[2], ", ",
      target.extent[3], "], expected [", q.batch, ", ", heads, ", ", rows, ", ", key_blocks, "] (",
      two_dimensional ? "batch, query heads, query blocks, key blocks" : "batch, KV heads, query tokens, key blocks",
      ")");

  const std::size_t needed = ground_truth_workspace_bytes(q, k);
  require(workspace_bytes >= needed, "workspace_bytes", "is ", workspace_bytes, ", the call needs ", needed,
          " (ground_truth_workspace_bytes)");
  require(workspace != nullptr || needed == 0, "workspace", "is null but the call needs ", needed, " bytes");
  require(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0, "workspace", "must be aligned for float");

  params.token_capacity = ground_truth_token_capacity(q);
  params.key_tiles = (k.max_length + kGroundTruthTile - 1) / kGroundTruthTile;
  params.row_maxima = static_cast<float*>(workspace);
  if (params.attention.lse == nullptr) {  // the LSE the pooling needs goes to the workspace's last part
    params.attention.lse = params.row_maxima + q.heads * params.key_tiles * params.token_capacity;
    params.attention.lse_head_stride = params.token_capacity;
    params.attention.lse_token_stride = 1;
  }
  params.softmax_scale = static_cast<float>(options.scale_for(q.head_dim));
  params.block_size = block_size;
  params.target = target.data;
  for (int axis = 0; axis < 4; ++axis) params.target_stride[axis] = target.stride[axis];
  params.target_rows = rows;
  params.target_columns = key_blocks;
  return params;
}

}  // namespace seer::gpu
