// seer::hip::block_sparse_attention: block-sparse (or dense) prefill attention on an AMD GPU.
//
//   block_sparse_attention(q, k, v, blocks, options, out, lse, stream)
//
// The same contract as seer::cuda::block_sparse_attention (backends/cuda), with a hipStream_t:
// q, k, v, out are SequenceBatch views of DEVICE memory (padded or packed varlen with device
// cu_seqlens), seer::bfloat16 or seer::half, head dim 64, 128 or 256, dim stride 1; GQA/MQA; blocks
// is a device BlockSetView (DeviceBlockSet::view()) with block_size a multiple of 64, or nullptr for
// dense attention; lse an optional fp32 [Hq, total_q] device view. Stream-ordered: host validation,
// then one kernel launch; no allocation, no synchronisation. Invalid arguments throw
// seer::InvalidArgument naming the argument; a HIP failure throws seer::BackendError.
//
// The kernel (seer/gpu/prefill_kernel_amd.hpp) uses MFMA on CDNA2/3, WMMA on RDNA3 and an FMA loop
// elsewhere. It has been compiled for gfx90a, gfx942 and gfx1100 but never run on an AMD GPU.
#pragma once

#include <hip/hip_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/gpu/prefill_arguments.hpp"
#include "seer/gpu/prefill_kernel_amd.hpp"
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::hip {

inline bool prefill_supports_head_dim(std::int64_t head_dim) { return gpu::prefill_supports_head_dim(head_dim); }

namespace detail {

// The wavefront width of the current device: the launch is 4 warps of it (see prefill_kernel_amd.hpp).
inline int current_device_warp_size() {
  int device = 0;
  gpu::vendor::check(hipGetDevice(&device), "hipGetDevice");
  int width = 0;
  gpu::vendor::check(hipDeviceGetAttribute(&width, hipDeviceAttributeWarpSize, device),
                     "hipDeviceGetAttribute(WarpSize)");
  if (width != 32 && width != 64) throw BackendError("seer: unexpected wavefront width " + std::to_string(width));
  return width;
}

template <class T, int HeadDim>
void launch_prefill(const gpu::PrefillParams<T>& params, std::int64_t heads, std::int64_t batch, hipStream_t stream) {
  using Traits = gpu::AmdPrefillTraits<T, HeadDim>;
  auto* kernel = &gpu::block_sparse_prefill_kernel_amd<T, HeadDim>;
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
  const dim3 grid(static_cast<unsigned>(params.max_query_tiles), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  const dim3 block(static_cast<unsigned>(Traits::kWarps * current_device_warp_size()));
  hipLaunchKernelGGL(kernel, grid, block, Traits::kSharedBytes, stream, params);
  gpu::vendor::check_last_launch("block_sparse_prefill_kernel_amd launch");
}

}  // namespace detail

template <class T>
void block_sparse_attention(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                            const BlockSetView* blocks, const AttentionOptions& options, SequenceBatch<T> out,
                            TensorView<float, 2> lse, hipStream_t stream) {
  const gpu::PrefillParams<T> params = gpu::make_prefill_params<T>(q, k, v, blocks, options, out, lse);
  if (q.batch == 0 || params.max_query_tiles == 0) return;  // nothing to compute (and a 0-sized grid is an error)
  gpu::dispatch_prefill_head_dim(q.head_dim, [&](auto head_dim) {
    detail::launch_prefill<T, decltype(head_dim)::value>(params, q.heads, q.batch, stream);
  });
}

}  // namespace seer::hip
