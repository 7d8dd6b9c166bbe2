// Host-only interface to the CUDA attention call, for tests compiled by the host compiler.
//
// The doctest suites that compare against the Eigen float64 reference are plain C++ (Eigen stays out
// of .cu files); they describe a call with host buffers and this runner, compiled by nvcc, uploads
// them, poisons the device outputs (all bits set: NaN in every float format), runs
// seer::cuda::block_sparse_attention, and copies the outputs back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"

namespace seer::gpu_test {

// True when a CUDA device can be used. Checks the return code: without a driver the count is left
// unwritten.
bool have_gpu();

// A call described with host memory. Element counts give the extent of each host buffer; lse, when
// present, is a contiguous [Hq, total_q] host view.
template <class T>
struct HostAttentionCall {
  SequenceBatch<const T> q, k, v;
  std::int64_t q_elements = 0, k_elements = 0, v_elements = 0;
  const BlockSet* blocks = nullptr;
  AttentionOptions options;
  SequenceBatch<T> out;
  std::int64_t out_elements = 0;
  TensorView<float, 2> lse;
  bool capture_in_graph = false;  // run through a captured CUDA graph instead of a direct call
};

template <class T>
void run_on_device(const HostAttentionCall<T>& call);

// The 64-bit offset check: one sequence of `tokens` tokens, `heads` heads of dim 128 (bf16) for Q, K
// and V, causal, a BlockSet that keeps only the diagonal block, inputs drawn on the device. Returns,
// for each requested 64-token slice start, that slice of q, k, v, out ([64, heads, 128]) and of the
// lse ([heads, 64]). Empty when the device lacks the memory (the message says why).
struct LongSequenceSlice {
  std::int64_t first_token = 0;
  std::vector<bfloat16> q, k, v, out;
  std::vector<float> lse;
};
std::vector<LongSequenceSlice> run_long_sequence(std::int64_t tokens, std::int64_t heads,
                                                 const std::vector<std::int64_t>& slice_starts, std::string& message);

}  // namespace seer::gpu_test
