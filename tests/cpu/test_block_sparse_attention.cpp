// The fast CPU executor against the float64 reference, with the FlashAttention error rule: its max
// error must stay within 2x the max error of a naive float implementation (vs float64) + 1e-5.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "attention_test_support.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/cpu/reference_attention.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/threshold.hpp"

namespace {

using seer::AttentionOptions;
using seer::BlockGeometry;
using seer::BlockSet;
using namespace seer::testing;

auto fast_with_threads(int threads) {
  return [threads](auto q, auto k, auto v, const BlockSet* blocks, const AttentionOptions& options, auto out,
                   auto lse) { seer::cpu::block_sparse_attention(q, k, v, blocks, options, out, lse, threads); };
}

// Runs the fast executor (float outputs) and checks it against the reference with the FlashAttention rule.
template <class T>
void check_against_reference(AttentionInputs<T>& c, const BlockSet* blocks, const AttentionOptions& options,
                             int threads = 2) {
  const auto exact = run_executor<double, double>(c, blocks, options, reference);
  const auto fast = run_executor<float, float>(c, blocks, options, fast_with_threads(threads));
  std::vector<double> naive_output, naive_lse;
  const auto mask = blocks != nullptr ? token_mask(*blocks, c.q.heads, c.k.heads) : [&] {
    std::vector<std::int32_t> q_lengths, k_lengths;
    const auto q = c.q_view(), k = c.k_view();
    for (std::int64_t b = 0; b < q.batch; ++b) {
      q_lengths.push_back(static_cast<std::int32_t>(q.length(b)));
      k_lengths.push_back(static_cast<std::int32_t>(k.length(b)));
    }
    return causal_mask(options.causal, q_lengths, k_lengths);
  }();
  naive_attention<float>(c, mask, options.scale_for(c.q.dim), naive_output, naive_lse);
  const double naive_error = max_abs_difference(naive_output, exact.output);
  const double naive_lse_error = max_abs_difference(naive_lse, exact.lse);
  CAPTURE(naive_error);
  CAPTURE(naive_lse_error);
  CHECK(max_abs_difference(fast.output, exact.output) <= 2 * naive_error + 1e-5);
  CHECK(max_abs_difference(fast.lse, exact.lse) <= 2 * naive_lse_error + 1e-5);
}

struct Configuration {
  std::string name;
  CaseShape shape;
  bool causal = true;
  std::int64_t block_size = 64;
  double density = -1.0;  // < 0: dense (no BlockSet)
  bool per_query_head = true;
};

std::vector<Configuration> configurations() {
  std::vector<Configuration> list;
  list.push_back({"dense, length not a multiple of the block", {{130, 130}, {130, 130}, false, 2, 2, 64}});
  list.push_back({"half the blocks, per query head", {{130, 130}, {130, 130}, false, 2, 2, 64}, true, 64, 0.5});
  list.push_back({"varlen: one token, empty, short, long; GQA 4, D=128",
                  {{1, 0, 40, 100}, {1, 0, 40, 100}, true, 8, 2, 128},
                  true,
                  32,
                  0.4});
  list.push_back({"GQA 8 with one BlockSet per KV head", {{100}, {100}, false, 8, 1, 64}, true, 32, 0.3, false});
  list.push_back({"head dim 256", {{70}, {70}, false, 2, 1, 256}, true, 32, 0.6});
  list.push_back({"query chunk at the end of longer keys", {{45, 64}, {190, 64}, true, 2, 2, 64}, true, 64, 0.5});
  list.push_back({"more queries than keys", {{90}, {33}, true, 2, 1, 64}, true, 32, 0.7});
  list.push_back({"non-causal", {{100}, {100}, false, 2, 2, 64}, false, 32, 0.5});
  list.push_back({"non-causal, q_len != k_len", {{40}, {75}, true, 2, 2, 64}, false, 32, -1.0});
  list.push_back({"only the diagonal", {{100}, {100}, false, 2, 2, 64}, true, 32, 0.0});
  list.push_back({"every block", {{100}, {100}, false, 2, 2, 64}, true, 32, 1.0});
  list.push_back({"head-major strides", {{96}, {96}, false, 2, 2, 64, true}, true, 32, 0.5});
  return list;
}

}  // namespace

