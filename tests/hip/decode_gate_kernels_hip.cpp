// seer::hip decode gate (compress_key_blocks, select_decode_blocks) in the HIP test executable: host
// validation (runs everywhere) and, on an AMD GPU (skipped without one), compressed rows against
// seer::KCompressionCache and a selection against seer::select_decode_blocks_into. The full suite of
// cases is the CUDA one (tests/gpu/decode_gate); the kernels are the same source.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "decode_gate/decode_gate_test_gate.hpp"
#include "device_test_support.hpp"
#include "seer/decode/decode_selection.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/hip/decode_gate.hpp"

namespace seer::gpu {
// Every kernel variant in every object.
template void compress_key_blocks<bfloat16>(const DeviceDecodeGate&, KvCacheView<const bfloat16>,
                                            const DeviceCompressedKeys&, vendor::stream_t);
template void compress_key_blocks<half>(const DeviceDecodeGate&, KvCacheView<const half>, const DeviceCompressedKeys&,
                                        vendor::stream_t);
template DecodeBlockListView select_decode_blocks<bfloat16, TokenBudget>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const bfloat16>, const std::int32_t*,
    std::int64_t, const TokenBudget&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
template DecodeBlockListView select_decode_blocks<bfloat16, DecodeThreshold>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const bfloat16>, const std::int32_t*,
    std::int64_t, const DecodeThreshold&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
template DecodeBlockListView select_decode_blocks<half, TokenBudget>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const half>, const std::int32_t*, std::int64_t,
    const TokenBudget&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
template DecodeBlockListView select_decode_blocks<half, DecodeThreshold>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const half>, const std::int32_t*, std::int64_t,
    const DecodeThreshold&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
}  // namespace seer::gpu

namespace {

using namespace seer;
using decode_gate_test::rejected_argument;
using gpu_test::DeviceArray;

void settle() { gpu::vendor::check(hipDeviceSynchronize(), "hipDeviceSynchronize"); }

}  // namespace

TEST_CASE("hip decode gate validation: gate limits and counter resets name the argument") {
  std::mt19937_64 random(3);
  decode_gate_test::GateShape wide;
  wide.hidden_size = 260;
  wide.use_rope = false;
  const DecodeGate wide_gate = decode_gate_test::random_gate(wide, random);
  CHECK(rejected_argument([&] { hip::DeviceDecodeGate device_gate(wide_gate); }) == "gate");
  std::int32_t counters[2] = {0, 0};
  const hip::DeviceCompressedKeys compressed{nullptr, counters, 2, 4, 2, 128};
  CHECK(rejected_argument([&] { hip::reset_compressed_blocks(compressed, 3, 1, nullptr); }) == "first");
  CHECK(rejected_argument([&] { hip::reset_compressed_blocks(compressed, 1, 2, nullptr); }) == "count");
}

