// GPU decode gate (seer::cuda::compress_key_blocks, seer::cuda::select_decode_blocks) against the CPU
// references: seer::KCompressionCache (double) for the compressed rows and seer::select_decode_blocks_into
// (double) for the block lists, on fresh random inputs (the seed is printed on failure), with device
// outputs NaN-poisoned before each run. The references are plain C++ (no Eigen), so this is a .cu file.
//
// Selections are compared as sets: a block that one side keeps and the other does not is allowed only
// when its reference score lies within fp32 rounding of the decision boundary (the budget's k-th
// largest score, or tau); every other mismatch fails. Forced blocks must always agree.
// Without a usable GPU every device case returns early with a message (CI has nvcc but no GPU).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "decode_gate_test_support.hpp"
#include "device_test_support.hpp"
#include "seer/cuda/decode_gate.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/decode_selection.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/decode/kv_cache.hpp"

namespace {

using namespace seer;
using decode_gate_test::GateShape;
using gpu_test::DeviceArray;

bool skip_without_gpu() {
  if (gpu_test::device_present()) return false;
  MESSAGE("no usable CUDA device: GPU decode-gate case skipped");
  return true;
}

std::vector<bfloat16> random_bfloat16(std::int64_t count, std::mt19937_64& random) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bfloat16> values(static_cast<std::size_t>(count));
  for (auto& x : values) x = from_float<bfloat16>(normal(random));
  return values;
}

// A KV cache (keys only matter; values alias keys) in host memory and its device mirror.
struct KeyCache {
  std::vector<bfloat16> keys;
  std::vector<std::int32_t> page_table;
  std::vector<std::int32_t> lengths;
  KvCacheView<const bfloat16> host;
  std::unique_ptr<DeviceArray<bfloat16>> device_keys;
  std::unique_ptr<DeviceArray<std::int32_t>> device_page_table;
  std::unique_ptr<DeviceArray<std::int32_t>> device_lengths;
  KvCacheView<const bfloat16> device;

  // page_size 0: contiguous [batch, capacity, Hkv, D].
  KeyCache(std::int64_t batch, std::int64_t capacity, std::int64_t kv_heads, std::int64_t dim, std::int64_t page_size,
           std::mt19937_64& random)
      : lengths(static_cast<std::size_t>(batch), 0) {
    if (page_size == 0) {
      keys = random_bfloat16(batch * capacity * kv_heads * dim, random);
      const auto view = TensorView<const bfloat16, 4>::contiguous(keys.data(), {batch, capacity, kv_heads, dim});
      host = contiguous_kv_cache(view, view, lengths.data(), capacity);
    } else {
      const std::int64_t pages_per_sequence = (capacity + page_size - 1) / page_size;
      const std::int64_t pages = batch * pages_per_sequence + 3;  // a few pages no sequence uses
      keys = random_bfloat16(pages * page_size * kv_heads * dim, random);
      page_table.resize(static_cast<std::size_t>(pages));
      std::iota(page_table.begin(), page_table.end(), 0);
      std::shuffle(page_table.begin(), page_table.end(), random);
      page_table.resize(static_cast<std::size_t>(batch * pages_per_sequence));
      const auto view = TensorView<const bfloat16, 4>::contiguous(keys.data(), {pages, page_size, kv_heads, dim});
      host = paged_kv_cache(view, view, page_table.data(), batch, pages_per_sequence, lengths.data(),
                            pages_per_sequence * page_size);
      device_page_table =
          std::make_unique<DeviceArray<std::int32_t>>(page_table.data(), static_cast<std::int64_t>(page_table.size()));
    }
    device_keys = std::make_unique<DeviceArray<bfloat16>>(keys.data(), static_cast<std::int64_t>(keys.size()));
    device_lengths = std::make_unique<DeviceArray<std::int32_t>>(batch);
    device = host;
    device.keys = device_keys->get();
    device.values = device_keys->get();
    device.page_table = device_page_table != nullptr ? device_page_table->get() : nullptr;
    device.lengths = device_lengths->get();
  }

