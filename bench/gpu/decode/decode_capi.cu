// A tiny C entry point for the decode benchmark (Python + ctypes), not part of seer's API: one Python
// process times seer's decode and PyTorch's SDPA on the same cache with the same method.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>

#include "seer/cuda/sparse_decode.hpp"

namespace {

void copy_message(const char* text, char* buffer, std::int64_t capacity) {
  if (buffer == nullptr || capacity <= 0) return;
  const std::size_t length = std::min<std::size_t>(std::strlen(text), static_cast<std::size_t>(capacity - 1));
  std::memcpy(buffer, text, length);
  buffer[length] = '\0';
}

struct Views {
  seer::SequenceBatch<const seer::bfloat16> q;
  seer::SequenceBatch<seer::bfloat16> out;
  seer::KvCacheView<const seer::bfloat16> cache;
  seer::DecodeBlockListView blocks;
};

// q, out: [batch, q_len, q_heads, head_dim]; keys, values: [batch, capacity, kv_heads, head_dim] (token-major),
// or [batch, kv_heads, capacity, head_dim] when head_major (each head's tokens one run, SDPA's layout); bf16,
// contiguous, device memory; lengths: [batch] int32 device memory.
Views make_views(const void* q, const void* keys, const void* values, const std::int32_t* lengths, void* out,
                 std::int64_t batch, std::int64_t q_len, std::int64_t q_heads, std::int64_t kv_heads,
                 std::int64_t head_dim, std::int64_t capacity, std::int64_t max_length, const std::int32_t* key_blocks,
                 const std::int32_t* counts, std::int64_t block_capacity, bool head_major = false) {
  using seer::bfloat16;
  Views views;
  views.q = seer::padded_batch(seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(q),
                                                                               {batch, q_len, q_heads, head_dim}),
                               "q");
  views.out = seer::padded_batch(
      seer::TensorView<bfloat16, 4>::contiguous(static_cast<bfloat16*>(out), {batch, q_len, q_heads, head_dim}), "out");
  auto k = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(keys),
                                                           {batch, capacity, kv_heads, head_dim});
  auto v = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(values),
                                                           {batch, capacity, kv_heads, head_dim});
  if (head_major) {  // the same [batch, token, head, dim] view over a [batch, head, token, dim] buffer
    k.stride = {kv_heads * capacity * head_dim, head_dim, capacity * head_dim, 1};
    v.stride = k.stride;
  }
  views.cache = seer::contiguous_kv_cache(k, v, lengths, max_length);
  views.blocks = seer::DecodeBlockListView{key_blocks, counts, batch, kv_heads, block_capacity, 64};
  return views;
}

}  // namespace

// Workspace bytes for these shapes (dense != 0: no block list); forced_splits > 0 replaces the automatic
// split bound (for split sweeps). Returns -1 with a message on error.
extern "C" std::int64_t seer_bench_decode_workspace_bf16(std::int64_t batch, std::int64_t q_len, std::int64_t q_heads,
                                                         std::int64_t kv_heads, std::int64_t head_dim,
                                                         std::int64_t capacity, std::int64_t max_length,
                                                         std::int64_t block_capacity, int dense,
                                                         std::int64_t forced_splits, char* error,
                                                         std::int64_t error_capacity) {
  try {
    alignas(16) static seer::bfloat16 placeholder[8];
    static std::int32_t index_placeholder[1];
    const Views views =
        make_views(placeholder, placeholder, placeholder, index_placeholder, placeholder, batch, q_len, q_heads,
                   kv_heads, head_dim, capacity, max_length, index_placeholder, index_placeholder, block_capacity);
    if (forced_splits > 0) return seer::gpu::decode_workspace_bytes_for(batch, q_heads, q_len, head_dim, forced_splits);
    return seer::cuda::decode_workspace_bytes<seer::bfloat16>(views.q, views.cache,
                                                              dense != 0 ? nullptr : &views.blocks);
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_capacity);
    return -1;
  }
}

