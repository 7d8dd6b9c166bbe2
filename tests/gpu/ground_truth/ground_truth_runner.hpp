// Host-only interface to the CUDA ground-truth calls, for tests compiled by the host compiler (the
// float64 references use Eigen, which stays out of .cu files). The runner, compiled by nvcc, uploads
// host inputs, poisons every device output and the workspace (all bits set: NaN), runs
// seer::cuda::block_ground_truth_2d/1d, and, for comparison, seer::cuda::block_sparse_attention
// (dense) on the same inputs, then copies everything back.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gpu/ground_truth_params.hpp"

namespace seer::gpu_test {

bool have_ground_truth_gpu();

enum class GroundTruthForward {
  nvidia,       // seer::cuda's forward (mma.sync)
  amd_portable  // ground_truth_forward_kernel_amd compiled by nvcc (portable tile path, 32 lanes)
};

// q, k, v: host views (padded, or packed with host cu_seqlens); element counts of their buffers.
// out uses q's layout and element count.
template <class T>
struct HostGroundTruthCall {
  SequenceBatch<const T> q, k, v;
  std::int64_t q_elements = 0, k_elements = 0, v_elements = 0;
  AttentionOptions options;
  std::int64_t block_size = 64;
  bool one_dimensional = false;
  bool caller_lse = true;  // false: the LSE lives in the workspace only
  GroundTruthForward forward = GroundTruthForward::nvidia;
};

template <class T>
struct GroundTruthResult {
  std::array<std::int64_t, 4> extent{};  // of the dense target
  std::vector<float> target;
  std::vector<T> out, dense_out;      // ground-truth forward's O, dense prefill's O
  std::vector<float> lse, dense_lse;  // [Hq, total tokens]; lse empty when !caller_lse
};

// The AMD forward (ground_truth_forward_kernel_amd) compiled for NVIDIA, on the default stream:
// the HIP kernel's logic on this GPU (its own TU, ground_truth_runner_amd.cu, to build in parallel).
template <class T>
void run_amd_ground_truth_forward(const gpu::GroundTruthParams<T>& params, std::int64_t batch);

template <class T>
GroundTruthResult<T> run_ground_truth(const HostGroundTruthCall<T>& call);

}  // namespace seer::gpu_test
