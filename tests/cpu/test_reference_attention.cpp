// The float64 reference executor: hand-checked numbers, an independent naive loop, block-sparse
// semantics, empty rows and argument errors.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention_test_support.hpp"
#include "seer/cpu/reference_attention.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/threshold.hpp"

namespace {

using seer::AttentionOptions;
using seer::BlockGeometry;
using seer::BlockSet;
using namespace seer::testing;

// The two-token case of the hand computation below, in element type T.
template <class T>
AttentionInputs<T> two_token_case() {
  AttentionInputs<T> c;
  c.q = padded<T>(1, 2, 1, 2);
  c.k = padded<T>(1, 2, 1, 2);
  c.v = padded<T>(1, 2, 1, 2);
  auto set = [](OwnedBatch<T>& batch, std::vector<float> values) {
    for (std::size_t i = 0; i < values.size(); ++i) batch.storage[i] = seer::from_float<T>(values[i]);
  };
  set(c.q, {1, 0, 0, 1});   // q0 = (1, 0), q1 = (0, 1)
  set(c.k, {1, 0, 1, 1});   // k0 = (1, 0), k1 = (1, 1)
  set(c.v, {1, 2, 3, -1});  // v0 = (1, 2), v1 = (3, -1)
  return c;
}

}  // namespace

TEST_CASE_TEMPLATE("reference attention matches a hand computation of two tokens", T, float, double, seer::half,
                   seer::bfloat16) {
  // Scale 1. Scores: q0.k0 = 1, q0.k1 = 1, q1.k0 = 0, q1.k1 = 1.
  // Causal row 0 sees k0 only: out = v0 = (1, 2), lse = 1.
  // Causal row 1: weights 1/(1+e) = 0.2689414214, e/(1+e) = 0.7310585786;
  //   out = 0.2689414214 (1, 2) + 0.7310585786 (3, -1) = (2.4621171573, -0.1931757359), lse = log(1 + e)
  //   = 1.3132616875.
  // Non-causal row 0: weights 1/2, 1/2: out = (2, 0.5), lse = 1 + log 2 = 1.6931471806.
  auto c = two_token_case<T>();
  AttentionOptions options;
  options.softmax_scale = 1.0;
  const auto causal = run_executor<double, double>(c, nullptr, options, reference);
  const std::vector<double> causal_output{1, 2, 2.4621171573, -0.1931757359};
  for (std::size_t i = 0; i < causal_output.size(); ++i) CHECK(causal.output[i] == doctest::Approx(causal_output[i]));
  CHECK(causal.lse[0] == doctest::Approx(1.0));
  CHECK(causal.lse[1] == doctest::Approx(1.3132616875));

  options.causal = false;
  const auto full = run_executor<double, double>(c, nullptr, options, reference);
  CHECK(full.output[0] == doctest::Approx(2.0));
  CHECK(full.output[1] == doctest::Approx(0.5));
  CHECK(full.lse[0] == doctest::Approx(1.6931471806));
  CHECK(full.output[2] == doctest::Approx(2.4621171573));  // row 1 already saw every key
}

TEST_CASE("reference attention uses 1/sqrt(D) when the scale is 0") {
  auto c = two_token_case<double>();
  AttentionOptions options;  // scale 1/sqrt(2)
  const auto result = run_executor<double, double>(c, nullptr, options, reference);
  // Row 1: scores 0 and 1/sqrt(2): weight of k1 = 1 / (1 + exp(-1/sqrt(2))) = 0.6697615493.
  const double w1 = 0.6697615493;
  CHECK(result.output[2] == doctest::Approx((1 - w1) * 1 + w1 * 3));
  CHECK(result.lse[1] == doctest::Approx(std::log(1 + std::exp(1 / std::sqrt(2.0)))));
}

