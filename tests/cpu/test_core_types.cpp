// Core types: block geometry, BlockSet, 16-bit floats, views and sequence
// batches.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"

namespace {

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

TEST_CASE("BlockGeometry: square causal grid with a partial last block") {
  const seer::BlockGeometry g{300, 300, 64, true};  // blocks of 64, last one holds 44 tokens
  CHECK(g.query_blocks() == 5);
  CHECK(g.key_blocks() == 5);
  CHECK(g.visible_key_blocks(0) == 1);
  CHECK(g.visible_key_blocks(4) == 5);
  CHECK(g.block_is_full(1, 0));
  CHECK_FALSE(g.block_is_full(1, 1));  // the diagonal needs the causal mask
  CHECK(g.first_masked_key_block(1) == 1);
  CHECK(g.first_masked_key_block(4) == 4);
  CHECK(g.diagonal_first(2) == 2);
  CHECK(g.diagonal_last(2) == 2);
  CHECK(g.visible(10, 10));
  CHECK_FALSE(g.visible(10, 11));
  CHECK_FALSE(g.visible(299, 300));  // beyond k_len
}

TEST_CASE("BlockGeometry: bottom-right alignment for q_len != k_len") {
  // 100 queries at the end of 300 keys: row i sees keys <= i + 200.
  const seer::BlockGeometry chunk{100, 300, 64, true};
  CHECK(chunk.last_visible_key(0) == 200);
  CHECK(chunk.visible_key_blocks(0) == 5);      // last row 63 sees key 263, in block 4
  CHECK(chunk.first_masked_key_block(0) == 3);  // row 0 sees 0..200: blocks 0-2 are complete
  CHECK(chunk.block_is_full(0, 2));
  CHECK_FALSE(chunk.block_is_full(0, 3));
  CHECK(chunk.diagonal_first(0) == 3);
  CHECK(chunk.diagonal_last(0) == 4);
  CHECK(chunk.visible_key_blocks(1) == 5);  // rows 64..99 see keys up to 299

  // 300 queries over 100 keys: rows < 200 see nothing.
  const seer::BlockGeometry tall{300, 100, 64, true};
  CHECK(tall.last_visible_key(199) == -1);
  CHECK(tall.last_visible_key(200) == 0);
  CHECK(tall.visible_key_blocks(2) == 0);  // rows 128..191
  CHECK(tall.visible_key_blocks(3) == 1);  // rows 192..255: row 255 sees keys 0..55
  CHECK(tall.first_masked_key_block(3) == 0);
  CHECK(tall.diagonal_first(3) == 0);
  CHECK(tall.diagonal_last(3) == 0);
  CHECK(tall.diagonal_last(2) == -1);  // no row of block 2 sees a key: no diagonal
}

TEST_CASE("BlockGeometry: non-causal only masks the ragged tail") {
  const seer::BlockGeometry g{70, 150, 64, false};
  CHECK(g.visible_key_blocks(0) == 3);
  CHECK(g.first_masked_key_block(0) == 2);  // blocks 0 and 1 complete, block 2 holds 22 keys
  CHECK(g.block_is_full(1, 1));
  CHECK(g.visible(0, 149));
  CHECK(g.diagonal_first(0) <= g.diagonal_last(0));
}

TEST_CASE("BlockGeometry: empty sequences have no blocks") {
  const seer::BlockGeometry empty{0, 0, 64, true};
  CHECK(empty.query_blocks() == 0);
  CHECK(empty.key_blocks() == 0);
  const seer::BlockGeometry no_keys{10, 0, 64, true};
  CHECK(no_keys.visible_key_blocks(0) == 0);
  CHECK(no_keys.diagonal_last(0) == -1);
}

TEST_CASE("BlockGeometry agrees with a token-level scan") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t block = trial % 2 ? 16 : 8;
    const seer::BlockGeometry g{1 + static_cast<std::int64_t>(rng() % 70), static_cast<std::int64_t>(rng() % 70), block,
                                (trial % 3) != 0};
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
      std::int64_t visible_blocks = 0;
      for (std::int64_t n = 0; n < g.key_blocks(); ++n) {
        bool any = false, all = true;
        for (std::int64_t i = m * block; i < std::min(g.q_len, (m + 1) * block); ++i)
          for (std::int64_t j = n * block; j < (n + 1) * block; ++j) {
            const bool v = j < g.k_len && (!g.causal || j <= i + g.k_len - g.q_len);
            any = any || v;
            all = all && v;
          }
        if (any) visible_blocks = n + 1;
        CAPTURE(g.q_len);
        CAPTURE(g.k_len);
        CAPTURE(m);
        CAPTURE(n);
        CHECK(g.block_is_full(m, n) == all);
        // Masked blocks are exactly the visible-but-not-full ones, and they
        // come last.
        if (any) CHECK((n >= g.first_masked_key_block(m)) == !all);
      }
      CHECK(g.visible_key_blocks(m) == visible_blocks);
    }
  }
}