TEST_CASE_TEMPLATE("fast attention is within the FlashAttention error rule of the reference", T, float, seer::half,
                   seer::bfloat16) {
  std::mt19937 rng(2024);
  const auto list = configurations();
  for (std::size_t index = 0; index < list.size(); ++index) {
    // float inputs run every configuration; to keep the suite fast, half and bfloat16 alternate.
    if (std::is_same_v<T, seer::half> && index % 2 == 1) continue;
    if (std::is_same_v<T, seer::bfloat16> && index % 2 == 0) continue;
    const Configuration& configuration = list[index];
    CAPTURE(configuration.name);
    auto c = make_inputs<T>(configuration.shape, rng);
    AttentionOptions options;
    options.causal = configuration.causal;
    if (configuration.density < 0.0) {
      check_against_reference(c, nullptr, options);
      continue;
    }
    const auto sequences =
        seer::sequence_geometries(c.q_view(), c.k_view(), configuration.block_size, configuration.causal);
    const std::int64_t heads =
        configuration.per_query_head ? configuration.shape.q_heads : configuration.shape.kv_heads;
    const BlockSet blocks = random_blocks(heads, sequences, configuration.density, rng);
    check_against_reference(c, &blocks, options);
  }
}

TEST_CASE("fast attention with every visible block kept equals fast dense attention") {
  std::mt19937 rng(8);
  CaseShape shape{{150, 3}, {150, 3}, true, 4, 2, 64};
  auto c = make_inputs<float>(shape, rng);
  const auto all = seer::all_visible_blocks(2, seer::sequence_geometries(c.q_view(), c.k_view(), 64, true));
  const auto sparse = run_executor<float, float>(c, &all, AttentionOptions{}, fast_with_threads(2));
  const auto dense = run_executor<float, float>(c, nullptr, AttentionOptions{}, fast_with_threads(2));
  // Same blocks in the same order: the same arithmetic, so the results are identical.
  CHECK(max_abs_difference(sparse.output, dense.output) == 0.0);
  CHECK(max_abs_difference(sparse.lse, dense.lse) == 0.0);
}

TEST_CASE("fast attention gives the same result for any thread count") {
  std::mt19937 rng(81);
  CaseShape shape{{130, 64}, {130, 64}, true, 4, 4, 64};
  auto c = make_inputs<float>(shape, rng);
  const auto blocks = random_blocks(4, seer::sequence_geometries(c.q_view(), c.k_view(), 32, true), 0.5, rng);
  const auto one = run_executor<float, float>(c, &blocks, AttentionOptions{}, fast_with_threads(1));
  const auto three = run_executor<float, float>(c, &blocks, AttentionOptions{}, fast_with_threads(3));
  CHECK(max_abs_difference(one.output, three.output) == 0.0);
  CHECK(max_abs_difference(one.lse, three.lse) == 0.0);
}