namespace {

struct ReferenceCase {
  const char* name;
  CaseShape shape;
  bool causal;
};

std::vector<ReferenceCase> reference_cases() {
  std::vector<ReferenceCase> cases;
  cases.push_back({"padded causal", {{37, 37}, {37, 37}, false, 2, 2, 8}, true});
  cases.push_back({"padded non-causal head-major strides", {{20}, {20}, false, 2, 1, 8, true}, false});
  cases.push_back({"packed with an empty sequence, GQA 4", {{13, 0, 70, 1}, {13, 0, 70, 1}, true, 4, 1, 8}, true});
  cases.push_back({"query chunk at the end of longer keys", {{9, 17}, {40, 100}, true, 2, 2, 8}, true});
  cases.push_back({"more queries than keys", {{30}, {11}, true, 2, 1, 8}, true});
  cases.push_back({"non-causal q_len != k_len", {{30}, {11}, true, 2, 1, 8}, false});
  return cases;
}

}  // namespace

TEST_CASE("reference attention equals an independent naive float64 loop") {
  std::mt19937 rng(1234);
  for (const auto& test : reference_cases()) {
    CAPTURE(std::string(test.name));
    auto c = make_inputs<double>(test.shape, rng);
    AttentionOptions options;
    options.causal = test.causal;
    options.softmax_scale = 0.3;
    const auto result = run_executor<double, double>(c, nullptr, options, reference);
    std::vector<double> output, lse;
    naive_attention<double>(c, causal_mask(test.causal, test.shape.q_lengths, test.shape.k_lengths), 0.3, output, lse);
    CHECK(max_abs_difference(result.output, output) < 1e-12);
    CHECK(max_abs_difference(result.lse, lse) < 1e-12);
  }
}

TEST_CASE("reference block-sparse attention equals dense attention under the BlockSet's token mask") {
  std::mt19937 rng(99);
  for (const auto& test : reference_cases()) {
    for (const bool per_query_head : {true, false}) {
      for (const std::int64_t block_size : {8, 16}) {
        CAPTURE(std::string(test.name));
        CAPTURE(per_query_head);
        CAPTURE(block_size);
        auto c = make_inputs<float>(test.shape, rng);
        AttentionOptions options;
        options.causal = test.causal;
        const auto sequences = seer::sequence_geometries(c.q.const_view(), c.k.const_view(), block_size, test.causal);
        const std::int64_t heads = per_query_head ? test.shape.q_heads : test.shape.kv_heads;
        const BlockSet blocks = random_blocks(heads, sequences, 0.4, rng, /*keep_diagonal=*/false);
        const auto result = run_executor<double, double>(c, &blocks, options, reference);
        std::vector<double> output, lse;
        naive_attention<double>(c, token_mask(blocks, test.shape.q_heads, test.shape.kv_heads),
                                options.scale_for(test.shape.dim), output, lse);
        CHECK(max_abs_difference(result.output, output) < 1e-12);
        CHECK(max_abs_difference(result.lse, lse) < 1e-12);
      }
    }
  }
}

TEST_CASE("reference attention with every visible block kept equals dense attention") {
  std::mt19937 rng(7);
  CaseShape shape{{50, 0, 33}, {70, 5, 33}, true, 4, 2, 16};
  auto c = make_inputs<seer::bfloat16>(shape, rng);
  AttentionOptions options;
  const auto sequences = seer::sequence_geometries(c.q.const_view(), c.k.const_view(), 16, true);
  const BlockSet all = seer::all_visible_blocks(4, sequences);
  const auto sparse = run_executor<double, double>(c, &all, options, reference);
  const auto dense = run_executor<double, double>(c, nullptr, options, reference);
  CHECK(max_abs_difference(sparse.output, dense.output) < 1e-14);
  CHECK(max_abs_difference(sparse.lse, dense.lse) < 1e-14);
}

