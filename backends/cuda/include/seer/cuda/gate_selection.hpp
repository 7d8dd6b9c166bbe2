// seer::cuda gate and selection on the GPU: gate features, TopK / Threshold / Nucleus selection and a
// device BlockSet for seer::cuda::block_sparse_attention, with no host synchronisation (graph-capturable).
// Written once against the vendor layer in seer/gpu/gate_selection.hpp (read its comment for the API
// and the design); this header adds the CUDA device limits.
//
//   seer::cuda::DeviceLearnedGate gate(learned_gate);          // upload once
//   auto plan = seer::cuda::gate_selection_plan(gate, batch, q_max_length, k_max_length);
//   seer::cuda::GateSelectionStorage storage(plan, seer::cuda::selected_blocks_bound(geometries, heads, policy));
//   seer::BlockSetView blocks = seer::cuda::gate_and_select<seer::bfloat16>(
//       gate, plan, q, k, causal, policy, forced, storage.buffers(), storage.workspace(), stream);
//   seer::cuda::block_sparse_attention<seer::bfloat16>(q_rope, k_rope, v, &blocks, options, out, lse, stream);
#pragma once

#include <cstdint>

#include "seer/cuda/warpgroup_kernels.hpp"
#include "seer/gpu/gate_selection.hpp"
#include "seer/gpu/rope_and_pool.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::cuda {

using gpu::DeviceBlockSetBuffers;
using gpu::DeviceLearnedGate;
using gpu::DeviceLimits;
using gpu::DeviceRotaryEmbedding;
using gpu::gate_and_select;
using gpu::gate_features;
using gpu::gate_features_from_pooled;
using gpu::gate_sequences;
using gpu::GateFeatures;
using gpu::GateSelectionPlan;
using gpu::GateSelectionStorage;
using gpu::GateSequences;
using gpu::GateWorkspace;
using gpu::PooledBlockFeatures;
using gpu::rope_and_pool;
using gpu::select_blocks;
using gpu::selected_blocks_bound;

// The current device's limits: its multiprocessor count, and up to 128 KiB of shared memory for a
// selection CTA's logits (16 rows of 2048 key blocks, i.e. 128k tokens, stay in shared memory, beside
// ~54 KiB of tiles and scratch: ~182 KiB, which Hopper offers; the plan takes fewer rows where the device
// offers less, and rows too long for 4 per CTA use workspace slices).
inline DeviceLimits device_limits() {
  int device = 0, multiprocessors = 0;
  gpu::vendor::check(cudaGetDevice(&device), "cudaGetDevice");
  gpu::vendor::check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device),
                     "cudaDeviceGetAttribute(MultiProcessorCount)");
  int shared_bytes = 0, warp_size = 0;
  gpu::vendor::check(cudaDeviceGetAttribute(&shared_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                     "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  gpu::vendor::check(cudaDeviceGetAttribute(&warp_size, cudaDevAttrWarpSize, device),
                     "cudaDeviceGetAttribute(WarpSize)");
  int multiprocessor_shared_bytes = 0;
  gpu::vendor::check(
      cudaDeviceGetAttribute(&multiprocessor_shared_bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device),
      "cudaDeviceGetAttribute(MaxSharedMemoryPerMultiprocessor)");
  DeviceLimits limits;
  limits.shared_bytes_per_multiprocessor = multiprocessor_shared_bytes;
  limits.multiprocessors = multiprocessors;
  limits.logit_shared_bytes = 128 * 1024;
  limits.shared_bytes_per_block = shared_bytes;
  limits.warp_size = warp_size;
  limits.warpgroup_projection = warpgroup_kernels_available();
  return limits;
}

inline GateSelectionPlan gate_selection_plan(const DeviceLearnedGate& gate, std::int64_t batch,
                                             std::int64_t q_max_length, std::int64_t k_max_length) {
  return GateSelectionPlan(gate, batch, q_max_length, k_max_length, device_limits());
}

}  // namespace seer::cuda
