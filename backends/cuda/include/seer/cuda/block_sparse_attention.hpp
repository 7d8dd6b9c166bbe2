// seer::cuda::block_sparse_attention: block-sparse (or dense) prefill attention on an NVIDIA GPU.
//
//   block_sparse_attention(q, k, v, blocks, options, out, lse, stream)
//
// q, k, v, out: SequenceBatch views of DEVICE memory (padded [B, S, H, D] or packed varlen with
// DEVICE cu_seqlens and a host-side max_length upper bound), element type seer::bfloat16 or
// seer::half, head dim 64, 128 or 256, dim stride 1. K/V may have fewer heads (GQA/MQA); query
// head h reads KV head h / (Hq / Hkv). blocks: a BlockSetView of device memory (DeviceBlockSet::
// view()) with one row set per query head or per KV head, block_size a multiple of 64; nullptr
// computes dense attention (the same kernel visiting every visible tile). lse: [Hq, total_q] fp32
// natural-log log-sum-exp in device memory, or an empty view.
//
// The call is stream-ordered: it validates on the host (nothing that needs device memory), then
// enqueues one kernel on `stream`. No host synchronisation, no allocation, no workspace (so there is
// no workspace query), and it can be captured in a CUDA graph. Invalid arguments throw
// seer::InvalidArgument naming the argument; a CUDA failure throws seer::BackendError.
//
// What the host cannot check, because it lives in device memory, is the caller's contract: packed
// sequence lengths must not exceed max_length, and the BlockSet must have been built for these
// sequence lengths and this causal flag (DeviceBlockSet keeps the geometries for such checks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cuda/warpgroup_kernels.hpp"
#include "seer/gpu/prefill_arguments.hpp"
#include "seer/gpu/prefill_kernel.hpp"
#include "seer/gpu/prefill_kernel_hopper.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::cuda {

inline bool prefill_supports_head_dim(std::int64_t head_dim) { return gpu::prefill_supports_head_dim(head_dim); }

// Which kernel computes the prefill. `automatic` takes the warpgroup (wgmma) kernel where it exists
// (Hopper GPU, head dim 64 or 128, and a build with sm_90a device code: SEER_CUDA_WARPGROUP_KERNELS,
// which seer's CMake target defines when CMAKE_CUDA_ARCHITECTURES lists 90a) and the mma.sync
// kernel elsewhere. The other two force one (benchmarks, comparisons); forcing `warpgroup` where it
// does not exist is an InvalidArgument. The warpgroup kernel exists for head dims 64 and 128.
enum class PrefillKernel { automatic, warpgroup, mma_sync };

namespace detail {

// An attribute of the current device (host-side, no synchronisation).
inline int current_device_attribute(cudaDeviceAttr attribute, const char* what) {
  int device = 0;
  int value = 0;
  gpu::vendor::check(cudaGetDevice(&device), "cudaGetDevice");
  gpu::vendor::check(cudaDeviceGetAttribute(&value, attribute, device), what);
  return value;
}

// How many groups of consecutive query heads the grid walks one after another (the kernel's grid y).
// A group's K/V should stay in L2 while its CTAs run (they all read it), so a group holds at most
// as many heads as fit in half the L2 (the other half: Q, the output, and the L2's split into two
// partitions). Groups of near-equal size: one small last group would put its longest CTAs at the end.
template <class T>
std::int64_t prefill_head_groups(const gpu::PrefillParams<T>& params, std::int64_t heads) {
  const int l2_bytes = current_device_attribute(cudaDevAttrL2CacheSize, "cudaDeviceGetAttribute(L2CacheSize)");
  // K and V bytes per query head (query heads of one KV head share them under GQA).
  const std::int64_t kv_bytes_per_head = std::max<std::int64_t>(
      1, 2 * params.k.max_length * params.k.head_dim * static_cast<std::int64_t>(sizeof(T)) / params.group);
  std::int64_t heads_per_group = std::max<std::int64_t>(1, l2_bytes / 2 / kv_bytes_per_head);
  heads_per_group = std::min(heads_per_group, 2147483647 / params.max_query_tiles);  // grid x stays in range
  return (heads + heads_per_group - 1) / heads_per_group;
}

inline bool use_warpgroup_kernel(PrefillKernel kernel, std::int64_t head_dim) {
  const bool available = gpu::warpgroup_prefill_supports_head_dim(head_dim) && warpgroup_kernels_available();
  if (kernel == PrefillKernel::warpgroup)
    require(available, "kernel",
            "the warpgroup prefill kernel needs a Hopper GPU, head dim 64 or 128 and a build with sm_90a "
            "(SEER_CUDA_WARPGROUP_KERNELS)");
  return kernel != PrefillKernel::mma_sync && available;
}

// Launches a kernel with one 64-row query tile per CTA (the prefill kernels, the ground-truth
// forward) on the head-grouped grid of `attention`: (query tile x head within a group, head group,
// sequence). kernel_params: what the kernel takes (the PrefillParams themselves, or a wrapper).
template <class T, class Kernel, class KernelParams>
void launch_prefill_kernel(Kernel* kernel, int threads, int shared_bytes, const gpu::PrefillParams<T>& attention,
                           const KernelParams& kernel_params, cudaStream_t stream, const char* name) {
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, shared_bytes);
  const std::int64_t heads = attention.q.heads;
  const std::int64_t batch = attention.q.batch;
  const std::int64_t groups = prefill_head_groups(attention, heads);
  const std::int64_t largest_group = (heads + groups - 1) / groups;
  const dim3 grid(static_cast<unsigned>(attention.max_query_tiles * largest_group), static_cast<unsigned>(groups),
                  static_cast<unsigned>(batch));
  kernel<<<grid, threads, shared_bytes, stream>>>(kernel_params);
  gpu::vendor::check_last_launch(name);
}

template <class T, int HeadDim>
void launch_prefill(const gpu::PrefillParams<T>& params, bool warpgroup, cudaStream_t stream) {
  if constexpr (gpu::warpgroup_prefill_supports_head_dim(HeadDim)) {
    if (warpgroup) {
      using Traits = gpu::WarpgroupPrefillTraits<T, HeadDim>;
      launch_prefill_kernel(&gpu::warpgroup_prefill_kernel<T, HeadDim>, Traits::kThreads, Traits::kSharedBytes, params,
                            params, stream, "warpgroup_prefill_kernel launch");
      return;
    }
  }
  using Traits = gpu::PrefillTraits<T, HeadDim>;
  launch_prefill_kernel(&gpu::block_sparse_prefill_kernel<T, HeadDim>, Traits::kThreads, Traits::kSharedBytes, params,
                        params, stream, "block_sparse_prefill_kernel launch");
}

}  // namespace detail

template <class T>
void block_sparse_attention(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                            const BlockSetView* blocks, const AttentionOptions& options, SequenceBatch<T> out,
                            TensorView<float, 2> lse, cudaStream_t stream,
                            PrefillKernel kernel = PrefillKernel::automatic) {
  const gpu::PrefillParams<T> params = gpu::make_prefill_params<T>(q, k, v, blocks, options, out, lse);
  const bool warpgroup = detail::use_warpgroup_kernel(kernel, q.head_dim);
  if (q.batch == 0 || params.max_query_tiles == 0) return;  // nothing to compute (and a 0-sized grid is an error)
  gpu::dispatch_prefill_head_dim(q.head_dim, [&](auto head_dim) {
    detail::launch_prefill<T, decltype(head_dim)::value>(params, warpgroup, stream);
  });
}

}  // namespace seer::cuda
