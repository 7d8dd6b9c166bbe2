// seer::hip::sparse_decode: block-sparse (or dense) decode attention over a KV cache on an AMD GPU.
//
//   bytes = decode_workspace_bytes(q, cache, blocks)
//   sparse_decode(q, cache, blocks, options, out, lse, workspace, bytes, stream)
//
// The same contract as seer::cuda::sparse_decode (backends/cuda/include/seer/cuda/sparse_decode.hpp),
// with a hipStream_t: device views of q (1 to 8 new tokens per sequence), out, the KV cache
// (contiguous or paged) and the kept blocks (or nullptr: dense), head dim 64 or 128, bf16 or fp16, a
// caller-owned workspace of decode_workspace_bytes, zero-filled before its first use (completion
// counters; every call leaves them zero). Stream-ordered: host validation, then the decode kernel,
// which also merges split rows; no allocation, no synchronisation. Invalid
// arguments throw seer::InvalidArgument naming the argument; HIP failures throw seer::BackendError.
//
// The kernel (seer/gpu/decode_kernel_amd.hpp) uses MFMA on CDNA2/3, WMMA on RDNA3 and an FMA loop
// elsewhere. It has been compiled for gfx90a, gfx942 and gfx1100 but never run on an AMD GPU; its logic
// runs on NVIDIA hardware in the CUDA decode tests (nvcc compiles it through the portable path).
#pragma once

#include <hip/hip_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gpu/decode_kernel.hpp"
#include "seer/gpu/decode_kernel_amd.hpp"
#include "seer/gpu/decode_params.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::hip {

inline bool decode_supports_head_dim(std::int64_t head_dim) { return gpu::decode_supports_head_dim(head_dim); }

namespace detail {

struct DecodeDevice {
  std::int64_t resident_ctas = 1;
  int warp_size = 64;
};

// One decode CTA per compute unit at a time (its LDS use is close to CDNA's 64 KiB), and the
// wavefront width the launch is sized from.
inline DecodeDevice decode_device() {
  int device = 0, units = 0, width = 0;
  gpu::vendor::check(hipGetDevice(&device), "hipGetDevice");
  gpu::vendor::check(hipDeviceGetAttribute(&units, hipDeviceAttributeMultiprocessorCount, device),
                     "hipDeviceGetAttribute(MultiprocessorCount)");
  gpu::vendor::check(hipDeviceGetAttribute(&width, hipDeviceAttributeWarpSize, device),
                     "hipDeviceGetAttribute(WarpSize)");
  if (width != 32 && width != 64) throw BackendError("seer: unexpected wavefront width " + std::to_string(width));
  return {units, width};
}

template <class T, int HeadDim, int RowBlocks>
void launch_decode(const gpu::DecodeParams<T>& params, int warp_size, hipStream_t stream) {
  using Traits = gpu::AmdDecodeTraits<T, HeadDim, RowBlocks>;
  auto* kernel = &gpu::sparse_decode_kernel_amd<T, HeadDim, RowBlocks>;
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
  const dim3 grid(static_cast<unsigned>(params.splits), static_cast<unsigned>(params.cache.heads * params.head_chunks),
                  static_cast<unsigned>(params.q.batch));
  const dim3 block(static_cast<unsigned>(Traits::kWarps * warp_size));
  hipLaunchKernelGGL(kernel, grid, block, Traits::kSharedBytes, stream, params);
  gpu::vendor::check_last_launch("sparse_decode_kernel_amd launch");  // split rows are merged inside it
}

template <class T>
void sparse_decode_with_shape(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                              const AttentionOptions& options, SequenceBatch<T> out, TensorView<float, 2> lse,
                              void* workspace, std::int64_t workspace_bytes, const gpu::DecodeLaunchShape& shape,
                              int warp_size, hipStream_t stream) {
  const gpu::DecodeParams<T> params =
      gpu::make_decode_params<T>(q, cache, blocks, options, out, lse, shape, workspace, workspace_bytes);
  if (q.batch == 0) return;
  gpu::dispatch_decode_kernel(params, [&](auto head_dim, auto row_blocks) {
    launch_decode<T, decltype(head_dim)::value, decltype(row_blocks)::value>(params, warp_size, stream);
  });
}

template <class T>
gpu::DecodeLaunchShape automatic_decode_shape(const SequenceBatch<const T>& q, const KvCacheView<const T>& cache,
                                              const DecodeBlockListView* blocks, const DecodeDevice& device) {
  require(cache.heads > 0 && q.heads % cache.heads == 0, "cache", "has ", cache.heads,
          " KV heads, which does not divide the ", q.heads, " query heads");
  return gpu::decode_launch_shape(q.batch, q.heads, cache.heads, q.max_length, cache.max_length, blocks,
                                  device.resident_ctas);
}

}  // namespace detail

template <class T>
std::int64_t decode_workspace_bytes(SequenceBatch<const T> q, KvCacheView<const T> cache,
                                    const DecodeBlockListView* blocks) {
  const gpu::DecodeLaunchShape shape = detail::automatic_decode_shape(q, cache, blocks, detail::decode_device());
  return gpu::decode_workspace_bytes_for(q.batch, q.heads, q.max_length, q.head_dim, shape.splits);
}

template <class T>
void sparse_decode(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                   const AttentionOptions& options, SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace,
                   std::int64_t workspace_bytes, hipStream_t stream) {
  gpu::validate_decode_call(q, cache, blocks, options, out, lse);
  const detail::DecodeDevice device = detail::decode_device();
  detail::sparse_decode_with_shape(q, cache, blocks, options, out, lse, workspace, workspace_bytes,
                                   detail::automatic_decode_shape(q, cache, blocks, device), device.warp_size, stream);
}

}  // namespace seer::hip
