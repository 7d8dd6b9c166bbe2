// Ground truth for gate distillation (two- and one-dimensional) and the OracleGate built on it.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention_test_support.hpp"
#include "seer/cpu/ground_truth.hpp"
#include "seer/gate/oracle_gate.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/top_k.hpp"

namespace {

using seer::AttentionOptions;
using seer::BlockGeometry;
using seer::BlockSet;
using namespace seer::testing;

// Dense attention probabilities by the definition, in double: probabilities[b][h][i][j] (0 where
// row i cannot see key j).
using Probabilities = std::vector<std::vector<std::vector<std::vector<double>>>>;

template <class T>
Probabilities brute_force_probabilities(AttentionInputs<T>& c, const AttentionOptions& options) {
  const auto q = c.q_view(), k = c.k_view();
  const double scale = options.scale_for(q.head_dim);
  Probabilities result(static_cast<std::size_t>(q.batch));
  for (std::int64_t b = 0; b < q.batch; ++b) {
    const BlockGeometry geometry{q.length(b), k.length(b), 1, options.causal};
    result[b].resize(static_cast<std::size_t>(q.heads));
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const auto queries = head_rows<double>(q, b, h);
      const auto keys = head_rows<double>(k, b, h / (q.heads / k.heads));
      for (std::int64_t i = 0; i < q.length(b); ++i) {
        std::vector<double> row(static_cast<std::size_t>(k.length(b)), 0.0);
        double total = 0.0;
        for (std::int64_t j = 0; j < k.length(b); ++j) {
          if (!geometry.visible(i, j)) continue;
          double dot = 0.0;
          for (std::int64_t d = 0; d < q.head_dim; ++d) dot += queries[i * q.head_dim + d] * keys[j * q.head_dim + d];
          total += row[j] = std::exp(scale * dot);  // inputs are small: no overflow without the max shift
        }
        for (auto& p : row) p = total > 0.0 ? p / total : 0.0;
        result[b][h].push_back(row);
      }
    }
  }
  return result;
}

}  // namespace

TEST_CASE("two-dimensional ground truth of a hand-checked case") {
  // D = 1, scale 1, q_i = 1, k = (0, ln 2, 0, ln 3): exp(scores) = (1, 2, 1, 3). Block size 2, causal.
  //   row 0: (1)                row 1: (1/3, 2/3)
  //   row 2: (1/4, 2/4, 1/4)    row 3: (1/7, 2/7, 1/7, 3/7)
  // Query block 0 (rows 0, 1) sees key block 0 only: raw = (1)           -> GT = (1).
  // Query block 1 (rows 2, 3): block 0: max(1/4, 2/4, 1/7, 2/7) = 1/2; block 1: max(1/4, 1/7, 3/7) = 3/7;
  //   sum 13/14                                                           -> GT = (7/13, 6/13).
  AttentionInputs<double> c;
  c.q = padded<double>(1, 4, 1, 1);
  c.k = padded<double>(1, 4, 1, 1);
  c.q.storage = {1, 1, 1, 1};
  c.k.storage = {0, std::log(2.0), 0, std::log(3.0)};
  AttentionOptions options;
  options.softmax_scale = 1.0;
  const auto truth = seer::cpu::two_dimensional_ground_truth(c.q_view(), c.k_view(), options, 2);
  REQUIRE(truth.rows.rows() == 2);
  CHECK(truth.rows.size(0) == 1);
  CHECK(truth.row(0, 0, 0)[0] == doctest::Approx(1.0));
  CHECK(truth.rows.size(1) == 2);
  CHECK(truth.row(0, 0, 1)[0] == doctest::Approx(7.0 / 13.0));
  CHECK(truth.row(0, 0, 1)[1] == doctest::Approx(6.0 / 13.0));

  std::int64_t query_blocks = 0, key_blocks = 0;
  const auto dense = truth.dense(query_blocks, key_blocks);
  CHECK(query_blocks == 2);
  CHECK(key_blocks == 2);
  CHECK(dense == std::vector<float>{1.0f, 0.0f, static_cast<float>(7.0 / 13.0), static_cast<float>(6.0 / 13.0)});
}

