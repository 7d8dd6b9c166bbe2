// GPU sparse decode vs the float64 CPU oracle (seer/cpu/decode_attention.hpp).
//
// Accuracy rule (the project's, FlashAttention's): max |gpu - reference| <= 2 * max |naive - reference|
// + eps, where "naive" is a plain same-precision implementation (scores and probabilities rounded to
// the 16-bit type). Inputs are fresh random normals every run (the seed is printed on failure); the
// cache slots past each length hold NaN (a kernel that reads them fails); device outputs are
// NaN-poisoned before the call. Without a GPU every case returns early with a message (CI has none).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "decode_runner.hpp"
#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/cpu/decode_attention.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"

namespace {

using namespace seer;

struct Case {
  std::vector<std::int32_t> q_lengths = {1, 1};
  std::vector<std::int32_t> lengths = {300, 1000};
  std::int64_t q_heads = 8, kv_heads = 2, head_dim = 128;
  bool packed = false;         // padded needs equal q lengths
  std::int64_t page_size = 0;  // 0: contiguous cache
  bool head_major = false;     // contiguous cache laid out [B, Hkv, capacity, D] instead of [B, capacity, Hkv, D]
  double density = -1.0;       // < 0: dense (no block list); first and last block kept when > 0
  bool empty_rows = false;     // some (sequence, KV head) rows keep no block
  bool causal = true;
  double softmax_scale = 0.0;
  bool with_lse = true;
  bool capture_in_graph = false;
  std::int64_t forced_splits = 0;
  bool amd_kernel = false;
  int pipeline = 0;       // 0: automatic; 1: shallow (2 CTAs/SM, 3-4 stages); 2: deep (1 CTA/SM, 6-8 stages)
  int split_order = 0;    // 0: automatic; 1: interleaved splits; 2: contiguous split ranges
  int cluster_merge = 0;  // 0: automatic; 1: merge through the workspace; 2: in a thread-block cluster
  bool one_cta_per_multiprocessor = false;
  bool lean_kernel = false;  // DecodeLaunchShape::lean_kernel: the deep kernel's lean version where it applies
};

std::string describe(const Case& c) {
  std::string text = "q_lengths";
  for (auto l : c.q_lengths) text += " " + std::to_string(l);
  text += ", lengths";
  for (auto l : c.lengths) text += " " + std::to_string(l);
  text += ", heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + ", D " +
          std::to_string(c.head_dim) + (c.packed ? ", packed" : ", padded") +
          (c.page_size > 0 ? ", page size " + std::to_string(c.page_size)
                           : (c.head_major ? ", contiguous head-major" : ", contiguous")) +
          ", density " + std::to_string(c.density) + (c.empty_rows ? ", empty rows" : "") +
          (c.causal ? "" : ", non-causal") + (c.capture_in_graph ? ", CUDA graph" : "") + ", forced splits " +
          std::to_string(c.forced_splits) + (c.amd_kernel ? ", AMD kernel (portable path)" : "") +
          (c.pipeline == 1   ? ", shallow pipeline"
           : c.pipeline == 2 ? ", deep pipeline"
                             : "") +
          (c.split_order == 1   ? ", interleaved splits"
           : c.split_order == 2 ? ", contiguous splits"
                                : "") +
          (c.cluster_merge == 1   ? ", workspace merge"
           : c.cluster_merge == 2 ? ", cluster merge"
                                  : "") +
          (c.one_cta_per_multiprocessor ? ", one CTA per multiprocessor" : "") +
          (c.lean_kernel ? ", lean kernel asked for" : "");
  return text;
}

// The same-precision naive decode: scores rounded to T, softmax in float, probabilities rounded to T,
// output accumulated in float and rounded to T.
template <class T>
void naive_decode(const SequenceBatch<const T>& q, const KvCacheView<const T>& cache, const DecodeBlockListView* blocks,
                  const AttentionOptions& options, std::vector<double>& out, std::vector<double>& lse,
                  std::int64_t total_q) {
  const float scale = static_cast<float>(options.scale_for(q.head_dim));
  const std::int64_t group = q.heads / cache.heads, dim = q.head_dim;
  std::vector<float> scores, weights;
  for (std::int64_t b = 0; b < q.batch; ++b) {
    const BlockGeometry g{q.length(b), cache.length(b), 64, options.causal};
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const std::int64_t kv = h / group;
      std::vector<char> kept(static_cast<std::size_t>(g.key_blocks()), blocks == nullptr ? 1 : 0);
      if (blocks != nullptr) {
        const std::int64_t row = blocks->row(b, kv);
        for (std::int64_t i = 0; i < blocks->row_size(row); ++i)
          kept[static_cast<std::size_t>(blocks->row_begin(row)[i])] = 1;
      }
      for (std::int64_t t = 0; t < g.q_len; ++t) {
        const std::int64_t last = g.last_visible_key(t);
        scores.assign(static_cast<std::size_t>(last + 1), -std::numeric_limits<float>::infinity());
        float peak = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = 0; j <= last; ++j) {
          if (!kept[static_cast<std::size_t>(j / 64)]) continue;
          float dot = 0.0f;
          for (std::int64_t d = 0; d < dim; ++d)
            dot += to_float(q.vector(b, t, h)[d]) * to_float(cache.key(b, j, kv)[d]);
          scores[static_cast<std::size_t>(j)] = round_to<T>(dot) * scale;
          peak = std::max(peak, scores[static_cast<std::size_t>(j)]);
        }
        const std::int64_t token = q.start(b) + t;
        double* destination = &out[static_cast<std::size_t>((token * q.heads + h) * dim)];
        if (peak == -std::numeric_limits<float>::infinity()) {
          for (std::int64_t d = 0; d < dim; ++d) destination[d] = 0.0;
          lse[static_cast<std::size_t>(h * total_q + token)] = -std::numeric_limits<double>::infinity();
          continue;
        }
        float total = 0.0f;
        weights.assign(scores.size(), 0.0f);
        for (std::size_t j = 0; j < scores.size(); ++j)
          if (scores[j] != -std::numeric_limits<float>::infinity()) total += weights[j] = std::exp(scores[j] - peak);
        for (auto& w : weights) w = round_to<T>(w / total);
        for (std::int64_t d = 0; d < dim; ++d) {
          float sum = 0.0f;
          for (std::int64_t j = 0; j <= last; ++j)
            if (weights[static_cast<std::size_t>(j)] != 0.0f)
              sum += weights[static_cast<std::size_t>(j)] * to_float(cache.value(b, j, kv)[d]);
          destination[d] = round_to<T>(sum);
        }
        lse[static_cast<std::size_t>(h * total_q + token)] = peak + std::log(total);
      }
    }
  }
}

