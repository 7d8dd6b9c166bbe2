// Decode attention on the CPU: the float64 oracle against the prefill oracle on a gathered copy, the
// fast executor against the oracle, paged against contiguous caches, and argument checks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/decode_attention.hpp"
#include "seer/cpu/reference_attention.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"

namespace {

using namespace seer;

// One decode problem with host storage: packed queries, a contiguous cache and optionally a paged
// copy of it (pages shuffled), random kept blocks per (sequence, KV head).
template <class T>
struct DecodeProblem {
  std::int64_t q_heads = 8, kv_heads = 2, dim = 64, capacity = 0, page_size = 16;
  std::vector<std::int32_t> q_lengths, lengths, cu_seqlens;
  std::vector<T> queries, keys, values, paged_keys, paged_values;
  std::vector<std::int32_t> page_table;
  std::int64_t pages_per_sequence = 0;
  DecodeBlockList blocks;

  DecodeProblem(std::vector<std::int32_t> q_lengths_in, std::vector<std::int32_t> lengths_in, std::int64_t q_heads_in,
                std::int64_t kv_heads_in, std::int64_t dim_in, double density, std::mt19937_64& random)
      : q_heads(q_heads_in), kv_heads(kv_heads_in), dim(dim_in), q_lengths(q_lengths_in), lengths(lengths_in) {
    const std::int64_t batch = static_cast<std::int64_t>(lengths.size());
    capacity = *std::max_element(lengths.begin(), lengths.end()) + 3;  // room past the longest sequence
    cu_seqlens.push_back(0);
    for (auto l : q_lengths) cu_seqlens.push_back(cu_seqlens.back() + l);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    queries.resize(static_cast<std::size_t>(cu_seqlens.back() * q_heads * dim));
    keys.resize(static_cast<std::size_t>(batch * capacity * kv_heads * dim));
    values.resize(keys.size());
    for (auto* data : {&queries, &keys, &values})
      for (auto& x : *data) x = from_float<T>(normal(random));
    // Slots past each length hold NaN: an executor that reads them fails.
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = lengths[static_cast<std::size_t>(b)]; t < capacity; ++t)
        for (std::int64_t i = 0; i < kv_heads * dim; ++i) {
          const std::size_t at = static_cast<std::size_t>((b * capacity + t) * kv_heads * dim + i);
          keys[at] = values[at] = from_float<T>(std::numeric_limits<float>::quiet_NaN());
        }

    // Paged copy: pages of every sequence in shuffled pool order.
    pages_per_sequence = (capacity + page_size - 1) / page_size;
    std::vector<std::int32_t> order(static_cast<std::size_t>(batch * pages_per_sequence));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), random);
    page_table = order;
    const std::int64_t page_elements = page_size * kv_heads * dim;
    paged_keys.assign(static_cast<std::size_t>(batch * pages_per_sequence * page_elements),
                      from_float<T>(std::numeric_limits<float>::quiet_NaN()));
    paged_values = paged_keys;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < capacity; ++t) {
        const std::int64_t page = page_table[static_cast<std::size_t>(b * pages_per_sequence + t / page_size)];
        for (std::int64_t i = 0; i < kv_heads * dim; ++i) {
          const std::size_t to = static_cast<std::size_t>(page * page_elements + (t % page_size) * kv_heads * dim + i);
          const std::size_t from = static_cast<std::size_t>((b * capacity + t) * kv_heads * dim + i);
          paged_keys[to] = keys[from];
          paged_values[to] = values[from];
        }
      }

    // Kept blocks: each block with probability `density`, first and last always (when density > 0).
    std::int64_t most_blocks = 1;
    for (auto l : lengths) most_blocks = std::max<std::int64_t>(most_blocks, (l + 63) / 64);
    blocks = DecodeBlockList(batch, kv_heads, most_blocks);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < kv_heads; ++h) {
        const std::int64_t count = (lengths[static_cast<std::size_t>(b)] + 63) / 64;
        std::vector<std::int32_t> row;
        for (std::int64_t n = 0; n < count; ++n)
          if (density > 0.0 && (n == 0 || n == count - 1 || uniform(random) < density))
            row.push_back(static_cast<std::int32_t>(n));
        blocks.set_row(b, h, row, count);
      }
  }

  std::int64_t batch() const { return static_cast<std::int64_t>(lengths.size()); }
  std::int64_t total_q() const { return cu_seqlens.back(); }

  SequenceBatch<const T> q() const {
    return packed_batch(TensorView<const T, 3>::contiguous(queries.data(), {total_q(), q_heads, dim}), cu_seqlens, "q");
  }
  KvCacheView<const T> contiguous() const {
    const auto k = TensorView<const T, 4>::contiguous(keys.data(), {batch(), capacity, kv_heads, dim});
    const auto v = TensorView<const T, 4>::contiguous(values.data(), {batch(), capacity, kv_heads, dim});
    return contiguous_kv_cache(k, v, lengths.data(), capacity);
  }
  KvCacheView<const T> paged() const {
    const std::int64_t pages = batch() * pages_per_sequence;
    const auto k = TensorView<const T, 4>::contiguous(paged_keys.data(), {pages, page_size, kv_heads, dim});
    const auto v = TensorView<const T, 4>::contiguous(paged_values.data(), {pages, page_size, kv_heads, dim});
    return paged_kv_cache(k, v, page_table.data(), batch(), pages_per_sequence, lengths.data(), capacity);
  }
};