  void set_lengths(const std::vector<std::int32_t>& new_lengths) {
    lengths = new_lengths;
    host.lengths = lengths.data();
    gpu::vendor::copy_to_device(device_lengths->get(), lengths.data(), lengths.size() * sizeof(std::int32_t),
                                "upload lengths");
    decode_gate_test::settle();
  }
};

// Max over written rows of |gpu - cpu| / (1 + |cpu|), and whether the counters agree.
double compare_rows(const KCompressionCache<float>& reference, const cuda::DeviceCompressedKeys& device) {
  const std::int64_t elements = device.batch * device.max_blocks * device.kv_heads * device.hidden_size;
  std::vector<float> rows(static_cast<std::size_t>(elements));
  std::vector<std::int32_t> completed(static_cast<std::size_t>(device.batch));
  gpu::vendor::copy_to_host(rows.data(), device.rows, rows.size() * sizeof(float), "download rows");
  gpu::vendor::copy_to_host(completed.data(), device.completed_blocks, completed.size() * sizeof(std::int32_t),
                            "download counters");
  double error = 0.0;
  for (std::int64_t b = 0; b < device.batch; ++b) {
    CHECK(completed[static_cast<std::size_t>(b)] == reference.completed_blocks(b));
    for (std::int64_t j = 0; j < reference.completed_blocks(b); ++j)
      for (std::int64_t h = 0; h < device.kv_heads; ++h) {
        const float* expected = reference.row(b, j, h);
        const float* actual = rows.data() + device.offset(b, j, h);
        for (std::int64_t d = 0; d < device.hidden_size; ++d) {
          const double e = expected[d], a = actual[d];
          error = std::isfinite(a) ? std::max(error, std::abs(a - e) / (1.0 + std::abs(e))) : 1e30;
        }
      }
  }
  return error;
}

struct CompressionCase {
  GateShape shape;
  std::int64_t batch = 3;
  std::int64_t capacity = 1024;
  std::int64_t page_size = 0;
  std::vector<std::vector<std::int32_t>> steps;  // lengths after each step
  bool graph = false;
  std::int64_t reset_slot = -1;  // >= 0: after the steps, reset this slot and recompress from its new length
};

void run_compression_case(const CompressionCase& c) {
  const std::uint64_t seed = std::random_device{}();
  std::mt19937_64 random(seed);
  INFO("seed ", seed, ", pooling ", query_head_pooling_name(c.shape.pooling), ", norm ", c.shape.use_qk_norm, ", rope ",
       c.shape.use_rope, ", page size ", c.page_size, ", graph ", c.graph);
  const DecodeGate gate = decode_gate_test::random_gate(c.shape, random);
  KeyCache cache(c.batch, c.capacity, c.shape.kv_heads, c.shape.head_dim, c.page_size, random);
  auto reference = KCompressionCache<float>::for_kv_cache(cache.host, gate);
  cuda::DeviceDecodeGate device_gate(gate);
  cuda::DeviceKCompressionCache device_cache(c.batch, reference.max_blocks(), device_gate);
  const cuda::DeviceCompressedKeys& compressed = device_cache.view();
  gpu::vendor::fill_device_bytes(
      compressed.rows, 0xff,
      static_cast<std::size_t>(c.batch * reference.max_blocks() * c.shape.kv_heads * c.shape.hidden_size) * 4,
      "poison rows");
  decode_gate_test::settle();
  gpu_test::Stream stream;
  auto run_step = [&] {
    if (c.graph) {
      // Replayed twice: the second replay finds no new block, so it must change nothing.
      gpu::vendor::capture_and_replay(stream.get(), 2, [&](gpu::vendor::stream_t s) {
        cuda::compress_key_blocks<bfloat16>(device_gate, cache.device, compressed, s);
      });
    } else {
      cuda::compress_key_blocks<bfloat16>(device_gate, cache.device, compressed, stream.get());
      stream.synchronize();
    }
  };
  for (const auto& lengths : c.steps) {
    cache.set_lengths(lengths);
    reference.update(cache.host, gate);
    run_step();
    const double error = compare_rows(reference, compressed);
    INFO("max relative row error ", error);
    CHECK(error <= 2e-4);  // fp32 pooling sums and projections against double
  }
  if (c.reset_slot >= 0) {
    auto lengths = c.steps.back();
    lengths[static_cast<std::size_t>(c.reset_slot)] = 150;
    cache.set_lengths(lengths);
    reference.reset_sequence(c.reset_slot);
    reference.update(cache.host, gate);
    cuda::reset_compressed_blocks(compressed, c.reset_slot, 1, stream.get());
    run_step();
    const double error = compare_rows(reference, compressed);
    INFO("after reset: max relative row error ", error);
    CHECK(error <= 2e-4);
  }
}

