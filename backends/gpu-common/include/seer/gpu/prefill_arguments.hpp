// Host-side validation of a prefill call and the PrefillParams it becomes: the part of
// block_sparse_attention that does not depend on the vendor (no GPU headers; nothing here reads
// device memory). seer::cuda and seer::hip block_sparse_attention call it, then launch.
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/gpu/prefill_params.hpp"

namespace seer::gpu {

inline constexpr std::int64_t kPrefillTile = 64;  // query rows per CTA = keys per tile = smallest block size

inline bool prefill_supports_head_dim(std::int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

// Calls launch(std::integral_constant<int, D>{}) for the compiled head dim D == head_dim (already
// validated by make_prefill_params), so each backend instantiates its kernels from one list.
template <class Launch>
void dispatch_prefill_head_dim(std::int64_t head_dim, Launch&& launch) {
  switch (head_dim) {
    case 64:
      launch(std::integral_constant<int, 64>{});
      break;
    case 128:
      launch(std::integral_constant<int, 128>{});
      break;
    default:
      launch(std::integral_constant<int, 256>{});
      break;
  }
}

template <class T>
void require_prefill_vectors(const SequenceBatch<T>& batch, const char* name) {
  // Tiles move 16-byte chunks (8 elements): every vector must start on a 16-byte boundary.
  require(reinterpret_cast<std::uintptr_t>(batch.data) % 16 == 0, name,
          "data must be 16-byte aligned for vectorised loads");
  require(batch.dim_stride == 1, name, "dim stride is ", batch.dim_stride, ", expected 1 (contiguous head vectors)");
  require(batch.token_stride % 8 == 0 && batch.head_stride % 8 == 0 && batch.batch_stride % 8 == 0, name,
          "token, head and batch strides (", batch.token_stride, ", ", batch.head_stride, ", ", batch.batch_stride,
          ") must be multiples of 8 elements for 16-byte loads");
  require(batch.max_length >= 0, name, "max_length is ", batch.max_length, ", expected >= 0");
}

// Validates the call (throws seer::InvalidArgument naming the argument) and fills the kernel's
// parameters. Grid: (max_query_tiles, q.heads, q.batch); nothing to launch when max_query_tiles or
// q.batch is 0.
template <class T>
PrefillParams<T> make_prefill_params(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                                     const BlockSetView* blocks, const AttentionOptions& options, SequenceBatch<T> out,
                                     TensorView<float, 2> lse) {
  static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "block_sparse_attention takes seer::bfloat16 or seer::half elements");
  validate_attention_shapes(q, k, v, out, lse, options);
  require(prefill_supports_head_dim(q.head_dim), "q", "head dim is ", q.head_dim, ", supported: 64, 128, 256");
  require_prefill_vectors(q, "q");
  require_prefill_vectors(k, "k");
  require_prefill_vectors(v, "v");
  require_prefill_vectors(out, "out");
  require(q.batch <= 65535, "q", "batch is ", q.batch, ", at most 65535 sequences per call");
  require(q.heads <= 65535, "q", "has ", q.heads, " heads, at most 65535 per call");

  const std::int64_t max_query_tiles = (q.max_length + kPrefillTile - 1) / kPrefillTile;
  require(max_query_tiles <= 2147483647, "q", "max_length ", q.max_length, " is too long for one grid");

  PrefillParams<T> params;
  params.q = q;
  params.k = k;
  params.v = v;
  params.out = out;
  params.causal = options.causal;
  params.group = q.heads / k.heads;
  params.max_query_tiles = max_query_tiles;
  params.scale_log2 = static_cast<float>(options.scale_for(q.head_dim) * 1.4426950408889634);

  if (lse.data != nullptr) {
    if (!q.is_packed())
      require(lse.extent[1] >= q.batch * q.max_length, "lse", "has ", lse.extent[1], " columns, expected ",
              q.batch * q.max_length, " (one per query token)");
    params.lse = lse.data;
    params.lse_head_stride = lse.stride[0];
    params.lse_token_stride = lse.stride[1];
  }

  if (blocks != nullptr) {
    require(blocks->row_offsets != nullptr && blocks->key_blocks != nullptr && blocks->query_block_offsets != nullptr,
            "blocks", "has a null device pointer");
    require(blocks->block_size > 0 && blocks->block_size % kPrefillTile == 0, "blocks", "block_size is ",
            blocks->block_size, ", expected a positive multiple of ", kPrefillTile);
    require(blocks->heads == q.heads || blocks->heads == k.heads, "blocks", "has ", blocks->heads,
            " heads, expected the ", q.heads, " query heads or the ", k.heads, " KV heads");
    require(blocks->batch == q.batch, "blocks", "covers ", blocks->batch, " sequences, expected ", q.batch);
    params.blocks = *blocks;
    params.has_blocks = true;
    params.tiles_per_block = blocks->block_size / kPrefillTile;
  }
  return params;
}

}  // namespace seer::gpu