// One decode call on `stream`. key_blocks == nullptr selects dense decoding; forced_splits > 0 replaces the
// automatic split bound; forced_pipeline 1 / 2 the shallow / deep kernel, forced_order 1 / 2 interleaved /
// contiguous splits, forced_l2_policy 1 / 2 evict-first / normal K/V lines, forced_cluster 1 / 2 split rows
// merged through the workspace / in a thread-block cluster (0: automatic), one_cta bit 0: one CTA per
// multiprocessor (DecodeLaunchShape::one_cta_per_multiprocessor), bit 1: the lean deep kernel where it applies
// (DecodeLaunchShape::lean_kernel); head_major != 0: keys and values are
// [batch, kv_heads, capacity, head_dim]. Returns 0, or 1 with a message.
extern "C" int seer_bench_decode_bf16(const void* q, const void* keys, const void* values, const std::int32_t* lengths,
                                      void* out, float* lse, std::int64_t batch, std::int64_t q_len,
                                      std::int64_t q_heads, std::int64_t kv_heads, std::int64_t head_dim,
                                      std::int64_t capacity, std::int64_t max_length, const std::int32_t* key_blocks,
                                      const std::int32_t* counts, std::int64_t block_capacity, void* workspace,
                                      std::int64_t workspace_bytes, std::int64_t forced_splits,
                                      std::int64_t forced_pipeline, std::int64_t forced_order,
                                      std::int64_t forced_l2_policy, std::int64_t forced_cluster, std::int64_t one_cta,
                                      std::int64_t head_major, void* stream, char* error, std::int64_t error_capacity) {
  try {
    const Views views = make_views(q, keys, values, lengths, out, batch, q_len, q_heads, kv_heads, head_dim, capacity,
                                   max_length, key_blocks, counts, block_capacity, head_major != 0);
    seer::TensorView<float, 2> lse_view;
    if (lse != nullptr) lse_view = seer::TensorView<float, 2>::contiguous(lse, {q_heads, batch * q_len});
    const seer::DecodeBlockListView* blocks = key_blocks != nullptr ? &views.blocks : nullptr;
    if (forced_splits > 0 || forced_pipeline > 0 || forced_order > 0 || forced_l2_policy > 0 || forced_cluster > 0 ||
        one_cta != 0) {
      seer::gpu::DecodeLaunchShape shape = seer::cuda::detail::automatic_decode_shape(views.q, views.cache, blocks);
      if (forced_splits > 0) shape.splits = forced_splits;
      if (forced_pipeline > 0) shape.deep_pipeline = forced_pipeline == 2;
      if (forced_order > 0) shape.contiguous_splits = forced_order == 2;
      if (forced_l2_policy > 0) shape.kv_evict_first = forced_l2_policy == 1;
      if (forced_cluster > 0) shape.cluster_merge = forced_cluster == 2;
      shape.one_cta_per_multiprocessor = (one_cta & 1) != 0;
      shape.lean_kernel = (one_cta & 2) != 0;
      seer::cuda::detail::sparse_decode_with_shape<seer::bfloat16>(
          views.q, views.cache, blocks, seer::AttentionOptions{}, views.out, lse_view, workspace, workspace_bytes,
          shape, static_cast<cudaStream_t>(stream));
    } else {
      seer::cuda::sparse_decode<seer::bfloat16>(views.q, views.cache, blocks, seer::AttentionOptions{}, views.out,
                                                lse_view, workspace, workspace_bytes,
                                                static_cast<cudaStream_t>(stream));
    }
    return 0;
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_capacity);
    return 1;
  }
}

// One decode call over a paged cache, with the automatic launch shape: keys and values are pools of
// [batch * pages_per_sequence, page_size, kv_heads, head_dim] pages (a contiguous [batch, capacity, kv_heads,
// head_dim] buffer viewed as pages), page_table [batch, pages_per_sequence] int32 device memory; the rest as
// seer_bench_decode_bf16. Returns 0, or 1 with a message.
extern "C" int seer_bench_decode_paged_bf16(const void* q, const void* keys, const void* values,
                                            const std::int32_t* lengths, const std::int32_t* page_table,
                                            std::int64_t page_size, std::int64_t pages_per_sequence, void* out,
                                            float* lse, std::int64_t batch, std::int64_t q_len, std::int64_t q_heads,
                                            std::int64_t kv_heads, std::int64_t head_dim, std::int64_t max_length,
                                            const std::int32_t* key_blocks, const std::int32_t* counts,
                                            std::int64_t block_capacity, void* workspace, std::int64_t workspace_bytes,
                                            void* stream, char* error, std::int64_t error_capacity) {
  try {
    using seer::bfloat16;
    const std::int64_t capacity = pages_per_sequence * page_size;
    Views views = make_views(q, keys, values, lengths, out, batch, q_len, q_heads, kv_heads, head_dim, capacity,
                             max_length, key_blocks, counts, block_capacity);
    const std::int64_t pages = batch * pages_per_sequence;
    const auto k = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(keys),
                                                                   {pages, page_size, kv_heads, head_dim});
    const auto v = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(values),
                                                                   {pages, page_size, kv_heads, head_dim});
    views.cache = seer::paged_kv_cache(k, v, page_table, batch, pages_per_sequence, lengths, max_length);
    seer::TensorView<float, 2> lse_view;
    if (lse != nullptr) lse_view = seer::TensorView<float, 2>::contiguous(lse, {q_heads, batch * q_len});
    seer::cuda::sparse_decode<bfloat16>(views.q, views.cache, key_blocks != nullptr ? &views.blocks : nullptr,
                                        seer::AttentionOptions{}, views.out, lse_view, workspace, workspace_bytes,
                                        static_cast<cudaStream_t>(stream));
    return 0;
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_capacity);
    return 1;
  }
}

// How many clusters of `splits` CTAs of the cluster-merge decode kernel (bf16, head_dim, row_blocks, deep != 0:
// the deep pipeline) the device runs at once; -1 with a message on error.
extern "C" std::int64_t seer_bench_decode_cluster_capacity_bf16(std::int64_t head_dim, std::int64_t row_blocks,
                                                                std::int64_t deep, std::int64_t splits, char* error,
                                                                std::int64_t error_capacity) {
  try {
    return seer::cuda::detail::decode_cluster_capacity<seer::bfloat16>(head_dim, row_blocks, deep != 0, splits);
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_capacity);
    return -1;
  }
}
