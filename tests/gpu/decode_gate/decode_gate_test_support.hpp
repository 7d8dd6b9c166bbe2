// CUDA-side pieces of the GPU decode-gate tests: a device settle and a fixture of small valid device
// arguments (the vendor-neutral random gate is in decode_gate_test_gate.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "decode_gate/decode_gate_test_gate.hpp"
#include "device_test_support.hpp"
#include "seer/core/error.hpp"
#include "seer/cuda/decode_gate.hpp"
#include "seer/gate/decode_gate.hpp"

namespace seer::decode_gate_test {

inline bool have_device_for_gate_upload() { return gpu_test::device_present(); }

// Waits for every upload and fill: the tests' streams are non-blocking, so they are not ordered after
// cudaMemcpy / cudaMemset on the legacy stream (a pageable upload may still be in flight on return).
inline void settle() { gpu::vendor::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

// Small valid device arguments (batch 2, Hq 8, Hkv 2, D = dg = 128, lengths {100, 100}, capacity
// 8 blocks, max_length 256) that a call accepts; each case breaks one of them.
struct ValidationFixture {
  static constexpr std::int64_t kBatch = 2, kQHeads = 8, kKvHeads = 2, kDim = 128, kCapacity = 8, kMaxLength = 256;
  std::unique_ptr<cuda::DeviceDecodeGate> gate;
  gpu_test::DeviceArray<bfloat16> keys{kBatch * kMaxLength * kKvHeads * kDim};
  gpu_test::DeviceArray<bfloat16> queries{kBatch * kQHeads * kDim};
  gpu_test::DeviceArray<std::int32_t> device_lengths{kBatch};
  gpu_test::DeviceArray<float> rows{kBatch * (kMaxLength / 64) * kKvHeads * kDim};
  gpu_test::DeviceArray<std::int32_t> completed{kBatch};
  gpu_test::DeviceArray<std::int32_t> key_blocks{kBatch * kKvHeads * kCapacity};
  gpu_test::DeviceArray<std::int32_t> counts{kBatch * kKvHeads};
  gpu_test::DeviceArray<float> scores{64};  // decode_selection_workspace_bytes: at least 256 bytes

  KvCacheView<const bfloat16> cache;
  cuda::DeviceCompressedKeys compressed;
  SequenceBatch<const bfloat16> q;
  const std::int32_t* lengths = nullptr;
  std::int64_t max_length = kMaxLength;
  cuda::DeviceDecodeBlockListBuffers output;
  void* workspace = nullptr;
  std::int64_t workspace_bytes = 0;

  ValidationFixture() {
    std::mt19937_64 random(7);
    GateShape shape;
    gate = std::make_unique<cuda::DeviceDecodeGate>(random_gate(shape, random));
    const std::vector<bfloat16> zeros(static_cast<std::size_t>(kBatch * kMaxLength * kKvHeads * kDim),
                                      from_float<bfloat16>(0.25f));
    gpu::vendor::copy_to_device(keys.get(), zeros.data(), zeros.size() * sizeof(bfloat16), "fixture keys");
    gpu::vendor::copy_to_device(queries.get(), zeros.data(), static_cast<std::size_t>(queries.size()) * 2, "fixture q");
    const std::int32_t host_lengths[kBatch] = {100, 100};
    gpu::vendor::copy_to_device(device_lengths.get(), host_lengths, sizeof host_lengths, "fixture lengths");
    gpu::vendor::fill_device_bytes(completed.get(), 0, kBatch * sizeof(std::int32_t), "fixture counters");
    const TensorView<const bfloat16, 4> kv =
        TensorView<const bfloat16, 4>::contiguous(keys.get(), {kBatch, kMaxLength, kKvHeads, kDim});
    // contiguous_kv_cache reads nothing through the lengths pointer.
    cache = contiguous_kv_cache(kv, kv, device_lengths.get(), kMaxLength);
    compressed = {rows.get(), completed.get(), kBatch, kMaxLength / 64, kKvHeads, kDim};
    q = padded_batch(TensorView<const bfloat16, 4>::contiguous(queries.get(), {kBatch, 1, kQHeads, kDim}), "q");
    lengths = device_lengths.get();
    output = {key_blocks.get(), counts.get(), kBatch, kKvHeads, kCapacity, 64};
    workspace = scores.get();
    workspace_bytes = cuda::decode_selection_workspace_bytes(compressed);
  }

  void compress() const {
    cuda::compress_key_blocks<bfloat16>(*gate, cache, compressed, nullptr);
    gpu::vendor::synchronize(nullptr, "fixture compress");
  }
  template <class Policy>
  void select(const Policy& policy) const {
    cuda::select_decode_blocks<bfloat16>(*gate, compressed, q, lengths, max_length, policy, output, workspace,
                                         workspace_bytes, nullptr);
    gpu::vendor::synchronize(nullptr, "fixture select");
  }
};

}  // namespace seer::decode_gate_test
