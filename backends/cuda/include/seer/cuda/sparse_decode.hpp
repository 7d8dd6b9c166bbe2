// seer::cuda::sparse_decode: block-sparse (or dense) decode attention over a KV cache on an NVIDIA GPU.
//
//   bytes = decode_workspace_bytes(q, cache, blocks)
//   sparse_decode(q, cache, blocks, options, out, lse, workspace, bytes, stream)
//
// q, out: SequenceBatch views of DEVICE memory with 1 to 8 new tokens per sequence (padded
// [B, q_len, Hq, D], or packed varlen with DEVICE cu_seqlens and max_length = the most new tokens of a
// sequence), seer::bfloat16 or seer::half, head dim 64 or 128, dim stride 1. cache: a KvCacheView of
// DEVICE memory (contiguous or paged; lengths and page table on the device) with Hkv heads, Hq % Hkv
// == 0; its max_length bounds the lengths. blocks: a DecodeBlockListView of DEVICE memory (block size
// 64, one row per (sequence, KV head)), or nullptr for dense decoding. lse: [Hq, total_q] fp32
// natural-log device view, or empty. Semantics: seer/cpu/decode_attention.hpp (the CPU oracle).
//
// workspace: device memory of at least decode_workspace_bytes(q, cache, blocks) bytes (0 when the
// call needs none; then it may be null), 16-byte aligned, owned by the caller, ZERO-FILLED before its
// first use (e.g. one cudaMemsetAsync after allocating it): it holds the completion counters by which
// the last CTA of a split row finds itself, and every call leaves them zero again. The size depends on
// host-known sizes only (batch, heads, head dim, q.max_length, cache.max_length, block capacity and
// the device), so one workspace serves every step of a decode loop with fixed shapes. Calls that share
// a workspace must not run concurrently.
//
// Stream-ordered: host validation, then one decode kernel on `stream` (split rows are merged inside it,
// in split order: the result does not depend on the order in which CTAs finish). No host
// synchronisation, no allocation, capturable in a CUDA graph (the lengths, block lists and page table
// are read on the device, so a captured graph serves every step).
// Invalid arguments throw seer::InvalidArgument naming the argument; CUDA failures throw
// seer::BackendError. The caller's contract, which the host cannot check (device memory):
// q_len(b) <= lengths[b] <= cache.max_length, q_len(b) <= q.max_length, block indices strictly
// ascending below ceil(lengths[b] / 64) and counts <= capacity, page table entries of used pages valid.
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gpu/decode_kernel.hpp"
#include "seer/gpu/decode_params.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::cuda {

inline bool decode_supports_head_dim(std::int64_t head_dim) { return gpu::decode_supports_head_dim(head_dim); }

namespace detail {

// What the launch shape needs to know of the current device: the shallow kernel's resident CTAs (2
// per multiprocessor, its launch bound; its shared memory allows it for every head dim), and the
// deep-pipeline kernel's (one per multiprocessor; 0 where a CTA cannot get its shared memory).
struct DecodeDevice {
  std::int64_t resident_ctas = 1;
  std::int64_t deep_pipeline_ctas = 0;
};

inline DecodeDevice decode_device() {
  int device = 0, multiprocessors = 0, shared_bytes = 0;
  gpu::vendor::check(cudaGetDevice(&device), "cudaGetDevice");
  gpu::vendor::check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device),
                     "cudaDeviceGetAttribute(MultiProcessorCount)");
  gpu::vendor::check(cudaDeviceGetAttribute(&shared_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                     "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  constexpr int kDeepBytes = gpu::DecodeTraits<bfloat16, 128, 4, true>::kSharedBytes;  // the largest deep CTA
  return {2 * static_cast<std::int64_t>(multiprocessors), shared_bytes >= kDeepBytes ? multiprocessors : 0};
}

template <class T, int HeadDim, int RowBlocks, bool Deep>
void launch_decode_kernel(const gpu::DecodeParams<T>& params, cudaStream_t stream) {
  using Traits = gpu::DecodeTraits<T, HeadDim, RowBlocks, Deep>;
  auto* kernel = &gpu::sparse_decode_kernel<T, HeadDim, RowBlocks, Deep>;
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
  const dim3 grid(static_cast<unsigned>(params.splits), static_cast<unsigned>(params.cache.heads * params.head_chunks),
                  static_cast<unsigned>(params.q.batch));
  kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(params);
  gpu::vendor::check_last_launch("sparse_decode_kernel launch");
}

template <class T, int HeadDim, int RowBlocks>
void launch_decode(const gpu::DecodeParams<T>& params, cudaStream_t stream) {
  if (params.deep_pipeline) {
    launch_decode_kernel<T, HeadDim, RowBlocks, true>(params, stream);
  } else {
    launch_decode_kernel<T, HeadDim, RowBlocks, false>(params, stream);
  }
}

// sparse_decode with a given launch shape (the tests force split counts through it).
template <class T>
void sparse_decode_with_shape(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                              const AttentionOptions& options, SequenceBatch<T> out, TensorView<float, 2> lse,
                              void* workspace, std::int64_t workspace_bytes, const gpu::DecodeLaunchShape& shape,
                              cudaStream_t stream) {
  const gpu::DecodeParams<T> params =
      gpu::make_decode_params<T>(q, cache, blocks, options, out, lse, shape, workspace, workspace_bytes);
  if (q.batch == 0) return;  // nothing to compute (and a 0-sized grid is an error)
  gpu::dispatch_decode_kernel(params, [&](auto head_dim, auto row_blocks) {
    launch_decode<T, decltype(head_dim)::value, decltype(row_blocks)::value>(params, stream);
  });
}

template <class T>
gpu::DecodeLaunchShape automatic_decode_shape(const SequenceBatch<const T>& q, const KvCacheView<const T>& cache,
                                              const DecodeBlockListView* blocks) {
  require(cache.heads > 0 && q.heads % cache.heads == 0, "cache", "has ", cache.heads,
          " KV heads, which does not divide the ", q.heads, " query heads");
  const DecodeDevice device = decode_device();
  // Tiles a deep CTA holds in flight: its stages but one.
  const std::int64_t deep_tiles = q.head_dim == 64 ? gpu::DecodeTraits<T, 64, 1, true>::kStages - 1
                                                   : gpu::DecodeTraits<T, 128, 1, true>::kStages - 1;
  return gpu::decode_launch_shape(q.batch, q.heads, cache.heads, q.max_length, cache.max_length, blocks,
                                  device.resident_ctas, device.deep_pipeline_ctas, deep_tiles);
}

}  // namespace detail

// Bytes of device workspace sparse_decode needs for these shapes on the current device.
template <class T>
std::int64_t decode_workspace_bytes(SequenceBatch<const T> q, KvCacheView<const T> cache,
                                    const DecodeBlockListView* blocks) {
  const gpu::DecodeLaunchShape shape = detail::automatic_decode_shape(q, cache, blocks);
  return gpu::decode_workspace_bytes_for(q.batch, q.heads, q.max_length, q.head_dim, shape.splits);
}

template <class T>
void sparse_decode(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                   const AttentionOptions& options, SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace,
                   std::int64_t workspace_bytes, cudaStream_t stream) {
  gpu::validate_decode_call(q, cache, blocks, options, out, lse);
  detail::sparse_decode_with_shape(q, cache, blocks, options, out, lse, workspace, workspace_bytes,
                                   detail::automatic_decode_shape(q, cache, blocks), stream);
}

}  // namespace seer::cuda