TEST_CASE("fast attention writes double and 16-bit outputs") {
  std::mt19937 rng(12);
  CaseShape shape{{77}, {77}, false, 2, 1, 64};
  auto c = make_inputs<seer::half>(shape, rng);
  const auto blocks = random_blocks(2, seer::sequence_geometries(c.q_view(), c.k_view(), 32, true), 0.5, rng);
  const auto exact = run_executor<double, double>(c, &blocks, AttentionOptions{}, reference);
  std::vector<double> naive_output, naive_lse;
  naive_attention<float>(c, token_mask(blocks, 2, 1), AttentionOptions{}.scale_for(64), naive_output, naive_lse);

  const auto in_double = run_executor<double, double>(c, &blocks, AttentionOptions{}, fast_with_threads(2));
  CHECK(max_abs_difference(in_double.output, exact.output) <=
        2 * max_abs_difference(naive_output, exact.output) + 1e-5);
  CHECK(max_abs_difference(in_double.lse, exact.lse) <= 2 * max_abs_difference(naive_lse, exact.lse) + 1e-5);

  // A 16-bit output adds one rounding; the naive implementation rounds its output the same way.
  auto rounded = [](std::vector<double> values, auto tag) {
    for (auto& x : values) x = seer::round_to<decltype(tag)>(static_cast<float>(x));
    return values;
  };
  const auto in_half = run_executor<seer::half, float>(c, &blocks, AttentionOptions{}, fast_with_threads(2));
  CHECK(max_abs_difference(in_half.output, exact.output) <=
        2 * max_abs_difference(rounded(naive_output, seer::half{}), exact.output) + 1e-5);
  const auto in_bfloat16 = run_executor<seer::bfloat16, float>(c, &blocks, AttentionOptions{}, fast_with_threads(2));
  CHECK(max_abs_difference(in_bfloat16.output, exact.output) <=
        2 * max_abs_difference(rounded(naive_output, seer::bfloat16{}), exact.output) + 1e-5);
}

TEST_CASE("fast attention gives output 0 and lse -inf to rows that attend to nothing") {
  std::mt19937 rng(5);
  SUBCASE("a hand-built BlockSet with an empty row, GQA 2 with per-query-head rows") {
    CaseShape shape{{96}, {96}, false, 2, 1, 64};
    auto c = make_inputs<float>(shape, rng);
    const auto sequences = seer::sequence_geometries(c.q_view(), c.k_view(), 32, true);
    BlockSet blocks(2, 32, sequences);
    blocks.append_row({0});  // head 0
    blocks.append_row({0, 1});
    blocks.append_row(std::vector<std::int32_t>{});  // head 0, query block 2: empty
    blocks.append_row(std::vector<std::int32_t>{});  // head 1, query block 0: empty
    blocks.append_row({1});
    blocks.append_row({0, 2});
    const auto exact = run_executor<double, double>(c, &blocks, AttentionOptions{}, reference);
    const auto fast = run_executor<float, float>(c, &blocks, AttentionOptions{}, fast_with_threads(2));
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t i = 0; i < 96; ++i) {
        const bool empty = (h == 0 && i >= 64) || (h == 1 && i < 32);
        CHECK((fast.lse[h * 96 + i] == -std::numeric_limits<double>::infinity()) == empty);
        if (empty)
          for (std::int64_t d = 0; d < 64; ++d) CHECK(fast.output[(i * 2 + h) * 64 + d] == 0.0);
      }
    CHECK(max_abs_difference(fast.output, exact.output) < 1e-4);
    CHECK(max_abs_difference(fast.lse, exact.lse) < 1e-4);
  }
  SUBCASE("a gate that rules out every block, with the diagonal not forced") {
    CaseShape shape{{100}, {100}, false, 2, 2, 64};
    auto c = make_inputs<seer::bfloat16>(shape, rng);
    struct RuledOut {
      std::vector<BlockGeometry> geometry;
      std::int64_t heads() const { return 2; }
      const std::vector<BlockGeometry>& sequences() const { return geometry; }
      void score_row(std::int64_t, std::int64_t, std::int64_t m, double* logits) const {
        for (std::int64_t n = 0; n < geometry[0].visible_key_blocks(m); ++n)
          logits[n] = -std::numeric_limits<double>::infinity();
      }
    };
    seer::ForcedBlocks forced;
    forced.keep_diagonal = false;
    const BlockSet blocks = seer::select_blocks(RuledOut{seer::sequence_geometries(c.q_view(), c.k_view(), 32, true)},
                                                seer::Threshold{0.5}, forced);
    REQUIRE(blocks.kept_blocks() == 0);
    const auto fast = run_executor<float, double>(c, &blocks, AttentionOptions{}, fast_with_threads(2));
    for (double x : fast.output) CHECK(x == 0.0);
    for (double x : fast.lse) CHECK(x == -std::numeric_limits<double>::infinity());
  }
  SUBCASE("a chunk whose rows straddle the key grid") {
    // k_len - q_len = 20: rows of query block 0 see keys up to 20..51, i.e. the diagonal spans two blocks.
    CaseShape shape{{40}, {60}, false, 1, 1, 64};
    auto c = make_inputs<float>(shape, rng);
    BlockSet blocks(1, 32, seer::sequence_geometries(c.q_view(), c.k_view(), 32, true));
    blocks.append_row({1});  // rows 0..11 see only keys <= 31 of block 0, so they attend to nothing
    blocks.append_row({0, 1});
    const auto exact = run_executor<double, double>(c, &blocks, AttentionOptions{}, reference);
    const auto fast = run_executor<float, float>(c, &blocks, AttentionOptions{}, fast_with_threads(2));
    for (std::int64_t i = 0; i < 40; ++i) CHECK((fast.lse[i] == -std::numeric_limits<double>::infinity()) == (i < 12));
    CHECK(max_abs_difference(fast.output, exact.output) < 1e-4);
  }
}

