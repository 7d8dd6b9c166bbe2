// Selection policies and forced-block modifiers on hand-checked rows.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/nucleus.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/threshold.hpp"
#include "seer/selection/top_k.hpp"

namespace {

using seer::BlockGeometry;
using seer::RowCandidates;
using seer::SelectionScratch;

template <class Policy>
std::vector<std::int32_t> select_row(const Policy& policy, const std::vector<double>& logits,
                                     std::vector<std::uint8_t> forced = {}) {
  if (forced.empty()) forced.assign(logits.size(), 0);
  const BlockGeometry geometry{64 * static_cast<std::int64_t>(logits.size()),
                               64 * static_cast<std::int64_t>(logits.size()), 64, true};
  SelectionScratch scratch;
  std::vector<std::int32_t> kept;
  policy.select(geometry, RowCandidates{logits.data(), forced.data(), static_cast<std::int64_t>(logits.size())},
                scratch, kept);
  return kept;
}

std::vector<double> log_of(const std::vector<double>& probabilities) {
  std::vector<double> result;
  for (double p : probabilities) result.push_back(std::log(p));
  return result;
}

using Row = std::vector<std::int32_t>;

// Scores for select_blocks tests: logit of (b, h, m, n) from a closed-form
// pattern.
struct PatternScores {
  std::vector<BlockGeometry> geometry;
  std::int64_t head_count = 1;
  std::int64_t heads() const { return head_count; }
  const std::vector<BlockGeometry>& sequences() const { return geometry; }
  void score_row(std::int64_t b, std::int64_t h, std::int64_t m, double* logits) const {
    for (std::int64_t n = 0; n < geometry[b].visible_key_blocks(m); ++n)
      logits[n] = static_cast<double>((n * 7 + h * 3 + m + b) % 5);
  }
};

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const seer::InvalidArgument& error) {
    return error.argument();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("TopK keeps the k best logits, ties to the lower block index") {
  const std::vector<double> logits{1.0, 3.0, 2.0, 3.0};
  CHECK(select_row(seer::TopK::blocks(2), logits) == Row{1, 3});
  CHECK(select_row(seer::TopK::blocks(1), logits) == Row{1});  // 1 and 3 tie: lower index wins
  CHECK(select_row(seer::TopK::blocks(3), logits) == Row{1, 2, 3});
  CHECK(select_row(seer::TopK::blocks(10), logits) == Row{0, 1, 2, 3});  // clamped to the candidates
}

TEST_CASE("TopK counts forced blocks inside k") {
  const std::vector<double> logits{1.0, 3.0, 2.0, 0.5};
  // Block 3 forced (say, the diagonal): one slot left for the best other
  // block, 1.
  CHECK(select_row(seer::TopK::blocks(2), logits, {0, 0, 0, 1}) == Row{1, 3});
  // More forced blocks than k: all forced blocks stay, nothing else.
  CHECK(select_row(seer::TopK::blocks(1), logits, {1, 0, 0, 1}) == Row{0, 3});
}

TEST_CASE("TopK target density uses the official nz_ratio formula") {
  // k = floor((1 - sqrt(1 - rho)) * nb): nb = 128, rho = 0.1 -> (1 - 0.9486833)
  // * 128 = 6.57 -> 6.
  const BlockGeometry g{128 * 64, 128 * 64, 64, true};
  CHECK(seer::TopK::target_density(0.1).budget(g) == 6);
  // rho = 0.5 -> (1 - 0.7071068) * 128 = 37.49 -> 37.
  CHECK(seer::TopK::target_density(0.5).budget(g) == 37);
  CHECK(seer::TopK::target_density(1.0).budget(g) == 128);
  // A formula result of 0 becomes 1: nb = 4, rho = 0.1 -> 0.21 -> 0 -> 1.
  CHECK(seer::TopK::target_density(0.1).budget(BlockGeometry{256, 256, 64, true}) == 1);
  CHECK(seer::TopK::blocks(5).budget(g) == 5);
}

TEST_CASE("Threshold keeps blocks whose softmax probability exceeds tau") {
  const auto logits = log_of({0.5, 0.3, 0.15, 0.05});
  CHECK(select_row(seer::Threshold{0.1}, logits) == Row{0, 1, 2});
  CHECK(select_row(seer::Threshold{0.2}, logits) == Row{0, 1});
  CHECK(select_row(seer::Threshold{0.01}, logits) == Row{0, 1, 2, 3});
  // The softmax normalises: logits shifted by a constant select the same
  // blocks.
  auto shifted = logits;
  for (auto& value : shifted) value += 40.0;
  CHECK(select_row(seer::Threshold{0.2}, shifted) == Row{0, 1});
  // Strict comparison: two equal logits have probability exactly 0.5 each.
  CHECK(select_row(seer::Threshold{0.5}, {2.0, 2.0}).empty());
  CHECK(select_row(seer::Threshold{0.4999}, {2.0, 2.0}) == Row{0, 1});
  // Forced blocks stay whatever their probability.
  CHECK(select_row(seer::Threshold{0.2}, logits, {0, 0, 0, 1}) == Row{0, 1, 3});
}

TEST_CASE("Threshold handles -inf logits without NaN") {
  const double minus_infinity = -std::numeric_limits<double>::infinity();
  CHECK(select_row(seer::Threshold{0.1}, {minus_infinity, 0.0, minus_infinity}) == Row{1});
  CHECK(select_row(seer::Threshold{0.1}, {minus_infinity, minus_infinity}).empty());
}

TEST_CASE("Nucleus keeps the shortest best-first prefix reaching mass p") {
  const auto logits = log_of({0.15, 0.5, 0.05, 0.3});
  CHECK(select_row(seer::Nucleus{0.45}, logits) == Row{1});           // 0.5
  CHECK(select_row(seer::Nucleus{0.75}, logits) == Row{1, 3});        // 0.5 + 0.3
  CHECK(select_row(seer::Nucleus{0.85}, logits) == Row{0, 1, 3});     // + 0.15
  CHECK(select_row(seer::Nucleus{0.99}, logits) == Row{0, 1, 2, 3});  // + 0.05
  // Clamps: at least min_k, at most max_k.
  CHECK(select_row(seer::Nucleus{0.1, 3}, logits) == Row{0, 1, 3});
  CHECK(select_row(seer::Nucleus{0.99, 1, 2}, logits) == Row{1, 3});
  // Forced mass counts: block 0 (0.15) forced, then 0.5 reaches 0.6.
  CHECK(select_row(seer::Nucleus{0.6}, logits, {1, 0, 0, 0}) == Row{0, 1});
  // Ties go to the lower index: equal logits, mass 0.25 each.
  CHECK(select_row(seer::Nucleus{0.4}, {1.0, 1.0, 1.0, 1.0}) == Row{0, 1});
}

TEST_CASE("ForcedBlocks: diagonal, sinks and dense last rows") {
  const BlockGeometry square{300, 300, 64, true};  // 5 x 5 blocks
  seer::ForcedBlocks forced;
  CHECK(forced.is_forced(square, 3, 3));
  CHECK_FALSE(forced.is_forced(square, 3, 2));
  forced.sink_blocks = 1;
  CHECK(forced.is_forced(square, 3, 0));
  forced.keep_diagonal = false;
  CHECK_FALSE(forced.is_forced(square, 3, 3));
  forced.dense_last_rows = 2;
  CHECK(forced.row_is_dense(square, 4));
  CHECK(forced.row_is_dense(square, 3));
  CHECK_FALSE(forced.row_is_dense(square, 2));

  // A query chunk of 100 tokens at the end of 300 keys: its rows see keys up to
  // 200..263, so the causal boundary crosses key blocks 3 and 4; both are the
  // diagonal.
  const BlockGeometry chunk{100, 300, 64, true};
  seer::ForcedBlocks defaults;
  CHECK(defaults.is_forced(chunk, 0, 3));
  CHECK(defaults.is_forced(chunk, 0, 4));
  CHECK_FALSE(defaults.is_forced(chunk, 0, 2));
}

TEST_CASE("select_blocks builds ascending rows that are never empty") {
  PatternScores scores{{BlockGeometry{300, 300, 64, true}, BlockGeometry{130, 130, 64, true}}, 2};
  const auto blocks = seer::select_blocks(scores, seer::TopK::blocks(2));
  REQUIRE(blocks.complete());
  CHECK(blocks.rows() == 2 * (5 + 3));
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t m = 0; m < blocks.sequences()[b].query_blocks(); ++m) {
        const auto row = blocks.row_index(b, h, m);
        const Row kept(blocks.row_begin(row), blocks.row_end(row));
        CAPTURE(b);
        CAPTURE(h);
        CAPTURE(m);
        CHECK(kept.size() == static_cast<std::size_t>(std::min<std::int64_t>(2, m + 1)));
        CHECK(kept.back() == m);  // the diagonal is kept and is the newest block
        for (std::size_t i = 1; i < kept.size(); ++i) CHECK(kept[i - 1] < kept[i]);
      }
  // Memory grows with kept blocks only.
  CHECK(blocks.key_blocks().size() == static_cast<std::size_t>(blocks.kept_blocks()));
}

