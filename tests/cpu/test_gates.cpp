// Gate scoring on the CPU: block pooling, the learned SeerAttention prefill gate (both weight
// layouts, GQA, varlen, q_len != k_len, scaled RoPE), the mean-pooling baseline, selection on gate
// scores, and argument validation. The learned gate is checked against a naive implementation
// written here independently (explicit loops, RoPE as a complex rotation).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/gate/block_pooling.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gate/mean_pool_gate.hpp"
#include "seer/gate/rotary_embedding.hpp"
#include "seer/selection/nucleus.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/threshold.hpp"
#include "seer/selection/top_k.hpp"

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A host batch of random per-head vectors with a double copy of the stored (rounded) values.
template <class T>
struct TestBatch {
  std::vector<T> storage;
  std::vector<std::int32_t> cu_seqlens;  // empty: padded layout
  std::int64_t batch = 0, padded_length = 0, heads = 0, dim = 0;
  std::vector<std::vector<double>> values;  // per sequence: [length][heads][dim]

  std::int64_t length(std::int64_t b) const {
    return cu_seqlens.empty() ? padded_length : cu_seqlens[b + 1] - cu_seqlens[b];
  }
  double at(std::int64_t b, std::int64_t t, std::int64_t h, std::int64_t d) const {
    return values[b][static_cast<std::size_t>((t * heads + h) * dim + d)];
  }
  seer::SequenceBatch<const T> view() const {
    if (cu_seqlens.empty()) {
      auto tensor = seer::TensorView<const T, 4>::contiguous(storage.data(), {batch, padded_length, heads, dim});
      return seer::padded_batch(tensor, "test");
    }
    auto tensor = seer::TensorView<const T, 3>::contiguous(storage.data(), {cu_seqlens.back(), heads, dim});
    return seer::packed_batch(tensor, cu_seqlens, "test");
  }
};

template <class T>
void fill_random(TestBatch<T>& batch, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : batch.storage) x = seer::from_float<T>(normal(rng) + 0.25f);  // + 0.25: non-zero mean
  batch.values.assign(static_cast<std::size_t>(batch.batch), {});
  std::int64_t token = 0;
  for (std::int64_t b = 0; b < batch.batch; ++b) {
    const std::int64_t first = batch.cu_seqlens.empty() ? b * batch.padded_length : token;
    for (std::int64_t i = 0; i < batch.length(b) * batch.heads * batch.dim; ++i)
      batch.values[b].push_back(
          static_cast<double>(seer::to_float(batch.storage[first * batch.heads * batch.dim + i])));
    token += batch.length(b);
  }
}

template <class T>
TestBatch<T> packed_random(const std::vector<std::int32_t>& lengths, std::int64_t heads, std::int64_t dim,
                           std::mt19937& rng) {
  TestBatch<T> result;
  result.cu_seqlens.push_back(0);
  for (auto l : lengths) result.cu_seqlens.push_back(result.cu_seqlens.back() + l);
  result.batch = static_cast<std::int64_t>(lengths.size());
  result.heads = heads;
  result.dim = dim;
  result.storage.resize(static_cast<std::size_t>(result.cu_seqlens.back() * heads * dim));
  fill_random(result, rng);
  return result;
}

template <class T>
TestBatch<T> padded_random(std::int64_t batch, std::int64_t length, std::int64_t heads, std::int64_t dim,
                           std::mt19937& rng) {
  TestBatch<T> result;
  result.batch = batch;
  result.padded_length = length;
  result.heads = heads;
  result.dim = dim;
  result.storage.resize(static_cast<std::size_t>(batch * length * heads * dim));
  fill_random(result, rng);
  return result;
}

std::vector<float> random_weights(std::int64_t count, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<float> w(static_cast<std::size_t>(count));
  for (auto& x : w) x = normal(rng);
  return w;
}

// Runs `body`, expects seer::InvalidArgument, checks that what() names the argument, returns it.
template <class Body>
std::string invalid_argument_of(Body&& body) {
  try {
    body();
  } catch (const seer::InvalidArgument& error) {
    CHECK(std::string(error.what()).find("'" + error.argument() + "'") != std::string::npos);
    return error.argument();
  }
  return "<no error>";
}

// ---------------------------------------------------------------------------------------------
// Naive reference, written without seer's gate code.

// Visible key blocks of query block m, by brute force over every (row, key) pair.
std::int64_t naive_visible_blocks(std::int64_t q_len, std::int64_t k_len, std::int64_t block, std::int64_t m,
                                  bool causal) {
  std::int64_t count = 0;
  for (std::int64_t i = m * block; i < std::min((m + 1) * block, q_len); ++i)
    for (std::int64_t t = 0; t < k_len; ++t)
      if (!causal || t <= i + (k_len - q_len)) count = std::max(count, t / block + 1);
  return count;
}

