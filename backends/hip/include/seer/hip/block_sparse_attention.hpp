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
#include "seer/gpu/prefill_kernel_amd.hpp"
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::hip {

inline bool prefill_supports_head_dim(std::int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

namespace detail {

template <class T>
void require_vector_aligned(const SequenceBatch<T>& batch, const char* name) {
  // Tiles move 16-byte chunks (8 elements): every vector must start on a 16-byte boundary.
  require(reinterpret_cast<std::uintptr_t>(batch.data) % 16 == 0, name,
          "data must be 16-byte aligned for vectorised loads");
  require(batch.dim_stride == 1, name, "dim stride is ", batch.dim_stride, ", expected 1 (contiguous head vectors)");
  require(batch.token_stride % 8 == 0 && batch.head_stride % 8 == 0 && batch.batch_stride % 8 == 0, name,
          "token, head and batch strides (", batch.token_stride, ", ", batch.head_stride, ", ", batch.batch_stride,
          ") must be multiples of 8 elements for 16-byte loads");
  require(batch.max_length >= 0, name, "max_length is ", batch.max_length, ", expected >= 0");
}

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
  static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "block_sparse_attention takes seer::bfloat16 or seer::half elements");
  validate_attention_shapes(q, k, v, out, lse, options);
  require(prefill_supports_head_dim(q.head_dim), "q", "head dim is ", q.head_dim, ", supported: 64, 128, 256");
  detail::require_vector_aligned(q, "q");
  detail::require_vector_aligned(k, "k");
  detail::require_vector_aligned(v, "v");
  detail::require_vector_aligned(out, "out");
  require(q.batch <= 65535, "q", "batch is ", q.batch, ", at most 65535 sequences per call");
  require(q.heads <= 65535, "q", "has ", q.heads, " heads, at most 65535 per call");

  constexpr std::int64_t kTile = 64;
  const std::int64_t max_query_tiles = (q.max_length + kTile - 1) / kTile;
  require(max_query_tiles <= 2147483647, "q", "max_length ", q.max_length, " is too long for one grid");

  gpu::PrefillParams<T> params;
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
    require(blocks->block_size > 0 && blocks->block_size % kTile == 0, "blocks", "block_size is ", blocks->block_size,
            ", expected a positive multiple of ", kTile);
    require(blocks->heads == q.heads || blocks->heads == k.heads, "blocks", "has ", blocks->heads,
            " heads, expected the ", q.heads, " query heads or the ", k.heads, " KV heads");
    require(blocks->batch == q.batch, "blocks", "covers ", blocks->batch, " sequences, expected ", q.batch);
    params.blocks = *blocks;
    params.has_blocks = true;
    params.tiles_per_block = blocks->block_size / kTile;
  }

  if (q.batch == 0 || max_query_tiles == 0) return;  // nothing to compute (and a 0-sized grid is an error)
  switch (q.head_dim) {
    case 64:
      detail::launch_prefill<T, 64>(params, q.heads, q.batch, stream);
      break;
    case 128:
      detail::launch_prefill<T, 128>(params, q.heads, q.batch, stream);
      break;
    default:
      detail::launch_prefill<T, 256>(params, q.heads, q.batch, stream);
      break;
  }
}

}  // namespace seer::hip
