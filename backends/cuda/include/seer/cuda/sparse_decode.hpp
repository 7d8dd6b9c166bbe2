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

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
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

template <class T, int HeadDim, int RowBlocks, bool Deep, bool ClusterMerge, bool Lean = false>
void launch_decode_kernel(const gpu::DecodeParams<T>& params, cudaStream_t stream) {
  using Traits = gpu::DecodeTraits<T, HeadDim, RowBlocks, Deep>;
  auto* kernel = &gpu::sparse_decode_kernel<T, HeadDim, RowBlocks, Deep, ClusterMerge, Lean>;
  // More than half a multiprocessor's shared memory (228 KB on sm_90) keeps a second CTA off it.
  constexpr int kOneCtaBytes = 116 * 1024;
  const int shared_bytes =
      params.one_cta_per_multiprocessor && Traits::kSharedBytes < kOneCtaBytes ? kOneCtaBytes : Traits::kSharedBytes;
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, shared_bytes);
  const dim3 grid(static_cast<unsigned>(params.splits), static_cast<unsigned>(params.cache.heads * params.head_chunks),
                  static_cast<unsigned>(params.q.batch));
  if constexpr (!ClusterMerge && !Deep) {
    // Programmatic dependent launch on sm_90+ for the shallow kernel's grids of several waves: its first CTAs
    // take the multiprocessors the kernel before it leaves while that one drains (H100, NOTES runs 11-12: batch
    // 16 graph replay -1.0 us at 32k, -1.2 at 128k; batch 1 / 128k -0.6). The deep kernel's single wave gains
    // nothing from it and measured 0.3-0.6 us slower at batch 1 (NOTES runs 12-13), so it is launched plainly.
    gpu::vendor::launch_after_prior_grid("sparse_decode_kernel launch", kernel, grid, dim3(Traits::kThreads),
                                         static_cast<std::size_t>(shared_bytes), stream, params);
  } else if constexpr (!ClusterMerge) {
    kernel<<<grid, Traits::kThreads, shared_bytes, stream>>>(params);
    gpu::vendor::check_last_launch("sparse_decode_kernel launch");
  } else {
    // One cluster per (sequence, KV head, head chunk): the grid's x extent, its splits (at most 16; more
    // than 8 is a non-portable cluster size, which sm_90 allows once the kernel asks for it).
    if (params.splits > 8)
      gpu::vendor::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                         "cudaFuncSetAttribute(NonPortableClusterSizeAllowed)");
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(Traits::kThreads);
    config.dynamicSmemBytes = static_cast<std::size_t>(shared_bytes);
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(params.splits);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    gpu::vendor::check(cudaLaunchKernelEx(&config, kernel, params), "sparse_decode_kernel launch (cluster merge)");
  }
}

template <class T, int HeadDim, int RowBlocks>
void launch_decode(const gpu::DecodeParams<T>& params, cudaStream_t stream) {
  if (params.deep_pipeline) {
    if (params.cluster_merge) {
      launch_decode_kernel<T, HeadDim, RowBlocks, true, true>(params, stream);
    } else if (RowBlocks == 1 && params.lean_kernel) {
      launch_decode_kernel<T, HeadDim, 1, true, false, true>(params, stream);
    } else {
      launch_decode_kernel<T, HeadDim, RowBlocks, true, false>(params, stream);
    }
  } else if (params.cluster_merge) {
    launch_decode_kernel<T, HeadDim, RowBlocks, false, true>(params, stream);
  } else {
    launch_decode_kernel<T, HeadDim, RowBlocks, false, false>(params, stream);
  }
}

