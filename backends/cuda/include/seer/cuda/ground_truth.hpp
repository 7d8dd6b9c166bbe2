// seer::cuda ground truth for gate distillation on an NVIDIA GPU: the block-level attention maps of
// seer/cpu/ground_truth.hpp (definitions there), computed with a dense FlashAttention forward.
//
//   std::size_t ground_truth_workspace_bytes(q, k)
//   block_ground_truth_2d(q, k, v, options, block_size, target, out, lse, workspace, workspace_bytes, stream)
//   block_ground_truth_1d(q, k, v, options, block_size, target, out, lse, workspace, workspace_bytes, stream)
//
// q, k, v, out: as for block_sparse_attention (device SequenceBatch views, padded or packed varlen,
// bf16 or fp16, head dim 64, 128 or 256, GQA/MQA). The forward writes out (the exact attention
// output) and lse ([Hq, total_q] fp32 natural log, or an empty view) as a side product.
// block_size: a positive multiple of 64. target: fp32 device memory, any non-negative strides,
//   2-D: [B, Hq, ceil(q.max_length / block_size), ceil(k.max_length / block_size)], row (b, h, m) the
//        prefill gate's target over key blocks [0, visible_key_blocks(m)), zero elsewhere;
//   1-D: [B, Hkv, q.max_length, ceil(k.max_length / block_size)], row (b, c, t) the decode gate's
//        target over the complete blocks before token t's own, zero elsewhere.
// Every entry of target is written. workspace: device memory of at least ground_truth_workspace_bytes
// (fp32 per-row maxima of every 64-key tile; see seer/gpu/ground_truth_arguments.hpp).
//
// Stream-ordered: host validation, then two kernel launches on `stream`; no allocation, no
// synchronisation. Invalid arguments throw seer::InvalidArgument naming the argument; a CUDA failure
// throws seer::BackendError.
#pragma once

#include <cstddef>
#include <cstdint>

#include "seer/core/attention_problem.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/gpu/ground_truth_arguments.hpp"
#include "seer/gpu/ground_truth_kernel.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::cuda {

template <class Q, class K>
std::size_t ground_truth_workspace_bytes(const SequenceBatch<Q>& q, const SequenceBatch<K>& k) {
  return gpu::ground_truth_workspace_bytes(q, k);
}

namespace detail {

// The forward: the warpgroup kernel's where the prefill would take it (Hopper, head dim 64 or 128, sm_90a code),
// else the mma.sync one; both with the prefill kernel's grid and L2 head grouping.
template <class T>
void launch_ground_truth_forward(const gpu::GroundTruthParams<T>& params, cudaStream_t stream) {
  gpu::dispatch_prefill_head_dim(params.attention.q.head_dim, [&](auto head_dim) {
    constexpr int kHeadDim = decltype(head_dim)::value;
    if constexpr (gpu::warpgroup_prefill_supports_head_dim(kHeadDim)) {
      if (use_warpgroup_kernel(PrefillKernel::automatic, kHeadDim)) {
        using Traits = gpu::WarpgroupPrefillTraits<T, kHeadDim>;
        launch_prefill_kernel(&gpu::warpgroup_ground_truth_forward_kernel<T, kHeadDim>, Traits::kThreads,
                              Traits::kSharedBytes, params.attention, params, stream,
                              "warpgroup_ground_truth_forward_kernel launch");
        return;
      }
    }
    using Traits = gpu::PrefillTraits<T, kHeadDim>;
    launch_prefill_kernel(&gpu::ground_truth_forward_kernel<T, kHeadDim>, Traits::kThreads, Traits::kSharedBytes,
                          params.attention, params, stream, "ground_truth_forward_kernel launch");
  });
}

// The pooling launch, after a forward (NVIDIA's above, or the AMD one in tests) has filled the workspace.
template <class T>
void launch_ground_truth_pooling(gpu::GroundTruthTarget kind, const gpu::GroundTruthParams<T>& params,
                                 std::int64_t batch, cudaStream_t stream) {
  const gpu::PrefillParams<T>& attention = params.attention;
  if (kind == gpu::GroundTruthTarget::two_dimensional) {
    if (params.target_rows == 0) return;
    const dim3 grid(static_cast<unsigned>(params.target_rows), static_cast<unsigned>(attention.q.heads),
                    static_cast<unsigned>(batch));
    gpu::two_dimensional_target_kernel<T><<<grid, gpu::kGroundTruthPoolingThreads, 0, stream>>>(params);
    gpu::vendor::check_last_launch("two_dimensional_target_kernel launch");
  } else {
    const dim3 grid(static_cast<unsigned>(attention.max_query_tiles),
                    static_cast<unsigned>(attention.q.heads / attention.group), static_cast<unsigned>(batch));
    gpu::one_dimensional_target_kernel<T><<<grid, gpu::kGroundTruthPoolingThreads, 0, stream>>>(params);
    gpu::vendor::check_last_launch("one_dimensional_target_kernel launch");
  }
}

template <class T>
void ground_truth(gpu::GroundTruthTarget kind, SequenceBatch<const T> q, SequenceBatch<const T> k,
                  SequenceBatch<const T> v, const AttentionOptions& options, std::int64_t block_size,
                  TensorView<float, 4> target, SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace,
                  std::size_t workspace_bytes, cudaStream_t stream) {
  const gpu::GroundTruthParams<T> params = gpu::make_ground_truth_params<T>(kind, q, k, v, options, block_size, target,
                                                                            out, lse, workspace, workspace_bytes);
  // The target is written entirely by the pooling kernel (zeros included) but has no rows when q is empty.
  if (q.batch == 0 || params.attention.max_query_tiles == 0) return;
  launch_ground_truth_forward(params, stream);
  launch_ground_truth_pooling(kind, params, q.batch, stream);
}

}  // namespace detail

template <class T>
void block_ground_truth_2d(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                           const AttentionOptions& options, std::int64_t block_size, TensorView<float, 4> target,
                           SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace, std::size_t workspace_bytes,
                           cudaStream_t stream) {
  detail::ground_truth(gpu::GroundTruthTarget::two_dimensional, q, k, v, options, block_size, target, out, lse,
                       workspace, workspace_bytes, stream);
}

template <class T>
void block_ground_truth_1d(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                           const AttentionOptions& options, std::int64_t block_size, TensorView<float, 4> target,
                           SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace, std::size_t workspace_bytes,
                           cudaStream_t stream) {
  detail::ground_truth(gpu::GroundTruthTarget::one_dimensional, q, k, v, options, block_size, target, out, lse,
                       workspace, workspace_bytes, stream);
}

}  // namespace seer::cuda
