// seer::cuda::block_ground_truth_2d / _1d against the float64 references of seer/cpu/ground_truth.hpp
// (the same bf16/fp16 inputs on both sides), on fresh random inputs with every device output and the
// workspace poisoned (NaN) before the call. Every entry of the dense target is checked, the zeros
// outside each row's valid blocks included. The forward's O and LSE must equal the dense prefill's
// (seer::cuda::block_sparse_attention, itself checked against float64 in tests/gpu) bit for bit: the
// two kernels run the same arithmetic.
//
// Tolerance. Both sides read identical 16-bit inputs, so the GPU's error is its fp32 arithmetic: dot
// products of <= 256 terms accumulated in fp32 by the tensor cores (|logit| <= ~10 here: relative
// ~1e-6), the online softmax's ex2.approx (2 ulp) and __log2f in the LSE, and expf in the pooling.
// A probability exp(r - LSE) then carries a relative error of a few 1e-6; normalisation adds one fp32
// division and a sum of <= ~10 terms. The bound, 2e-4 relative plus 1e-6 absolute, is ~50x that, and
// still far below the original's bf16 row maxima (up to 19% per entry, seerattention.md §4.1). The AMD
// forward on NVIDIA (portable FMA tiles, probabilities rounded to 16 bits before P * V) gets the same
// bound on the target, which does not depend on P * V.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "ground_truth_runner.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/ground_truth.hpp"
#include "seer/gpu/ground_truth_arguments.hpp"