// pools: "max" / "min" / "avg"; result: the concatenation, pools.size() * dim values.
template <class T>
std::vector<double> naive_pool(const TestBatch<T>& x, std::int64_t b, std::int64_t h, std::int64_t block,
                               std::int64_t index, const std::vector<std::string>& pools) {
  const std::int64_t first = index * block, last = std::min((index + 1) * block, x.length(b));
  std::vector<double> out;
  for (const auto& pool : pools)
    for (std::int64_t d = 0; d < x.dim; ++d) {
      double acc = pool == "max" ? -1e300 : pool == "min" ? 1e300 : 0.0;
      for (std::int64_t t = first; t < last; ++t) {
        const double v = x.at(b, t, h, d);
        if (pool == "max") acc = v > acc ? v : acc;
        if (pool == "min") acc = v < acc ? v : acc;
        if (pool == "avg") acc += v;
      }
      out.push_back(pool == "avg" ? acc / static_cast<double>(last - first) : acc);
    }
  return out;
}

// weights [heads, in, out] row-major, head `head`.
std::vector<double> naive_project(const std::vector<double>& in, const std::vector<float>& weights, std::int64_t head,
                                  std::int64_t out_width) {
  const std::int64_t in_width = static_cast<std::int64_t>(in.size());
  std::vector<double> out(static_cast<std::size_t>(out_width), 0.0);
  for (std::int64_t o = 0; o < out_width; ++o)
    for (std::int64_t i = 0; i < in_width; ++i)
      out[o] += in[i] * static_cast<double>(weights[(head * in_width + i) * out_width + o]);
  return out;
}

// RoPE as complex multiplication: z_i = v[i] + i v[i + D/2] turns by position * inv_freq[i].
std::vector<double> naive_rope(std::vector<double> v, double position, const std::vector<double>& inv_freq,
                               double attention_factor) {
  const std::size_t half = v.size() / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::complex<double> z(v[i], v[i + half]);
    const std::complex<double> turned = z * std::polar(attention_factor, position * inv_freq[i]);
    v[i] = turned.real();
    v[i + half] = turned.imag();
  }
  return v;
}

std::vector<double> default_inverse_frequencies(double theta, std::int64_t dim) {
  std::vector<double> result;
  for (std::int64_t i = 0; i < dim / 2; ++i) result.push_back(std::pow(theta, -2.0 * i / dim));
  return result;
}

struct NaiveLearnedGate {
  std::vector<std::string> q_pools, k_pools;
  bool double_linear = false;
  std::int64_t q_heads = 0, kv_heads = 0, dim = 0, block = 0;
  std::vector<double> inv_freq;
  double attention_factor = 1.0;
  std::vector<float> wk, wq;

  // Logits of every visible key block of row (b, h, m).
  template <class T>
  std::vector<double> row(const TestBatch<T>& q, const TestBatch<T>& k, std::int64_t b, std::int64_t h, std::int64_t m,
                          bool causal) const {
    const std::int64_t q_len = q.length(b), k_len = k.length(b);
    const std::int64_t kv = h / (q_heads / kv_heads);
    std::vector<double> query = naive_pool(q, b, h, block, m, q_pools);
    if (double_linear) query = naive_project(query, wq, h, dim);
    query = naive_rope(query, static_cast<double>(k_len - q_len + m * block), inv_freq, attention_factor);
    std::vector<double> logits;
    for (std::int64_t n = 0; n < naive_visible_blocks(q_len, k_len, block, m, causal); ++n) {
      std::vector<double> key = naive_project(naive_pool(k, b, kv, block, n, k_pools), wk, double_linear ? kv : h, dim);
      key = naive_rope(key, static_cast<double>(n * block), inv_freq, attention_factor);
      double dot = 0.0;
      for (std::int64_t d = 0; d < dim; ++d) dot += query[d] * key[d];
      logits.push_back(dot / std::sqrt(static_cast<double>(dim)));
    }
    return logits;
  }
};

// Compares every row of `scores` with `expected(b, h, m)`, poisoning the output buffer first and
// checking that nothing past the visible blocks is written.
template <class Scores, class Expected>
void check_all_rows(const Scores& scores, const std::vector<std::int64_t>& q_lengths,
                    const std::vector<std::int64_t>& k_lengths, std::int64_t block, bool causal, Expected&& expected) {
  REQUIRE(scores.sequences().size() == q_lengths.size());
  std::int64_t rows = 0;
  for (std::size_t b = 0; b < q_lengths.size(); ++b) {
    const auto& g = scores.sequences()[b];
    REQUIRE(g.q_len == q_lengths[b]);
    REQUIRE(g.k_len == k_lengths[b]);
    for (std::int64_t h = 0; h < scores.heads(); ++h)
      for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
        CAPTURE(b);
        CAPTURE(h);
        CAPTURE(m);
        const std::int64_t visible = g.visible_key_blocks(m);
        REQUIRE(visible == naive_visible_blocks(q_lengths[b], k_lengths[b], block, m, causal));
        std::vector<double> logits(static_cast<std::size_t>(visible + 1), kNaN);
        scores.score_row(static_cast<std::int64_t>(b), h, m, logits.data());
        const std::vector<double> want = expected(static_cast<std::int64_t>(b), h, m);
        REQUIRE(static_cast<std::int64_t>(want.size()) == visible);
        for (std::int64_t n = 0; n < visible; ++n) {
          CAPTURE(n);
          REQUIRE(std::isfinite(logits[n]));
          CHECK(std::abs(logits[n] - want[n]) <= 1e-10 * (1.0 + std::abs(want[n])));
        }
        CHECK(std::isnan(logits[visible]));
        ++rows;
      }
  }
  CHECK(rows > 0);
}