TEST_CASE(
    "select_blocks: threshold above every probability keeps only forced "
    "blocks") {
  PatternScores scores{{BlockGeometry{640, 640, 64, true}}, 1};
  seer::ForcedBlocks forced;
  forced.sink_blocks = 1;
  const auto blocks = seer::select_blocks(scores, seer::Threshold{0.99}, forced);
  for (std::int64_t m = 0; m < 10; ++m) {
    const auto row = blocks.row_index(0, 0, m);
    const Row expected = m == 0 ? Row{0} : Row{0, static_cast<std::int32_t>(m)};
    CHECK(Row(blocks.row_begin(row), blocks.row_end(row)) == expected);
  }
  // Without the diagonal and sinks the rows are empty (the caller asked for
  // it), except row 0, whose single candidate has probability 1.
  seer::ForcedBlocks nothing;
  nothing.keep_diagonal = false;
  const auto sparse = seer::select_blocks(scores, seer::Threshold{0.99}, nothing);
  CHECK(sparse.row_size(sparse.row_index(0, 0, 0)) == 1);
  CHECK(sparse.kept_blocks() == 1);
}

TEST_CASE("select_blocks: dense last rows keep every visible block") {
  PatternScores scores{{BlockGeometry{640, 640, 64, true}}, 1};
  seer::ForcedBlocks forced;
  forced.dense_last_rows = 2;
  const auto blocks = seer::select_blocks(scores, seer::TopK::blocks(1), forced);
  CHECK(blocks.row_size(blocks.row_index(0, 0, 9)) == 10);
  CHECK(blocks.row_size(blocks.row_index(0, 0, 8)) == 9);
  CHECK(blocks.row_size(blocks.row_index(0, 0, 7)) == 1);
}

