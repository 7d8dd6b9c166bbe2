// seer::hip::sparse_decode in the HIP test executable: host validation (runs everywhere) and a decode
// against the float64 CPU oracle on an AMD GPU (skipped without one). The kernel's logic also runs on
// NVIDIA hardware in tests/gpu/decode (the AMD kernel compiled by nvcc through its portable path).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "device_test_support.hpp"
#include "seer/cpu/decode_attention.hpp"
#include "seer/hip/sparse_decode.hpp"

namespace seer::hip {
// Every head dim and row-block variant of the kernel, for both element types, in every object.
template void sparse_decode<bfloat16>(SequenceBatch<const bfloat16>, KvCacheView<const bfloat16>,
                                      const DecodeBlockListView*, const AttentionOptions&, SequenceBatch<bfloat16>,
                                      TensorView<float, 2>, void*, std::int64_t, hipStream_t);
template void sparse_decode<half>(SequenceBatch<const half>, KvCacheView<const half>, const DecodeBlockListView*,
                                  const AttentionOptions&, SequenceBatch<half>, TensorView<float, 2>, void*,
                                  std::int64_t, hipStream_t);
}  // namespace seer::hip

namespace {

using namespace seer;

alignas(16) bfloat16 decode_placeholder[64];
std::int32_t decode_lengths_placeholder[2] = {100, 100};

std::string rejected_decode_argument(SequenceBatch<const bfloat16> q, KvCacheView<const bfloat16> cache,
                                     SequenceBatch<bfloat16> out) {
  try {
    hip::sparse_decode<bfloat16>(q, cache, nullptr, AttentionOptions{}, out, TensorView<float, 2>{}, nullptr, 0,
                                 nullptr);
  } catch (const InvalidArgument& error) {
    return error.argument();
  } catch (const BackendError& error) {
    return std::string("(backend error: ") + error.what() + ")";
  }
  return "(accepted)";
}

}  // namespace

TEST_CASE("hip decode validation: head dim, query tokens and GQA name the argument") {
  auto q =
      padded_batch(TensorView<const bfloat16, 4>{decode_placeholder, {2, 1, 8, 128}, {8 * 128, 8 * 128, 128, 1}}, "q");
  auto out =
      padded_batch(TensorView<bfloat16, 4>{decode_placeholder, {2, 1, 8, 128}, {8 * 128, 8 * 128, 128, 1}}, "out");
  const TensorView<const bfloat16, 4> kv{decode_placeholder, {2, 256, 2, 128}, {256 * 2 * 128, 2 * 128, 128, 1}};
  const auto cache = contiguous_kv_cache(kv, kv, decode_lengths_placeholder, 256);

  auto bad_dim = q;
  bad_dim.head_dim = 96;
  CHECK(rejected_decode_argument(bad_dim, cache, out) == "q");
  auto many_tokens = q;
  many_tokens.max_length = 9;
  auto many_out = out;
  many_out.max_length = 9;
  CHECK(rejected_decode_argument(many_tokens, cache, many_out) == "q");
  auto three_heads = cache;
  three_heads.heads = 3;
  CHECK(rejected_decode_argument(q, three_heads, out) == "cache");
}

