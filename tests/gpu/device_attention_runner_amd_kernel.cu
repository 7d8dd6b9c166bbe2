// The shared GPU suite (test_block_sparse_attention.cpp) against the AMD prefill kernel
// (seer/gpu/prefill_kernel_amd.hpp) compiled by nvcc: its portable tile path with the 32-lane (RDNA)
// accumulator layout, 16-lane row reductions through the width-parameterised warp algorithms, the
// P staging through shared memory, the 4-warp launch and the same masking, schedule and epilogue
// as on AMD. Only the MFMA/WMMA instructions and the 64-lane wavefront are not exercised here.
#include "seer/gpu/prefill_arguments.hpp"
#include "seer/gpu/prefill_kernel_amd.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu_test {

template <class T, int HeadDim>
void launch_amd_kernel(const gpu::PrefillParams<T>& params, std::int64_t heads, std::int64_t batch,
                       cudaStream_t stream) {
  using Traits = gpu::AmdPrefillTraits<T, HeadDim>;
  auto* kernel = &gpu::block_sparse_prefill_kernel_amd<T, HeadDim>;
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
  const dim3 grid(static_cast<unsigned>(params.max_query_tiles), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  kernel<<<grid, Traits::kWarps * gpu::vendor::warp_size, Traits::kSharedBytes, stream>>>(params);
  gpu::vendor::check_last_launch("block_sparse_prefill_kernel_amd launch");
}

// Same signature as seer::cuda::block_sparse_attention.
template <class T>
void amd_kernel_attention(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                          const BlockSetView* blocks, const AttentionOptions& options, SequenceBatch<T> out,
                          TensorView<float, 2> lse, cudaStream_t stream) {
  const gpu::PrefillParams<T> params = gpu::make_prefill_params<T>(q, k, v, blocks, options, out, lse);
  if (q.batch == 0 || params.max_query_tiles == 0) return;
  switch (q.head_dim) {
    case 64:
      launch_amd_kernel<T, 64>(params, q.heads, q.batch, stream);
      break;
    case 128:
      launch_amd_kernel<T, 128>(params, q.heads, q.batch, stream);
      break;
    default:
      launch_amd_kernel<T, 256>(params, q.heads, q.batch, stream);
      break;
  }
}

}  // namespace seer::gpu_test

#define SEER_TEST_ATTENTION_CALL amd_kernel_attention
#include "device_attention_runner.cu"
