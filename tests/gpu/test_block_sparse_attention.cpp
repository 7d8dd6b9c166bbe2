// GPU block-sparse prefill vs the float64 CPU reference.
//
// Accuracy rule (FlashAttention's): max |gpu - reference| <= 2 * max |naive - reference| + eps, where
// "naive" is a plain same-precision implementation (scores and probabilities rounded to the 16-bit
// type like a framework's matmul-softmax-matmul). Inputs are fresh random normals every run (the
// seed is printed on failure); device outputs are NaN-poisoned before the call, so an unwritten
// element fails. Without a GPU every case returns early with a message (CI has none).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "device_attention_runner.hpp"
#include "seer/core/attention_problem.hpp"
#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/cpu/reference_attention.hpp"

namespace {

using namespace seer;

struct Case {
  std::vector<std::int32_t> q_lengths, k_lengths;  // padded layout needs equal lengths per tensor
  std::int64_t q_heads = 4, kv_heads = 4, head_dim = 64;
  bool causal = true;
  bool packed = false;
  double density = -1.0;  // < 0: dense call (no BlockSet)
  bool blocks_per_kv_head = false;
  std::int64_t block_size = 64;
  bool keep_diagonal = true;
  std::int64_t extra_token_stride = 0;  // padded layout: gap between token vectors (multiple of 8)
  bool capture_in_graph = false;
  bool with_lse = true;
  double softmax_scale = 0.0;
};

std::string describe(const Case& c) {
  std::string text = "q_lengths";
  for (auto l : c.q_lengths) text += " " + std::to_string(l);
  text += ", k_lengths";
  for (auto l : c.k_lengths) text += " " + std::to_string(l);
  text += ", heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + ", D " +
          std::to_string(c.head_dim) + (c.causal ? ", causal" : ", non-causal") + (c.packed ? ", packed" : ", padded") +
          ", density " + std::to_string(c.density) + ", block " + std::to_string(c.block_size) +
          (c.blocks_per_kv_head ? ", per-KV-head blocks" : "") + (c.keep_diagonal ? "" : ", no forced diagonal") +
          (c.capture_in_graph ? ", CUDA graph" : "");
  return text;
}

// One tensor's host storage plus its SequenceBatch view.
template <class T>
struct HostSequences {
  std::vector<T> data;
  std::vector<std::int32_t> cu_seqlens;
  SequenceBatch<T> batch;
};

template <class T>
HostSequences<T> make_sequences(const std::vector<std::int32_t>& lengths, std::int64_t heads, std::int64_t head_dim,
                                bool packed, std::int64_t extra_token_stride) {
  HostSequences<T> result;
  const std::int64_t batch = static_cast<std::int64_t>(lengths.size());
  const std::int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  if (packed) {
    result.cu_seqlens.push_back(0);
    for (auto l : lengths) result.cu_seqlens.push_back(result.cu_seqlens.back() + l);
    const std::int64_t total = result.cu_seqlens.back();
    result.data.resize(static_cast<std::size_t>(total * heads * head_dim));
    const auto view = TensorView<T, 3>::contiguous(result.data.data(), {total, heads, head_dim});
    result.batch = packed_batch(view, result.cu_seqlens.data(), batch, longest, "test");
  } else {
    const std::int64_t token_stride = heads * head_dim + extra_token_stride;
    result.data.resize(static_cast<std::size_t>(batch * longest * token_stride));
    TensorView<T, 4> view{
        result.data.data(), {batch, longest, heads, head_dim}, {longest * token_stride, token_stride, head_dim, 1}};
    result.batch = padded_batch(view, "test");
  }
  return result;
}

template <class T>
void fill_normal(std::vector<T>& data, std::mt19937_64& random) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : data) x = from_float<T>(normal(random));
}

BlockSet random_blocks(const Case& c, const std::vector<BlockGeometry>& sequences, std::mt19937_64& random) {
  const std::int64_t heads = c.blocks_per_kv_head ? c.kv_heads : c.q_heads;
  BlockSet blocks(heads, c.block_size, sequences);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::int32_t> row;
  for (const auto& g : sequences)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
        row.clear();
        for (std::int64_t n = 0; n < g.visible_key_blocks(m); ++n) {
          const bool diagonal = n >= g.diagonal_first(m) && n <= g.diagonal_last(m);
          if ((c.keep_diagonal && diagonal) || uniform(random) < c.density) row.push_back(static_cast<std::int32_t>(n));
        }
        blocks.append_row(row);
      }
  return blocks;
}