template <class T>
void check_case(const Case& c) {
  if (!decode_test::have_gpu()) {
    MESSAGE("no usable CUDA device: GPU decode test skipped");
    return;
  }
  const std::uint64_t seed = std::random_device{}();
  std::mt19937_64 random(seed);
  INFO(element_type_name<T>(), ", ", describe(c), ", seed ", seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const T nan = from_float<T>(std::numeric_limits<float>::quiet_NaN());
  const std::int64_t batch = static_cast<std::int64_t>(c.lengths.size());
  const std::int64_t dim = c.head_dim, kv_heads = c.kv_heads;

  // Queries and outputs: packed [total, Hq, D] or padded [B, q_len, Hq, D].
  std::vector<std::int32_t> cu_seqlens{0};
  for (auto l : c.q_lengths) cu_seqlens.push_back(cu_seqlens.back() + l);
  const std::int64_t total_q = cu_seqlens.back();
  const std::int64_t max_q = *std::max_element(c.q_lengths.begin(), c.q_lengths.end());
  std::vector<T> queries(static_cast<std::size_t>(total_q * c.q_heads * dim)), out(queries.size());
  for (auto& x : queries) x = from_float<T>(normal(random));
  SequenceBatch<const T> q;
  SequenceBatch<T> out_batch;
  if (c.packed) {
    q = packed_batch(TensorView<const T, 3>::contiguous(queries.data(), {total_q, c.q_heads, dim}), cu_seqlens, "q");
    out_batch = packed_batch(TensorView<T, 3>::contiguous(out.data(), {total_q, c.q_heads, dim}), cu_seqlens, "out");
    out_batch.cu_seqlens = q.cu_seqlens;
  } else {
    q = padded_batch(TensorView<const T, 4>::contiguous(queries.data(), {batch, max_q, c.q_heads, dim}), "q");
    out_batch = padded_batch(TensorView<T, 4>::contiguous(out.data(), {batch, max_q, c.q_heads, dim}), "out");
  }

  // The cache: contiguous [B, capacity, Hkv, D] (or [B, Hkv, capacity, D]) or a pool of shuffled pages; NaN
  // past each length.
  const std::int64_t longest = *std::max_element(c.lengths.begin(), c.lengths.end());
  std::vector<T> keys, values;
  std::vector<std::int32_t> page_table;
  KvCacheView<const T> cache;
  if (c.page_size == 0) {
    const std::int64_t capacity = longest + 5;
    keys.assign(static_cast<std::size_t>(batch * capacity * kv_heads * dim), nan);
    values = keys;
    auto key_view = TensorView<const T, 4>::contiguous(keys.data(), {batch, capacity, kv_heads, dim});
    auto value_view = TensorView<const T, 4>::contiguous(values.data(), {batch, capacity, kv_heads, dim});
    if (c.head_major) {  // the view stays [b, token, head, dim]; only its strides change
      key_view.stride = {kv_heads * capacity * dim, dim, capacity * dim, 1};
      value_view.stride = key_view.stride;
    }
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < c.lengths[static_cast<std::size_t>(b)]; ++t)
        for (std::int64_t h = 0; h < kv_heads; ++h)
          for (std::int64_t d = 0; d < dim; ++d) {
            const std::size_t at =
                static_cast<std::size_t>(b * key_view.stride[0] + t * key_view.stride[1] + h * key_view.stride[2] + d);
            keys[at] = from_float<T>(normal(random));
            values[at] = from_float<T>(normal(random));
          }
    cache = contiguous_kv_cache(key_view, value_view, c.lengths.data(), longest);
  } else {
    const std::int64_t pages_per_sequence = (longest + c.page_size - 1) / c.page_size + 1;
    const std::int64_t pages = batch * pages_per_sequence + 3;  // spare pages nobody uses
    std::vector<std::int32_t> order(static_cast<std::size_t>(pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), random);
    page_table.assign(order.begin(), order.begin() + batch * pages_per_sequence);
    // Table entries past a sequence's used pages are garbage: the kernel must never read them.
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t p = (c.lengths[static_cast<std::size_t>(b)] + c.page_size - 1) / c.page_size;
           p < pages_per_sequence; ++p)
        page_table[static_cast<std::size_t>(b * pages_per_sequence + p)] = 1 << 30;
    keys.assign(static_cast<std::size_t>(pages * c.page_size * kv_heads * dim), nan);
    values = keys;
    const std::int64_t page_elements = c.page_size * kv_heads * dim;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < c.lengths[static_cast<std::size_t>(b)]; ++t) {
        const std::int64_t page = page_table[static_cast<std::size_t>(b * pages_per_sequence + t / c.page_size)];
        for (std::int64_t i = 0; i < kv_heads * dim; ++i) {
          const std::size_t at =
              static_cast<std::size_t>(page * page_elements + (t % c.page_size) * kv_heads * dim + i);
          keys[at] = from_float<T>(normal(random));
          values[at] = from_float<T>(normal(random));
        }
      }
    cache = paged_kv_cache(TensorView<const T, 4>::contiguous(keys.data(), {pages, c.page_size, kv_heads, dim}),
                           TensorView<const T, 4>::contiguous(values.data(), {pages, c.page_size, kv_heads, dim}),
                           page_table.data(), batch, pages_per_sequence, c.lengths.data(), longest);
  }

  // Kept blocks: random, first and last kept; `empty_rows` clears every third row.
  DecodeBlockList block_list;
  DecodeBlockListView block_view;
  const DecodeBlockListView* blocks = nullptr;
  if (c.density >= 0.0) {
    const std::int64_t capacity = (longest + 63) / 64 + 2;  // more than any row needs
    block_list = DecodeBlockList(batch, kv_heads, capacity);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < kv_heads; ++h) {
        const std::int64_t count = (c.lengths[static_cast<std::size_t>(b)] + 63) / 64;
        std::vector<std::int32_t> row;
        if (!(c.empty_rows && (b * kv_heads + h) % 3 == 0))
          for (std::int64_t n = 0; n < count; ++n)
            if (c.density > 0.0 && (n == 0 || n == count - 1 || uniform(random) < c.density))
              row.push_back(static_cast<std::int32_t>(n));
        block_list.set_row(b, h, row, count);
      }
    block_view = block_list.view();
    blocks = &block_view;
  }

  AttentionOptions options;
  options.causal = c.causal;
  options.softmax_scale = c.softmax_scale;

  std::vector<float> gpu_lse(static_cast<std::size_t>(c.q_heads * total_q));
  decode_test::HostDecodeCall<T> call;
  call.q = q;
  call.q_elements = static_cast<std::int64_t>(queries.size());
  call.cache = cache;
  call.cache_elements = static_cast<std::int64_t>(keys.size());
  call.page_table_elements = static_cast<std::int64_t>(page_table.size());
  call.blocks = blocks;
  call.options = options;
  call.out = out_batch;
  call.out_elements = static_cast<std::int64_t>(out.size());
  if (c.with_lse) call.lse = TensorView<float, 2>::contiguous(gpu_lse.data(), {c.q_heads, total_q});
  call.capture_in_graph = c.capture_in_graph;
  call.forced_splits = c.forced_splits;
  call.amd_kernel = c.amd_kernel;
  call.pipeline = c.pipeline;
  call.split_order = c.split_order;
  call.cluster_merge = c.cluster_merge;
  call.one_cta_per_multiprocessor = c.one_cta_per_multiprocessor;
  call.lean_kernel = c.lean_kernel;
  const std::int64_t splits = decode_test::run_decode_on_device(call);
  INFO("split bound ", splits);
  if (c.forced_splits > 0) CHECK(splits == c.forced_splits);

  // float64 oracle (contiguous [total, Hq, D] double output) and the same-precision naive decode.
  std::vector<double> reference(static_cast<std::size_t>(total_q * c.q_heads * dim)), naive(reference.size());
  std::vector<double> reference_lse(gpu_lse.size()), naive_lse(gpu_lse.size());
  {
    SequenceBatch<double> reference_batch =
        c.packed ? packed_batch(TensorView<double, 3>::contiguous(reference.data(), {total_q, c.q_heads, dim}),
                                cu_seqlens, "reference")
                 : padded_batch(TensorView<double, 4>::contiguous(reference.data(), {batch, max_q, c.q_heads, dim}),
                                "reference");
    if (c.packed) reference_batch.cu_seqlens = q.cu_seqlens;
    cpu::decode_attention_reference<T, double, double>(
        q, cache, blocks, options, reference_batch,
        TensorView<double, 2>::contiguous(reference_lse.data(), {c.q_heads, total_q}));
  }
  naive_decode<T>(q, cache, blocks, options, naive, naive_lse, total_q);

  double gpu_error = 0.0, naive_error = 0.0, gpu_lse_error = 0.0, naive_lse_error = 0.0;
  std::int64_t non_finite = 0, empty = 0, empty_wrong = 0;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < q.length(b); ++t)
      for (std::int64_t h = 0; h < c.q_heads; ++h) {
        const std::int64_t token = q.start(b) + t;
        const std::size_t row = static_cast<std::size_t>((token * c.q_heads + h) * dim);
        const T* g = out_batch.vector(b, t, h);
        const double r_lse = reference_lse[static_cast<std::size_t>(h * total_q + token)];
        const bool is_empty = std::isinf(r_lse) && r_lse < 0;
        empty += is_empty;
        for (std::int64_t d = 0; d < dim; ++d) {
          const double value = to_float(g[d]);
          if (!std::isfinite(value)) ++non_finite;
          if (is_empty && value != 0.0) ++empty_wrong;
          gpu_error = std::max(gpu_error, std::abs(value - reference[row + static_cast<std::size_t>(d)]));
          naive_error = std::max(naive_error, std::abs(naive[row + static_cast<std::size_t>(d)] -
                                                       reference[row + static_cast<std::size_t>(d)]));
        }
        if (!c.with_lse) continue;
        const double g_lse = gpu_lse[static_cast<std::size_t>(h * total_q + token)];
        if (is_empty) {
          if (!(std::isinf(g_lse) && g_lse < 0)) ++empty_wrong;
          continue;
        }
        if (!std::isfinite(g_lse)) ++non_finite;
        gpu_lse_error = std::max(gpu_lse_error, std::abs(g_lse - r_lse));
        naive_lse_error =
            std::max(naive_lse_error, std::abs(naive_lse[static_cast<std::size_t>(h * total_q + token)] - r_lse));
      }
  constexpr double kEpsilon = 1e-4;
  INFO("output: gpu error ", gpu_error, ", naive error ", naive_error, "; lse: gpu error ", gpu_lse_error,
       ", naive error ", naive_lse_error, "; empty rows ", empty);
  CHECK(non_finite == 0);
  CHECK(empty_wrong == 0);
  CHECK(gpu_error <= 2.0 * naive_error + kEpsilon);
  if (c.with_lse) CHECK(gpu_lse_error <= 2.0 * naive_lse_error + kEpsilon);
  if (c.empty_rows || c.density == 0.0) CHECK(empty > 0);
}