TEST_CASE("one-dimensional ground truth of a hand-checked case with a GQA group of 2") {
  // D = 1, scale 1, k = (0, ln 2, 0, ln 3, ln 4, 0), block size 2; head 0 has q = 1, head 1 has q = 2,
  // so exp(scores) are (1, 2, 1, 3, 4, 1) for head 0 and their squares (1, 4, 1, 9, 16, 1) for head 1.
  // Tokens 0, 1 have no complete block before their own: empty rows. Tokens 2, 3 keep block 0 only:
  // a single entry raw / (raw + 1e-9). Token 4 keeps blocks 0 and 1 (keys 0..4 visible):
  //   head 0: sum 11: block 0 max 2/11, block 1 max 3/11;  head 1: sum 31: 4/31, 9/31.
  //   raw = (max(2/11, 4/31), max(3/11, 9/31)) = (2/11, 9/31), normalised by its sum.
  // Token 5 (all keys): head 0 sum 12: (2/12, 3/12); head 1 sum 32: (4/32, 9/32) -> raw = (2/12, 9/32).
  AttentionInputs<double> c;
  c.q = padded<double>(1, 6, 2, 1);
  c.k = padded<double>(1, 6, 1, 1);
  c.q.storage = {1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2};  // [token][head]
  c.k.storage = {0, std::log(2.0), 0, std::log(3.0), std::log(4.0), 0};
  AttentionOptions options;
  options.softmax_scale = 1.0;
  const auto truth = seer::cpu::one_dimensional_ground_truth(c.q_view(), c.k_view(), options, 2);
  CHECK(truth.row_size(0, 0, 0) == 0);
  CHECK(truth.row_size(0, 0, 1) == 0);
  CHECK(truth.row_size(0, 0, 2) == 1);
  CHECK(truth.row(0, 0, 2)[0] == doctest::Approx(1.0));
  CHECK(truth.row(0, 0, 3)[0] == doctest::Approx(1.0));
  REQUIRE(truth.row_size(0, 0, 4) == 2);
  const double a = 2.0 / 11.0, b = 9.0 / 31.0;
  CHECK(truth.row(0, 0, 4)[0] == doctest::Approx(a / (a + b + 1e-9)));
  CHECK(truth.row(0, 0, 4)[1] == doctest::Approx(b / (a + b + 1e-9)));
  const double a5 = 2.0 / 12.0, b5 = 9.0 / 32.0;
  CHECK(truth.row(0, 0, 5)[0] == doctest::Approx(a5 / (a5 + b5)));
  CHECK(truth.row(0, 0, 5)[1] == doctest::Approx(b5 / (a5 + b5)));
}

namespace {

struct TruthCase {
  std::string name;
  CaseShape shape;
  bool causal;
  std::int64_t block_size;
};

std::vector<TruthCase> truth_cases() {
  return {
      {"padded, partial last block, GQA 2", {{45, 45}, {45, 45}, false, 4, 2, 16}, true, 16},
      {"packed with one token and an empty sequence", {{1, 0, 33}, {1, 0, 33}, true, 2, 1, 16}, true, 8},
      {"query chunk at the end of longer keys", {{12}, {50}, true, 2, 2, 16}, true, 16},
      {"more queries than keys", {{30}, {12}, true, 2, 2, 16}, true, 8},
      {"non-causal", {{20}, {37}, true, 2, 1, 16}, false, 8},
  };
}

}  // namespace

TEST_CASE("two-dimensional ground truth equals its definition and its rows sum to 1, max and mass pooling") {
  using seer::cpu::BlockTargetPooling;
  std::mt19937 rng(31);
  for (const auto pooling : {BlockTargetPooling::max, BlockTargetPooling::mass}) {
    CAPTURE(static_cast<int>(pooling));
    for (const auto& test : truth_cases()) {
      CAPTURE(test.name);
      auto c = make_inputs<seer::bfloat16>(test.shape, rng);
      AttentionOptions options;
      options.causal = test.causal;
      const auto truth =
          seer::cpu::two_dimensional_ground_truth(c.q_view(), c.k_view(), options, test.block_size, 2, pooling);
      const auto probabilities = brute_force_probabilities(c, options);
      const std::int64_t block = test.block_size;
      for (std::int64_t b = 0; b < c.q.batch; ++b) {
        const BlockGeometry& geometry = truth.sequences[b];
        for (std::int64_t h = 0; h < c.q.heads; ++h)
          for (std::int64_t m = 0; m < geometry.query_blocks(); ++m) {
            const std::int64_t r = truth.row_index(b, h, m);
            REQUIRE(truth.rows.size(r) == geometry.visible_key_blocks(m));
            std::vector<double> raw(static_cast<std::size_t>(geometry.visible_key_blocks(m)), 0.0);
            for (std::int64_t i = geometry.first_row(m); i <= geometry.last_row(m); ++i)
              for (std::int64_t j = 0; j < geometry.k_len; ++j)
                if (j / block < static_cast<std::int64_t>(raw.size()))
                  raw[j / block] = pooling == BlockTargetPooling::max
                                       ? std::max(raw[j / block], probabilities[b][h][i][j])
                                       : raw[j / block] + probabilities[b][h][i][j];
            const double total = std::accumulate(raw.begin(), raw.end(), 0.0);
            double row_sum = 0.0;
            for (std::size_t n = 0; n < raw.size(); ++n) {
              CHECK(truth.rows.row(r)[n] == doctest::Approx(raw[n] / total).epsilon(1e-12));
              row_sum += truth.rows.row(r)[n];
            }
            if (!raw.empty()) CHECK(row_sum == doctest::Approx(1.0).epsilon(1e-12));
          }
      }
    }
  }
}