TEST_CASE("reference attention gives output 0 and lse -inf to rows that attend to nothing") {
  std::mt19937 rng(5);
  SUBCASE("a hand-built BlockSet with an empty row") {
    CaseShape shape{{24}, {24}, false, 1, 1, 4};
    auto c = make_inputs<float>(shape, rng);
    const auto sequences = seer::sequence_geometries(c.q.const_view(), c.k.const_view(), 8, true);
    BlockSet blocks(1, 8, sequences);
    blocks.append_row({0});
    blocks.append_row(std::vector<std::int32_t>{});  // query block 1 keeps nothing
    blocks.append_row({0, 2});
    const auto result = run_executor<float, float>(c, &blocks, AttentionOptions{}, reference);
    for (std::int64_t i = 0; i < 24; ++i) {
      const bool empty = i >= 8 && i < 16;
      CHECK((result.lse[i] == -std::numeric_limits<double>::infinity()) == empty);
      if (empty)
        for (std::int64_t d = 0; d < 4; ++d) CHECK(result.output[i * 4 + d] == 0.0);
    }
  }
  SUBCASE("a gate that rules out every block, with the diagonal not forced") {
    CaseShape shape{{40}, {40}, false, 2, 2, 8};
    auto c = make_inputs<float>(shape, rng);
    struct FlatScores {
      std::vector<BlockGeometry> geometry;
      std::int64_t heads() const { return 2; }
      const std::vector<BlockGeometry>& sequences() const { return geometry; }
      void score_row(std::int64_t, std::int64_t, std::int64_t m, double* logits) const {
        for (std::int64_t n = 0; n < geometry[0].visible_key_blocks(m); ++n)
          logits[n] = -std::numeric_limits<double>::infinity();
      }
    };
    const FlatScores scores{seer::sequence_geometries(c.q.const_view(), c.k.const_view(), 16, true)};
    seer::ForcedBlocks forced;
    forced.keep_diagonal = false;
    const BlockSet blocks = seer::select_blocks(scores, seer::Threshold{0.5}, forced);
    REQUIRE(blocks.kept_blocks() == 0);
    const auto result = run_executor<double, double>(c, &blocks, AttentionOptions{}, reference);
    for (double x : result.output) CHECK(x == 0.0);
    for (double x : result.lse) CHECK(x == -std::numeric_limits<double>::infinity());
  }
  SUBCASE("more queries than keys: the early rows see no key") {
    CaseShape shape{{10}, {4}, false, 1, 1, 4};
    auto c = make_inputs<float>(shape, rng);
    const auto result = run_executor<float, float>(c, nullptr, AttentionOptions{}, reference);
    for (std::int64_t i = 0; i < 10; ++i) CHECK((result.lse[i] == -std::numeric_limits<double>::infinity()) == (i < 6));
  }
}

TEST_CASE("reference attention ignores kept key blocks that are causally invisible") {
  std::mt19937 rng(11);
  CaseShape shape{{32}, {32}, false, 1, 1, 8};
  auto c = make_inputs<float>(shape, rng);
  const auto sequences = seer::sequence_geometries(c.q.const_view(), c.k.const_view(), 8, true);
  BlockSet future(1, 8, sequences);
  for (std::int32_t m = 0; m < 4; ++m) future.append_row({0, 1, 2, 3});  // includes blocks above the diagonal
  const auto sparse = run_executor<double, double>(c, &future, AttentionOptions{}, reference);
  const auto dense = run_executor<double, double>(c, nullptr, AttentionOptions{}, reference);
  CHECK(max_abs_difference(sparse.output, dense.output) < 1e-14);
}

TEST_CASE("reference attention stores 16-bit outputs rounded from float64") {
  std::mt19937 rng(3);
  CaseShape shape{{19}, {19}, false, 2, 2, 8};
  auto c = make_inputs<float>(shape, rng);
  const auto exact = run_executor<double, double>(c, nullptr, AttentionOptions{}, reference);
  const auto halves = run_executor<seer::half, float>(c, nullptr, AttentionOptions{}, reference);
  for (std::size_t i = 0; i < exact.output.size(); ++i)
    CHECK(halves.output[i] == seer::round_to<seer::half>(static_cast<float>(exact.output[i])));
}