template <class O>
struct Output {
  std::vector<O> data;
  std::vector<double> lse;
  const std::vector<std::int32_t>& cu_seqlens;  // q's: packed outputs share q's cu_seqlens
  std::int64_t heads = 0, dim = 0, total = 0;
  Output(const std::vector<std::int32_t>& cu, std::int64_t heads_in, std::int64_t dim_in)
      : cu_seqlens(cu), heads(heads_in), dim(dim_in), total(cu.back()) {
    data.assign(static_cast<std::size_t>(total * heads * dim), O{});
    for (auto& x : data) x = from_float<O>(std::numeric_limits<float>::quiet_NaN());  // poisoned
    lse.assign(static_cast<std::size_t>(heads * total), std::numeric_limits<double>::quiet_NaN());
  }
  SequenceBatch<O> batch() {
    return packed_batch(TensorView<O, 3>::contiguous(data.data(), {total, heads, dim}), cu_seqlens, "out");
  }
  TensorView<double, 2> lse_view() { return TensorView<double, 2>::contiguous(lse.data(), {heads, total}); }
};

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    const double d = std::abs(a[i] - b[i]);
    if (!(d <= worst)) worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return worst;
}

}  // namespace

TEST_CASE("decode reference equals the prefill oracle on a gathered contiguous copy") {
  std::mt19937_64 random(std::random_device{}());
  for (const bool causal : {true, false})
    for (const double density : {-1.0, 0.4, 0.0}) {
      DecodeProblem<bfloat16> p({1, 3, 8, 2}, {1, 70, 200, 64}, 8, 2, 64, density < 0 ? 0.0 : density, random);
      const DecodeBlockListView view = p.blocks.view();
      const DecodeBlockListView* blocks = density < 0 ? nullptr : &view;
      AttentionOptions options;
      options.causal = causal;
      options.softmax_scale = 0.3;
      Output<double> decoded(p.cu_seqlens, p.q_heads, p.dim);
      cpu::decode_attention_reference<bfloat16, double, double>(p.q(), p.contiguous(), blocks, options, decoded.batch(),
                                                                decoded.lse_view());

      // Gathered K/V: packed [sum lengths, Hkv, D] with k lengths = cache lengths.
      std::vector<std::int32_t> k_cu{0};
      for (auto l : p.lengths) k_cu.push_back(k_cu.back() + l);
      std::vector<bfloat16> k(static_cast<std::size_t>(k_cu.back() * p.kv_heads * p.dim)), v(k.size());
      const auto cache = p.contiguous();
      for (std::int64_t b = 0; b < p.batch(); ++b)
        for (std::int64_t t = 0; t < p.lengths[static_cast<std::size_t>(b)]; ++t)
          for (std::int64_t h = 0; h < p.kv_heads; ++h)
            for (std::int64_t d = 0; d < p.dim; ++d) {
              const std::size_t at =
                  static_cast<std::size_t>(((k_cu[static_cast<std::size_t>(b)] + t) * p.kv_heads + h) * p.dim + d);
              k[at] = cache.key(b, t, h)[d];
              v[at] = cache.value(b, t, h)[d];
            }
      const auto k_batch = packed_batch(
          TensorView<const bfloat16, 3>::contiguous(k.data(), {k_cu.back(), p.kv_heads, p.dim}), k_cu, "k");
      const auto v_batch = packed_batch(
          TensorView<const bfloat16, 3>::contiguous(v.data(), {k_cu.back(), p.kv_heads, p.dim}), k_cu, "v");
      // The equivalent BlockSet: one row per (sequence, KV head), query block 0 (q_len <= 64).
      const auto geometries = sequence_geometries(p.q(), k_batch, 64, causal);
      BlockSet block_set(p.kv_heads, 64, geometries);
      for (std::int64_t b = 0; b < p.batch(); ++b)
        for (std::int64_t h = 0; h < p.kv_heads; ++h) {
          if (density < 0) {
            std::vector<std::int32_t> all(
                static_cast<std::size_t>(geometries[static_cast<std::size_t>(b)].visible_key_blocks(0)));
            std::iota(all.begin(), all.end(), 0);
            block_set.append_row(all);
          } else {
            block_set.append_row(p.blocks.row(b, h));
          }
        }
      Output<double> prefill(p.cu_seqlens, p.q_heads, p.dim);
      cpu::reference_attention<bfloat16, double, double>(p.q(), k_batch, v_batch, &block_set, options, prefill.batch(),
                                                         prefill.lse_view());
      INFO("causal ", causal, ", density ", density);
      CHECK(max_difference(decoded.data, prefill.data) <= 1e-12);
      CHECK(max_difference(decoded.lse, prefill.lse) <= 1e-12);
    }
}