void check_both_types(const Case& c) {
  check_case<bfloat16>(c);
  check_case<half>(c);
}

}  // namespace

TEST_CASE("gpu decode: head dims 64/128 x GQA groups 1/4/8 x 1/3/8 query tokens, sparse") {
  for (const std::int64_t head_dim : {64, 128})
    for (const std::int64_t group : {1, 4, 8})
      for (const std::int32_t tokens : {1, 3, 8}) {
        Case c;
        c.q_lengths.assign(3, tokens);
        c.lengths = {tokens + 700, 64, 1000};
        c.kv_heads = 2;
        c.q_heads = 2 * group;
        c.head_dim = head_dim;
        c.density = 0.3;
        check_both_types(c);
      }
}

TEST_CASE(
    "gpu decode: paged caches (page sizes 1, 16, 48, 64, 256; both pipelines), ragged lengths incl. < 64 and "
    "not multiples of 64") {
  for (const std::int64_t page_size : {1, 16, 48, 64, 256})
    for (const double density : {-1.0, 0.4}) {
      Case c;
      c.pipeline = page_size == 48 || page_size == 1 ? 1 : 0;  // the automatic (deep) kernel, or the shallow one
      c.packed = true;
      c.q_lengths = {1, 4, 8, 2};
      c.lengths = {37, 64, 1000, 513};
      c.q_heads = 16;
      c.kv_heads = 2;
      c.page_size = page_size;
      c.density = density;
      check_both_types(c);
    }
}