// How many clusters of `splits` CTAs of the kernel for (head dim, row blocks, pipeline) the current device
// runs at once (cudaOccupancyMaxActiveClusters; each cluster must fit on one GPC's multiprocessors, which
// differ between chips), remembered per (device, kernel, splits). A caller that forces the cluster merge
// should ask first: clusters that do not all fit at once run in waves.
template <class T>
std::int64_t decode_cluster_capacity(std::int64_t head_dim, std::int64_t row_blocks, bool deep, std::int64_t splits) {
  if (splits < 2 || splits > gpu::kDecodeMaxClusterSplits) return 0;
  int device = 0, major = 0;
  gpu::vendor::check(cudaGetDevice(&device), "cudaGetDevice");
  gpu::vendor::check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                     "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
  if (major < 9) return 0;
  static std::mutex mutex;
  static std::map<std::tuple<int, std::int64_t, std::int64_t, bool, std::int64_t>, std::int64_t> known;
  const auto key = std::make_tuple(device, head_dim, row_blocks, deep, splits);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto found = known.find(key);
    if (found != known.end()) return found->second;
  }
  int clusters = 0;
  auto ask = [&](auto kernel, int threads, int shared_bytes) {
    gpu::vendor::set_max_dynamic_shared_bytes(kernel, shared_bytes);
    if (splits > 8)
      gpu::vendor::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                         "cudaFuncSetAttribute(NonPortableClusterSizeAllowed)");
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(splits));
    config.blockDim = dim3(static_cast<unsigned>(threads));
    config.dynamicSmemBytes = static_cast<std::size_t>(shared_bytes);
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(splits);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    // A configuration the device cannot run at all answers with an error: no clusters then.
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
      static_cast<void>(cudaGetLastError());
      clusters = 0;
    }
  };
  auto with_kernel = [&](auto head_dim_constant, auto row_blocks_constant, auto deep_constant) {
    constexpr int kHeadDim = decltype(head_dim_constant)::value, kRowBlocks = decltype(row_blocks_constant)::value;
    constexpr bool kDeep = decltype(deep_constant)::value;
    using Traits = gpu::DecodeTraits<T, kHeadDim, kRowBlocks, kDeep>;
    ask(&gpu::sparse_decode_kernel<T, kHeadDim, kRowBlocks, kDeep, true>, Traits::kThreads, Traits::kSharedBytes);
  };
  auto with_rows = [&](auto head_dim_constant, auto deep_constant) {
    if (row_blocks <= 1) {
      with_kernel(head_dim_constant, std::integral_constant<int, 1>{}, deep_constant);
    } else if (row_blocks == 2) {
      with_kernel(head_dim_constant, std::integral_constant<int, 2>{}, deep_constant);
    } else {
      with_kernel(head_dim_constant, std::integral_constant<int, 4>{}, deep_constant);
    }
  };
  auto with_pipeline = [&](auto head_dim_constant) {
    if (deep) {
      with_rows(head_dim_constant, std::true_type{});
    } else {
      with_rows(head_dim_constant, std::false_type{});
    }
  };
  if (head_dim == 64) {
    with_pipeline(std::integral_constant<int, 64>{});
  } else {
    with_pipeline(std::integral_constant<int, 128>{});
  }
  const std::lock_guard<std::mutex> lock(mutex);
  known[key] = clusters;
  return clusters;
}

// Tiles the deep kernel's prologue copies (its stages but one) at this head dim.
template <class T>
std::int64_t deep_pipeline_tiles(std::int64_t head_dim) {
  return head_dim == 64 ? gpu::DecodeTraits<T, 64, 1, true>::kStages - 1
                        : gpu::DecodeTraits<T, 128, 1, true>::kStages - 1;
}

// sparse_decode with a given launch shape (the tests force split counts through it). A deep shape that asks
// for the lean kernel (DecodeLaunchShape::lean_kernel, the default) runs it wherever gpu::decode_lean_kernel_applies.
template <class T>
void sparse_decode_with_shape(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                              const AttentionOptions& options, SequenceBatch<T> out, TensorView<float, 2> lse,
                              void* workspace, std::int64_t workspace_bytes, const gpu::DecodeLaunchShape& shape,
                              cudaStream_t stream) {
  gpu::DecodeParams<T> params =
      gpu::make_decode_params<T>(q, cache, blocks, options, out, lse, shape, workspace, workspace_bytes);
  params.lean_kernel = shape.lean_kernel && gpu::decode_lean_kernel_applies(params, deep_pipeline_tiles<T>(q.head_dim));
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
  const std::int64_t deep_tiles = deep_pipeline_tiles<T>(q.head_dim);  // tiles a deep CTA holds in flight
  // The cluster merge (DecodeLaunchShape::cluster_merge) is not chosen here: where its clusters fit it measured
  // the same as the workspace merge (H100, batch 1 / 32k, 8 deep splits), at 16 splits 8 clusters of 16 do not
  // fit on that chip, and at batch 16 it was slower (bench/gpu/decode/NOTES.md, runs 7-8).
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