TEST_CASE("decode reference: a row with no kept block gives 0 and -inf") {
  std::mt19937_64 random(std::random_device{}());
  DecodeProblem<float> p({2}, {130}, 4, 1, 64, 0.0, random);  // density 0: every row empty
  const DecodeBlockListView view = p.blocks.view();
  Output<double> out(p.cu_seqlens, p.q_heads, p.dim);
  cpu::decode_attention_reference<float, double, double>(p.q(), p.contiguous(), &view, AttentionOptions{}, out.batch(),
                                                         out.lse_view());
  for (double x : out.data) CHECK(x == 0.0);
  for (double x : out.lse) CHECK((std::isinf(x) && x < 0));
  Output<double> fast(p.cu_seqlens, p.q_heads, p.dim);
  cpu::decode_attention<float, double, double>(p.q(), p.contiguous(), &view, AttentionOptions{}, fast.batch(),
                                               fast.lse_view());
  for (double x : fast.data) CHECK(x == 0.0);
  for (double x : fast.lse) CHECK((std::isinf(x) && x < 0));
}

TEST_CASE("fast decode matches the reference: GQA 1/4/8, q_len 1..8, ragged lengths, dense and sparse") {
  std::mt19937_64 random(std::random_device{}());
  for (const std::int64_t kv_heads : {8, 2, 1})
    for (const double density : {-1.0, 0.3}) {
      DecodeProblem<bfloat16> p({1, 3, 8, 5}, {1, 63, 300, 129}, 8, kv_heads, 128, density < 0 ? 0.0 : density, random);
      const DecodeBlockListView view = p.blocks.view();
      const DecodeBlockListView* blocks = density < 0 ? nullptr : &view;
      Output<double> reference(p.cu_seqlens, p.q_heads, p.dim), fast(p.cu_seqlens, p.q_heads, p.dim);
      cpu::decode_attention_reference<bfloat16, double, double>(p.q(), p.contiguous(), blocks, AttentionOptions{},
                                                                reference.batch(), reference.lse_view());
      cpu::decode_attention<bfloat16, double, double>(p.q(), p.contiguous(), blocks, AttentionOptions{}, fast.batch(),
                                                      fast.lse_view(), 2);
      INFO("kv heads ", kv_heads, ", density ", density);
      CHECK(max_difference(fast.data, reference.data) <= 2e-5);
      CHECK(max_difference(fast.lse, reference.lse) <= 2e-5);
    }
}