TEST_CASE("hip decode: paged sparse decode matches the float64 oracle") {
  if (!gpu_test::device_present()) {
    MESSAGE("no usable HIP device: GPU decode test skipped");
    return;
  }
  using gpu_test::DeviceArray;
  const std::uint64_t seed = std::random_device{}();
  std::mt19937_64 random(seed);
  INFO("seed ", seed);
  constexpr std::int64_t kBatch = 2, kTokens = 3, kQHeads = 8, kKvHeads = 2, kDim = 64, kPage = 16;
  const std::vector<std::int32_t> lengths = {100, 700};
  const std::int64_t pages_per_sequence = (700 + kPage - 1) / kPage;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bfloat16> queries(static_cast<std::size_t>(kBatch * kTokens * kQHeads * kDim));
  std::vector<bfloat16> keys(static_cast<std::size_t>(kBatch * pages_per_sequence * kPage * kKvHeads * kDim));
  std::vector<bfloat16> values(keys.size());
  for (auto* data : {&queries, &keys, &values})
    for (auto& x : *data) x = from_float<bfloat16>(normal(random));
  std::vector<std::int32_t> page_table(static_cast<std::size_t>(kBatch * pages_per_sequence));
  std::iota(page_table.begin(), page_table.end(), 0);
  std::shuffle(page_table.begin(), page_table.end(), random);
  DecodeBlockList blocks(kBatch, kKvHeads, 11);
  for (std::int64_t b = 0; b < kBatch; ++b)
    for (std::int64_t h = 0; h < kKvHeads; ++h) {
      const std::int64_t count = (lengths[static_cast<std::size_t>(b)] + 63) / 64;
      std::vector<std::int32_t> row;
      for (std::int64_t n = 0; n < count; ++n)
        if (n == 0 || n == count - 1 || random() % 2 == 0) row.push_back(static_cast<std::int32_t>(n));
      blocks.set_row(b, h, row, count);
    }

  const auto q_host =
      padded_batch(TensorView<const bfloat16, 4>::contiguous(queries.data(), {kBatch, kTokens, kQHeads, kDim}), "q");
  const std::int64_t pages = kBatch * pages_per_sequence;
  const auto cache_host =
      paged_kv_cache(TensorView<const bfloat16, 4>::contiguous(keys.data(), {pages, kPage, kKvHeads, kDim}),
                     TensorView<const bfloat16, 4>::contiguous(values.data(), {pages, kPage, kKvHeads, kDim}),
                     page_table.data(), kBatch, pages_per_sequence, lengths.data(), 700);
  std::vector<double> reference(queries.size()), reference_lse(static_cast<std::size_t>(kQHeads * kBatch * kTokens));
  const DecodeBlockListView host_blocks = blocks.view();
  cpu::decode_attention_reference<bfloat16, double, double>(
      q_host, cache_host, &host_blocks, AttentionOptions{},
      padded_batch(TensorView<double, 4>::contiguous(reference.data(), {kBatch, kTokens, kQHeads, kDim}), "r"),
      TensorView<double, 2>::contiguous(reference_lse.data(), {kQHeads, kBatch * kTokens}));

  DeviceArray<bfloat16> q(queries.data(), static_cast<std::int64_t>(queries.size()));
  DeviceArray<bfloat16> k(keys.data(), static_cast<std::int64_t>(keys.size()));
  DeviceArray<bfloat16> v(values.data(), static_cast<std::int64_t>(values.size()));
  DeviceArray<std::int32_t> device_lengths(lengths.data(), kBatch), table(page_table.data(), pages);
  DeviceArray<std::int32_t> key_blocks(blocks.key_blocks().data(),
                                       static_cast<std::int64_t>(blocks.key_blocks().size()));
  DeviceArray<std::int32_t> counts(blocks.counts().data(), static_cast<std::int64_t>(blocks.counts().size()));
  DeviceArray<bfloat16> out(static_cast<std::int64_t>(queries.size()));
  DeviceArray<float> lse(kQHeads * kBatch * kTokens);
  out.poison();
  lse.poison();
  auto q_device = q_host;
  q_device.data = q.get();
  auto cache_device = cache_host;
  cache_device.keys = k.get();
  cache_device.values = v.get();
  cache_device.lengths = device_lengths.get();
  cache_device.page_table = table.get();
  DecodeBlockListView device_blocks = host_blocks;
  device_blocks.key_blocks = key_blocks.get();
  device_blocks.counts = counts.get();
  const auto out_view =
      padded_batch(TensorView<bfloat16, 4>::contiguous(out.get(), {kBatch, kTokens, kQHeads, kDim}), "out");
  const std::int64_t workspace_bytes = hip::decode_workspace_bytes(q_device, cache_device, &device_blocks);
  DeviceArray<float> workspace((workspace_bytes + 3) / 4);
  // The workspace holds the split rows' completion counters: zero before its first use (the API's contract).
  gpu::vendor::fill_device_bytes(workspace.get(), 0, static_cast<std::size_t>(workspace.size()) * sizeof(float),
                                 "zero workspace");
  gpu_test::Stream stream;
  hip::sparse_decode<bfloat16>(q_device, cache_device, &device_blocks, AttentionOptions{}, out_view,
                               TensorView<float, 2>::contiguous(lse.get(), {kQHeads, kBatch * kTokens}),
                               workspace.get(), workspace_bytes, stream.get());
  stream.synchronize();
  std::vector<bfloat16> result(queries.size());
  std::vector<float> result_lse(reference_lse.size());
  out.download(result.data(), static_cast<std::int64_t>(result.size()));
  lse.download(result_lse.data(), static_cast<std::int64_t>(result_lse.size()));
  double output_error = 0.0, lse_error = 0.0;
  for (std::size_t i = 0; i < result.size(); ++i) {
    const double value = to_float(result[i]);
    output_error = std::isfinite(value) ? std::max(output_error, std::abs(value - reference[i])) : 1e30;
  }
  for (std::size_t i = 0; i < result_lse.size(); ++i)
    lse_error = std::isfinite(result_lse[i]) ? std::max(lse_error, std::abs(result_lse[i] - reference_lse[i])) : 1e30;
  INFO("output error ", output_error, ", lse error ", lse_error);
  CHECK(output_error <= 2e-2);  // bf16 outputs of magnitude < 1 and bf16 probabilities
  CHECK(lse_error <= 1e-2);
}