TEST_CASE("BlockSet: append, index and dense-mask round trip") {
  const std::vector<seer::BlockGeometry> sequences{{130, 130, 64, true}, {0, 0, 64, true}, {64, 64, 64, true}};
  seer::BlockSet blocks(2, 64, sequences);
  CHECK(blocks.rows() == 2 * (3 + 0 + 1));
  blocks.append_row({0});
  blocks.append_row({0, 1});
  blocks.append_row({2});
  blocks.append_row({0});
  blocks.append_row({});
  blocks.append_row({1});
  blocks.append_row({0});
  blocks.append_row({0});
  CHECK(blocks.complete());
  CHECK(blocks.kept_blocks() == 8);
  CHECK(blocks.row_index(0, 1, 2) == 5);
  CHECK(blocks.row_index(2, 1, 0) == 7);
  const auto view = blocks.view();
  CHECK(view.row(0, 1, 2) == 5);
  CHECK(view.rows() == 8);

  const auto mask = seer::to_dense_mask(blocks);
  CHECK(mask.query_blocks == 3);
  CHECK(mask.key_blocks == 3);
  CHECK(mask(0, 0, 2, 2) == 1);
  CHECK(mask(0, 1, 0, 0) == 1);
  CHECK(mask(0, 0, 1, 2) == 0);
  const auto back = seer::from_dense_mask(mask, sequences);
  CHECK(back.row_offsets() == blocks.row_offsets());
  CHECK(back.key_blocks() == blocks.key_blocks());
  // Density over causally visible blocks: 8 kept of 2 * (1 + 2 + 3 + 1) = 14
  // visible.
  CHECK(blocks.density() == doctest::Approx(8.0 / 14.0));
}

TEST_CASE("BlockSet rejects malformed rows by name") {
  const std::vector<seer::BlockGeometry> sequences{{130, 130, 64, true}};
  seer::BlockSet blocks(1, 64, sequences);
  CHECK(error_of([&] { blocks.append_row({1, 0}); }) == "key_blocks");  // not ascending
  CHECK(error_of([&] { blocks.append_row({3}); }) == "key_blocks");     // beyond the 3 key blocks
  CHECK(error_of([&] { blocks.append_row({-1}); }) == "key_blocks");
  CHECK(error_of([&] { blocks.view(); }) == "blocks");  // incomplete
  CHECK(error_of([&] { seer::BlockSet(0, 64, sequences); }) == "heads");
  CHECK(error_of([&] { seer::BlockSet(1, 0, sequences); }) == "block_size");

  seer::DenseBlockMask outside(1, 1, 3, 4);
  outside(0, 0, 0, 3) = 1;  // sequence 0 has only 3 key blocks
  CHECK(error_of([&] { seer::from_dense_mask(outside, sequences); }) == "mask");
}

TEST_CASE("all_visible_blocks is the dense causal pattern") {
  const auto blocks = seer::all_visible_blocks(3, {{200, 200, 64, true}});
  CHECK(blocks.kept_blocks() == 3 * (1 + 2 + 3 + 4));
  CHECK(blocks.density() == doctest::Approx(1.0));
}

TEST_CASE("16-bit floats round to nearest even and keep specials") {
  using seer::bfloat16;
  using seer::half;
  for (float exact : {0.0f, 1.0f, -2.5f, 0.125f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f})
    CHECK(seer::round_to<half>(exact) == exact);
  for (float exact : {0.0f, 1.0f, -2.5f, 0x1p100f, -0x1.8p-100f, 0.0078125f})
    CHECK(seer::round_to<bfloat16>(exact) == exact);
  // Half: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even
  // mantissa (1).
  CHECK(seer::round_to<half>(1.0f + 0.00048828125f) == 1.0f);
  CHECK(seer::round_to<half>(1.0f + 3 * 0.00048828125f) == 1.0f + 4 * 0.00048828125f);
  // bfloat16 has 8 mantissa bits: 1 + 2^-8 is a tie that goes to 1; 1 + 3*2^-8
  // goes up to 1 + 2^-6.
  CHECK(seer::round_to<bfloat16>(1.0f + 0.00390625f) == 1.0f);
  CHECK(seer::round_to<bfloat16>(1.0f + 3 * 0.00390625f) == 1.0f + 4 * 0.00390625f);
  CHECK(std::isinf(seer::round_to<half>(70000.0f)));
  CHECK(std::isinf(seer::round_to<bfloat16>(std::numeric_limits<float>::infinity())));
  CHECK(std::isnan(seer::round_to<half>(std::nanf(""))));
  CHECK(std::isnan(seer::round_to<bfloat16>(std::nanf(""))));
  // Every half bit pattern that is a finite number survives float and back.
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const seer::half h{static_cast<std::uint16_t>(bits)};
    const float value = seer::to_float(h);
    if (std::isnan(value)) continue;
    CHECK(seer::from_float<half>(value).bits == h.bits);
  }
  // Rounding error of random floats stays within half an ulp.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-100.0f, 100.0f);
  for (int i = 0; i < 1000; ++i) {
    const float x = uniform(rng);
    CHECK(std::fabs(seer::round_to<bfloat16>(x) - x) <= std::fabs(x) * 0x1p-8f);
    CHECK(std::fabs(seer::round_to<half>(x) - x) <= std::fabs(x) * 0x1p-11f + 1e-7f);
  }
}

