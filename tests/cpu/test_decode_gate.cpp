// Decode gate (SeerAttention-R): DecodeGate against an independent double computation written from
// the formulas (all query head poolings, RMSNorm on/off, RoPE on/off, GQA groups 1, 2, 4); the
// K-compression cache (contiguous vs paged, incremental vs prefill, post-RoPE key views, blocks
// completed while decoding roped at j*B, memory 1/128 of the KV cache); argument checks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "decode_test_support.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gate/decode_gate.hpp"

namespace {

using seer::DecodeGate;
using seer::DecodeGateConfig;
using seer::QueryHeadPooling;
using namespace seer_test;

double max_abs_difference(const std::vector<double>& a, const double* b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

}  // namespace

TEST_CASE("decode gate: query and compressed key match an independent computation") {
  const std::int64_t dim = 8, kv_heads = 2, block = 4;
  unsigned seed = 1;
  for (QueryHeadPooling pooling :
       {QueryHeadPooling::projection, QueryHeadPooling::average_projection, QueryHeadPooling::average})
    for (bool norm : {false, true})
      for (bool rope : {false, true})
        for (std::int64_t group : {1, 2, 4}) {
          CAPTURE(seer::query_head_pooling_name(pooling));
          CAPTURE(norm);
          CAPTURE(rope);
          CAPTURE(group);
          const std::int64_t q_heads = kv_heads * group;
          DecodeGateConfig config = small_decode_config(pooling, dim, block, norm, rope);
          const DecodeGate gate = random_decode_gate(config, q_heads, kv_heads, dim, ++seed);
          std::mt19937 random(++seed);
          std::normal_distribution<double> normal(0.0, 1.0);
          // One token's query heads, stored [Hq, D] as float to check the element conversion too.
          std::vector<float> q(static_cast<std::size_t>(q_heads * dim));
          for (auto& x : q) x = static_cast<float>(normal(random));
          std::vector<std::vector<double>> heads(static_cast<std::size_t>(q_heads), std::vector<double>(dim));
          for (std::int64_t h = 0; h < q_heads; ++h)
            for (std::int64_t d = 0; d < dim; ++d) heads[h][d] = q[h * dim + d];
          for (std::int64_t c = 0; c < kv_heads; ++c) {
            const std::int64_t position = 37 + 11 * c;
            std::vector<double> out(static_cast<std::size_t>(dim), std::nan(""));
            gate.query(q.data() + c * group * dim, dim, c, position, out.data());
            const auto expected = reference_query(config, gate.weights(), heads, kv_heads, c, position);
            CHECK(max_abs_difference(expected, out.data()) < 1e-12);

            // Key block j = 5 from block-size tokens.
            std::vector<std::vector<double>> tokens(static_cast<std::size_t>(block), std::vector<double>(dim));
            std::vector<double> flat;
            for (auto& t : tokens)
              for (auto& x : t) x = normal(random);
            // Pool with the cache's helper through a tiny contiguous KV view.
            std::vector<double> keys(static_cast<std::size_t>(block * dim));
            for (std::int64_t t = 0; t < block; ++t)
              for (std::int64_t d = 0; d < dim; ++d) keys[t * dim + d] = tokens[t][d];
            const std::int32_t length = static_cast<std::int32_t>(block);
            const auto view = seer::TensorView<const double, 4>::contiguous(keys.data(), {1, block, 1, dim});
            const auto cache = seer::contiguous_kv_cache(view, view, &length, block);
            std::vector<double> pooled(static_cast<std::size_t>(3 * dim)), scratch(static_cast<std::size_t>(dim));
            seer::KCompressionCache<float>::pool_block(cache, 0, 0, block, 0, nullptr, scratch.data(), pooled.data());
            gate.compress_key_block(pooled.data(), c, 5, out.data());
            const auto expected_key = reference_key(config, gate.weights(), tokens, c, 5 * block);
            CHECK(max_abs_difference(expected_key, out.data()) < 1e-12);

            // Logits: q . k / sqrt(dg).
            double logit = std::nan("");
            gate.logits(expected.data(), expected_key.data(), dim, 1, &logit);
            double dot = 0.0;
            for (std::int64_t d = 0; d < dim; ++d) dot += expected[d] * expected_key[d];
            CHECK(logit == doctest::Approx(dot / std::sqrt(static_cast<double>(dim))).epsilon(1e-13));
          }
        }
}

TEST_CASE("decode gate: log-softmax and scored blocks follow the training mask") {
  std::vector<double> logits{0.5, -1.0, 2.0};
  std::vector<double> out(3, std::nan(""));
  seer::decode_log_softmax(logits.data(), 3, out.data());
  double total = 0.0;
  for (double x : out) total += std::exp(x);
  CHECK(total == doctest::Approx(1.0).epsilon(1e-14));
  CHECK(out[2] - out[0] == doctest::Approx(1.5));
  // Position t scores the complete blocks j < t / B: its own block never.
  CHECK(seer::decode_scored_blocks(0, 64) == 0);
  CHECK(seer::decode_scored_blocks(63, 64) == 0);
  CHECK(seer::decode_scored_blocks(64, 64) == 1);
  CHECK(seer::decode_scored_blocks(127, 64) == 1);
  CHECK(seer::decode_scored_blocks(128, 64) == 2);
}

TEST_CASE("K-compression cache: contiguous and paged views give identical rows") {
  const std::int64_t dim = 8, kv_heads = 2, block = 4, batch = 3, page = 8, capacity = 48;
  const DecodeGateConfig config = small_decode_config(QueryHeadPooling::projection, dim, block, true, true);
  const DecodeGate gate = random_decode_gate(config, 4, kv_heads, dim, 7);
  const std::vector<std::int32_t> lengths{47, 3, 20};
  RandomKvCache kv(batch, capacity, kv_heads, dim, page, 11);
  seer::KCompressionCache<float> contiguous(batch, capacity / block, kv_heads, dim), paged = contiguous;
  contiguous.prefill(kv.contiguous(lengths), gate);
  paged.prefill(kv.paged(lengths), gate);
  for (std::int64_t b = 0; b < batch; ++b) {
    CHECK(contiguous.completed_blocks(b) == lengths[b] / block);
    CHECK(paged.completed_blocks(b) == lengths[b] / block);
    for (std::int64_t j = 0; j < contiguous.completed_blocks(b); ++j)
      for (std::int64_t h = 0; h < kv_heads; ++h)
        for (std::int64_t d = 0; d < dim; ++d) CHECK(contiguous.row(b, j, h)[d] == paged.row(b, j, h)[d]);
  }
  CHECK(contiguous.completed_blocks(1) == 0);  // a prompt shorter than a block has no complete block
}

TEST_CASE("K-compression cache: incremental updates over many steps equal one prefill") {
  const std::int64_t dim = 8, kv_heads = 2, block = 4, batch = 3, page = 4, capacity = 96;
  const DecodeGateConfig config = small_decode_config(QueryHeadPooling::average_projection, dim, block, true, true);
  const DecodeGate gate = random_decode_gate(config, 4, kv_heads, dim, 21);
  RandomKvCache kv(batch, capacity, kv_heads, dim, page, 23);
  std::vector<std::int32_t> lengths{5, 0, 17};
  seer::KCompressionCache<double> incremental(batch, capacity / block, kv_heads, dim);
  incremental.prefill(kv.paged(lengths), gate);
  std::mt19937 random(5);
  std::uniform_int_distribution<int> step(1, 8);
  for (int s = 0; s < 30; ++s) {
    for (auto& length : lengths)
      length = std::min<std::int32_t>(static_cast<std::int32_t>(capacity), length + step(random));
    incremental.update(kv.paged(lengths), gate);
  }
  seer::KCompressionCache<double> full(batch, capacity / block, kv_heads, dim);
  full.prefill(kv.contiguous(lengths), gate);
  for (std::int64_t b = 0; b < batch; ++b) {
    REQUIRE(incremental.completed_blocks(b) == full.completed_blocks(b));
    for (std::int64_t j = 0; j < full.completed_blocks(b); ++j)
      for (std::int64_t h = 0; h < kv_heads; ++h)
        for (std::int64_t d = 0; d < dim; ++d) CHECK(incremental.row(b, j, h)[d] == full.row(b, j, h)[d]);
  }
}

TEST_CASE("K-compression cache: a block completed during decoding is roped at its block start") {
  // Block 64: the prompt holds one complete block and 10 tokens; 54 single-token steps complete block 1.
  const std::int64_t dim = 8, kv_heads = 1, block = 64, capacity = 192;
  const DecodeGateConfig config = small_decode_config(QueryHeadPooling::projection, dim, block, false, true);
  const DecodeGate gate = random_decode_gate(config, 2, kv_heads, dim, 31);
  RandomKvCache kv(1, capacity, kv_heads, dim, 16, 37);
  std::vector<std::int32_t> lengths{74};
  seer::KCompressionCache<double> cache(1, capacity / block, kv_heads, dim);
  cache.prefill(kv.paged(lengths), gate);
  CHECK(cache.completed_blocks(0) == 1);
  for (int s = 0; s < 54; ++s) {
    ++lengths[0];
    cache.update(kv.paged(lengths), gate);
    CHECK(cache.completed_blocks(0) == (lengths[0] == 128 ? 2 : 1));
  }
  std::vector<std::vector<double>> tokens;
  for (std::int64_t t = block; t < 2 * block; ++t) tokens.push_back(kv.key_vector(0, t, 0));
  const auto at_start = reference_key(config, gate.weights(), tokens, 0, block);
  const auto at_last_token = reference_key(config, gate.weights(), tokens, 0, 2 * block - 1);  // the original's
  CHECK(max_abs_difference(at_start, cache.row(0, 1, 0)) < 1e-12);
  CHECK(max_abs_difference(at_last_token, cache.row(0, 1, 0)) > 1e-3);
}

TEST_CASE("K-compression cache: post-RoPE key views are un-rotated before pooling") {
  const std::int64_t dim = 8, kv_heads = 2, block = 4, batch = 2, capacity = 40;
  DecodeGateConfig config = small_decode_config(QueryHeadPooling::projection, dim, block, true, true);
  config.rope.scaling.type = "yarn";  // an attention factor != 1 must be divided out too
  config.rope.scaling.factor = 4.0;
  config.rope.scaling.original_max_position_embeddings = 16;
  const DecodeGate gate = random_decode_gate(config, 4, kv_heads, dim, 41);
  const seer::RotaryEmbedding& model_rope = *gate.rotary_embedding();
  REQUIRE(model_rope.attention_factor() != 1.0);
  RandomKvCache kv(batch, capacity, kv_heads, dim, 8, 43);
  RandomKvCache roped = kv;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < capacity; ++t)
      for (std::int64_t h = 0; h < kv_heads; ++h) model_rope.apply(roped.contiguous_key(b, t, h), t);
  const std::vector<std::int32_t> lengths{39, 12};
  seer::KCompressionCache<double> from_pre(batch, capacity / block, kv_heads, dim), from_post = from_pre;
  from_pre.prefill(kv.contiguous(lengths), gate);
  from_post.prefill(roped.contiguous(lengths), gate, &model_rope);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t j = 0; j < from_pre.completed_blocks(b); ++j)
      for (std::int64_t h = 0; h < kv_heads; ++h)
        for (std::int64_t d = 0; d < dim; ++d)
          CHECK(from_post.row(b, j, h)[d] == doctest::Approx(from_pre.row(b, j, h)[d]).epsilon(1e-10));
  // Without the un-rotation the rows differ: the test can fail.
  seer::KCompressionCache<double> wrong(batch, capacity / block, kv_heads, dim);
  wrong.prefill(roped.contiguous(lengths), gate);
  CHECK(std::abs(wrong.row(0, 5, 0)[0] - from_pre.row(0, 5, 0)[0]) > 1e-6);
}