template <class T>
std::vector<std::int64_t> lengths_of(const TestBatch<T>& batch) {
  std::vector<std::int64_t> result;
  for (std::int64_t b = 0; b < batch.batch; ++b) result.push_back(batch.length(b));
  return result;
}

seer::RopeConfig default_rope(std::int64_t dim, double theta) {
  seer::RopeConfig rope;
  rope.head_dim = dim;
  rope.theta = theta;
  return rope;
}

seer::LearnedGateConfig gate_config(const std::string& type, std::int64_t block, std::int64_t dim, double theta) {
  seer::LearnedGateConfig config;
  config.gate_type = type;
  config.block_size = block;
  config.hidden_size = dim;
  config.rope = default_rope(dim, theta);
  return config;
}

// Builds a LearnedGate with random weights and the matching naive gate.
struct GatePair {
  seer::LearnedGate gate;
  NaiveLearnedGate naive;
};

GatePair make_gate_pair(const seer::LearnedGateConfig& config, const std::vector<std::string>& q_pools,
                        const std::vector<std::string>& k_pools, bool double_linear, std::int64_t q_heads,
                        std::int64_t kv_heads, std::int64_t dim, std::mt19937& rng) {
  NaiveLearnedGate naive;
  naive.q_pools = q_pools;
  naive.k_pools = k_pools;
  naive.double_linear = double_linear;
  naive.q_heads = q_heads;
  naive.kv_heads = kv_heads;
  naive.dim = dim;
  naive.block = config.block_size;
  const std::int64_t k_rows = (double_linear ? kv_heads : q_heads) * static_cast<std::int64_t>(k_pools.size()) * dim;
  naive.wk = random_weights(k_rows * dim, rng);
  if (double_linear) naive.wq = random_weights(q_heads * static_cast<std::int64_t>(q_pools.size()) * dim * dim, rng);
  seer::LearnedGate gate(config, q_heads, kv_heads, dim, naive.wk, naive.wq);
  naive.inv_freq = gate.rotary_embedding().inverse_frequencies();
  naive.attention_factor = gate.rotary_embedding().attention_factor();
  if (config.rope.scaling.type == "default") {
    // The naive default RoPE computes its own frequencies.
    naive.inv_freq = default_inverse_frequencies(config.rope.theta, dim);
  }
  return GatePair{std::move(gate), std::move(naive)};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Block pooling

TEST_CASE_TEMPLATE("pooling: max, min, mean by hand with a partial last block", T, float, double, seer::half,
                   seer::bfloat16) {
  // One padded sequence of 5 tokens, 2 heads, dim 2. Head 1 holds the hand-picked values (all exact
  // in half and bfloat16); head 0 holds 100 + t so a head mix-up shows.
  const double head1[5][2] = {{3, 0.5}, {-1, 1.5}, {2, -2}, {5, -2.5}, {-4, 7}};
  std::vector<T> storage(5 * 2 * 2);
  for (int t = 0; t < 5; ++t)
    for (int d = 0; d < 2; ++d) {
      storage[(t * 2 + 0) * 2 + d] = seer::from_float<T>(static_cast<float>(100 + t));
      storage[(t * 2 + 1) * 2 + d] = seer::from_float<T>(static_cast<float>(head1[t][d]));
    }
  const seer::SequenceBatch<const T> batch =
      seer::padded_batch(seer::TensorView<const T, 4>::contiguous(storage.data(), {1, 5, 2, 2}), "x");

  // Block size 2: blocks {0,1}, {2,3}, {4} (partial: pooled over its single valid token).
  CHECK(seer::pool_blocks(batch, 0, 1, 2, seer::BlockPooling::max) == std::vector<double>{3, 1.5, 5, -2, -4, 7});
  CHECK(seer::pool_blocks(batch, 0, 1, 2, seer::BlockPooling::min) == std::vector<double>{-1, 0.5, 2, -2.5, -4, 7});
  CHECK(seer::pool_blocks(batch, 0, 1, 2, seer::BlockPooling::mean) == std::vector<double>{1, 1, 3.5, -2.25, -4, 7});
  // Concatenated [max | min | mean] per block.
  const std::vector<seer::BlockPooling> all{seer::BlockPooling::max, seer::BlockPooling::min, seer::BlockPooling::mean};
  CHECK(seer::pool_blocks(batch, 0, 1, 2, all) ==
        std::vector<double>{3, 1.5, -1, 0.5, 1, 1, 5, -2, 2, -2.5, 3.5, -2.25, -4, 7, -4, 7, -4, 7});
  // Block size 3: {0,1,2}, {3,4}; the partial mean divides by 2, not 3.
  CHECK(seer::pool_blocks(batch, 0, 1, 3, seer::BlockPooling::mean) == std::vector<double>{4.0 / 3.0, 0.0, 0.5, 2.25});
  // A sequence shorter than one block: one block of 5 tokens.
  const auto whole = seer::pool_blocks(batch, 0, 1, 8, all);
  REQUIRE(whole.size() == 6);
  CHECK(whole[0] == 5);
  CHECK(whole[1] == 7);
  CHECK(whole[2] == -4);
  CHECK(whole[3] == -2.5);
  CHECK(whole[4] == doctest::Approx(1.0));  // (3 - 1 + 2 + 5 - 4) / 5
  CHECK(whole[5] == doctest::Approx(0.9));  // (0.5 + 1.5 - 2 - 2.5 + 7) / 5
  CHECK(seer::pool_blocks(batch, 0, 0, 2, seer::BlockPooling::max) ==
        std::vector<double>{101, 101, 103, 103, 104, 104});
}

TEST_CASE("pooling: packed varlen with empty and one-token sequences, strided layout") {
  // Storage [heads=1][dim=2][tokens=4] (token stride 1, dim stride 4): sequences of length 3, 0, 1.
  const float data[8] = {1, 4, -2, 9, /* dim 1 */ 0.5, -3, 6, 8};
  const std::vector<std::int32_t> cu_seqlens{0, 3, 3, 4};
  seer::TensorView<const float, 3> view{data, {4, 1, 2}, {1, 8, 4}};
  const seer::SequenceBatch<const float> batch = seer::packed_batch(view, cu_seqlens, "x");
  CHECK(seer::pool_blocks(batch, 0, 0, 2, seer::BlockPooling::max) == std::vector<double>{4, 0.5, -2, 6});
  CHECK(seer::pool_blocks(batch, 0, 0, 2, seer::BlockPooling::mean) == std::vector<double>{2.5, -1.25, -2, 6});
  CHECK(seer::pool_blocks(batch, 1, 0, 2, seer::BlockPooling::max).empty());
  CHECK(seer::pool_blocks(batch, 2, 0, 4, seer::BlockPooling::min) == std::vector<double>{9, 8});

  CHECK(invalid_argument_of([&] { seer::pool_blocks(batch, 0, 0, 0, seer::BlockPooling::max); }) == "block_size");
  CHECK(invalid_argument_of([&] { seer::pool_blocks(batch, 3, 0, 2, seer::BlockPooling::max); }) == "b");
  CHECK(invalid_argument_of([&] { seer::pool_blocks(batch, 0, 1, 2, seer::BlockPooling::max); }) == "h");
  CHECK(invalid_argument_of([&] { seer::pool_blocks(batch, 0, 0, 2, std::vector<seer::BlockPooling>{}); }) == "pools");
  const std::vector<std::int32_t> decreasing{0, 3, 2, 4};
  const auto broken = seer::packed_batch(view, decreasing.data(), 3, 4, "x");
  CHECK(invalid_argument_of([&] { seer::pool_blocks(broken, 0, 0, 2, seer::BlockPooling::max); }) == "batch");
}

// ---------------------------------------------------------------------------------------------
// Gate types

TEST_CASE("gate type names") {
  using seer::BlockPooling;
  auto released = seer::GateType::parse("Qavg_Kmaxminavg");
  CHECK(released.query_pools == std::vector<BlockPooling>{BlockPooling::mean});
  CHECK(released.key_pools == std::vector<BlockPooling>{BlockPooling::max, BlockPooling::min, BlockPooling::mean});
  auto other = seer::GateType::parse("Qmaxmin_Kavg");
  CHECK(other.query_pools == std::vector<BlockPooling>{BlockPooling::max, BlockPooling::min});
  CHECK(other.key_pools == std::vector<BlockPooling>{BlockPooling::mean});
  // The original's names list pools in the order max, min, avg only; anything else is not a gate.
  for (const char* bad : {"Qavgmax_Kmaxminavg", "Qavg_K", "Q_Kmax", "avg_Kmax", "Qavg_Kmaxmax", "Qavg_Kmaxminavg_",
                          "qavg_kmax", "", "Qavg_Kminmax", "Qavg-Kmax"}) {
    CAPTURE(bad);
    CHECK(invalid_argument_of([&] { seer::GateType::parse(bad); }) == "config.gate_type");
  }
}

// ---------------------------------------------------------------------------------------------
// LearnedGate

TEST_CASE("learned gate: hand-checked two-block case (D = 2, released layout)") {
  // One sequence of 4 tokens, block 2, one head, D = dg = 2, theta 10000 (dim 2: inv_freq = {1}).
  //   q tokens (1,0) (3,2) | (0,1) (2,-1)   -> Qavg: block 0 (2,1), block 1 (1,0)
  //   k tokens (1,2) (3,-2) | (-1,0) (1,4)  -> [max|min|avg]: block 0 [3,2, 1,-2, 2,0], block 1 [1,4, -1,0, 0,2]
  // Wk [1, 6, 2] selects max + avg: rows 0,1 = identity, rows 2,3 = 0, rows 4,5 = identity.
  //   Kg0 = (3+2, 2+0) = (5,2) at position 0; Kg1 = (1+0, 4+2) = (1,6) rotated to position 2.
  //   Row 0: Qg0 = (2,1) at 0: logit = (2*5 + 1*2) / sqrt(2) = 12 / sqrt(2) = 8.48528137423857.
  //   Row 1: Qg1 = R(2)(1,0) = (cos 2, sin 2).
  //     n = 0: (5 cos 2 + 2 sin 2) / sqrt(2) = -0.18536049721123482 (python3, math.cos/sin).
  //     n = 1: same position, the rotation cancels: (1*1 + 0*6) / sqrt(2) = 0.7071067811865475.
  const float q[8] = {1, 0, 3, 2, 0, 1, 2, -1};
  const float k[8] = {1, 2, 3, -2, -1, 0, 1, 4};
  const auto q_batch = seer::padded_batch(seer::TensorView<const float, 4>::contiguous(q, {1, 4, 1, 2}), "q");
  const auto k_batch = seer::padded_batch(seer::TensorView<const float, 4>::contiguous(k, {1, 4, 1, 2}), "k");
  const std::vector<float> wk{1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1};
  seer::LearnedGate gate(gate_config("Qavg_Kmaxminavg", 2, 2, 10000.0), 1, 1, 2, wk);
  CHECK_FALSE(gate.has_q_projection());
  const auto scores = gate.score(q_batch, k_batch);
  REQUIRE(scores.heads() == 1);
  double row0[2] = {kNaN, kNaN};
  scores.score_row(0, 0, 0, row0);
  CHECK(row0[0] == doctest::Approx(8.48528137423857).epsilon(1e-14));
  CHECK(std::isnan(row0[1]));
  double row1[2] = {kNaN, kNaN};
  scores.score_row(0, 0, 1, row1);
  CHECK(row1[0] == doctest::Approx(-0.18536049721123482).epsilon(1e-12));
  CHECK(row1[1] == doctest::Approx(0.7071067811865475).epsilon(1e-14));
  // Non-causal: row 0 sees block 1 too: Qg0 = (2,1) at 0, Kg1 = R(2)(1,6).
  const auto open = gate.score(q_batch, k_batch, /*causal=*/false);
  double open0[2];
  open.score_row(0, 0, 0, open0);
  const double c = std::cos(2.0), s = std::sin(2.0);
  CHECK(open0[1] == doctest::Approx((2 * (c - 6 * s) + 1 * (6 * c + s)) / std::sqrt(2.0)).epsilon(1e-12));
}

TEST_CASE_TEMPLATE("learned gate: released layout (Qavg_Kmaxminavg) vs naive, GQA 1/2/4, varlen", T, float,
                   seer::bfloat16) {
  std::mt19937 rng(1234);
  const std::int64_t dim = 4, block = 4;
  for (const auto& heads : std::vector<std::pair<std::int64_t, std::int64_t>>{{2, 2}, {4, 2}, {4, 1}}) {
    const std::int64_t q_heads = heads.first, kv_heads = heads.second;
    CAPTURE(q_heads);
    CAPTURE(kv_heads);
    // Lengths: several blocks with a partial tail, empty, shorter than a block, exact multiple.
    const std::vector<std::int32_t> lengths{11, 0, 3, 8};
    const auto q = packed_random<T>(lengths, q_heads, dim, rng);
    const auto k = packed_random<T>(lengths, kv_heads, dim, rng);
    auto pair = make_gate_pair(gate_config("Qavg_Kmaxminavg", block, dim, 10000.0), {"avg"}, {"max", "min", "avg"},
                               false, q_heads, kv_heads, dim, rng);
    CHECK_FALSE(pair.gate.has_q_projection());
    CHECK(pair.gate.key_heads() == q_heads);
    for (bool causal : {true, false}) {
      CAPTURE(causal);
      const auto scores = pair.gate.score(q.view(), k.view(), causal, 2);
      CHECK(scores.heads() == q_heads);
      check_all_rows(
          scores, lengths_of(q), lengths_of(k), block, causal,
          [&](std::int64_t b, std::int64_t h, std::int64_t m) { return pair.naive.row(q, k, b, h, m, causal); });
    }
  }
}

TEST_CASE("learned gate: double-linear layouts vs naive, GQA 1/2/4") {
  std::mt19937 rng(99);
  const std::int64_t dim = 4, block = 3;
  struct Layout {
    std::string type;
    std::vector<std::string> q_pools, k_pools;
    bool force_double;
  };
  const std::vector<Layout> layouts{{"Qmaxavg_Kmaxminavg", {"max", "avg"}, {"max", "min", "avg"}, false},
                                    {"Qmaxminavg_Kmin", {"max", "min", "avg"}, {"min"}, false},
                                    {"Qavg_Kmaxminavg", {"avg"}, {"max", "min", "avg"}, true}};
  for (const auto& layout : layouts)
    for (const auto& heads : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 1}, {4, 2}, {4, 1}}) {
      const std::int64_t q_heads = heads.first, kv_heads = heads.second;
      CAPTURE(layout.type);
      CAPTURE(q_heads);
      CAPTURE(kv_heads);
      const std::vector<std::int32_t> lengths{7, 2, 0, 9};
      const auto q = packed_random<double>(lengths, q_heads, dim, rng);
      const auto k = packed_random<double>(lengths, kv_heads, dim, rng);
      auto config = gate_config(layout.type, block, dim, 500.0);
      config.force_double = layout.force_double;
      auto pair = make_gate_pair(config, layout.q_pools, layout.k_pools, true, q_heads, kv_heads, dim, rng);
      CHECK(pair.gate.has_q_projection());
      CHECK(pair.gate.key_heads() == kv_heads);
      const auto scores = pair.gate.score(q.view(), k.view());
      CHECK(scores.key_heads() == kv_heads);
      check_all_rows(
          scores, lengths_of(q), lengths_of(k), block, true,
          [&](std::int64_t b, std::int64_t h, std::int64_t m) { return pair.naive.row(q, k, b, h, m, true); });
    }
}