TEST_CASE("hip decode gate: compression and TokenBudget selection match the CPU references") {
  if (!gpu_test::device_present()) {
    MESSAGE("no usable HIP device: GPU decode-gate test skipped");
    return;
  }
  const std::uint64_t seed = std::random_device{}();
  std::mt19937_64 random(seed);
  INFO("seed ", seed);
  decode_gate_test::GateShape shape;  // Hq 8, Hkv 2, D = dg = 128, Qproj, RMSNorm, RoPE
  const DecodeGate gate = decode_gate_test::random_gate(shape, random);
  constexpr std::int64_t kBatch = 3, kCapacity = 1024, kStep = 3, kBlock = 64;
  const std::vector<std::int32_t> lengths = {40, 300, 1000};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bfloat16> keys(static_cast<std::size_t>(kBatch * kCapacity * shape.kv_heads * shape.head_dim));
  std::vector<bfloat16> queries(static_cast<std::size_t>(kBatch * kStep * shape.q_heads * shape.head_dim));
  for (auto* data : {&keys, &queries})
    for (auto& x : *data) x = from_float<bfloat16>(normal(random));
  const auto key_view =
      TensorView<const bfloat16, 4>::contiguous(keys.data(), {kBatch, kCapacity, shape.kv_heads, shape.head_dim});
  const auto host_cache = contiguous_kv_cache(key_view, key_view, lengths.data(), kCapacity);
  auto reference = KCompressionCache<float>::for_kv_cache(host_cache, gate);
  reference.update(host_cache, gate);
  const auto q_host = padded_batch(
      TensorView<const bfloat16, 4>::contiguous(queries.data(), {kBatch, kStep, shape.q_heads, shape.head_dim}), "q");
  const TokenBudget policy{256};
  const std::int64_t capacity = decode_block_capacity(policy, kCapacity, kBlock, kStep);
  DecodeBlockList expected(kBatch, shape.kv_heads, capacity, kBlock);
  select_decode_blocks_into(gate, reference, q_host, lengths.data(), policy, expected);

  hip::DeviceDecodeGate device_gate(gate);
  hip::DeviceKCompressionCache device_cache(kBatch, reference.max_blocks(), device_gate);
  const hip::DeviceCompressedKeys& compressed = device_cache.view();
  DeviceArray<bfloat16> device_keys(keys.data(), static_cast<std::int64_t>(keys.size()));
  DeviceArray<bfloat16> device_queries(queries.data(), static_cast<std::int64_t>(queries.size()));
  DeviceArray<std::int32_t> device_lengths(lengths.data(), kBatch);
  DeviceArray<std::int32_t> key_blocks(kBatch * shape.kv_heads * capacity), counts(kBatch * shape.kv_heads);
  const std::int64_t workspace_bytes = hip::decode_selection_workspace_bytes(compressed);
  DeviceArray<float> workspace((workspace_bytes + 3) / 4);
  key_blocks.poison();
  counts.poison();
  settle();
  auto device_cache_view = host_cache;
  device_cache_view.keys = device_keys.get();
  device_cache_view.values = device_keys.get();
  device_cache_view.lengths = device_lengths.get();
  auto q_device = q_host;
  q_device.data = device_queries.get();
  const hip::DeviceDecodeBlockListBuffers output{key_blocks.get(), counts.get(), kBatch,
                                                 shape.kv_heads,   capacity,     kBlock};
  gpu_test::Stream stream;
  hip::compress_key_blocks<bfloat16>(device_gate, device_cache_view, compressed, stream.get());
  hip::select_decode_blocks<bfloat16>(device_gate, compressed, q_device, device_lengths.get(), kCapacity, policy,
                                      output, workspace.get(), workspace_bytes, stream.get());
  stream.synchronize();

  // Compressed rows.
  std::vector<float> rows(
      static_cast<std::size_t>(kBatch * reference.max_blocks() * shape.kv_heads * shape.hidden_size));
  gpu::vendor::copy_to_host(rows.data(), compressed.rows, rows.size() * sizeof(float), "download rows");
  double row_error = 0.0;
  for (std::int64_t b = 0; b < kBatch; ++b)
    for (std::int64_t j = 0; j < reference.completed_blocks(b); ++j)
      for (std::int64_t h = 0; h < shape.kv_heads; ++h)
        for (std::int64_t d = 0; d < shape.hidden_size; ++d) {
          const double e = reference.row(b, j, h)[d],
                       a = rows[static_cast<std::size_t>(compressed.offset(b, j, h) + d)];
          row_error = std::isfinite(a) ? std::max(row_error, std::abs(a - e) / (1.0 + std::abs(e))) : 1e30;
        }
  INFO("max relative row error ", row_error);
  CHECK(row_error <= 2e-4);

  // Block lists: a mismatch is allowed only within rounding of the budget's k-th score.
  std::vector<std::int32_t> actual_blocks(static_cast<std::size_t>(key_blocks.size()));
  std::vector<std::int32_t> actual_counts(static_cast<std::size_t>(counts.size()));
  key_blocks.download(actual_blocks.data(), key_blocks.size());
  counts.download(actual_counts.data(), counts.size());
  std::int64_t outside_margin = 0;
  for (std::int64_t b = 0; b < kBatch; ++b)
    for (std::int64_t h = 0; h < shape.kv_heads; ++h) {
      const std::int64_t row = b * shape.kv_heads + h;
      const std::int32_t count = actual_counts[static_cast<std::size_t>(row)];
      REQUIRE(count >= 0);
      REQUIRE(count <= capacity);
      std::vector<double> scores;
      decode_step_scores(gate, reference, q_host, lengths[static_cast<std::size_t>(b)], b, h, scores);
      std::vector<double> sorted = scores;
      std::sort(sorted.begin(), sorted.end(), [](double x, double y) { return x > y; });
      const auto budget = static_cast<std::size_t>(policy.blocks(kBlock));
      const double boundary = budget == 0 || budget > sorted.size() ? -1.0 : sorted[budget - 1];
      const std::vector<std::int32_t> expected_row = expected.row(b, h);
      const std::vector<std::int32_t> actual_row(actual_blocks.begin() + row * capacity,
                                                 actual_blocks.begin() + row * capacity + count);
      std::vector<std::int32_t> difference;
      std::set_symmetric_difference(expected_row.begin(), expected_row.end(), actual_row.begin(), actual_row.end(),
                                    std::back_inserter(difference));
      for (std::int32_t j : difference) {
        const bool scored = j < static_cast<std::int64_t>(scores.size());
        const double score = scored ? scores[static_cast<std::size_t>(j)] : 0.0;
        if (!(scored && boundary >= 0.0 && std::abs(score - boundary) <= 1e-6 + 1e-4 * boundary)) ++outside_margin;
      }
    }
  CHECK(outside_margin == 0);
}
