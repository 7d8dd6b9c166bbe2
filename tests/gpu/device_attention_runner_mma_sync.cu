// The shared GPU suite (test_block_sparse_attention.cpp) against seer::cuda's mma.sync prefill kernel,
// forced: on a Hopper GPU the automatic choice is the warpgroup kernel (seer_cuda_tests), so this
// executable keeps the other kernel, which pre-Hopper GPUs and head dim 256 run, tested there too.
#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/device_block_set.hpp"

namespace seer::gpu_test {

// Same signature as seer::cuda::block_sparse_attention without the kernel choice.
template <class T>
void mma_sync_attention(SequenceBatch<const T> q, SequenceBatch<const T> k, SequenceBatch<const T> v,
                        const BlockSetView* blocks, const AttentionOptions& options, SequenceBatch<T> out,
                        TensorView<float, 2> lse, cudaStream_t stream) {
  cuda::block_sparse_attention<T>(q, k, v, blocks, options, out, lse, stream, cuda::PrefillKernel::mma_sync);
}

}  // namespace seer::gpu_test

#define SEER_TEST_BACKEND cuda
#define SEER_TEST_ATTENTION_CALL mma_sync_attention
#include "device_attention_runner_impl.hpp"
