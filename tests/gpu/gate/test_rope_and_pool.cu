// The fused RoPE + gate pooling pass (seer::cuda::rope_and_pool) against the CPU: the rotated q / k
// against seer::RotaryEmbedding::apply in float64 on the same 16-bit inputs (within the output's
// rounding), the pooled features against max / min / mean of the pre-RoPE vectors in float64, then the
// whole pipeline (pooled features -> gate_features_from_pooled -> select_blocks) against gate_features on
// the unrotated tensors: the same BlockSet. Fresh random inputs per run, outputs poisoned first.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gate_test_support.hpp"
#include "seer/cuda/gate_selection.hpp"

namespace {

using namespace seer;

template <class T>
SequenceBatch<T> writable(const SequenceBatch<const T>& view, T* data) {
  SequenceBatch<T> result;
  result.data = data;
  result.batch = view.batch;
  result.heads = view.heads;
  result.head_dim = view.head_dim;
  result.batch_stride = view.batch_stride;
  result.token_stride = view.token_stride;
  result.head_stride = view.head_stride;
  result.dim_stride = view.dim_stride;
  result.max_length = view.max_length;
  result.cu_seqlens = view.cu_seqlens;
  result.stored_tokens = view.stored_tokens;
  return result;
}

// Largest |gpu - cpu| / allowance over every valid rotated vector, allowance = rounding * |cpu| + 1e-5 *
// (largest |input| of the vector): the output's own rounding (rounding = 2^-8 for bf16, 2^-11 for half, twice
// the half-ulp) plus fp32 arithmetic and fp32 sine / cosine (~1e-6 of the vector's scale). At most 1 passes.
template <class T>
double rotation_error(const gate_test::Sequences<T>& input, const std::vector<T>& rotated, const RotaryEmbedding& rope,
                      const std::vector<std::int32_t>& q_lengths, const std::vector<std::int32_t>& k_lengths,
                      bool is_query, std::int64_t& non_finite) {
  const double rounding = std::is_same_v<T, bfloat16> ? 1.0 / 256.0 : 1.0 / 2048.0;
  const SequenceBatch<const T>& host = input.host;
  double worst = 0.0;
  std::vector<double> vector(static_cast<std::size_t>(host.head_dim));
  for (std::int64_t b = 0; b < host.batch; ++b) {
    const std::int64_t offset = is_query ? k_lengths[b] - q_lengths[b] : 0;
    for (std::int64_t t = 0; t < host.length(b); ++t)
      for (std::int64_t h = 0; h < host.heads; ++h) {
        const T* source = host.vector(b, t, h);
        double scale = 0.0;
        for (std::int64_t d = 0; d < host.head_dim; ++d) {
          vector[d] = to_float(source[d]);
          scale = std::max(scale, std::abs(vector[d]));
        }
        rope.apply(vector.data(), offset + t);
        const std::int64_t at = host.offset(b, t, h);
        for (std::int64_t d = 0; d < host.head_dim; ++d) {
          const double value = to_float(rotated[static_cast<std::size_t>(at + d)]);
          if (!std::isfinite(value)) ++non_finite;
          worst = std::max(worst, std::abs(value - vector[d]) / (rounding * std::abs(vector[d]) + 1e-5 * scale));
        }
      }
  }
  return worst;
}

// Largest |gpu - cpu| of the pooled features relative to the largest |input| of their head.
template <class T>
double pooling_error(const gate_test::Sequences<T>& input, const std::vector<float>& pooled,
                     const std::vector<int>& pools, std::int64_t max_blocks, std::int64_t& non_finite) {
  const SequenceBatch<const T>& host = input.host;
  const std::int64_t dim = host.head_dim, width = static_cast<std::int64_t>(pools.size()) * dim;
  double worst = 0.0;
  for (std::int64_t b = 0; b < host.batch; ++b)
    for (std::int64_t h = 0; h < host.heads; ++h)
      for (std::int64_t block = 0; block * 64 < host.length(b); ++block) {
        const std::int64_t first = block * 64, count = std::min<std::int64_t>(64, host.length(b) - first);
        for (std::int64_t d = 0; d < dim; ++d) {
          double maximum = -INFINITY, minimum = INFINITY, sum = 0.0, scale = 0.0;
          for (std::int64_t t = first; t < first + count; ++t) {
            const double x = to_float(host.vector(b, t, h)[d]);
            maximum = std::max(maximum, x);
            minimum = std::min(minimum, x);
            sum += x;
            scale = std::max(scale, std::abs(x));
          }
          for (std::size_t p = 0; p < pools.size(); ++p) {
            const double expected = pools[p] == 0   ? maximum
                                    : pools[p] == 1 ? minimum
                                                    : sum / static_cast<double>(count);
            const double value = pooled[static_cast<std::size_t>(((b * host.heads + h) * max_blocks + block) * width +
                                                                 static_cast<std::int64_t>(p) * dim + d)];
            if (!std::isfinite(value)) ++non_finite;
            worst = std::max(worst, std::abs(value - expected) / (scale + 1e-30));
          }
        }
      }
  return worst;
}

template <class T, class Policy>
void check_rope_and_pool(const gate_test::GateCase& c, const RopeConfig& model_rope_config, const Policy& policy) {
  const std::uint64_t seed = std::random_device{}();
  INFO("seed ", seed, ", ", gate_test::describe(c));
  std::mt19937_64 random(seed);
  const LearnedGate gate = gate_test::random_gate(c, random);
  const auto q = gate_test::make_sequences<T>(c.q_lengths, c.q_heads, c.head_dim, c.packed, random);
  const auto k = gate_test::make_sequences<T>(c.k_lengths, c.kv_heads, c.head_dim, c.packed, random);
  const RotaryEmbedding model_rope(model_rope_config);
  cuda::DeviceRotaryEmbedding device_rope(model_rope);
  cuda::DeviceLearnedGate device_gate(gate);
  const auto plan = cuda::gate_selection_plan(device_gate, q.host.batch, q.host.max_length, k.host.max_length);
  const auto geometries = sequence_geometries(q.host, k.host, 64, c.causal);
  cuda::GateSelectionStorage storage(plan, cuda::selected_blocks_bound(geometries, c.q_heads, policy));
  cuda::GateSelectionStorage reference_storage(plan, cuda::selected_blocks_bound(geometries, c.q_heads, policy));

  // Reference BlockSet: gate_features on the unrotated tensors.
  gate_test::DeviceSequences<T> device_q(q), device_k(k);
  const auto sequences = cuda::gate_sequences(device_q.view, device_k.view, 64, c.causal);
  const auto features = cuda::gate_features<T>(device_gate, plan, device_q.view, device_k.view, c.causal,
                                               reference_storage.workspace(), nullptr);
  cuda::select_blocks(plan, features, sequences, policy, ForcedBlocks{}, reference_storage.buffers(),
                      reference_storage.workspace(), nullptr);
  const auto expected_blocks = gate_test::download_block_set(reference_storage.buffers(), q.host.batch, c.q_heads);

  // The fused pass, in place, on poisoned pooled buffers.
  const std::int64_t query_width = static_cast<std::int64_t>(device_gate.query_pools().size()) * c.head_dim;
  const std::int64_t key_width = static_cast<std::int64_t>(device_gate.key_pools().size()) * c.head_dim;
  gate_test::DeviceArray<float> pooled_query(q.host.batch * c.q_heads * plan.max_query_blocks() * query_width);
  gate_test::DeviceArray<float> pooled_key(k.host.batch * c.kv_heads * plan.max_key_blocks() * key_width);
  pooled_query.poison();
  pooled_key.poison();
  gate_test::DeviceSequences<T> fused_q(q), fused_k(k);
  cuda::rope_and_pool(device_rope, device_gate, plan, writable(fused_q.view, fused_q.data.get()), sequences, true,
                      pooled_query.get(), nullptr);
  cuda::rope_and_pool(device_rope, device_gate, plan, writable(fused_k.view, fused_k.data.get()), sequences, false,
                      pooled_key.get(), nullptr);
  // The same pass without pooling gives the same rotation.
  gate_test::DeviceSequences<T> plain_q(q);
  cuda::rope_and_pool(device_rope, device_gate, plan, writable(plain_q.view, plain_q.data.get()), sequences, true,
                      nullptr, nullptr);
  gate_test::synchronize();

  std::int64_t non_finite = 0;
  const std::vector<T> rotated_q = fused_q.data.download(), rotated_k = fused_k.data.download();
  const double q_error = rotation_error(q, rotated_q, model_rope, c.q_lengths, c.k_lengths, true, non_finite);
  const double k_error = rotation_error(k, rotated_k, model_rope, c.q_lengths, c.k_lengths, false, non_finite);
  CHECK(q_error <= 1.0);
  CHECK(k_error <= 1.0);
  const std::vector<T> plain = plain_q.data.download();
  CHECK(std::equal(plain.begin(), plain.end(), rotated_q.begin(), [](T a, T b) { return to_float(a) == to_float(b); }));
  const double query_pool_error =
      pooling_error(q, pooled_query.download(), device_gate.query_pools(), plan.max_query_blocks(), non_finite);
  const double key_pool_error =
      pooling_error(k, pooled_key.download(), device_gate.key_pools(), plan.max_key_blocks(), non_finite);
  CHECK(query_pool_error <= 1e-5);
  CHECK(key_pool_error <= 1e-5);
  CHECK(non_finite == 0);
  MESSAGE("rope_and_pool: rotation error q ", q_error, " k ", k_error, " (of the allowance), pooling error q ",
          query_pool_error, " k ", key_pool_error);

  // Pooled features -> gate -> selection: the BlockSet of gate_features on the unrotated tensors, up to
  // the fp32 order of the mean's sum (the pooled means may differ in the last bit, which can only move a
  // near-tie; the CPU policy on the GPU features decides those).
  const auto fused_features = cuda::gate_features_from_pooled(device_gate, plan, {pooled_query.get(), pooled_key.get()},
                                                              sequences, storage.workspace(), nullptr);
  cuda::select_blocks(plan, fused_features, sequences, policy, ForcedBlocks{}, storage.buffers(), storage.workspace(),
                      nullptr);
  const auto actual_blocks = gate_test::download_block_set(storage.buffers(), q.host.batch, c.q_heads);
  const auto host_features = gate_test::download_features(fused_features, q.host.batch);
  const BlockFeatureScores scores = gate_test::scores_from_features(host_features, geometries);
  const auto result = gate_test::compare_selection(scores, policy, ForcedBlocks{}, actual_blocks);
  CHECK(result.outside_margin == 0);
  CHECK(result.malformed == 0);
  std::int64_t same_rows = 0;
  for (std::size_t i = 0; i + 1 < expected_blocks.row_offsets.size() && i + 1 < actual_blocks.row_offsets.size(); ++i)
    same_rows += expected_blocks.row_offsets[i + 1] - expected_blocks.row_offsets[i] ==
                     actual_blocks.row_offsets[i + 1] - actual_blocks.row_offsets[i] &&
                 std::equal(expected_blocks.key_blocks.begin() + expected_blocks.row_offsets[i],
                            expected_blocks.key_blocks.begin() + expected_blocks.row_offsets[i + 1],
                            actual_blocks.key_blocks.begin() + actual_blocks.row_offsets[i]);
  MESSAGE("rope_and_pool -> gate -> select: ", same_rows, " of ", expected_blocks.row_offsets.size() - 1,
          " rows equal to gate_features on the unrotated tensors; ", result.within_margin,
          " rows differ from the CPU policy within the rounding margin");
}

}  // namespace