// The same-precision naive implementation: scores rounded to T, softmax in float, probabilities
// rounded to T, output accumulated in float and rounded to T.
template <class T>
void naive_attention(const SequenceBatch<const T>& q, const SequenceBatch<const T>& k, const SequenceBatch<const T>& v,
                     const BlockSet* blocks, const AttentionOptions& options, const SequenceBatch<double>& out,
                     const TensorView<double, 2>& lse) {
  const float scale = static_cast<float>(options.scale_for(q.head_dim));
  const std::int64_t group = q.heads / k.heads;
  const std::int64_t block_size = blocks != nullptr ? blocks->block_size() : 64;
  std::vector<float> scores, weights;
  std::vector<char> attended;
  for (std::int64_t b = 0; b < q.batch; ++b) {
    const BlockGeometry g{q.length(b), k.length(b), block_size, options.causal};
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const std::int64_t kv = h / group;
      const std::int64_t block_head = blocks != nullptr && blocks->heads() == q.heads ? h : kv;
      for (std::int64_t i = 0; i < g.q_len; ++i) {
        std::vector<char> kept(static_cast<std::size_t>(g.key_blocks()), blocks == nullptr ? 1 : 0);
        if (blocks != nullptr) {
          const std::int64_t row = blocks->row_index(b, block_head, i / block_size);
          for (auto it = blocks->row_begin(row); it != blocks->row_end(row); ++it) kept[*it] = 1;
        }
        scores.assign(static_cast<std::size_t>(g.k_len), 0.0f);
        attended.assign(static_cast<std::size_t>(g.k_len), 0);
        float peak = -std::numeric_limits<float>::infinity();
        const T* query = q.vector(b, i, h);
        for (std::int64_t j = 0; j < g.k_len; ++j) {
          if (!g.visible(i, j) || !kept[j / block_size]) continue;
          const T* key = k.vector(b, j, kv);
          float dot = 0.0f;
          for (std::int64_t d = 0; d < q.head_dim; ++d) dot += to_float(query[d]) * to_float(key[d]);
          scores[j] = round_to<T>(dot) * scale;
          attended[j] = 1;
          peak = std::max(peak, scores[j]);
        }
        double* destination = out.vector(b, i, h);
        if (peak == -std::numeric_limits<float>::infinity()) {
          for (std::int64_t d = 0; d < q.head_dim; ++d) destination[d] = 0.0;
          lse(h, q.start(b) + i) = -std::numeric_limits<double>::infinity();
          continue;
        }
        float total = 0.0f;
        weights.assign(static_cast<std::size_t>(g.k_len), 0.0f);
        for (std::int64_t j = 0; j < g.k_len; ++j)
          if (attended[j]) total += weights[j] = std::exp(scores[j] - peak);
        for (std::int64_t j = 0; j < g.k_len; ++j) weights[j] = round_to<T>(weights[j] / total);
        for (std::int64_t d = 0; d < q.head_dim; ++d) {
          float sum = 0.0f;
          for (std::int64_t j = 0; j < g.k_len; ++j)
            if (attended[j]) sum += weights[j] * to_float(v.vector(b, j, kv)[d]);
          destination[d] = round_to<T>(sum);
        }
        lse(h, q.start(b) + i) = peak + std::log(total);
      }
    }
  }
}

struct Errors {
  double gpu = 0.0, naive = 0.0;
  std::int64_t non_finite = 0;  // NaN or inf where the reference is finite
  std::int64_t empty_rows = 0;  // rows whose reference LSE is -inf
  std::int64_t empty_rows_wrong = 0;
};