TEST_CASE("K-compression cache: memory is 1/128 of the KV cache at block 64, dg = D") {
  const std::int64_t batch = 2, capacity = 64 * 32, kv_heads = 2, dim = 64;
  const DecodeGateConfig config = small_decode_config(QueryHeadPooling::projection, dim, 64, true, true);
  const DecodeGate gate = random_decode_gate(config, 8, kv_heads, dim, 51);
  std::vector<seer::bfloat16> keys(static_cast<std::size_t>(batch * capacity * kv_heads * dim));
  const std::vector<std::int32_t> lengths{100, 2000};
  const auto view = seer::TensorView<seer::bfloat16, 4>::contiguous(keys.data(), {batch, capacity, kv_heads, dim});
  const auto kv = seer::contiguous_kv_cache(view, view, lengths.data(), capacity);
  const auto cache = seer::KCompressionCache<seer::bfloat16>::for_kv_cache(kv, gate);
  CHECK(cache.max_blocks() == 32);
  const double kv_bytes = 2.0 * static_cast<double>(keys.size() * sizeof(seer::bfloat16));  // keys + values
  const double row_bytes = static_cast<double>(cache.rows().size()) * sizeof(seer::bfloat16);
  CHECK(row_bytes * 128.0 == kv_bytes);
  CHECK(static_cast<double>(cache.memory_bytes()) / kv_bytes == doctest::Approx(1.0 / 128.0).epsilon(0.01));
  // Float rows against a float KV cache: the same ratio.
  const seer::KCompressionCache<float> float_cache(batch, 32, kv_heads, dim);
  CHECK(static_cast<double>(float_cache.rows().size()) * sizeof(float) * 128.0 ==
        2.0 * static_cast<double>(keys.size() * sizeof(float)));
}