TEST_CASE("SequenceBatch: padded and packed layouts") {
  std::vector<float> storage(2 * 5 * 3 * 4);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i);
  const auto padded = seer::padded_batch(seer::TensorView<float, 4>::contiguous(storage.data(), {2, 5, 3, 4}), "x");
  CHECK(padded.batch == 2);
  CHECK(padded.length(1) == 5);
  CHECK(padded.start(1) == 5);
  CHECK(*padded.vector(1, 2, 1) == storage[((1 * 5 + 2) * 3 + 1) * 4]);

  const std::vector<std::int32_t> cu{0, 3, 3, 10};
  const auto packed = seer::packed_batch(seer::TensorView<float, 3>::contiguous(storage.data(), {10, 3, 4}), cu, "x");
  CHECK(packed.batch == 3);
  CHECK(packed.max_length == 7);
  CHECK(packed.length(1) == 0);
  CHECK(packed.start(2) == 3);
  CHECK(*packed.vector(2, 1, 2) == storage[(4 * 3 + 2) * 4]);
}

TEST_CASE("SequenceBatch rejects bad layouts by name") {
  std::vector<float> storage(10 * 2 * 4, 1.0f);
  const auto view = seer::TensorView<float, 3>::contiguous(storage.data(), {10, 2, 4});
  CHECK(error_of([&] { seer::packed_batch(view, std::vector<std::int32_t>{1, 4}, "q"); }) == "q");
  CHECK(error_of([&] { seer::packed_batch(view, std::vector<std::int32_t>{0, 4, 2}, "k"); }) == "k");
  CHECK(error_of([&] { seer::packed_batch(view, std::vector<std::int32_t>{0, 11}, "v"); }) == "v");
  CHECK(error_of([&] { seer::packed_batch(view, std::vector<std::int32_t>{}, "q"); }) == "q");
  auto negative = seer::TensorView<float, 4>::contiguous(storage.data(), {1, 10, 2, 4});
  negative.extent[1] = -1;
  CHECK(error_of([&] { seer::padded_batch(negative, "q"); }) == "q");
  auto null_data = seer::TensorView<float, 4>::contiguous(nullptr, {1, 10, 2, 4});
  CHECK(error_of([&] { seer::padded_batch(null_data, "k"); }) == "k");
}

TEST_CASE("attention shape validation names the argument") {
  std::vector<float> q_data(2 * 8 * 4 * 16, 0.5f), kv_data(2 * 8 * 2 * 16, 0.5f), o_data(q_data.size());
  const auto q = seer::padded_batch(seer::TensorView<const float, 4>::contiguous(q_data.data(), {2, 8, 4, 16}), "q");
  const auto k = seer::padded_batch(seer::TensorView<const float, 4>::contiguous(kv_data.data(), {2, 8, 2, 16}), "k");
  const auto o = seer::padded_batch(seer::TensorView<float, 4>::contiguous(o_data.data(), {2, 8, 4, 16}), "out");
  const seer::TensorView<float, 2> no_lse{};
  seer::validate_attention_shapes(q, k, k, o, no_lse, {});
  std::vector<float> k3_data(2 * 8 * 3 * 16, 0.5f);
  const auto k3 = seer::padded_batch(seer::TensorView<const float, 4>::contiguous(k3_data.data(), {2, 8, 3, 16}), "k");
  CHECK(error_of([&] { seer::validate_attention_shapes(q, k3, k3, o, no_lse, {}); }) == "k");
  CHECK(error_of([&] { seer::validate_attention_shapes(q, k, k3, o, no_lse, {}); }) == "v");
  seer::AttentionOptions negative;
  negative.softmax_scale = -1.0;
  CHECK(error_of([&] { seer::validate_attention_shapes(q, k, k, o, no_lse, negative); }) == "options.softmax_scale");
  std::vector<float> lse_data(3 * 16);
  const auto lse = seer::TensorView<float, 2>::contiguous(lse_data.data(), {3, 16});
  CHECK(error_of([&] { seer::validate_attention_shapes(q, k, k, o, lse, {}); }) == "lse");
}