TEST_CASE("two-dimensional ground truth with mass pooling: a hand-checked case") {
  // The case of "two-dimensional ground truth of a hand-checked case": query block 1 (rows 2, 3) puts
  // mass (1/4 + 2/4) + (1/7 + 2/7) = 3/4 + 3/7 on key block 0 and 1/4 + (1/7 + 3/7) = 1/4 + 4/7 on key
  // block 1; over the 2 rows: (33/56, 23/56).
  AttentionInputs<double> c;
  c.q = padded<double>(1, 4, 1, 1);
  c.k = padded<double>(1, 4, 1, 1);
  c.q.storage = {1, 1, 1, 1};
  c.k.storage = {0, std::log(2.0), 0, std::log(3.0)};
  AttentionOptions options;
  options.softmax_scale = 1.0;
  const auto truth = seer::cpu::two_dimensional_ground_truth(c.q_view(), c.k_view(), options, 2, 1,
                                                             seer::cpu::BlockTargetPooling::mass);
  CHECK(truth.row(0, 0, 0)[0] == doctest::Approx(1.0));
  CHECK(truth.row(0, 0, 1)[0] == doctest::Approx(33.0 / 56.0));
  CHECK(truth.row(0, 0, 1)[1] == doctest::Approx(23.0 / 56.0));
}

TEST_CASE("one-dimensional ground truth equals its definition") {
  std::mt19937 rng(32);
  for (const auto& test : truth_cases()) {
    CAPTURE(test.name);
    auto c = make_inputs<float>(test.shape, rng);
    AttentionOptions options;
    options.causal = test.causal;
    const auto truth = seer::cpu::one_dimensional_ground_truth(c.q_view(), c.k_view(), options, test.block_size, 2);
    const auto probabilities = brute_force_probabilities(c, options);
    const std::int64_t block = test.block_size, group = c.q.heads / c.k.heads;
    for (std::int64_t b = 0; b < c.q.batch; ++b) {
      const BlockGeometry& geometry = truth.sequences[b];
      for (std::int64_t kv_head = 0; kv_head < c.k.heads; ++kv_head)
        for (std::int64_t t = 0; t < geometry.q_len; ++t) {
          const std::int64_t position = t + geometry.k_len - geometry.q_len;
          const std::int64_t complete = position > 0 ? position / block : 0;
          REQUIRE(truth.row_size(b, kv_head, t) == complete);
          std::vector<double> raw(static_cast<std::size_t>(complete), 0.0);
          for (std::int64_t h = kv_head * group; h < (kv_head + 1) * group; ++h)
            for (std::int64_t j = 0; j < complete * block; ++j)
              raw[j / block] = std::max(raw[j / block], probabilities[b][h][t][j]);
          const double total = std::accumulate(raw.begin(), raw.end(), 0.0);
          for (std::int64_t n = 0; n < complete; ++n)
            CHECK(truth.row(b, kv_head, t)[n] == doctest::Approx(raw[n] / (total + 1e-9)).epsilon(1e-12));
        }
    }
  }
}

TEST_CASE("OracleGate logits are the log of the two-dimensional ground truth") {
  std::mt19937 rng(33);
  CaseShape shape{{70, 0, 20}, {90, 3, 20}, true, 4, 2, 16};
  auto c = make_inputs<seer::half>(shape, rng);
  AttentionOptions options;
  const auto truth = seer::cpu::two_dimensional_ground_truth(c.q_view(), c.k_view(), options, 16);
  const auto scores = seer::OracleGate{}.score(c.q_view(), c.k_view(), options, 16);
  CHECK(scores.heads() == 4);
  REQUIRE(scores.sequences().size() == 3);
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t h = 0; h < 4; ++h)
      for (std::int64_t m = 0; m < scores.sequences()[b].query_blocks(); ++m) {
        const std::int64_t count = scores.sequences()[b].visible_key_blocks(m);
        std::vector<double> logits(static_cast<std::size_t>(count) + 1, std::numeric_limits<double>::quiet_NaN());
        scores.score_row(b, h, m, logits.data());
        CHECK(std::isnan(logits[count]));  // writes exactly the visible blocks
        for (std::int64_t n = 0; n < count; ++n)
          CHECK(std::exp(logits[n]) == doctest::Approx(truth.row(b, h, m)[n]).epsilon(1e-12));
      }
}