template <class T>
void check_case(const Case& c) {
  if (!gpu_test::have_gpu()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  const std::uint64_t seed = std::random_device{}();
  std::mt19937_64 random(seed);
  INFO(element_type_name<T>(), ", ", describe(c), ", seed ", seed);

  auto q = make_sequences<T>(c.q_lengths, c.q_heads, c.head_dim, c.packed, c.extra_token_stride);
  auto k = make_sequences<T>(c.k_lengths, c.kv_heads, c.head_dim, c.packed, c.extra_token_stride);
  auto v = make_sequences<T>(c.k_lengths, c.kv_heads, c.head_dim, c.packed, c.extra_token_stride);
  auto out = make_sequences<T>(c.q_lengths, c.q_heads, c.head_dim, c.packed, c.extra_token_stride);
  fill_normal(q.data, random);
  fill_normal(k.data, random);
  fill_normal(v.data, random);
  if (c.packed) v.batch.cu_seqlens = k.batch.cu_seqlens;  // packed v shares k's lengths (an API rule)
  if (c.packed) out.batch.cu_seqlens = q.batch.cu_seqlens;

  AttentionOptions options;
  options.causal = c.causal;
  options.softmax_scale = c.softmax_scale;
  const std::int64_t total_q = q.batch.total_tokens();

  BlockSet blocks;
  const BlockSet* block_pointer = nullptr;
  if (c.density >= 0.0) {
    blocks = random_blocks(c, sequence_geometries(q.batch, k.batch, c.block_size, c.causal), random);
    block_pointer = &blocks;
  }

  // GPU
  std::vector<float> gpu_lse(static_cast<std::size_t>(c.q_heads * total_q));
  gpu_test::HostAttentionCall<T> call;
  call.q = q.batch;
  call.k = k.batch;
  call.v = v.batch;
  call.q_elements = static_cast<std::int64_t>(q.data.size());
  call.k_elements = static_cast<std::int64_t>(k.data.size());
  call.v_elements = static_cast<std::int64_t>(v.data.size());
  call.blocks = block_pointer;
  call.options = options;
  call.out = out.batch;
  call.out_elements = static_cast<std::int64_t>(out.data.size());
  if (c.with_lse) call.lse = TensorView<float, 2>::contiguous(gpu_lse.data(), {c.q_heads, total_q});
  call.capture_in_graph = c.capture_in_graph;
  gpu_test::run_on_device(call);

  // float64 reference and same-precision naive
  auto reference = make_sequences<double>(c.q_lengths, c.q_heads, c.head_dim, c.packed, 0);
  auto naive = make_sequences<double>(c.q_lengths, c.q_heads, c.head_dim, c.packed, 0);
  if (c.packed) reference.batch.cu_seqlens = naive.batch.cu_seqlens = q.batch.cu_seqlens;
  std::vector<double> reference_lse(gpu_lse.size()), naive_lse(gpu_lse.size());
  const auto reference_lse_view = TensorView<double, 2>::contiguous(reference_lse.data(), {c.q_heads, total_q});
  const auto naive_lse_view = TensorView<double, 2>::contiguous(naive_lse.data(), {c.q_heads, total_q});
  const SequenceBatch<const T> cq = q.batch, ck = k.batch, cv = v.batch;
  cpu::reference_attention<T, double, double>(cq, ck, cv, block_pointer, options, reference.batch, reference_lse_view);
  naive_attention<T>(cq, ck, cv, block_pointer, options, naive.batch, naive_lse_view);

  Errors output_errors, lse_errors;
  for (std::int64_t b = 0; b < q.batch.batch; ++b)
    for (std::int64_t t = 0; t < q.batch.length(b); ++t)
      for (std::int64_t h = 0; h < c.q_heads; ++h) {
        const double* r = reference.batch.vector(b, t, h);
        const double* n = naive.batch.vector(b, t, h);
        const T* g = out.batch.vector(b, t, h);
        const double r_lse = reference_lse_view(h, q.batch.start(b) + t);
        const bool empty = std::isinf(r_lse) && r_lse < 0;
        if (empty) ++output_errors.empty_rows;
        for (std::int64_t d = 0; d < c.head_dim; ++d) {
          const double value = to_float(g[d]);
          if (!std::isfinite(value)) ++output_errors.non_finite;
          if (empty && value != 0.0) ++output_errors.empty_rows_wrong;
          output_errors.gpu = std::max(output_errors.gpu, std::abs(value - r[d]));
          output_errors.naive = std::max(output_errors.naive, std::abs(n[d] - r[d]));
        }
        if (!c.with_lse) continue;
        const double g_lse = gpu_lse[static_cast<std::size_t>(h * total_q + q.batch.start(b) + t)];
        if (empty) {
          ++lse_errors.empty_rows;
          if (!(std::isinf(g_lse) && g_lse < 0)) ++lse_errors.empty_rows_wrong;
          continue;
        }
        if (!std::isfinite(g_lse)) ++lse_errors.non_finite;
        lse_errors.gpu = std::max(lse_errors.gpu, std::abs(g_lse - r_lse));
        lse_errors.naive = std::max(lse_errors.naive, std::abs(naive_lse_view(h, q.batch.start(b) + t) - r_lse));
      }

  constexpr double kEpsilon = 1e-4;
  INFO("output: gpu error ", output_errors.gpu, ", naive error ", output_errors.naive, "; lse: gpu error ",
       lse_errors.gpu, ", naive error ", lse_errors.naive, "; empty rows ", output_errors.empty_rows);
  CHECK(output_errors.non_finite == 0);
  CHECK(output_errors.empty_rows_wrong == 0);
  CHECK(output_errors.gpu <= 2.0 * output_errors.naive + kEpsilon);
  if (c.with_lse) {
    CHECK(lse_errors.non_finite == 0);
    CHECK(lse_errors.empty_rows_wrong == 0);
    CHECK(lse_errors.gpu <= 2.0 * lse_errors.naive + kEpsilon);
  }
}

void check_both_types(const Case& c) {
  check_case<bfloat16>(c);
  check_case<half>(c);
}

Case padded_case(std::int32_t q_length, std::int32_t k_length, std::int64_t batch = 2) {
  Case c;
  c.q_lengths.assign(static_cast<std::size_t>(batch), q_length);
  c.k_lengths.assign(static_cast<std::size_t>(batch), k_length);
  return c;
}

}  // namespace