TEST_CASE("gpu decode: dense path, every block kept, and rows that keep no block") {
  Case c;
  c.packed = true;
  c.q_lengths = {2, 1, 5};
  c.lengths = {130, 8, 2000};
  c.q_heads = 8;
  c.kv_heads = 4;
  for (const double density : {-1.0, 1.0}) {
    c.density = density;
    check_both_types(c);
  }
  c.density = 0.5;
  c.empty_rows = true;
  check_both_types(c);
  c.empty_rows = false;
  c.density = 0.0;  // every row empty: output 0, LSE -inf
  check_both_types(c);
}

namespace {

// Two sequences of 3000 and 190 cached tokens with half their blocks kept (~24 and ~2 kept tiles per row), run
// with a forced pipeline, split order and split bound.
Case forced_split_case(int pipeline, int split_order, std::int64_t splits) {
  Case c;
  c.split_order = split_order;
  c.packed = true;
  c.q_lengths = {1, 3};
  c.lengths = {3000, 190};
  c.q_heads = 8;
  c.kv_heads = 2;
  c.density = 0.5;
  c.forced_splits = splits;
  c.pipeline = pipeline;
  return c;
}

// Forced split bounds: 1 to 3 splits give CTAs of 8 to 24 kept tiles (the deep pipeline's steady state
// runs too) and use every split (the prologue's guessed indices), 7 and 40 fewer.
void check_forced_splits(int pipeline) {
  for (const int split_order : {1, 2})
    for (const std::int64_t splits : {1, 2, 3, 7, 40})
      check_both_types(forced_split_case(pipeline, split_order, splits));
}

}  // namespace

