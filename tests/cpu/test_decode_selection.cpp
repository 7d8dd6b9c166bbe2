// Decode block selection: TokenBudget and DecodeThreshold rows (forced first and newest blocks, budget
// above the block count, budget 0, one block, ties to the lower index, a step straddling a block
// boundary), the multi-token max rule, whole steps against a brute-force selection built from the
// independent gate computation (contiguous and paged caches, mixed lengths, an idle slot), capacities
// and argument checks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "decode_test_support.hpp"
#include "seer/core/error.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/decode_selection.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/gate/decode_gate.hpp"

namespace {

using seer::DecodeThreshold;
using seer::TokenBudget;
using namespace seer_test;
using Row = std::vector<std::int32_t>;

template <class Policy>
Row row_of(const Policy& policy, const std::vector<double>& scores, std::int64_t first_step, std::int64_t newest,
           std::int64_t block = 4) {
  Row kept{-7, -7};  // poisoned: the call must replace it
  seer::select_decode_row(policy, scores.data(), static_cast<std::int64_t>(scores.size()), first_step, newest, block,
                          kept);
  return kept;
}

template <class Call>
std::string argument_of(Call&& call) {
  try {
    call();
  } catch (const seer::InvalidArgument& error) {
    return error.argument();
  }
  return "no error";
}

// Probabilities of one token by the independent computation: softmax over blocks j < position / B
// of its query against reference keys of the complete blocks.
std::vector<double> reference_probabilities(const seer::DecodeGateConfig& config, const seer::DecodeGate& gate,
                                            const std::vector<std::vector<double>>& heads, std::int64_t c,
                                            std::int64_t position, const std::vector<std::vector<double>>& keys) {
  const auto query = reference_query(config, gate.weights(), heads, gate.num_kv_heads(), c, position);
  const std::int64_t count = position / config.block_size;
  std::vector<double> logits(static_cast<std::size_t>(count));
  for (std::int64_t j = 0; j < count; ++j) {
    double dot = 0.0;
    for (std::size_t d = 0; d < query.size(); ++d) dot += query[d] * keys[j][d];
    logits[j] = dot / std::sqrt(static_cast<double>(config.hidden_size));
  }
  const double peak = logits.empty() ? 0.0 : *std::max_element(logits.begin(), logits.end());
  double total = 0.0;
  for (double& z : logits) total += (z = std::exp(z - peak));
  for (double& z : logits) z /= total;
  return logits;
}

}  // namespace

TEST_CASE("decode selection: token budget rows") {
  const std::vector<double> scores{0.05, 0.3, 0.1, 0.2, 0.35};  // blocks 0..4 scored; newest block 5
  // floor(8 / 4) = 2 best: blocks 4 (0.35) and 1 (0.3); plus forced 0 and 5.
  CHECK(row_of(TokenBudget{8}, scores, 5, 5) == Row{0, 1, 4, 5});
  CHECK(row_of(TokenBudget{11}, scores, 5, 5) == Row{0, 1, 4, 5});  // floor(11 / 4) = 2
  CHECK(row_of(TokenBudget{12}, scores, 5, 5) == Row{0, 1, 3, 4, 5});
  // Budget >= scored blocks: every block.
  CHECK(row_of(TokenBudget{20}, scores, 5, 5) == Row{0, 1, 2, 3, 4, 5});
  CHECK(row_of(TokenBudget{4000}, scores, 5, 5) == Row{0, 1, 2, 3, 4, 5});
  // Budget 0 (or below one block): only the forced first and newest blocks.
  CHECK(row_of(TokenBudget{0}, scores, 5, 5) == Row{0, 5});
  CHECK(row_of(TokenBudget{3}, scores, 5, 5) == Row{0, 5});
  // Block 0 ranks like any scored block; when it is in the top k it counts once.
  const std::vector<double> sink_first{0.6, 0.1, 0.2, 0.1};
  CHECK(row_of(TokenBudget{8}, sink_first, 4, 4) == Row{0, 2, 4});
  // One block only (a sequence shorter than B): first == newest, nothing scored.
  CHECK(row_of(TokenBudget{64}, {}, 0, 0) == Row{0});
  CHECK(row_of(DecodeThreshold{0.0}, {}, 0, 0) == Row{0});
  // An idle slot (no step tokens, newest < 0): empty row.
  CHECK(row_of(TokenBudget{64}, {}, 0, -1) == Row{});
  // Ties go to the lower block index.
  const std::vector<double> ties{0.1, 0.2, 0.2, 0.2, 0.3};
  CHECK(row_of(TokenBudget{8}, ties, 5, 5) == Row{0, 1, 4, 5});
  CHECK(row_of(TokenBudget{12}, ties, 5, 5) == Row{0, 1, 2, 4, 5});
  // A multi-token step straddling blocks 4 and 5: both forced, block 4 also scored by the later token.
  CHECK(row_of(TokenBudget{0}, scores, 4, 5) == Row{0, 4, 5});
  CHECK(row_of(TokenBudget{4}, scores, 4, 5) == Row{0, 4, 5});  // block 4 is the best too, counted once
}