// ---- Selection ------------------------------------------------------------------------------------

struct SelectionCase {
  GateShape shape;
  std::vector<std::int32_t> lengths = {8, 63, 64, 65, 700, 1500};  // >= 8: a step's tokens are cached
  std::vector<std::int32_t> step_tokens = {1, 1, 1, 1, 1, 1};      // all equal: padded q; else packed
  std::int64_t max_length = 2048;
  bool graph = false;
  bool device_compression = false;  // compress on the GPU (end to end) instead of uploading the CPU rows
};

struct Mismatches {
  std::int64_t outside_margin = 0;
  std::int64_t inside_margin = 0;
};

// Compares one row; scores = the reference's double scores of its scored blocks.
template <class Policy>
void compare_row(const Policy& policy, const std::vector<std::int32_t>& expected, const std::int32_t* actual,
                 std::int64_t actual_count, const std::vector<double>& scores, std::int64_t key_block_count,
                 std::int64_t first_step_block, std::int64_t block_size, Mismatches& mismatches) {
  for (std::int64_t i = 0; i < actual_count; ++i) {
    CHECK(actual[i] >= 0);
    CHECK(actual[i] < key_block_count);
    if (i > 0) CHECK(actual[i] > actual[i - 1]);
  }
  double boundary = 0.0;
  if constexpr (std::is_same_v<Policy, TokenBudget>) {
    const auto budget = static_cast<std::size_t>(policy.blocks(block_size));
    std::vector<double> sorted = scores;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    boundary = budget == 0 || budget > sorted.size() ? -1.0 : sorted[budget - 1];
  } else {
    boundary = policy.tau;
  }
  std::vector<std::int32_t> actual_row(actual, actual + actual_count), difference;
  std::set_symmetric_difference(expected.begin(), expected.end(), actual_row.begin(), actual_row.end(),
                                std::back_inserter(difference));
  for (std::int32_t j : difference) {
    const bool forced = j == 0 || j >= first_step_block;
    const bool scored = j < static_cast<std::int64_t>(scores.size());
    const double score = scored ? scores[static_cast<std::size_t>(j)] : 0.0;
    const double margin = 1e-6 + 1e-4 * std::abs(boundary);
    if (!forced && scored && boundary >= 0.0 && std::abs(score - boundary) <= margin) {
      ++mismatches.inside_margin;
    } else {
      ++mismatches.outside_margin;
    }
  }
}