// Long CTAs on paged caches: 1 or 3 splits over ~24 kept tiles run the refill loop (each refill looking its rows'
// pages up), on both pipelines, for pages of 1, 16, 48 (not a power of two: the division path) and 64 tokens.
TEST_CASE("gpu decode: paged caches through the refill loop (forced splits 1 and 3, both pipelines)") {
  for (const std::int64_t page_size : {1, 16, 48, 64})
    for (const int pipeline : {1, 2}) {
      Case c = forced_split_case(pipeline, 2, page_size == 48 ? 3 : 1);
      c.page_size = page_size;
      check_both_types(c);
    }
}

TEST_CASE("gpu decode: forced split counts, shallow pipeline (both split orders)") { check_forced_splits(1); }

TEST_CASE("gpu decode: forced split counts, deep pipeline (both split orders)") { check_forced_splits(2); }

// The deep kernel's lean version, asked for (DecodeLaunchShape::lean_kernel) and run where
// gpu::decode_lean_kernel_applies: one-token rows of GQA groups of 4 and 8 (at most 8 rows), contiguous caches
// (token- and head-major), ragged lengths, dense and sparse calls with empty rows; 16 and 40 splits keep every
// CTA's tiles (the cache's 47 at most: 3 or 2 per CTA) within the prologue's 5 (D 128) or 7 (D 64): the lean
// kernel; 3 splits do not (16 tiles per CTA): the general deep kernel on the same rows.
TEST_CASE("gpu decode: the lean deep kernel (one-token rows, every tile in the prologue) and the general one") {
  for (const std::int64_t head_dim : {64, 128})
    for (const std::int64_t group : {4, 8})
      for (const std::int64_t splits : {3, 16, 40}) {
        Case c;
        c.q_lengths = {1, 1, 1};
        c.lengths = {3000, 190, 64 * 20 + 17};
        c.q_heads = 2 * group;
        c.kv_heads = 2;
        c.head_dim = head_dim;
        c.density = 0.5;
        c.empty_rows = true;
        c.forced_splits = splits;
        c.pipeline = 2;
        c.split_order = splits == 16 ? 2 : 1;
        c.lean_kernel = true;
        check_both_types(c);
        if (splits == 16) {
          c.head_major = true;
          c.density = -1.0;
          c.empty_rows = false;
          check_both_types(c);
        }
      }
}

