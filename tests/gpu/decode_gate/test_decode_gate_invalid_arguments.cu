// Host-side validation of seer::cuda::compress_key_blocks and seer::cuda::select_decode_blocks. The
// checks need no device memory, so these cases run everywhere, also in CI without a GPU: the pointers
// are aligned stand-ins the calls reject before anything is enqueued.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>

#include "seer/cuda/decode_gate.hpp"

namespace seer::gpu {
// Every kernel variant in this object, so the compile check covers them all.
template void compress_key_blocks<bfloat16>(const DeviceDecodeGate&, KvCacheView<const bfloat16>,
                                            const DeviceCompressedKeys&, vendor::stream_t);
template void compress_key_blocks<half>(const DeviceDecodeGate&, KvCacheView<const half>, const DeviceCompressedKeys&,
                                        vendor::stream_t);
template DecodeBlockListView select_decode_blocks<bfloat16, TokenBudget>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const bfloat16>, const std::int32_t*,
    std::int64_t, const TokenBudget&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
template DecodeBlockListView select_decode_blocks<half, DecodeThreshold>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const half>, const std::int32_t*, std::int64_t,
    const DecodeThreshold&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
template DecodeBlockListView select_decode_blocks<bfloat16, DecodeThreshold>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const bfloat16>, const std::int32_t*,
    std::int64_t, const DecodeThreshold&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
template DecodeBlockListView select_decode_blocks<half, TokenBudget>(
    const DeviceDecodeGate&, const DeviceCompressedKeys&, SequenceBatch<const half>, const std::int32_t*, std::int64_t,
    const TokenBudget&, const DeviceDecodeBlockListBuffers&, void*, std::int64_t, vendor::stream_t);
}  // namespace seer::gpu

#include "decode_gate_test_support.hpp"

namespace {

using namespace seer;
using decode_gate_test::rejected_argument;

}  // namespace

TEST_CASE("decode gate validation: host-only checks name the argument (no device needed)") {
  // The GPU limits of DeviceDecodeGate are checked before anything is uploaded.
  std::mt19937_64 random(11);
  decode_gate_test::GateShape wide;
  wide.hidden_size = 260;
  wide.use_rope = false;
  const DecodeGate wide_gate = decode_gate_test::random_gate(wide, random);
  CHECK(rejected_argument([&] { cuda::DeviceDecodeGate device_gate(wide_gate); }) == "gate");
  decode_gate_test::GateShape big_group;
  big_group.q_heads = 64;
  big_group.kv_heads = 1;
  const DecodeGate big_group_gate = decode_gate_test::random_gate(big_group, random);
  CHECK(rejected_argument([&] { cuda::DeviceDecodeGate device_gate(big_group_gate); }) == "gate");
  // Counter resets check their range before launching (the pointer is a stand-in, never dereferenced).
  std::int32_t counters[2] = {0, 0};
  const cuda::DeviceCompressedKeys compressed{nullptr, counters, 2, 4, 2, 128};
  CHECK(rejected_argument([&] { cuda::reset_compressed_blocks(compressed, 3, 1, nullptr); }) == "first");
  CHECK(rejected_argument([&] { cuda::reset_compressed_blocks(compressed, 1, 2, nullptr); }) == "count");
  CHECK(rejected_argument([&] { cuda::reset_compressed_blocks(compressed, -1, 1, nullptr); }) == "first");
}

TEST_CASE("decode gate validation: compression arguments are named") {
  if (!decode_gate_test::have_device_for_gate_upload()) {
    // DeviceDecodeGate uploads its weights, so even validation needs a device; the DeviceDecodeGate-free
    // checks are below.
    MESSAGE("no usable CUDA device: validation cases that need an uploaded gate skipped");
    return;
  }
  decode_gate_test::ValidationFixture f;
  CHECK(rejected_argument([&] { f.compress(); }) == "(accepted)");
  {
    auto keys = f.cache;
    keys.heads = 3;
    CHECK(rejected_argument([&] { cuda::compress_key_blocks<bfloat16>(*f.gate, keys, f.compressed, nullptr); }) ==
          "keys");
  }
  {
    auto keys = f.cache;
    keys.head_dim = 64;
    CHECK(rejected_argument([&] { cuda::compress_key_blocks<bfloat16>(*f.gate, keys, f.compressed, nullptr); }) ==
          "keys");
  }
  {
    auto compressed = f.compressed;
    compressed.hidden_size = 64;
    CHECK(rejected_argument([&] { cuda::compress_key_blocks<bfloat16>(*f.gate, f.cache, compressed, nullptr); }) ==
          "compressed");
  }
  {
    auto compressed = f.compressed;
    compressed.max_blocks = 1;
    CHECK(rejected_argument([&] { cuda::compress_key_blocks<bfloat16>(*f.gate, f.cache, compressed, nullptr); }) ==
          "keys");
  }
}

TEST_CASE("decode gate validation: selection arguments are named") {
  if (!decode_gate_test::have_device_for_gate_upload()) {
    MESSAGE("no usable CUDA device: validation cases that need an uploaded gate skipped");
    return;
  }
  decode_gate_test::ValidationFixture f;
  f.compress();  // so that the accepted call scores written rows
  CHECK(rejected_argument([&] { f.select(TokenBudget{256}); }) == "(accepted)");
  CHECK(rejected_argument([&] { f.select(DecodeThreshold{0.01}); }) == "(accepted)");
  CHECK(rejected_argument([&] { f.select(TokenBudget{-1}); }) == "policy.tokens");
  CHECK(rejected_argument([&] { f.select(DecodeThreshold{1.5}); }) == "policy.tau");
  {
    decode_gate_test::ValidationFixture g;
    g.q.max_length = 9;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "q_before_rope");
  }
  {
    decode_gate_test::ValidationFixture g;
    g.q.heads = 4;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "q_before_rope");
  }
  {
    decode_gate_test::ValidationFixture g;
    g.lengths = nullptr;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "lengths");
  }
  {
    decode_gate_test::ValidationFixture g;
    g.max_length = 100000;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "max_length");
  }
  {
    decode_gate_test::ValidationFixture g;
    g.output.capacity = 2;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "output");
    CHECK(rejected_argument([&] { g.select(DecodeThreshold{0.01}); }) == "output");
  }
  {
    decode_gate_test::ValidationFixture g;
    g.workspace_bytes = 16;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "workspace_bytes");
    g.workspace = nullptr;
    CHECK(rejected_argument([&] { g.select(TokenBudget{256}); }) == "workspace");
  }
}