TEST_CASE("gpu prefill: dense causal matches the reference for head dims 64, 128, 256") {
  for (const std::int64_t head_dim : {64, 128, 256}) {
    Case c = padded_case(200, 200);  // not a multiple of the 64-token tile
    c.head_dim = head_dim;
    c.kv_heads = 2;
    check_both_types(c);
  }
}

TEST_CASE("gpu prefill: sequences of one token and shorter than one block") {
  for (const std::int32_t length : {1, 37, 64, 65}) {
    Case c = padded_case(length, length, 3);
    c.head_dim = 128;
    check_both_types(c);
    c.density = 0.5;
    check_both_types(c);
  }
}

TEST_CASE("gpu prefill: variable-length batch with an empty sequence, GQA 1/4/8") {
  for (const std::int64_t kv_heads : {8, 2, 1}) {
    Case c;
    c.packed = true;
    c.q_lengths = {130, 0, 1, 64, 257};
    c.k_lengths = c.q_lengths;
    c.q_heads = 8;
    c.kv_heads = kv_heads;
    c.head_dim = 64;
    check_both_types(c);
    c.density = 0.4;
    check_both_types(c);
  }
}

TEST_CASE("gpu prefill: q_len != k_len, causal (bottom-right aligned, empty rows) and non-causal") {
  for (const bool causal : {true, false}) {
    Case c;
    c.packed = true;
    c.q_lengths = {100, 300, 5, 64};
    c.k_lengths = {300, 100, 70, 0};  // the 300/100 and x/0 pairs have rows that see no key
    c.causal = causal;
    c.head_dim = 128;
    c.kv_heads = 1;
    check_both_types(c);
    c.density = 0.5;
    check_both_types(c);
  }
}

TEST_CASE("gpu prefill: block-sparse densities near 0 and 1, per query head and per KV head") {
  for (const double density : {0.0, 0.05, 0.5, 1.0}) {
    for (const bool per_kv_head : {false, true}) {
      Case c = padded_case(320, 320);
      c.q_heads = 8;
      c.kv_heads = 2;
      c.head_dim = 128;
      c.density = density;
      c.blocks_per_kv_head = per_kv_head;
      check_both_types(c);
    }
  }
}