namespace {

// Split rows merged inside a thread-block cluster of their split CTAs (distributed shared memory), forced
// on: 2 to 16 splits (16 is the largest cluster), so that the 190-token sequence's rows (3 kept tiles at
// most: 1 or 2 effective splits) leave most CTAs of their clusters idle, and empty rows (one effective
// split, no cluster barrier) are mixed in.
void check_cluster_merge(int pipeline) {
  if (decode_test::have_gpu())
    MESSAGE("clusters of 16 deep D128 CTAs the device runs at once: ",
            decode_test::decode_cluster_capacity_on_device(128, 1, true, 16),
            "; of 7 shallow D128 CTAs: ", decode_test::decode_cluster_capacity_on_device(128, 1, false, 7));
  for (const int split_order : {1, 2})
    for (const std::int64_t splits : {2, 3, 7, 16}) {
      Case c = forced_split_case(pipeline, split_order, splits);
      c.empty_rows = splits == 7;
      c.cluster_merge = 2;
      check_both_types(c);
    }
}

}  // namespace

TEST_CASE("gpu decode: split merge in a thread-block cluster, shallow pipeline (both split orders)") {
  check_cluster_merge(1);
}

TEST_CASE("gpu decode: split merge in a thread-block cluster, deep pipeline (both split orders)") {
  check_cluster_merge(2);
}

TEST_CASE("gpu decode: cluster merge with head chunks (head dims 64 and 128), in a CUDA graph, one CTA per SM") {
  for (const std::int64_t head_dim : {64, 128}) {
    Case c;
    c.q_lengths.assign(2, 8);
    c.lengths = {2500, 4000};
    c.q_heads = 32;  // group 16 x 8 tokens: two head chunks of 64 rows
    c.kv_heads = 2;
    c.head_dim = head_dim;
    c.density = 0.6;
    c.forced_splits = 5;
    c.cluster_merge = 2;
    for (const int pipeline : {1, 2}) {
      c.pipeline = pipeline;
      check_both_types(c);
    }
  }
  Case c;  // the batch-1 shape of the benchmark, shorter: the automatic kernel, captured in a graph
  c.q_lengths = {1};
  c.lengths = {9000};
  c.q_heads = 32;
  c.kv_heads = 8;
  c.density = 0.1;
  c.capture_in_graph = true;
  c.cluster_merge = 2;
  c.pipeline = 2;
  c.forced_splits = 16;
  check_both_types(c);
  c.cluster_merge = 1;  // the same through the workspace (the automatic shape may choose either)
  check_both_types(c);
  c.pipeline = 1;  // the shallow kernel with one CTA per multiprocessor (a measurement knob), both merges
  c.forced_splits = 7;
  c.one_cta_per_multiprocessor = true;
  check_both_types(c);
  c.cluster_merge = 2;
  check_both_types(c);
}