template <class Policy>
void run_selection_case(const SelectionCase& c, const Policy& policy) {
  const std::uint64_t seed = std::random_device{}();
  std::mt19937_64 random(seed);
  const auto batch = static_cast<std::int64_t>(c.lengths.size());
  const bool padded = std::all_of(c.step_tokens.begin(), c.step_tokens.end(),
                                  [&](std::int32_t n) { return n == c.step_tokens.front(); });
  INFO("seed ", seed, ", pooling ", query_head_pooling_name(c.shape.pooling), ", norm ", c.shape.use_qk_norm, ", rope ",
       c.shape.use_rope, padded ? ", padded q" : ", packed q", ", graph ", c.graph, ", device compression ",
       c.device_compression);
  const DecodeGate gate = decode_gate_test::random_gate(c.shape, random);
  const std::int64_t block = c.shape.block_size;
  KeyCache cache(batch, c.max_length, c.shape.kv_heads, c.shape.head_dim, 0, random);
  cache.set_lengths(c.lengths);
  auto reference_cache = KCompressionCache<float>::for_kv_cache(cache.host, gate);
  reference_cache.update(cache.host, gate);

  // The step's queries.
  std::vector<std::int32_t> cu_seqlens(static_cast<std::size_t>(batch + 1), 0);
  for (std::int64_t b = 0; b < batch; ++b)
    cu_seqlens[static_cast<std::size_t>(b + 1)] =
        cu_seqlens[static_cast<std::size_t>(b)] + c.step_tokens[static_cast<std::size_t>(b)];
  const std::int64_t total = cu_seqlens.back();
  const std::int64_t q_heads = c.shape.q_heads, dim = c.shape.head_dim;
  const std::vector<bfloat16> queries = random_bfloat16(std::max<std::int64_t>(1, total) * q_heads * dim, random);
  SequenceBatch<const bfloat16> q_host;
  if (padded) {
    q_host = padded_batch(
        TensorView<const bfloat16, 4>::contiguous(queries.data(), {batch, c.step_tokens.front(), q_heads, dim}), "q");
  } else {
    q_host =
        packed_batch(TensorView<const bfloat16, 3>::contiguous(queries.data(), {total, q_heads, dim}), cu_seqlens, "q");
  }
  std::int64_t step_max = 1;
  for (auto n : c.step_tokens) step_max = std::max<std::int64_t>(step_max, n);
  const std::int64_t capacity = decode_block_capacity(policy, c.max_length, block, step_max);
  DecodeBlockList expected(batch, c.shape.kv_heads, capacity, block);
  select_decode_blocks_into(gate, reference_cache, q_host, c.lengths.data(), policy, expected);

  // Device side.
  cuda::DeviceDecodeGate device_gate(gate);
  cuda::DeviceKCompressionCache device_cache(batch, reference_cache.max_blocks(), device_gate);
  const cuda::DeviceCompressedKeys& compressed = device_cache.view();
  gpu_test::Stream stream;
  if (c.device_compression) {
    cuda::compress_key_blocks<bfloat16>(device_gate, cache.device, compressed, stream.get());
  } else {
    const auto rows = reference_cache.rows();
    gpu::vendor::copy_to_device(
        compressed.rows, rows.data,
        static_cast<std::size_t>(rows.extent[0] * rows.extent[1] * rows.extent[2] * rows.extent[3]) * 4,
        "upload reference rows");
    std::vector<std::int32_t> completed(static_cast<std::size_t>(batch));
    for (std::int64_t b = 0; b < batch; ++b)
      completed[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(reference_cache.completed_blocks(b));
    gpu::vendor::copy_to_device(compressed.completed_blocks, completed.data(), completed.size() * 4, "upload counters");
  }
  DeviceArray<bfloat16> device_queries(queries.data(), static_cast<std::int64_t>(queries.size()));
  DeviceArray<std::int32_t> device_cu_seqlens(cu_seqlens.data(), batch + 1);
  SequenceBatch<const bfloat16> q_device = q_host;
  q_device.data = device_queries.get();
  if (!padded) q_device.cu_seqlens = device_cu_seqlens.get();
  DeviceArray<std::int32_t> key_blocks(batch * c.shape.kv_heads * capacity), counts(batch * c.shape.kv_heads);
  key_blocks.poison();
  counts.poison();
  const cuda::DeviceDecodeBlockListBuffers output{key_blocks.get(), counts.get(), batch,
                                                  c.shape.kv_heads, capacity,     block};
  const std::int64_t workspace_bytes = cuda::decode_selection_workspace_bytes(compressed);
  DeviceArray<float> workspace((workspace_bytes + 3) / 4);
  workspace.poison();
  decode_gate_test::settle();
  auto select = [&](gpu::vendor::stream_t s) {
    cuda::select_decode_blocks<bfloat16>(device_gate, compressed, q_device, cache.device.lengths, c.max_length, policy,
                                         output, workspace.get(), workspace_bytes, s);
  };
  select(stream.get());
  stream.synchronize();
  std::vector<std::int32_t> actual_blocks(static_cast<std::size_t>(key_blocks.size()));
  std::vector<std::int32_t> actual_counts(static_cast<std::size_t>(counts.size()));
  key_blocks.download(actual_blocks.data(), key_blocks.size());
  counts.download(actual_counts.data(), counts.size());

  if (c.graph) {
    // The captured call, replayed twice into poisoned outputs, must write exactly what the direct call did.
    key_blocks.poison();
    counts.poison();
    decode_gate_test::settle();
    gpu::vendor::capture_and_replay(stream.get(), 2, select);
    std::vector<std::int32_t> graph_blocks(actual_blocks.size()), graph_counts(actual_counts.size());
    key_blocks.download(graph_blocks.data(), key_blocks.size());
    counts.download(graph_counts.data(), counts.size());
    CHECK(graph_counts == actual_counts);
    for (std::size_t row = 0; row < actual_counts.size(); ++row)
      for (std::int32_t i = 0; i < std::max(0, actual_counts[row]); ++i)
        CHECK(graph_blocks[row * static_cast<std::size_t>(capacity) + static_cast<std::size_t>(i)] ==
              actual_blocks[row * static_cast<std::size_t>(capacity) + static_cast<std::size_t>(i)]);
  }

  Mismatches mismatches;
  std::int64_t kept = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t length = c.lengths[static_cast<std::size_t>(b)],
                       step = c.step_tokens[static_cast<std::size_t>(b)];
    for (std::int64_t h = 0; h < c.shape.kv_heads; ++h) {
      const std::int64_t row = b * c.shape.kv_heads + h;
      const std::int32_t count = actual_counts[static_cast<std::size_t>(row)];
      INFO("sequence ", b, " (length ", length, ", step ", step, "), KV head ", h);
      REQUIRE(count >= 0);
      REQUIRE(count <= capacity);
      std::vector<double> scores;
      decode_step_scores(gate, reference_cache, q_host, length, b, h, scores);
      const std::vector<std::int32_t> expected_row = expected.row(b, h);
      if (step == 0) CHECK(count == 0);
      compare_row(policy, expected_row, actual_blocks.data() + row * capacity, count, scores,
                  (length + block - 1) / block, step > 0 ? (length - step) / block : 0, block, mismatches);
      kept += count;
    }
  }
  INFO("mismatches outside the rounding margin ", mismatches.outside_margin, ", inside ", mismatches.inside_margin);
  CHECK(mismatches.outside_margin == 0);
  CHECK(kept > 0);
}

}  // namespace