TEST_CASE("decode selection: threshold rows") {
  const std::vector<double> scores{0.05, 0.3, 0.1, 0.2, 0.35};
  CHECK(row_of(DecodeThreshold{0.15}, scores, 5, 5) == Row{0, 1, 3, 4, 5});
  CHECK(row_of(DecodeThreshold{0.2}, scores, 5, 5) == Row{0, 1, 4, 5});  // strict: 0.2 is not kept
  CHECK(row_of(DecodeThreshold{0.5}, scores, 5, 5) == Row{0, 5});
  CHECK(row_of(DecodeThreshold{0.0}, scores, 5, 5) == Row{0, 1, 2, 3, 4, 5});
}

TEST_CASE("decode selection: capacities") {
  CHECK(seer::decode_block_capacity(TokenBudget{4096}, 32768, 64) == 64 + 2);
  CHECK(seer::decode_block_capacity(TokenBudget{4096}, 32768, 64, 8) == 64 + 3);  // 8 tokens may straddle 2 blocks
  CHECK(seer::decode_block_capacity(TokenBudget{4096}, 1000, 64) == 16);          // never above the blocks
  CHECK(seer::decode_block_capacity(TokenBudget{0}, 0, 64) == 1);
  CHECK(seer::decode_block_capacity(DecodeThreshold{0.01}, 1000, 64) == 16);
  CHECK(seer::decode_step_blocks(1, 64) == 1);
  CHECK(seer::decode_step_blocks(8, 64) == 2);
  CHECK(seer::decode_step_blocks(8, 4) == 3);  // positions 3..10 touch blocks 0, 1, 2
  CHECK(seer::decode_step_blocks(9, 4) == 3);
  CHECK(seer::decode_step_blocks(10, 4) == 4);
}