TEST_CASE("OracleGate with TopK keeps the blocks that hold the attention") {
  std::mt19937 rng(34);
  SUBCASE("a planted block") {
    // Queries of block 5 all point along u; keys of block 1 are 4u, every other value is small noise,
    // so row block 5 attends almost entirely to key block 1.
    CaseShape shape{{96}, {96}, false, 1, 1, 8};
    auto c = make_inputs<float>(shape, rng);
    for (auto& x : c.q.storage) x *= 0.1f;
    for (auto& x : c.k.storage) x *= 0.1f;
    for (std::int64_t t = 80; t < 96; ++t) c.q.storage[t * 8] = 2.0f;
    for (std::int64_t t = 16; t < 32; ++t) c.k.storage[t * 8] = 4.0f;
    const auto scores = seer::OracleGate{}.score(c.q_view(), c.k_view(), AttentionOptions{}, 16);
    const BlockSet blocks = seer::select_blocks(scores, seer::TopK::blocks(2));  // diagonal + one more
    const std::int64_t row = blocks.row_index(0, 0, 5);
    CHECK(std::vector<std::int32_t>(blocks.row_begin(row), blocks.row_end(row)) == std::vector<std::int32_t>{1, 5});
  }
  SUBCASE("more attention mass than random choices of as many blocks") {
    CaseShape shape{{128}, {128}, false, 2, 2, 16};
    auto c = make_inputs<float>(shape, rng);
    for (auto& x : c.q.storage) x *= 2.0f;  // sharper attention
    const AttentionOptions options;
    const auto probabilities = brute_force_probabilities(c, options);
    seer::ForcedBlocks nothing_forced;
    nothing_forced.keep_diagonal = false;
    const auto oracle = seer::select_blocks(seer::OracleGate{}.score(c.q_view(), c.k_view(), options, 16),
                                            seer::TopK::blocks(2), nothing_forced);
    // Mean over rows of the attention mass on kept keys.
    auto captured = [&](const BlockSet& blocks) {
      double mass = 0.0;
      for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t i = 0; i < 128; ++i) {
          const std::int64_t row = blocks.row_index(0, h, i / 16);
          for (auto it = blocks.row_begin(row); it != blocks.row_end(row); ++it)
            for (std::int64_t j = *it * 16; j < (*it + 1) * 16; ++j) mass += probabilities[0][h][i][j];
        }
      return mass / 256.0;
    };
    const double oracle_mass = captured(oracle);
    for (int draw = 0; draw < 10; ++draw) {
      BlockSet random(2, 16, oracle.sequences());
      for (std::int64_t row = 0; row < oracle.rows(); ++row) {
        const std::int64_t m = row % 8;
        std::vector<std::int32_t> candidates(static_cast<std::size_t>(m + 1));
        std::iota(candidates.begin(), candidates.end(), 0);
        std::shuffle(candidates.begin(), candidates.end(), rng);
        candidates.resize(static_cast<std::size_t>(oracle.row_size(row)));
        std::sort(candidates.begin(), candidates.end());
        random.append_row(candidates);
      }
      CHECK(oracle_mass > captured(random));
    }
    CHECK(oracle_mass > 0.5);
  }
}

TEST_CASE("ground truth and OracleGate reject bad arguments, naming them") {
  std::mt19937 rng(35);
  CaseShape shape{{16}, {16}, false, 4, 2, 8};
  auto c = make_inputs<float>(shape, rng);
  const auto q = c.q_view(), k = c.k_view();
  const AttentionOptions options;
  check_rejects([&] { seer::cpu::two_dimensional_ground_truth(q, k, options, 0); }, "block_size");
  check_rejects([&] { seer::cpu::one_dimensional_ground_truth(q, k, options, -4); }, "block_size");
  AttentionOptions negative;
  negative.softmax_scale = -1.0;
  check_rejects([&] { seer::cpu::two_dimensional_ground_truth(q, k, negative, 8); }, "options.softmax_scale");
  auto three_heads = k;
  three_heads.heads = 3;
  check_rejects([&] { seer::OracleGate{}.score(q, three_heads, options, 8); }, "k");
  auto other_dim = k;
  other_dim.head_dim = 4;
  check_rejects([&] { seer::cpu::one_dimensional_ground_truth(q, other_dim, options, 8); }, "k");
  auto null_q = q;
  null_q.data = nullptr;
  check_rejects([&] { seer::OracleGate{}.score(null_q, k, options, 8); }, "q");
}