TEST_CASE("fast attention ignores kept key blocks that are causally invisible") {
  std::mt19937 rng(11);
  CaseShape shape{{128}, {128}, false, 1, 1, 64};
  auto c = make_inputs<float>(shape, rng);
  const auto sequences = seer::sequence_geometries(c.q_view(), c.k_view(), 32, true);
  BlockSet future(1, 32, sequences);
  for (std::int32_t m = 0; m < 4; ++m) future.append_row({0, 1, 2, 3});
  const auto visible = seer::all_visible_blocks(1, sequences);
  const auto sparse = run_executor<float, float>(c, &future, AttentionOptions{}, fast_with_threads(2));
  const auto dense = run_executor<float, float>(c, &visible, AttentionOptions{}, fast_with_threads(2));
  CHECK(max_abs_difference(sparse.output, dense.output) == 0.0);
}

TEST_CASE("fast attention rejects bad arguments, naming them") {
  std::mt19937 rng(17);
  CaseShape shape{{16}, {16}, false, 4, 2, 64};
  auto c = make_inputs<float>(shape, rng);
  auto out = output_like<float>(c.q);
  std::vector<float> lse(static_cast<std::size_t>(4 * 16));
  const auto lse_view = seer::TensorView<float, 2>::contiguous(lse.data(), {4, 16});
  const auto q = c.q_view(), k = c.k_view(), v = c.v_view();
  auto run = [&](auto q_, auto k_, const BlockSet* blocks, const AttentionOptions& options, auto lse_) {
    return [=, &out] { seer::cpu::block_sparse_attention(q_, k_, v, blocks, options, out.view(), lse_, 2); };
  };
  auto null_k = k;
  null_k.data = nullptr;
  check_rejects(run(q, null_k, nullptr, AttentionOptions{}, lse_view), "k");
  auto wide_k = k;
  wide_k.head_dim = 128;
  check_rejects(run(q, wide_k, nullptr, AttentionOptions{}, lse_view), "k");
  AttentionOptions negative;
  negative.softmax_scale = -0.5;
  check_rejects(run(q, k, nullptr, negative, lse_view), "options.softmax_scale");
  const auto shorter = seer::all_visible_blocks(4, {BlockGeometry{8, 16, 32, true}});
  check_rejects(run(q, k, &shorter, AttentionOptions{}, lse_view), "blocks");
  auto narrow_lse = lse_view;
  narrow_lse.extent[1] = 8;
  check_rejects(run(q, k, nullptr, AttentionOptions{}, narrow_lse), "lse");
}
