// seer::hip ground truth for gate distillation on an AMD GPU: the same contract as
// seer::cuda::block_ground_truth_2d / _1d (backends/cuda/include/seer/cuda/ground_truth.hpp), with a
// hipStream_t.
//
//   std::size_t ground_truth_workspace_bytes(q, k)
//   block_ground_truth_2d(q, k, v, options, block_size, target, out, lse, workspace, workspace_bytes, stream)
//   block_ground_truth_1d(q, k, v, options, block_size, target, out, lse, workspace, workspace_bytes, stream)
//
// The forward is seer/gpu/ground_truth_kernel_amd.hpp (MFMA on CDNA2/3, WMMA on RDNA3, an FMA loop
// elsewhere); the pooling kernels are the portable ones of seer/gpu/ground_truth_kernel.hpp. Compiled
// for gfx90a, gfx942 and gfx1100; never run on an AMD GPU (the AMD forward's logic runs on NVIDIA in
// tests/gpu/ground_truth). Stream-ordered, no allocation; invalid arguments throw seer::InvalidArgument,
// HIP failures seer::BackendError.
#pragma once

#include <hip/hip_runtime.h>

#include <cstddef>
#include <cstdint>

#include "seer/core/attention_problem.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/gpu/ground_truth_arguments.hpp"
#include "seer/gpu/ground_truth_kernel.hpp"
#include "seer/gpu/ground_truth_kernel_amd.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/hip/block_sparse_attention.hpp"

namespace seer::hip {

template <class Q, class K>
std::size_t ground_truth_workspace_bytes(const SequenceBatch<Q>& q, const SequenceBatch<K>& k) {
  return gpu::ground_truth_workspace_bytes(q, k);
}

namespace detail {

template <class T>
void ground_truth(gpu::GroundTruthTarget kind, SequenceBatch<const T> q, SequenceBatch<const T> k,
                  SequenceBatch<const T> v, const AttentionOptions& options, std::int64_t block_size,
                  TensorView<float, 4> target, SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace,
                  std::size_t workspace_bytes, hipStream_t stream) {
  const gpu::GroundTruthParams<T> params = gpu::make_ground_truth_params<T>(kind, q, k, v, options, block_size, target,
                                                                            out, lse, workspace, workspace_bytes);
  if (q.batch == 0 || params.attention.max_query_tiles == 0) return;
  const unsigned batch = static_cast<unsigned>(q.batch);
  gpu::dispatch_prefill_head_dim(q.head_dim, [&](auto head_dim) {
    constexpr int kHeadDim = decltype(head_dim)::value;
    using Traits = gpu::AmdPrefillTraits<T, kHeadDim>;
    auto* kernel = &gpu::ground_truth_forward_kernel_amd<T, kHeadDim>;
    gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
    const dim3 grid(static_cast<unsigned>(params.attention.max_query_tiles), static_cast<unsigned>(q.heads), batch);
    const dim3 block(static_cast<unsigned>(Traits::kWarps * current_device_warp_size()));
    hipLaunchKernelGGL(kernel, grid, block, Traits::kSharedBytes, stream, params);
    gpu::vendor::check_last_launch("ground_truth_forward_kernel_amd launch");
  });
  const dim3 block(gpu::kGroundTruthPoolingThreads);  // a multiple of 32 and 64 lanes
  if (kind == gpu::GroundTruthTarget::two_dimensional) {
    const dim3 grid(static_cast<unsigned>(params.target_rows), static_cast<unsigned>(q.heads), batch);
    hipLaunchKernelGGL(gpu::two_dimensional_target_kernel<T>, grid, block, 0, stream, params);
    gpu::vendor::check_last_launch("two_dimensional_target_kernel launch");
  } else {
    const dim3 grid(static_cast<unsigned>(params.attention.max_query_tiles), static_cast<unsigned>(k.heads), batch);
    hipLaunchKernelGGL(gpu::one_dimensional_target_kernel<T>, grid, block, 0, stream, params);
    gpu::vendor::check_last_launch("one_dimensional_target_kernel launch");
  }
}

}  // namespace detail

template <class T>
void block_ground_truth_2d(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                           const AttentionOptions& options, std::int64_t block_size, TensorView<float, 4> target,
                           SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace, std::size_t workspace_bytes,
                           hipStream_t stream) {
  detail::ground_truth(gpu::GroundTruthTarget::two_dimensional, q, k, v, options, block_size, target, out, lse,
                       workspace, workspace_bytes, stream);
}

template <class T>
void block_ground_truth_1d(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                           const AttentionOptions& options, std::int64_t block_size, TensorView<float, 4> target,
                           SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace, std::size_t workspace_bytes,
                           hipStream_t stream) {
  detail::ground_truth(gpu::GroundTruthTarget::one_dimensional, q, k, v, options, block_size, target, out, lse,
                       workspace, workspace_bytes, stream);
}

}  // namespace seer::hip
