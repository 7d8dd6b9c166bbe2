// Host-only interface to seer's CUDA attention for the example engine (compiled by the host
// compiler, so Eigen stays out of .cu files): uploads one layer's Q/K/V as bf16, runs
// seer::cuda::block_sparse_attention dense or over a BlockSet, times it with CUDA events and
// returns the output as float.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "seer/core/block_set.hpp"
#include "seer/core/sequence_batch.hpp"

namespace example {

// The name of the first CUDA device, or empty when none can be used (the reason goes to `why`).
std::string cuda_device_name(std::string& why);

struct CudaAttentionResult {
  std::vector<float> out;     // [tokens, q_heads, head_dim]
  double milliseconds = 0.0;  // median over the timed repetitions (kernel only, inputs resident)
};

class CudaLayerAttention {
 public:
  CudaLayerAttention();
  ~CudaLayerAttention();
  CudaLayerAttention(const CudaLayerAttention&) = delete;
  CudaLayerAttention& operator=(const CudaLayerAttention&) = delete;

  // Uploads q [1, S, Hq, D] and k, v [1, S, Hkv, D] (contiguous float) as bf16.
  void upload(const seer::SequenceBatch<const float>& q, const seer::SequenceBatch<const float>& k,
              const seer::SequenceBatch<const float>& v);
  // Causal attention over the uploaded inputs; blocks == nullptr is dense.
  CudaAttentionResult run(const seer::BlockSet* blocks, int repetitions);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace example