TEST_CASE("learned gate: q_len != k_len places query blocks at their absolute positions") {
  std::mt19937 rng(7);
  const std::int64_t dim = 4, block = 4;
  // Padded batches: a query chunk at the end of a longer key sequence (q 6, k 13), and more queries
  // than keys (q 10, k 4, so early query blocks see nothing when causal).
  for (const auto& shape : std::vector<std::pair<std::int64_t, std::int64_t>>{{6, 13}, {10, 4}, {5, 5}}) {
    const std::int64_t q_len = shape.first, k_len = shape.second;
    CAPTURE(q_len);
    CAPTURE(k_len);
    const auto q = padded_random<float>(2, q_len, 2, dim, rng);
    const auto k = padded_random<float>(2, k_len, 1, dim, rng);
    auto pair = make_gate_pair(gate_config("Qavg_Kmaxminavg", block, dim, 10000.0), {"avg"}, {"max", "min", "avg"},
                               false, 2, 1, dim, rng);
    for (bool causal : {true, false}) {
      CAPTURE(causal);
      const auto scores = pair.gate.score(q.view(), k.view(), causal);
      check_all_rows(
          scores, lengths_of(q), lengths_of(k), block, causal,
          [&](std::int64_t b, std::int64_t h, std::int64_t m) { return pair.naive.row(q, k, b, h, m, causal); });
    }
  }
}