namespace {

using seer::gpu_test::GroundTruthForward;

template <class T>
std::vector<T> random_elements(std::int64_t count, std::mt19937& generator, float range = 2.0f) {
  std::uniform_real_distribution<float> distribution(-range, range);
  std::vector<T> values(static_cast<std::size_t>(count));
  for (auto& value : values) value = seer::from_float<T>(distribution(generator));
  return values;
}

// One problem: padded ([B, S, H, D]) when the length lists are empty, else packed with cu_seqlens.
struct Problem {
  std::int64_t batch = 1, q_len = 0, k_len = 0, q_heads = 4, kv_heads = 2, head_dim = 128;
  std::vector<std::int32_t> q_lengths, k_lengths;  // packed: one length per sequence
  bool causal = true;
  std::int64_t block_size = 64;
  bool one_dimensional = false;
  bool caller_lse = true;
  GroundTruthForward forward = GroundTruthForward::nvidia;
};

std::vector<std::int32_t> cumulative(const std::vector<std::int32_t>& lengths) {
  std::vector<std::int32_t> result{0};
  for (auto length : lengths) result.push_back(result.back() + length);
  return result;
}

template <class T>
void check_problem(const Problem& problem, std::uint32_t seed) {
  if (!seer::gpu_test::have_ground_truth_gpu()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  std::mt19937 generator(seed);
  const bool packed = !problem.q_lengths.empty();
  const auto q_cu = cumulative(problem.q_lengths), k_cu = cumulative(problem.k_lengths);
  const std::int64_t q_tokens = packed ? q_cu.back() : problem.batch * problem.q_len;
  const std::int64_t k_tokens = packed ? k_cu.back() : problem.batch * problem.k_len;
  const auto q_data = random_elements<T>(q_tokens * problem.q_heads * problem.head_dim, generator);
  const auto k_data = random_elements<T>(k_tokens * problem.kv_heads * problem.head_dim, generator);
  const auto v_data = random_elements<T>(k_tokens * problem.kv_heads * problem.head_dim, generator);

  seer::SequenceBatch<const T> q, k, v;
  if (packed) {
    q = seer::packed_batch(
        seer::TensorView<const T, 3>::contiguous(q_data.data(), {q_tokens, problem.q_heads, problem.head_dim}), q_cu,
        "q");
    k = seer::packed_batch(
        seer::TensorView<const T, 3>::contiguous(k_data.data(), {k_tokens, problem.kv_heads, problem.head_dim}), k_cu,
        "k");
    v = seer::packed_batch(
        seer::TensorView<const T, 3>::contiguous(v_data.data(), {k_tokens, problem.kv_heads, problem.head_dim}), k_cu,
        "v");
  } else {
    q = seer::padded_batch(seer::TensorView<const T, 4>::contiguous(
                               q_data.data(), {problem.batch, problem.q_len, problem.q_heads, problem.head_dim}),
                           "q");
    k = seer::padded_batch(seer::TensorView<const T, 4>::contiguous(
                               k_data.data(), {problem.batch, problem.k_len, problem.kv_heads, problem.head_dim}),
                           "k");
    v = seer::padded_batch(seer::TensorView<const T, 4>::contiguous(
                               v_data.data(), {problem.batch, problem.k_len, problem.kv_heads, problem.head_dim}),
                           "v");
  }

  seer::gpu_test::HostGroundTruthCall<T> call;
  call.q = q;
  call.k = k;
  call.v = v;
  call.q_elements = static_cast<std::int64_t>(q_data.size());
  call.k_elements = static_cast<std::int64_t>(k_data.size());
  call.v_elements = static_cast<std::int64_t>(v_data.size());
  call.options.causal = problem.causal;
  call.block_size = problem.block_size;
  call.one_dimensional = problem.one_dimensional;
  call.caller_lse = problem.caller_lse;
  call.forward = problem.forward;
  const auto result = seer::gpu_test::run_ground_truth(call);

  // ---- the target against the float64 reference, every entry ----
  const auto& e = result.extent;
  REQUIRE(result.target.size() == static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3]));
  std::int64_t checked = 0, nonzero = 0;
  double worst = 0.0;
  auto compare = [&](float actual, double expected, std::int64_t b, std::int64_t h, std::int64_t row, std::int64_t n) {
    const double error = std::abs(static_cast<double>(actual) - expected);
    const double bound = 2e-4 * std::abs(expected) + 1e-6;
    worst = std::max(worst, error / bound);
    ++checked;
    if (expected != 0.0) ++nonzero;
    if (!(error <= bound))  // NaN fails too
      FAIL_CHECK("target[", b, ", ", h, ", ", row, ", ", n, "] = ", actual, ", expected ", expected);
    return error <= bound;
  };
  bool ok = true;
  if (!problem.one_dimensional) {
    const auto reference = seer::cpu::two_dimensional_ground_truth<T>(q, k, call.options, problem.block_size, 2);
    std::int64_t query_blocks = 0, key_blocks = 0;
    const auto dense = reference.dense(query_blocks, key_blocks);
    REQUIRE(query_blocks == e[2]);
    REQUIRE(key_blocks == e[3]);
    for (std::int64_t index = 0; index < static_cast<std::int64_t>(dense.size()) && ok; ++index) {
      const std::int64_t n = index % e[3], m = index / e[3] % e[2], h = index / (e[3] * e[2]) % e[1],
                         b = index / (e[3] * e[2] * e[1]);
      // dense() is float; take the double row where it exists.
      double expected = dense[static_cast<std::size_t>(index)];
      if (m < reference.sequences[b].query_blocks() && n < reference.sequences[b].visible_key_blocks(m))
        expected = reference.row(b, h, m)[n];
      ok = compare(result.target[static_cast<std::size_t>(index)], expected, b, h, m, n) && ok;
    }
  } else {
    const auto reference = seer::cpu::one_dimensional_ground_truth<T>(q, k, call.options, problem.block_size, 2);
    for (std::int64_t b = 0; b < e[0] && ok; ++b)
      for (std::int64_t c = 0; c < e[1] && ok; ++c)
        for (std::int64_t t = 0; t < e[2] && ok; ++t)
          for (std::int64_t n = 0; n < e[3]; ++n) {
            const bool in_row = t < q.length(b) && n < reference.row_size(b, c, t);
            const double expected = in_row ? reference.row(b, c, t)[n] : 0.0;
            ok = compare(result.target[static_cast<std::size_t>(((b * e[1] + c) * e[2] + t) * e[3] + n)], expected, b,
                         c, t, n) &&
                 ok;
          }
  }
  MESSAGE(checked, " target entries checked (", nonzero, " nonzero), worst error / bound = ", worst);
  CHECK(nonzero > 0);