TEST_CASE("attention executors reject bad arguments, naming them") {
  std::mt19937 rng(17);
  CaseShape shape{{16}, {16}, false, 4, 2, 8};
  auto c = make_inputs<float>(shape, rng);
  auto out = output_like<float>(c.q);
  std::vector<float> lse(static_cast<std::size_t>(4 * 16));
  const auto lse_view = seer::TensorView<float, 2>::contiguous(lse.data(), {4, 16});
  const auto q = c.q_view(), k = c.k_view(), v = c.v_view();
  const AttentionOptions options;
  auto call = [&](auto q_, auto k_, auto v_, const BlockSet* blocks, const AttentionOptions& options_, auto out_,
                  auto lse_) {
    return [=] { seer::cpu::reference_attention(q_, k_, v_, blocks, options_, out_, lse_); };
  };

  auto null_q = q;
  null_q.data = nullptr;
  check_rejects(call(null_q, k, v, nullptr, options, out.view(), lse_view), "q");
  auto three_kv_heads = k;
  three_kv_heads.heads = 3;
  auto three_v_heads = v;
  three_v_heads.heads = 3;
  check_rejects(call(q, three_kv_heads, three_v_heads, nullptr, options, out.view(), lse_view), "k");
  auto short_dim = k;
  short_dim.head_dim = 4;
  check_rejects(call(q, short_dim, v, nullptr, options, out.view(), lse_view), "k");
  auto wrong_v = v;
  wrong_v.heads = 1;
  check_rejects(call(q, k, wrong_v, nullptr, options, out.view(), lse_view), "v");
  AttentionOptions negative;
  negative.softmax_scale = -1.0;
  check_rejects(call(q, k, v, nullptr, negative, out.view(), lse_view), "options.softmax_scale");
  AttentionOptions not_finite;
  not_finite.softmax_scale = std::numeric_limits<double>::quiet_NaN();
  check_rejects(call(q, k, v, nullptr, not_finite, out.view(), lse_view), "options.softmax_scale");
  auto small_lse = lse_view;
  small_lse.extent[1] = 15;
  check_rejects(call(q, k, v, nullptr, options, out.view(), small_lse), "lse");
  auto few_lse_rows = lse_view;
  few_lse_rows.extent[0] = 2;
  check_rejects(call(q, k, v, nullptr, options, out.view(), few_lse_rows), "lse");
  auto narrow_out = out.view();
  narrow_out.heads = 2;
  check_rejects(call(q, k, v, nullptr, options, narrow_out, lse_view), "out");

  // BlockSets: built for other lengths, other heads, the other causality, incomplete.
  const auto other_lengths = seer::all_visible_blocks(4, {BlockGeometry{24, 24, 8, true}});
  check_rejects(call(q, k, v, &other_lengths, options, out.view(), lse_view), "blocks");
  const auto sequences = seer::sequence_geometries(q, k, 8, true);
  const auto three_heads = seer::all_visible_blocks(3, sequences);
  check_rejects(call(q, k, v, &three_heads, options, out.view(), lse_view), "blocks");
  const auto non_causal = seer::all_visible_blocks(4, seer::sequence_geometries(q, k, 8, false));
  check_rejects(call(q, k, v, &non_causal, options, out.view(), lse_view), "blocks");
  BlockSet incomplete(4, 8, sequences);
  incomplete.append_row({0});
  check_rejects(call(q, k, v, &incomplete, options, out.view(), lse_view), "blocks");

  // Packed lengths that do not fit their view.
  CaseShape packed_shape{{5, 7}, {5, 7}, true, 4, 2, 8};
  auto p = make_inputs<float>(packed_shape, rng);
  auto packed_out = output_like<float>(p.q);
  auto packed_q = p.q.const_view();
  std::vector<std::int32_t> bad_lengths{0, 5, 14};  // ends past the 12 stored tokens
  packed_q.cu_seqlens = bad_lengths.data();
  auto packed_out_view = output_view(packed_out, p.q);
  packed_out_view.cu_seqlens = bad_lengths.data();
  std::vector<float> packed_lse(static_cast<std::size_t>(4 * 14));
  const auto packed_lse_view = seer::TensorView<float, 2>::contiguous(packed_lse.data(), {4, 14});
  check_rejects(call(packed_q, p.k_view(), p.v_view(), nullptr, options, packed_out_view, packed_lse_view), "q");
}