TEST_CASE("gpu gate: fused RoPE + pooling, padded MHA, bf16, default RoPE, TopK") {
  if (!gate_test::have_device()) return;
  gate_test::GateCase c;
  c.q_lengths = {1000, 1000};
  c.k_lengths = {1000, 1000};
  RopeConfig rope;
  rope.head_dim = 128;
  rope.theta = 500000.0;
  check_rope_and_pool<bfloat16>(c, rope, TopK::target_density(0.2));
}

TEST_CASE("gpu gate: fused RoPE + pooling, packed varlen GQA 8/2, q at the end of longer keys, half, YaRN") {
  if (!gate_test::have_device()) return;
  gate_test::GateCase c;
  c.q_lengths = {300, 1, 129, 0, 64};
  c.k_lengths = {300, 70, 500, 33, 64};
  c.packed = true;
  c.q_heads = 8;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.gate_type = "Qmaxavg_Kmaxmin";
  RopeConfig rope;
  rope.head_dim = 64;
  rope.theta = 10000.0;
  rope.scaling.type = "yarn";
  rope.scaling.factor = 4.0;
  rope.scaling.original_max_position_embeddings = 128;
  check_rope_and_pool<seer::half>(c, rope, Threshold{2e-3});
}

TEST_CASE("gpu gate validation: rope_and_pool names the argument") {
  if (!gate_test::have_device()) return;
  std::mt19937_64 random(7);
  gate_test::GateCase c;
  c.q_lengths = {128};
  c.k_lengths = {128};
  const LearnedGate gate = gate_test::random_gate(c, random);
  cuda::DeviceLearnedGate device_gate(gate);
  const auto plan = cuda::gate_selection_plan(device_gate, 1, 128, 128);
  RopeConfig rope64;
  rope64.head_dim = 64;
  cuda::DeviceRotaryEmbedding wrong_rope{RotaryEmbedding(rope64)};
  const auto q = gate_test::make_sequences<bfloat16>(c.q_lengths, c.q_heads, c.head_dim, false, random);
  gate_test::DeviceSequences<bfloat16> device_q(q);
  const auto sequences = cuda::gate_sequences(device_q.view, device_q.view, 64, true);
  gate_test::DeviceArray<float> pooled(c.q_heads * plan.max_query_blocks() * 128);
  auto view = writable(device_q.view, device_q.data.get());
  CHECK_THROWS_WITH_AS(cuda::rope_and_pool(wrong_rope, device_gate, plan, view, sequences, true, pooled.get(), nullptr),
                       doctest::Contains("model_rope"), InvalidArgument);
  RopeConfig rope128;
  rope128.head_dim = 128;
  cuda::DeviceRotaryEmbedding right_rope{RotaryEmbedding(rope128)};
  auto wrong_heads = view;
  wrong_heads.heads = 3;
  CHECK_THROWS_WITH_AS(
      cuda::rope_and_pool(right_rope, device_gate, plan, wrong_heads, sequences, true, pooled.get(), nullptr),
      doctest::Contains("q"), InvalidArgument);
  CHECK_THROWS_WITH_AS(
      cuda::rope_and_pool(right_rope, device_gate, plan, view, sequences, true, pooled.get() + 1, nullptr),
      doctest::Contains("pooled"), InvalidArgument);
}