TEST_CASE("decode selection: whole steps against a brute-force selection") {
  const std::int64_t dim = 8, kv_heads = 2, q_heads = 4, block = 4, batch = 4, capacity = 64;
  for (bool threshold : {false, true})
    for (std::int64_t step : {1, 3, 8}) {
      CAPTURE(threshold);
      CAPTURE(step);
      const seer::DecodeGateConfig config =
          small_decode_config(seer::QueryHeadPooling::projection, dim, block, true, true);
      const seer::DecodeGate gate =
          random_decode_gate(config, q_heads, kv_heads, dim, 71 + static_cast<unsigned>(step));
      RandomKvCache kv(batch, capacity, kv_heads, dim, 8, 73);
      // Sequence 1 is idle this step; sequence 3 is short (one or two blocks).
      const std::vector<std::int32_t> lengths{61, 40, static_cast<std::int32_t>(33 + step),
                                              static_cast<std::int32_t>(step + 2)};
      std::vector<std::int32_t> cu{0};
      for (std::int64_t b = 0; b < batch; ++b) cu.push_back(cu.back() + (b == 1 ? 0 : static_cast<std::int32_t>(step)));
      std::mt19937 random(79);
      std::normal_distribution<double> normal(0.0, 1.0);
      std::vector<double> q(static_cast<std::size_t>(cu.back() * q_heads * dim));
      for (auto& x : q) x = 2.0 * normal(random);  // peaky enough that probabilities spread
      const auto q_batch = seer::packed_batch(
          seer::TensorView<const double, 3>::contiguous(q.data(), {cu.back(), q_heads, dim}), cu, "q");

      seer::KCompressionCache<double> cache(batch, capacity / block, kv_heads, dim);
      cache.prefill(kv.paged(lengths), gate);
      const TokenBudget budget{12};
      const DecodeThreshold tau{0.08};
      const auto kv_view = kv.paged(lengths);
      const seer::DecodeBlockList blocks = threshold
                                               ? seer::select_decode_blocks(gate, cache, q_batch, kv_view, tau)
                                               : seer::select_decode_blocks(gate, cache, q_batch, kv_view, budget);
      seer::validate_host_decode_blocks(blocks.view(), lengths.data());

      for (std::int64_t b = 0; b < batch; ++b)
        for (std::int64_t c = 0; c < kv_heads; ++c) {
          CAPTURE(b);
          CAPTURE(c);
          const std::int64_t n = q_batch.length(b), length = lengths[b];
          if (n == 0) {
            CHECK(blocks.row(b, c).empty());
            continue;
          }
          // Reference keys of the complete blocks, then each token's probabilities and their max.
          std::vector<std::vector<double>> keys;
          for (std::int64_t j = 0; j < length / block; ++j) {
            std::vector<std::vector<double>> tokens;
            for (std::int64_t t = j * block; t < (j + 1) * block; ++t) tokens.push_back(kv.key_vector(b, t, c));
            keys.push_back(reference_key(config, gate.weights(), tokens, c, j * block));
          }
          std::vector<double> best(static_cast<std::size_t>((length - 1) / block), 0.0);
          for (std::int64_t i = 0; i < n; ++i) {
            std::vector<std::vector<double>> heads;
            for (std::int64_t h = 0; h < q_heads; ++h) {
              const double* v = q_batch.vector(b, i, h);
              heads.emplace_back(v, v + dim);
            }
            const auto p = reference_probabilities(config, gate, heads, c, length - n + i, keys);
            for (std::size_t j = 0; j < p.size(); ++j) best[j] = std::max(best[j], p[j]);
          }
          std::vector<double> scores;
          seer::decode_step_scores(gate, cache, q_batch, length, b, c, scores);
          REQUIRE(scores.size() == best.size());
          for (std::size_t j = 0; j < best.size(); ++j) CHECK(scores[j] == doctest::Approx(best[j]).epsilon(1e-10));

          Row order(best.size());
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(),
                           [&](std::int32_t x, std::int32_t y) { return best[x] > best[y]; });
          Row expected;
          if (threshold) {
            for (std::size_t j = 0; j < best.size(); ++j)
              if (best[j] > tau.tau) expected.push_back(static_cast<std::int32_t>(j));
          } else {
            expected.assign(order.begin(),
                            order.begin() + std::min<std::ptrdiff_t>(3, static_cast<std::ptrdiff_t>(order.size())));
          }
          expected.push_back(0);
          for (std::int64_t j = (length - n) / block; j <= (length - 1) / block; ++j)
            expected.push_back(static_cast<std::int32_t>(j));
          std::sort(expected.begin(), expected.end());
          expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
          CHECK(blocks.row(b, c) == expected);
        }
      // The same step over the contiguous view of the same keys selects the same rows.
      seer::KCompressionCache<double> contiguous_cache(batch, capacity / block, kv_heads, dim);
      contiguous_cache.prefill(kv.contiguous(lengths), gate);
      const auto contiguous_view = kv.contiguous(lengths);
      const seer::DecodeBlockList again =
          threshold ? seer::select_decode_blocks(gate, contiguous_cache, q_batch, contiguous_view, tau)
                    : seer::select_decode_blocks(gate, contiguous_cache, q_batch, contiguous_view, budget);
      CHECK(again.key_blocks() == blocks.key_blocks());
      CHECK(again.counts() == blocks.counts());
    }
}