TEST_CASE("select_blocks is deterministic across thread counts") {
  PatternScores scores{{BlockGeometry{1000, 1000, 64, true}, BlockGeometry{64, 64, 64, true}}, 3};
  const auto one = seer::select_blocks(scores, seer::Nucleus{0.7}, {}, 1);
  const auto many = seer::select_blocks(scores, seer::Nucleus{0.7}, {}, 4);
  CHECK(one.row_offsets() == many.row_offsets());
  CHECK(one.key_blocks() == many.key_blocks());
}

TEST_CASE("policy arguments are validated by name") {
  PatternScores scores{{BlockGeometry{128, 128, 64, true}}, 1};
  CHECK(error_of([&] { seer::select_blocks(scores, seer::TopK::blocks(0)); }) == "policy.count");
  CHECK(error_of([&] { seer::select_blocks(scores, seer::TopK::target_density(1.5)); }) == "policy.density");
  CHECK(error_of([&] { seer::select_blocks(scores, seer::TopK::target_density(0.0)); }) == "policy.density");
  CHECK(error_of([&] { seer::select_blocks(scores, seer::Threshold{1.0}); }) == "policy.tau");
  CHECK(error_of([&] { seer::select_blocks(scores, seer::Threshold{-0.1}); }) == "policy.tau");
  CHECK(error_of([&] { seer::select_blocks(scores, seer::Nucleus{0.0}); }) == "policy.p");
  CHECK(error_of([&] { seer::select_blocks(scores, seer::Nucleus{0.5, 4, 2}); }) == "policy.max_k");
  seer::ForcedBlocks bad;
  bad.sink_blocks = -1;
  CHECK(error_of([&] { seer::select_blocks(scores, seer::TopK::blocks(1), bad); }) == "forced.sink_blocks");
  bad.sink_blocks = 0;
  bad.dense_last_rows = -2;
  CHECK(error_of([&] { seer::select_blocks(scores, seer::TopK::blocks(1), bad); }) == "forced.dense_last_rows");
}