TEST_CASE("decode gate GPU: compressed rows match KCompressionCache (contiguous, incremental steps)") {
  if (skip_without_gpu()) return;
  CompressionCase c;
  // Prefill to mixed lengths, then decode steps of 1, 3 and 8 tokens that cross block boundaries.
  c.steps = {{0, 10, 130}, {1, 64, 200}, {4, 67, 203}, {12, 70, 256}, {13, 128, 257}, {64, 136, 700}};
  c.reset_slot = 2;
  for (auto pooling : {QueryHeadPooling::projection, QueryHeadPooling::average}) {
    c.shape.pooling = pooling;
    for (bool norm : {true, false}) {
      c.shape.use_qk_norm = norm;
      run_compression_case(c);
    }
  }
  c.shape.use_rope = false;
  c.shape.hidden_size = 64;
  c.shape.pooling = QueryHeadPooling::projection;
  run_compression_case(c);
}

TEST_CASE("decode gate GPU: compressed rows match KCompressionCache (paged cache, YaRN RoPE, graph replay)") {
  if (skip_without_gpu()) return;
  CompressionCase c;
  c.page_size = 16;
  c.shape.head_dim = 64;
  c.shape.hidden_size = 64;
  c.shape.q_heads = 4;
  c.shape.kv_heads = 4;
  c.shape.pooling = QueryHeadPooling::average_projection;
  c.shape.rope.theta = 1e6;
  c.shape.rope.scaling.type = "yarn";
  c.shape.rope.scaling.factor = 4.0;
  c.shape.rope.scaling.original_max_position_embeddings = 256;
  c.steps = {{100, 0, 300}, {101, 3, 301}, {128, 64, 320}, {136, 72, 328}};
  run_compression_case(c);
  c.graph = true;
  run_compression_case(c);
}