TEST_CASE("learned gate: scaled RoPE (llama3, yarn) is applied with its attention factor") {
  std::mt19937 rng(31);
  const std::int64_t dim = 8, block = 4;
  auto config = gate_config("Qavg_Kmaxminavg", block, dim, 10000.0);
  SUBCASE("yarn") {
    config.rope.scaling.type = "yarn";
    config.rope.scaling.factor = 4.0;
    config.rope.scaling.original_max_position_embeddings = 16;
  }
  SUBCASE("llama3") {
    config.rope.scaling.type = "llama3";
    config.rope.scaling.factor = 8.0;
    config.rope.scaling.original_max_position_embeddings = 64;
  }
  const std::vector<std::int32_t> lengths{21, 5};
  const auto q = packed_random<float>(lengths, 2, dim, rng);
  const auto k = packed_random<float>(lengths, 2, dim, rng);
  auto pair = make_gate_pair(config, {"avg"}, {"max", "min", "avg"}, false, 2, 2, dim, rng);
  // The naive gate takes the (separately tested) frequencies and factor; the rotation is its own.
  CHECK(pair.naive.inv_freq.size() == 4);
  const auto scores = pair.gate.score(q.view(), k.view());
  check_all_rows(scores, lengths_of(q), lengths_of(k), block, true,
                 [&](std::int64_t b, std::int64_t h, std::int64_t m) { return pair.naive.row(q, k, b, h, m, true); });
}