  // ---- O and LSE of the forward ----
  const std::int64_t total_q = seer::gpu::ground_truth_token_capacity(q);
  // The NVIDIA forward runs the dense prefill's arithmetic, so its O and LSE are expected to be
  // identical (the count is reported); the bound only allows for a different fp32 contraction choice
  // by the compiler: one 16-bit rounding step. The AMD forward accumulates in another order and feeds
  // P * V from shared memory: a few 16-bit steps.
  const bool nvidia = problem.forward == GroundTruthForward::nvidia;
  const float out_relative = nvidia ? 1e-2f : 3e-2f, out_absolute = nvidia ? 1e-3f : 1e-2f;
  const float lse_tolerance = nvidia ? 1e-5f : 1e-4f;
  std::int64_t rows = 0, identical = 0, compared = 0;
  for (std::int64_t b = 0; b < q.batch; ++b)
    for (std::int64_t t = 0; t < q.length(b); ++t)
      for (std::int64_t h = 0; h < q.heads; ++h, ++rows) {
        const std::int64_t offset = q.offset(b, t, h);
        for (std::int64_t d = 0; d < q.head_dim; ++d) {
          const float actual = seer::to_float(result.out[static_cast<std::size_t>(offset + d)]);
          const float expected = seer::to_float(result.dense_out[static_cast<std::size_t>(offset + d)]);
          identical += actual == expected ? 1 : 0;
          ++compared;
          if (!(std::abs(actual - expected) <= out_relative * std::abs(expected) + out_absolute)) {
            FAIL_CHECK("out at (", b, ", ", t, ", ", h, ", ", d, ") is ", actual, ", the dense prefill's ", expected);
            return;
          }
        }
        if (!problem.caller_lse) continue;
        const std::size_t index = static_cast<std::size_t>(h * total_q + q.start(b) + t);
        const float actual = result.lse[index], expected = result.dense_lse[index];
        if (!(actual == expected || std::abs(actual - expected) <= lse_tolerance * (std::abs(expected) + 1.0f))) {
          FAIL_CHECK("lse at (", b, ", ", t, ", ", h, ") is ", actual, ", the dense prefill's ", expected);
          return;
        }
      }
  MESSAGE(identical, " of ", compared, " output elements identical to the dense prefill's");
  CHECK(rows > 0);
}

}  // namespace

TEST_CASE("gpu ground truth 2-D: causal, GQA 4/2, lengths not multiples of 64, bf16 and fp16, head dims 64/128/256") {
  Problem problem;
  problem.batch = 2;
  problem.q_len = problem.k_len = 200;
  check_problem<seer::bfloat16>(problem, 11);
  problem.head_dim = 64;
  check_problem<seer::half>(problem, 12);
  problem.head_dim = 256;
  problem.q_len = problem.k_len = 131;
  check_problem<seer::bfloat16>(problem, 13);
}

TEST_CASE(
    "gpu ground truth 2-D: q_len != k_len (bottom-right aligned), non-causal, block size 128, LSE in the workspace") {
  Problem problem;
  problem.q_len = 150;
  problem.k_len = 330;
  problem.q_heads = problem.kv_heads = 2;
  check_problem<seer::bfloat16>(problem, 21);
  problem.q_len = 330;  // rows that see no key: empty rows
  problem.k_len = 150;
  check_problem<seer::bfloat16>(problem, 22);
  problem.causal = false;
  problem.block_size = 128;
  problem.caller_lse = false;
  check_problem<seer::half>(problem, 23);
  problem.causal = true;
  problem.q_len = problem.k_len = 517;
  check_problem<seer::bfloat16>(problem, 24);
}

TEST_CASE("gpu ground truth 2-D: packed variable-length batch with a 1-token and an empty sequence, MQA") {
  Problem problem;
  problem.q_heads = 4;
  problem.kv_heads = 1;
  problem.q_lengths = {70, 1, 0, 190};
  problem.k_lengths = problem.q_lengths;
  check_problem<seer::bfloat16>(problem, 31);
  problem.k_lengths = {100, 64, 5, 256};  // chunked prefill: more keys than queries
  problem.block_size = 128;
  check_problem<seer::half>(problem, 32);
}

TEST_CASE("gpu ground truth 1-D: GQA 8/2 max over the group, complete blocks only, + 1e-9") {
  Problem problem;
  problem.one_dimensional = true;
  problem.q_heads = 8;
  problem.kv_heads = 2;
  problem.batch = 2;
  problem.q_len = problem.k_len = 300;
  check_problem<seer::bfloat16>(problem, 41);
  problem.head_dim = 64;
  problem.block_size = 128;
  problem.caller_lse = false;
  check_problem<seer::half>(problem, 42);
}