TEST_CASE("decode gate GPU: selection matches select_decode_blocks_into (TokenBudget)") {
  if (skip_without_gpu()) return;
  SelectionCase c;
  for (auto pooling : {QueryHeadPooling::projection, QueryHeadPooling::average_projection, QueryHeadPooling::average}) {
    c.shape.pooling = pooling;
    for (std::int32_t tokens : {1, 3, 8}) {
      c.step_tokens.assign(c.lengths.size(), tokens);
      for (std::int64_t budget : {256, 0, 64, 1 << 20}) run_selection_case(c, TokenBudget{budget});
    }
  }
  // Mixed steps (packed q), an idle slot, no RMSNorm, no RoPE.
  c.step_tokens = {1, 3, 8, 0, 2, 8};
  c.shape.use_qk_norm = false;
  run_selection_case(c, TokenBudget{320});
  c.shape.use_rope = false;
  run_selection_case(c, TokenBudget{320});
}

TEST_CASE("decode gate GPU: selection matches select_decode_blocks_into (DecodeThreshold)") {
  if (skip_without_gpu()) return;
  SelectionCase c;
  for (auto pooling : {QueryHeadPooling::projection, QueryHeadPooling::average}) {
    c.shape.pooling = pooling;
    for (std::int32_t tokens : {1, 3, 8}) {
      c.step_tokens.assign(c.lengths.size(), tokens);
      for (double tau : {0.005, 0.02, 0.0}) run_selection_case(c, DecodeThreshold{tau});
    }
  }
  c.step_tokens = {8, 1, 0, 3, 5, 1};
  run_selection_case(c, DecodeThreshold{0.004});
}

TEST_CASE("decode gate GPU: end to end from device compression, and graph capture equals direct calls") {
  if (skip_without_gpu()) return;
  SelectionCase c;
  c.device_compression = true;
  c.graph = true;
  c.step_tokens = {1, 3, 8, 2, 1, 8};
  run_selection_case(c, TokenBudget{256});
  run_selection_case(c, DecodeThreshold{0.005});
}

TEST_CASE("decode gate GPU: a 128k-token row (2048+ scored blocks)") {
  if (skip_without_gpu()) return;
  SelectionCase c;
  c.lengths = {131072 + 37, 90000};
  c.max_length = 131072 + 64;
  c.shape.kv_heads = 2;
  c.shape.q_heads = 8;
  c.device_compression = true;
  for (std::int32_t tokens : {1, 8}) {
    c.step_tokens.assign(c.lengths.size(), tokens);
    run_selection_case(c, TokenBudget{2048});
    run_selection_case(c, DecodeThreshold{2e-4});
  }
}
