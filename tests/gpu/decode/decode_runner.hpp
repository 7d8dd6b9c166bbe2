// Host-only interface to the GPU decode call, for the test TUs compiled by the host compiler (the
// float64 oracle and the comparisons stay out of .cu files). The runner, compiled by nvcc, uploads a
// call described with host buffers, poisons the device outputs (all bits set: NaN), runs
// seer::cuda::sparse_decode (or the AMD decode kernel compiled for NVIDIA), and copies the outputs back.
#pragma once

#include <cstdint>

#include "seer/core/attention_problem.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"

namespace seer::decode_test {

// True when a CUDA device can be used.
bool have_gpu();

// A decode call described with host memory: q, the cache (keys, values, lengths, page table) and the
// block list point to host buffers of the given element counts; lse, when present, is a contiguous
// [Hq, total_q] host view.
template <class T>
struct HostDecodeCall {
  SequenceBatch<const T> q;
  std::int64_t q_elements = 0;
  KvCacheView<const T> cache;
  std::int64_t cache_elements = 0;       // of keys (values have as many)
  std::int64_t page_table_elements = 0;  // 0 for a contiguous cache
  const DecodeBlockListView* blocks = nullptr;
  AttentionOptions options;
  SequenceBatch<T> out;
  std::int64_t out_elements = 0;
  TensorView<float, 2> lse;
  bool capture_in_graph = false;   // capture the call in a CUDA graph and replay it twice
  std::int64_t forced_splits = 0;  // > 0: this split bound instead of the automatic one
  bool amd_kernel = false;         // run seer/gpu/decode_kernel_amd.hpp (portable path) instead
  int pipeline = 0;                // 0: the automatic kernel; 1: the shallow one (2 CTAs/SM); 2: the deep one
  int split_order = 0;             // 0: automatic; 1: interleaved splits; 2: contiguous split ranges
  int cluster_merge = 0;           // 0: automatic; 1: merge through the workspace; 2: in a thread-block cluster
  bool one_cta_per_multiprocessor = false;  // DecodeLaunchShape's measurement knob
  bool lean_kernel = false;  // DecodeLaunchShape::lean_kernel; a forced shape without it runs the general deep kernel
};

// How many clusters of `splits` CTAs of the cluster-merge kernel the device runs at once (0: none).
std::int64_t decode_cluster_capacity_on_device(std::int64_t head_dim, std::int64_t row_blocks, bool deep,
                                               std::int64_t splits);

// Runs the call; returns the split bound it used.
template <class T>
std::int64_t run_decode_on_device(const HostDecodeCall<T>& call);

}  // namespace seer::decode_test