TEST_CASE("learned gate: results do not depend on the thread count") {
  std::mt19937 rng(5);
  const std::vector<std::int32_t> lengths{37, 1, 16};
  const auto q = packed_random<seer::half>(lengths, 4, 4, rng);
  const auto k = packed_random<seer::half>(lengths, 2, 4, rng);
  auto pair = make_gate_pair(gate_config("Qavg_Kmaxminavg", 8, 4, 10000.0), {"avg"}, {"max", "min", "avg"}, false, 4, 2,
                             4, rng);
  const auto one = pair.gate.score(q.view(), k.view(), true, 1);
  const auto many = pair.gate.score(q.view(), k.view(), true, 3);
  check_all_rows(many, lengths_of(q), lengths_of(k), 8, true, [&](std::int64_t b, std::int64_t h, std::int64_t m) {
    std::vector<double> row(static_cast<std::size_t>(one.sequences()[b].visible_key_blocks(m)));
    one.score_row(b, h, m, row.data());
    return row;
  });
}

// ---------------------------------------------------------------------------------------------
// MeanPoolGate

TEST_CASE("mean-pool gate vs naive: varlen, GQA, q_len != k_len") {
  std::mt19937 rng(77);
  const std::int64_t dim = 6, block = 4;
  for (const auto& heads : std::vector<std::pair<std::int64_t, std::int64_t>>{{2, 2}, {4, 2}, {4, 1}}) {
    const std::int64_t q_heads = heads.first, kv_heads = heads.second;
    CAPTURE(q_heads);
    const auto q = packed_random<float>({9, 0, 2, 4}, q_heads, dim, rng);
    const auto k = packed_random<float>({9, 0, 7, 4}, kv_heads, dim, rng);
    for (bool causal : {true, false}) {
      const auto scores = seer::MeanPoolGate{block}.score(q.view(), k.view(), causal, 2);
      check_all_rows(
          scores, lengths_of(q), lengths_of(k), block, causal, [&](std::int64_t b, std::int64_t h, std::int64_t m) {
            std::vector<double> logits;
            const auto query = naive_pool(q, b, h, block, m, {"avg"});
            for (std::int64_t n = 0; n < naive_visible_blocks(q.length(b), k.length(b), block, m, causal); ++n) {
              const auto key = naive_pool(k, b, h / (q_heads / kv_heads), block, n, {"avg"});
              double dot = 0.0;
              for (std::int64_t d = 0; d < dim; ++d) dot += query[d] * key[d];
              logits.push_back(dot / std::sqrt(static_cast<double>(dim)));
            }
            return logits;
          });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Selection on gate scores

TEST_CASE("select_blocks on learned-gate scores: TopK, Threshold, Nucleus give valid rows") {
  std::mt19937 rng(2024);
  const std::int64_t dim = 4, block = 4;
  const std::vector<std::int32_t> lengths{40, 0, 3, 17};
  const auto q = packed_random<float>(lengths, 4, dim, rng);
  const auto k = packed_random<float>(lengths, 2, dim, rng);
  auto pair = make_gate_pair(gate_config("Qavg_Kmaxminavg", block, dim, 10000.0), {"avg"}, {"max", "min", "avg"}, false,
                             4, 2, dim, rng);
  const auto scores = pair.gate.score(q.view(), k.view());
  auto check_rows = [&](const seer::BlockSet& blocks, std::int64_t top_k) {
    REQUIRE(blocks.complete());
    CHECK(blocks.heads() == 4);
    for (std::int64_t b = 0; b < blocks.batch(); ++b) {
      const auto& g = blocks.sequences()[b];
      for (std::int64_t h = 0; h < 4; ++h)
        for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
          const std::int64_t row = blocks.row_index(b, h, m);
          const std::int64_t visible = g.visible_key_blocks(m);
          REQUIRE(blocks.row_size(row) >= 1);  // the diagonal is kept by default
          CHECK(*(blocks.row_end(row) - 1) == m);
          for (auto it = blocks.row_begin(row); it != blocks.row_end(row); ++it) {
            CHECK(*it >= 0);
            CHECK(*it < visible);
            if (it + 1 != blocks.row_end(row)) CHECK(*it < *(it + 1));
          }
          if (top_k > 0) CHECK(blocks.row_size(row) == std::min(visible, top_k));
        }
    }
  };
  const auto top = seer::select_blocks(scores, seer::TopK::blocks(3));
  check_rows(top, 3);
  // TopK keeps the diagonal plus the best two others by the gate's logits.
  {
    const std::int64_t m = 9, visible = 10;
    std::vector<double> logits(visible);
    scores.score_row(0, 1, m, logits.data());
    std::vector<std::int32_t> order;
    for (std::int32_t n = 0; n < m; ++n) order.push_back(n);
    std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    std::vector<std::int32_t> expected{order[0], order[1], static_cast<std::int32_t>(m)};
    std::sort(expected.begin(), expected.end());
    const std::int64_t row = top.row_index(0, 1, m);
    CHECK(std::vector<std::int32_t>(top.row_begin(row), top.row_end(row)) == expected);
  }
  check_rows(seer::select_blocks(scores, seer::Threshold{0.05}), 0);
  check_rows(seer::select_blocks(scores, seer::Nucleus{0.8}, {}, 2), 0);
  // Mean-pool scores go through the same interface.
  const auto mean_scores = seer::MeanPoolGate{block}.score(q.view(), k.view());
  check_rows(seer::select_blocks(mean_scores, seer::TopK::blocks(2)), 2);
}

// ---------------------------------------------------------------------------------------------
// Validation

TEST_CASE("learned gate: invalid construction names the argument") {
  const std::int64_t dim = 4;
  const auto config = gate_config("Qavg_Kmaxminavg", 4, dim, 10000.0);
  const std::vector<float> wk(static_cast<std::size_t>(4 * 3 * dim * dim), 0.5f);  // [Hq=4, 3D, D]
  auto build = [&](seer::LearnedGateConfig c, std::int64_t hq, std::int64_t hkv, std::int64_t d, std::vector<float> k,
                   std::vector<float> q = {}) { seer::LearnedGate gate(c, hq, hkv, d, std::move(k), std::move(q)); };
  CHECK(invalid_argument_of([&] { build(config, 4, 2, dim, wk); }) == "<no error>");

  auto bad = config;
  bad.gate_type = "Qavgmax_Kmaxminavg";
  CHECK(invalid_argument_of([&] { build(bad, 4, 2, dim, wk); }) == "config.gate_type");
  bad = config;
  bad.block_size = 0;
  CHECK(invalid_argument_of([&] { build(bad, 4, 2, dim, wk); }) == "config.block_size");
  bad = config;
  bad.hidden_size = 8;
  CHECK(invalid_argument_of([&] { build(bad, 4, 2, dim, wk); }) == "config.hidden_size");
  bad = config;
  bad.rope.head_dim = 8;
  CHECK(invalid_argument_of([&] { build(bad, 4, 2, dim, wk); }) == "config.rope.head_dim");
  bad = config;
  bad.rope.theta = -1.0;
  CHECK(invalid_argument_of([&] { build(bad, 4, 2, dim, wk); }) == "rope.theta");
  bad = config;
  bad.rope.scaling.type = "longrope";
  CHECK(invalid_argument_of([&] { build(bad, 4, 2, dim, wk); }) == "rope.scaling.type");
  CHECK(invalid_argument_of([&] { build(config, 0, 1, dim, wk); }) == "num_q_heads");
  CHECK(invalid_argument_of([&] { build(config, 4, 3, dim, wk); }) == "num_kv_heads");
  CHECK(invalid_argument_of([&] { build(config, 4, 0, dim, wk); }) == "num_kv_heads");
  CHECK(invalid_argument_of([&] { build(config, 4, 2, 0, wk); }) == "head_dim");
  // The released layout has one K projection per QUERY head: [Hkv, 3D, D] is too small.
  CHECK(invalid_argument_of([&] { build(config, 4, 2, dim, std::vector<float>(2 * 3 * dim * dim, 0.5f)); }) ==
        "k_projection");
  CHECK(invalid_argument_of([&] { build(config, 4, 2, dim, wk, std::vector<float>(4 * dim * dim, 0.5f)); }) ==
        "q_projection");
  auto with_nan = wk;
  with_nan[17] = std::numeric_limits<float>::quiet_NaN();
  CHECK(invalid_argument_of([&] { build(config, 4, 2, dim, with_nan); }) == "k_projection");

  // Double-linear: q projection [Hq, 2D, D], k projection [Hkv, 3D, D].
  auto double_linear = config;
  double_linear.gate_type = "Qmaxavg_Kmaxminavg";
  const std::vector<float> wk_kv(static_cast<std::size_t>(2 * 3 * dim * dim), 0.5f);
  const std::vector<float> wq(static_cast<std::size_t>(4 * 2 * dim * dim), 0.5f);
  CHECK(invalid_argument_of([&] { build(double_linear, 4, 2, dim, wk_kv, wq); }) == "<no error>");
  CHECK(invalid_argument_of([&] { build(double_linear, 4, 2, dim, wk_kv); }) == "q_projection");
  CHECK(invalid_argument_of([&] { build(double_linear, 4, 2, dim, wk, wq); }) == "k_projection");
  auto wq_inf = wq;
  wq_inf[3] = std::numeric_limits<float>::infinity();
  CHECK(invalid_argument_of([&] { build(double_linear, 4, 2, dim, wk_kv, wq_inf); }) == "q_projection");
}

TEST_CASE("gates: invalid score inputs name the argument") {
  std::mt19937 rng(3);
  const std::int64_t dim = 4;
  const seer::LearnedGate gate(gate_config("Qavg_Kmaxminavg", 4, dim, 10000.0), 4, 2, dim,
                               random_weights(4 * 3 * dim * dim, rng));
  const auto q = packed_random<float>({5, 3}, 4, dim, rng);
  const auto k = packed_random<float>({5, 3}, 2, dim, rng);
  const auto k_wrong_heads = packed_random<float>({5, 3}, 4, dim, rng);
  const auto q_wrong_dim = packed_random<float>({5, 3}, 4, 2, rng);
  const auto k_one_sequence = packed_random<float>({5}, 2, dim, rng);
  CHECK(invalid_argument_of([&] { gate.score(q.view(), k.view()); }) == "<no error>");
  CHECK(invalid_argument_of([&] { gate.score(k.view(), k.view()); }) == "q_before_rope");
  CHECK(invalid_argument_of([&] { gate.score(q.view(), k_wrong_heads.view()); }) == "k_before_rope");
  CHECK(invalid_argument_of([&] { gate.score(q_wrong_dim.view(), k.view()); }) == "q_before_rope");
  CHECK(invalid_argument_of([&] { gate.score(q.view(), k_one_sequence.view()); }) == "k_before_rope");
  auto broken = q.view();
  const std::vector<std::int32_t> too_long{0, 5, 99};
  broken.cu_seqlens = too_long.data();
  broken.max_length = 99;
  CHECK(invalid_argument_of([&] { gate.score(broken, k.view()); }) == "q_before_rope");
  auto null_data = k.view();
  null_data.data = nullptr;
  CHECK(invalid_argument_of([&] { gate.score(q.view(), null_data); }) == "k_before_rope");

  const auto scores = gate.score(q.view(), k.view());
  double logits[4];
  CHECK(invalid_argument_of([&] { scores.score_row(2, 0, 0, logits); }) == "b");
  CHECK(invalid_argument_of([&] { scores.score_row(0, 4, 0, logits); }) == "h");
  CHECK(invalid_argument_of([&] { scores.score_row(1, 0, 1, logits); }) == "m");

  const auto kv3 = packed_random<float>({5, 3}, 3, dim, rng);
  CHECK(invalid_argument_of([&] { seer::MeanPoolGate{0}.score(q.view(), k.view()); }) == "block_size");
  CHECK(invalid_argument_of([&] { seer::MeanPoolGate{4}.score(q.view(), kv3.view()); }) == "k_after_rope");
  CHECK(invalid_argument_of([&] { seer::MeanPoolGate{4}.score(q_wrong_dim.view(), k.view()); }) == "k_after_rope");
  CHECK(invalid_argument_of([&] { seer::MeanPoolGate{4}.score(q.view(), k_one_sequence.view()); }) == "k_after_rope");
  CHECK(invalid_argument_of([&] { seer::MeanPoolGate{4}.score(broken, k.view()); }) == "q_after_rope");
}