TEST_CASE("decode gate and K-compression cache: invalid arguments name the argument") {
  const std::int64_t dim = 8;
  const DecodeGateConfig config = small_decode_config(QueryHeadPooling::projection, dim, 4, true, true);
  const DecodeGate gate = random_decode_gate(config, 4, 2, dim, 61);
  auto argument_of = [](auto&& call) {
    try {
      call();
    } catch (const seer::InvalidArgument& error) {
      return error.argument();
    }
    return std::string("no error");
  };
  seer::DecodeGateWeights weights = gate.weights();
  CHECK(argument_of([&] { DecodeGate(config, 4, 3, dim, weights); }) == "num_kv_heads");
  CHECK(argument_of([&] { DecodeGate(config, 4, 2, dim, seer::DecodeGateWeights{}); }) == "weights.q_projection");
  weights.k_norm.pop_back();
  CHECK(argument_of([&] { DecodeGate(config, 4, 2, dim, weights); }) == "weights.k_norm");
  weights = gate.weights();
  weights.k_projection[3] = std::numeric_limits<float>::infinity();
  CHECK(argument_of([&] { DecodeGate(config, 4, 2, dim, weights); }) == "weights.k_projection");
  DecodeGateConfig wide = config;
  wide.hidden_size = 16;
  CHECK(argument_of([&] { DecodeGate(wide, 4, 2, dim, seer::DecodeGateWeights{}); }) == "config.hidden_size");
  DecodeGateConfig no_rope_avg = config;
  no_rope_avg.use_rope = false;
  no_rope_avg.hidden_size = 16;
  no_rope_avg.query_head_pooling = QueryHeadPooling::average;
  CHECK(argument_of([&] { DecodeGate(no_rope_avg, 4, 2, dim, seer::DecodeGateWeights{}); }) == "config.hidden_size");
  DecodeGateConfig bad_eps = config;
  bad_eps.rms_norm_epsilon = 0.0;
  CHECK(argument_of([&] { DecodeGate(bad_eps, 4, 2, dim, gate.weights()); }) == "config.rms_norm_epsilon");
  CHECK(argument_of([] { seer::parse_query_head_pooling("Qorig"); }) == "q_head_pooling_type");
  std::vector<double> out(dim);
  std::vector<float> q(4 * dim, 1.0f);
  CHECK(argument_of([&] { gate.query(q.data(), dim, 2, 0, out.data()); }) == "kv_head");
  CHECK(argument_of([&] { gate.query(q.data(), dim, 0, -1, out.data()); }) == "position");
  CHECK(argument_of([&] { gate.compress_key_block(out.data(), 0, -1, out.data()); }) == "block");

  // Without RoPE, hidden_size may differ from head_dim (Qproj).
  DecodeGateConfig narrow = config;
  narrow.use_rope = false;
  narrow.hidden_size = 6;
  CHECK_NOTHROW(random_decode_gate(narrow, 4, 2, dim, 62));

  RandomKvCache kv(2, 16, 2, dim, 4, 63);
  std::vector<std::int32_t> lengths{9, 16};
  seer::KCompressionCache<float> cache(2, 4, 2, dim);
  cache.prefill(kv.contiguous(lengths), gate);
  std::vector<std::int32_t> shorter{4, 16};
  CHECK(argument_of([&] { cache.update(kv.contiguous(shorter), gate); }) == "keys");
  CHECK(cache.completed_blocks(0) == 2);  // a failed call leaves the cache as it was
  cache.reset_sequence(0);
  CHECK_NOTHROW(cache.update(kv.contiguous(shorter), gate));
  CHECK(cache.completed_blocks(0) == 1);
  seer::KCompressionCache<float> small(2, 2, 2, dim);
  CHECK(argument_of([&] { small.prefill(kv.contiguous(lengths), gate); }) == "keys");
  seer::KCompressionCache<float> other_heads(2, 4, 1, dim);
  CHECK(argument_of([&] { other_heads.prefill(kv.contiguous(lengths), gate); }) == "gate");
  std::vector<std::int32_t> too_long{9, 17};
  CHECK(argument_of([&] { cache.update(kv.contiguous(too_long, 16), gate); }) == "lengths");
  CHECK(argument_of([&] { (void)cache.row(0, 1, 0); }) == "j");
  CHECK(argument_of([&] { (void)cache.row(2, 0, 0); }) == "b");
  CHECK(argument_of([&] { seer::KCompressionCache<float>(1, 1, 0, 8); }) == "kv_heads");
  const seer::RotaryEmbedding* rope = gate.rotary_embedding();
  seer::RopeConfig wrong_width;
  wrong_width.head_dim = 4;
  const seer::RotaryEmbedding narrow_rope(wrong_width);
  CHECK(rope != nullptr);
  CHECK(argument_of([&] { cache.update(kv.contiguous(lengths), gate, &narrow_rope); }) == "applied_rope");
  std::vector<double> pooled(2 * 3 * dim, 0.5);
  CHECK(argument_of([&] { cache.write_block(1, 0, pooled.data(), gate); }) == "j");
}