TEST_CASE("gpu prefill: sparse and non-causal for head dims 64 and 256") {
  for (const std::int64_t head_dim : {64, 256}) {
    for (const bool causal : {true, false}) {
      Case c = padded_case(190, 260);
      c.head_dim = head_dim;
      c.causal = causal;
      c.density = 0.3;
      check_both_types(c);
    }
  }
}

TEST_CASE("gpu prefill: rows without kept blocks give 0 and LSE -inf") {
  Case c = padded_case(256, 256);
  c.keep_diagonal = false;
  c.head_dim = 64;
  for (const double density : {0.0, 0.2}) {
    c.density = density;
    check_both_types(c);
  }
}

TEST_CASE("gpu prefill: block size 128 (two tiles per block) with ragged lengths") {
  Case c;
  c.packed = true;
  c.q_lengths = {300, 77, 129};
  c.k_lengths = {300, 200, 129};
  c.block_size = 128;
  c.head_dim = 128;
  c.kv_heads = 2;
  for (const double density : {0.3, 1.0}) {
    c.density = density;
    check_both_types(c);
  }
}

TEST_CASE("gpu prefill: strided tokens, custom scale, no LSE, CUDA graph capture") {
  Case c = padded_case(150, 150);
  c.extra_token_stride = 8;
  c.softmax_scale = 0.2;
  c.head_dim = 64;
  c.with_lse = false;
  check_both_types(c);
  c.with_lse = true;
  c.capture_in_graph = true;
  c.density = 0.5;
  check_both_types(c);
}

TEST_CASE("gpu prefill: 1M tokens x 32 heads (64-bit offsets)") {
  if (!gpu_test::have_gpu()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  constexpr std::int64_t kTokens = std::int64_t{1} << 20, kHeads = 32, kHeadDim = 128, kSlice = 64;
  // The last slices lie beyond 2^31 elements of every tensor.
  const std::vector<std::int64_t> starts = {0, (kTokens / 2) - kSlice, kTokens - 2 * kSlice, kTokens - kSlice};
  std::string message;
  const auto slices = gpu_test::run_long_sequence(kTokens, kHeads, starts, message);
  if (slices.empty()) {
    MESSAGE("1M-token test skipped: ", message);
    return;
  }
  // With only the diagonal block kept, row i of block m attends to keys [64 m, i]: exactly causal
  // attention within the 64-token slice, which the reference computes on the slice alone.
  for (const auto& slice : slices) {
    INFO("slice starting at token ", slice.first_token);
    const auto view = [&](const std::vector<bfloat16>& data) {
      return padded_batch(TensorView<const bfloat16, 4>::contiguous(data.data(), {1, kSlice, kHeads, kHeadDim}), "s");
    };
    std::vector<double> reference(static_cast<std::size_t>(kSlice * kHeads * kHeadDim));
    std::vector<double> reference_lse(static_cast<std::size_t>(kHeads * kSlice));
    const auto reference_batch =
        padded_batch(TensorView<double, 4>::contiguous(reference.data(), {1, kSlice, kHeads, kHeadDim}), "r");
    cpu::reference_attention<bfloat16, double, double>(
        view(slice.q), view(slice.k), view(slice.v), nullptr, AttentionOptions{}, reference_batch,
        TensorView<double, 2>::contiguous(reference_lse.data(), {kHeads, kSlice}));
    double output_error = 0.0, lse_error = 0.0, largest = 0.0;
    for (std::size_t i = 0; i < reference.size(); ++i) {
      const double value = to_float(slice.out[i]);
      output_error = std::isfinite(value) ? std::max(output_error, std::abs(value - reference[i])) : 1e30;
      largest = std::max(largest, std::abs(reference[i]));
    }
    for (std::size_t i = 0; i < reference_lse.size(); ++i)
      lse_error = std::isfinite(slice.lse[i]) ? std::max(lse_error, std::abs(slice.lse[i] - reference_lse[i])) : 1e30;
    INFO("output error ", output_error, " (largest |output| ", largest, "), lse error ", lse_error);
    // bf16 output rounding is at most 2^-9 relative; allow four roundings' worth.
    CHECK(output_error <= largest * (4.0 / 512.0) + 1e-3);
    CHECK(lse_error <= 1e-2);
  }
}
