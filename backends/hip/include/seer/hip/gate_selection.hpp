// seer::hip gate and selection on the GPU: gate features, TopK / Threshold / Nucleus selection and a
// device BlockSet for seer::hip::block_sparse_attention, with no host synchronisation (stream-capturable).
// Written once against the vendor layer in seer/gpu/gate_selection.hpp (read its comment for the API
// and the design); this header adds the HIP device limits.
//
//   seer::hip::DeviceLearnedGate gate(learned_gate);          // upload once
//   auto plan = seer::hip::gate_selection_plan(gate, batch, q_max_length, k_max_length);
//   seer::hip::GateSelectionStorage storage(plan, seer::hip::selected_blocks_bound(geometries, heads, policy));
//   seer::BlockSetView blocks = seer::hip::gate_and_select<seer::bfloat16>(
//       gate, plan, q, k, causal, policy, forced, storage.buffers(), storage.workspace(), stream);
//   seer::hip::block_sparse_attention<seer::bfloat16>(q_rope, k_rope, v, &blocks, options, out, lse, stream);
#pragma once

#include <hip/hip_runtime.h>

#include <cstdint>

#include "seer/gpu/gate_selection.hpp"
#include "seer/gpu/rope_and_pool.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::hip {

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

// The current device's limits: its multiprocessor count, and 16 KiB of LDS for a selection CTA's logits
// (AMD GPUs give a workgroup 64 KiB of LDS; the key and query tiles and the warps' scratch take most of
// the rest). Rows of more than 4096 key blocks use workspace slices.
inline DeviceLimits device_limits() {
  int device = 0, multiprocessors = 0;
  gpu::vendor::check(hipGetDevice(&device), "hipGetDevice");
  gpu::vendor::check(hipDeviceGetAttribute(&multiprocessors, hipDeviceAttributeMultiprocessorCount, device),
                     "hipDeviceGetAttribute(MultiprocessorCount)");
  int shared_bytes = 0, warp_size = 0;
  gpu::vendor::check(hipDeviceGetAttribute(&shared_bytes, hipDeviceAttributeMaxSharedMemoryPerBlock, device),
                     "hipDeviceGetAttribute(MaxSharedMemoryPerBlock)");
  gpu::vendor::check(hipDeviceGetAttribute(&warp_size, hipDeviceAttributeWarpSize, device),
                     "hipDeviceGetAttribute(WarpSize)");
  int multiprocessor_shared_bytes = 0;
  gpu::vendor::check(
      hipDeviceGetAttribute(&multiprocessor_shared_bytes, hipDeviceAttributeMaxSharedMemoryPerMultiprocessor, device),
      "hipDeviceGetAttribute(MaxSharedMemoryPerMultiprocessor)");
  DeviceLimits limits;
  limits.shared_bytes_per_multiprocessor = multiprocessor_shared_bytes;
  limits.multiprocessors = multiprocessors;
  limits.logit_shared_bytes = 16 * 1024;
  limits.shared_bytes_per_block = shared_bytes;
  limits.warp_size = warp_size;  // 64 on CDNA: 4 warps per selection CTA, less radix scratch
  return limits;
}

inline GateSelectionPlan gate_selection_plan(const DeviceLearnedGate& gate, std::int64_t batch,
                                             std::int64_t q_max_length, std::int64_t k_max_length) {
  return GateSelectionPlan(gate, batch, q_max_length, k_max_length, device_limits());
}

}  // namespace seer::hip