TEST_CASE("gpu decode: head chunks with forced splits (head dims 64 and 128, both pipelines and split orders)") {
  for (const std::int64_t head_dim : {64, 128}) {  // head dim 64 has deeper pipelines (4 and 8 stages)
    Case c;
    c.q_lengths.assign(2, 8);
    c.lengths = {2500, 4000};
    c.q_heads = 32;  // group 16 x 8 tokens: two head chunks of 64 rows
    c.kv_heads = 2;
    c.head_dim = head_dim;
    c.density = 0.6;
    c.forced_splits = 2;
    for (const int pipeline : {1, 2})
      for (const int split_order : {1, 2}) {
        c.pipeline = pipeline;
        c.split_order = split_order;
        check_both_types(c);
      }
  }
}

TEST_CASE("gpu decode: the automatic split bound on a long context (dense and sparse)") {
  Case c;
  c.q_lengths = {1};
  c.lengths = {20000};
  c.q_heads = 32;
  c.kv_heads = 8;
  check_both_types(c);  // dense, many splits
  c.density = 0.1;
  check_both_types(c);
}

TEST_CASE("gpu decode: head-major contiguous cache [B, Hkv, S, D] (both pipelines, both split orders, dense)") {
  for (const std::int64_t head_dim : {64, 128}) {
    Case c;
    c.head_major = true;
    c.q_lengths = {2, 2};
    c.lengths = {1500, 333};
    c.q_heads = 16;
    c.kv_heads = 4;
    c.head_dim = head_dim;
    c.density = 0.4;
    check_both_types(c);  // automatic shape
    c.forced_splits = 3;
    for (const int pipeline : {1, 2})
      for (const int split_order : {1, 2}) {
        c.pipeline = pipeline;
        c.split_order = split_order;
        check_both_types(c);
      }
    c = Case{};
    c.head_major = true;
    c.head_dim = head_dim;
    check_both_types(c);  // dense
  }
}

TEST_CASE("gpu decode: more query rows than one tile (head chunks), non-causal, custom scale, no LSE") {
  Case c;
  c.packed = true;
  c.q_lengths = {5, 8};
  c.lengths = {700, 300};
  c.q_heads = 32;  // group 16 x 8 tokens: two CTAs per KV head
  c.kv_heads = 2;
  c.density = 0.5;
  check_both_types(c);
  c.causal = false;
  c.softmax_scale = 0.05;
  check_both_types(c);
  c.with_lse = false;
  check_both_types(c);
}

TEST_CASE("gpu decode: CUDA graph capture and replay") {
  Case c;
  c.packed = true;
  c.q_lengths = {1, 2, 8};
  c.lengths = {5000, 100, 777};
  c.q_heads = 16;
  c.kv_heads = 4;
  c.page_size = 16;
  c.density = 0.2;
  c.capture_in_graph = true;
  check_both_types(c);
  c.density = -1.0;
  check_both_types(c);
}

namespace {

// The AMD kernel's logic compiled for NVIDIA (portable tile path, 32 lanes).
void check_amd_kernel(std::int64_t head_dim) {
  for (const std::int32_t tokens : {1, 8}) {
    Case c;
    c.packed = true;
    c.q_lengths = {tokens, 1, tokens};
    c.lengths = {900, 37, 2000};
    c.q_heads = 8;
    c.kv_heads = 2;
    c.head_dim = head_dim;
    c.page_size = 16;
    c.density = 0.3;
    c.empty_rows = true;
    c.amd_kernel = true;
    check_both_types(c);
    c.page_size = 0;
    c.density = -1.0;
    c.empty_rows = false;
    c.forced_splits = 5;
    check_both_types(c);
  }
}

}  // namespace

TEST_CASE("gpu decode: the AMD kernel's logic (portable tile path, 32 lanes) on NVIDIA, head dim 64") {
  check_amd_kernel(64);
}

TEST_CASE("gpu decode: the AMD kernel's logic (portable tile path, 32 lanes) on NVIDIA, head dim 128") {
  check_amd_kernel(128);
}