TEST_CASE("gpu ground truth 1-D: q_len != k_len, non-causal, packed variable lengths") {
  Problem problem;
  problem.one_dimensional = true;
  problem.q_heads = 4;
  problem.kv_heads = 2;
  problem.q_len = 90;
  problem.k_len = 400;
  check_problem<seer::bfloat16>(problem, 51);
  problem.causal = false;
  check_problem<seer::bfloat16>(problem, 52);
  problem.causal = true;
  problem.q_lengths = {200, 1, 0, 129};
  problem.k_lengths = {260, 70, 3, 129};
  problem.head_dim = 256;
  check_problem<seer::half>(problem, 53);
}

TEST_CASE("gpu ground truth: the AMD forward compiled for NVIDIA (portable tiles) gives the same targets") {
  Problem problem;
  problem.forward = GroundTruthForward::amd_portable;
  problem.batch = 2;
  problem.q_len = problem.k_len = 200;
  check_problem<seer::bfloat16>(problem, 61);
  problem.one_dimensional = true;
  problem.q_lengths = {150, 1, 77};
  problem.k_lengths = {180, 64, 77};
  problem.head_dim = 256;
  check_problem<seer::half>(problem, 62);
}

TEST_CASE("gpu ground truth: invalid arguments name the argument (host validation, no GPU needed)") {
  using seer::bfloat16;
  // Fake, aligned device addresses: validation never dereferences them.
  auto* fake = reinterpret_cast<bfloat16*>(std::uintptr_t{1} << 20);
  const auto view = seer::TensorView<const bfloat16, 4>::contiguous(fake, {1, 128, 4, 64});
  const auto q = seer::padded_batch(view, "q");
  const auto kv = seer::padded_batch(seer::TensorView<const bfloat16, 4>::contiguous(fake, {1, 128, 2, 64}), "k");
  const auto out = seer::padded_batch(seer::TensorView<bfloat16, 4>::contiguous(fake, {1, 128, 4, 64}), "out");
  auto* target_data = reinterpret_cast<float*>(std::uintptr_t{1} << 21);
  const auto target_2d = seer::TensorView<float, 4>::contiguous(target_data, {1, 4, 2, 2});
  const auto target_1d = seer::TensorView<float, 4>::contiguous(target_data, {1, 2, 128, 2});
  void* workspace = reinterpret_cast<void*>(std::uintptr_t{1} << 22);
  const std::size_t bytes = seer::gpu::ground_truth_workspace_bytes(q, kv);
  CHECK(bytes == static_cast<std::size_t>(4 * 128 * (2 + 1)) * sizeof(float));
  const seer::AttentionOptions options;
  using Kind = seer::gpu::GroundTruthTarget;
  auto call = [&](Kind kind, std::int64_t block_size, seer::TensorView<float, 4> target, void* space,
                  std::size_t space_bytes) {
    static_cast<void>(seer::gpu::make_ground_truth_params<bfloat16>(kind, q, kv, kv, options, block_size, target, out,
                                                                    {}, space, space_bytes));
  };
  CHECK_NOTHROW(call(Kind::two_dimensional, 64, target_2d, workspace, bytes));
  CHECK_NOTHROW(call(Kind::one_dimensional, 64, target_1d, workspace, bytes));
  CHECK_THROWS_WITH_AS(call(Kind::two_dimensional, 96, target_2d, workspace, bytes), doctest::Contains("block_size"),
                       seer::InvalidArgument);
  CHECK_THROWS_WITH_AS(call(Kind::two_dimensional, 64, target_1d, workspace, bytes), doctest::Contains("target"),
                       seer::InvalidArgument);
  CHECK_THROWS_WITH_AS(call(Kind::one_dimensional, 64, target_2d, workspace, bytes), doctest::Contains("target"),
                       seer::InvalidArgument);
  CHECK_THROWS_WITH_AS(call(Kind::two_dimensional, 64, target_2d, workspace, bytes - 4),
                       doctest::Contains("workspace_bytes"), seer::InvalidArgument);
  CHECK_THROWS_WITH_AS(call(Kind::two_dimensional, 64, target_2d, nullptr, bytes), doctest::Contains("workspace"),
                       seer::InvalidArgument);
  CHECK_THROWS_WITH_AS(call(Kind::two_dimensional, 64, seer::TensorView<float, 4>{nullptr, {1, 4, 2, 2}, {16, 4, 2, 1}},
                            workspace, bytes),
                       doctest::Contains("target"), seer::InvalidArgument);
}