TEST_CASE("decode selection: the max rule over a step's tokens differs from the newest token alone") {
  // Two tokens whose queries prefer different blocks: the row keeps both favourites.
  const std::int64_t dim = 8, block = 4, capacity = 32;
  const seer::DecodeGateConfig config = small_decode_config(seer::QueryHeadPooling::average, dim, block, false, false);
  // Qavg without norm and RoPE, and W_k = [0; 0; I], so the compressed key is the block mean; block
  // j's keys are all the basis vector e_j.
  seer::DecodeGateWeights weights;
  weights.k_projection.assign(static_cast<std::size_t>(3 * dim * dim), 0.0f);
  for (std::int64_t d = 0; d < dim; ++d) weights.k_projection[(2 * dim + d) * dim + d] = 1.0f;
  const seer::DecodeGate mean_gate(config, 1, 1, dim, weights);
  RandomKvCache kv(1, capacity, 1, dim, 8, 83);
  for (std::int64_t t = 0; t < capacity; ++t)
    for (std::int64_t d = 0; d < dim; ++d) kv.contiguous_key(0, t, 0)[d] = (d == t / block) ? 1.0 : 0.0;
  const std::vector<std::int32_t> lengths{22};  // step tokens at 20, 21: both score blocks 0..4
  seer::KCompressionCache<double> cache(1, capacity / block, 1, dim);
  cache.prefill(kv.contiguous(lengths), mean_gate);
  std::vector<double> q(2 * dim, 0.0);
  q[2] = 30.0;        // token 20 wants block 2
  q[dim + 3] = 30.0;  // token 21 wants block 3
  const std::vector<std::int32_t> cu{0, 2};
  const auto q_batch =
      seer::packed_batch(seer::TensorView<const double, 3>::contiguous(q.data(), {2, 1, dim}), cu, "q");
  const auto view = kv.contiguous(lengths);
  const auto blocks = seer::select_decode_blocks(mean_gate, cache, q_batch, view, TokenBudget{8});
  CHECK(blocks.row(0, 0) == Row{0, 2, 3, 5});
  // The newest token alone keeps its favourite, block 3, and the lowest of the tied others, not block 2.
  const std::vector<std::int32_t> cu_last{0, 1};
  const auto last_only =
      seer::packed_batch(seer::TensorView<const double, 3>::contiguous(q.data() + dim, {1, 1, dim}), cu_last, "q");
  const auto alone = seer::select_decode_blocks(mean_gate, cache, last_only, view, TokenBudget{8});
  CHECK(alone.row(0, 0) == Row{0, 3, 5});
}

TEST_CASE("decode selection: invalid arguments name the argument") {
  const std::int64_t dim = 8, block = 4, capacity = 32;
  const seer::DecodeGateConfig config =
      small_decode_config(seer::QueryHeadPooling::projection, dim, block, false, true);
  const seer::DecodeGate gate = random_decode_gate(config, 2, 1, dim, 91);
  RandomKvCache kv(1, capacity, 1, dim, 8, 93);
  std::vector<std::int32_t> lengths{20};
  seer::KCompressionCache<float> cache(1, capacity / block, 1, dim);
  cache.prefill(kv.contiguous(lengths), gate);
  std::vector<double> q(2 * 2 * dim, 0.5);
  const std::vector<std::int32_t> cu{0, 2};
  const auto q_batch =
      seer::packed_batch(seer::TensorView<const double, 3>::contiguous(q.data(), {2, 2, dim}), cu, "q");
  const auto view = kv.contiguous(lengths);
  CHECK(argument_of([&] { seer::select_decode_blocks(gate, cache, q_batch, view, TokenBudget{-1}); }) ==
        "policy.tokens");
  CHECK(argument_of([&] { seer::select_decode_blocks(gate, cache, q_batch, view, DecodeThreshold{1.0}); }) ==
        "policy.tau");
  std::vector<std::int32_t> longer{28};
  const auto longer_view = kv.contiguous(longer);
  CHECK(argument_of([&] { seer::select_decode_blocks(gate, cache, q_batch, longer_view, TokenBudget{8}); }) ==
        "cache");  // not updated after the step's keys were appended
  std::vector<std::int32_t> one{1};
  const auto one_view = kv.contiguous(one);
  seer::KCompressionCache<float> empty_cache(1, capacity / block, 1, dim);
  CHECK(argument_of([&] { seer::select_decode_blocks(gate, empty_cache, q_batch, one_view, TokenBudget{8}); }) ==
        "lengths");  // 2 step tokens, 1 cached token
  seer::DecodeBlockList small(1, 1, 2, block);
  CHECK(argument_of([&] {
          seer::select_decode_blocks_into(gate, cache, q_batch, lengths.data(), TokenBudget{8}, small);
        }) == "blocks");
  seer::DecodeBlockList wrong_block(1, 1, 8, 64);
  CHECK(argument_of([&] {
          seer::select_decode_blocks_into(gate, cache, q_batch, lengths.data(), TokenBudget{8}, wrong_block);
        }) == "blocks");
  const auto wrong_heads =
      seer::packed_batch(seer::TensorView<const double, 3>::contiguous(q.data(), {4, 1, dim}), cu, "q");
  CHECK(argument_of([&] { seer::select_decode_blocks(gate, cache, wrong_heads, view, TokenBudget{8}); }) ==
        "q_before_rope");
  CHECK(argument_of([] { (void)seer::decode_block_capacity(TokenBudget{8}, 10, 0); }) == "block_size");
  CHECK(argument_of([] { (void)seer::decode_block_capacity(TokenBudget{8}, 10, 4, 0); }) == "step_tokens");
}