TEST_CASE("paged caches give the same results as contiguous ones") {
  std::mt19937_64 random(std::random_device{}());
  DecodeProblem<half> p({4, 1}, {150, 77}, 4, 2, 64, 0.5, random);
  const DecodeBlockListView view = p.blocks.view();
  for (const bool use_fast : {false, true}) {
    Output<float> contiguous(p.cu_seqlens, p.q_heads, p.dim), paged(p.cu_seqlens, p.q_heads, p.dim);
    if (use_fast) {
      cpu::decode_attention<half, float, double>(p.q(), p.contiguous(), &view, AttentionOptions{}, contiguous.batch(),
                                                 contiguous.lse_view());
      cpu::decode_attention<half, float, double>(p.q(), p.paged(), &view, AttentionOptions{}, paged.batch(),
                                                 paged.lse_view());
    } else {
      cpu::decode_attention_reference<half, float, double>(p.q(), p.contiguous(), &view, AttentionOptions{},
                                                           contiguous.batch(), contiguous.lse_view());
      cpu::decode_attention_reference<half, float, double>(p.q(), p.paged(), &view, AttentionOptions{}, paged.batch(),
                                                           paged.lse_view());
    }
    const std::string mode = use_fast ? "fast" : "reference";
    INFO("executor ", mode);
    CHECK(contiguous.data == paged.data);
    CHECK(max_difference(contiguous.lse, paged.lse) == 0.0);
    for (float x : paged.data) CHECK(std::isfinite(x));
  }
}

TEST_CASE("decode arguments: invalid inputs name the argument") {
  std::mt19937_64 random(1);
  DecodeProblem<float> p({2, 1}, {70, 5}, 4, 2, 64, 0.5, random);
  const DecodeBlockListView view = p.blocks.view();
  auto rejected = [&](auto q, auto cache, const DecodeBlockListView* blocks, AttentionOptions options,
                      std::int64_t lse_columns) -> std::string {
    Output<float> out(p.cu_seqlens, p.q_heads, p.dim);
    std::vector<double> lse(static_cast<std::size_t>(p.q_heads * std::max<std::int64_t>(lse_columns, 1)));
    try {
      cpu::decode_attention_reference<float, float, double>(
          q, cache, blocks, options, out.batch(),
          TensorView<double, 2>::contiguous(lse.data(), {p.q_heads, lse_columns}));
    } catch (const InvalidArgument& error) {
      return error.argument();
    }
    return "(accepted)";
  };
  const std::int64_t total = p.total_q();
  CHECK(rejected(p.q(), p.contiguous(), &view, AttentionOptions{}, total) == "(accepted)");

  std::vector<std::int32_t> short_lengths = {1, 5};  // sequence 0 decodes 2 tokens but caches 1
  auto cache = p.contiguous();
  cache.lengths = short_lengths.data();
  CHECK(rejected(p.q(), cache, nullptr, AttentionOptions{}, total) == "lengths");

  std::vector<std::int32_t> long_lengths = {70, 500};  // above max_length
  cache.lengths = long_lengths.data();
  CHECK(rejected(p.q(), cache, nullptr, AttentionOptions{}, total) == "lengths");

  auto three_heads = p.contiguous();
  three_heads.heads = 3;
  CHECK(rejected(p.q(), three_heads, nullptr, AttentionOptions{}, total) == "cache");

  CHECK(rejected(p.q(), p.contiguous(), &view, AttentionOptions{}, total - 1) == "lse");

  AttentionOptions bad_scale;
  bad_scale.softmax_scale = -1.0;
  CHECK(rejected(p.q(), p.contiguous(), &view, bad_scale, total) == "options.softmax_scale");

  DecodeBlockListView wrong_heads = view;
  wrong_heads.kv_heads = 1;
  CHECK(rejected(p.q(), p.contiguous(), &wrong_heads, AttentionOptions{}, total) == "blocks");

  std::vector<std::int32_t> bad_blocks(p.blocks.key_blocks());
  bad_blocks[0] = 7;  // sequence 0 has 2 blocks
  DecodeBlockListView out_of_range = view;
  out_of_range.key_blocks = bad_blocks.data();
  CHECK(rejected(p.q(), p.contiguous(), &out_of_range, AttentionOptions{}, total) == "blocks");

  std::vector<std::int32_t> bad_table(p.page_table);
  bad_table[0] = 1000;
  auto paged = p.paged();
  paged.page_table = bad_table.data();
  CHECK(rejected(p.q(), paged, nullptr, AttentionOptions{}, total) == "page_table");
}
