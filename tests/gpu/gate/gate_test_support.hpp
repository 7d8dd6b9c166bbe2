// Shared pieces of the GPU gate/selection tests (CUDA: tests/gpu/gate, HIP: tests/hip/gate_kernels_hip.cpp).
//
// The references are seer's own CPU code: LearnedGate::score for the features (float64) and the CPU
// policies (seer::select_blocks, or the same per-row steps for sampled rows of huge cases) for the
// BlockSet, run on the GPU's own features so that the only differences left are fp32 versus float64
// rounding. Where a row differs, the CPU scores must show why: a near-tie at the TopK / Nucleus cut,
// a probability within a margin of tau, or a prefix mass within a margin of p. Rows that differ
// outside those margins are failures.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "seer/core/block_set.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gate/block_feature_scores.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gpu/gate_selection.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/selection/select_blocks.hpp"

namespace seer::gate_test {

// ---- Device memory for the tests ----------------------------------------------------------------------

inline bool have_device() {
  int count = 0;
#if defined(__HIPCC__)
  return hipGetDeviceCount(&count) == hipSuccess && count > 0;
#else
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
#endif
}

inline void synchronize() {
#if defined(__HIPCC__)
  gpu::vendor::check(hipDeviceSynchronize(), "hipDeviceSynchronize");
#else
  gpu::vendor::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
#endif
}

inline void download_bytes(void* host, const void* device, std::size_t bytes) {
#if defined(__HIPCC__)
  gpu::vendor::check(hipMemcpy(host, device, bytes, hipMemcpyDeviceToHost), "hipMemcpy (download)");
#else
  gpu::vendor::check(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (download)");
#endif
}

inline void fill_bytes(void* device, int value, std::size_t bytes) {
#if defined(__HIPCC__)
  gpu::vendor::check(hipMemset(device, value, bytes), "hipMemset");
#else
  gpu::vendor::check(cudaMemset(device, value, bytes), "cudaMemset");
#endif
}

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::int64_t count) : count_(count) {
    data_ = static_cast<T*>(gpu::vendor::device_allocate(
        static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * sizeof(T), "test allocation"));
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(static_cast<std::int64_t>(host.size())) {
    if (!host.empty()) gpu::vendor::copy_to_device(data_, host.data(), host.size() * sizeof(T), "test upload");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { gpu::vendor::device_release(data_); }

  T* get() const { return data_; }
  std::int64_t size() const { return count_; }
  void poison() { fill_bytes(data_, 0xff, static_cast<std::size_t>(count_) * sizeof(T)); }
  std::vector<T> download(std::int64_t count) const {
    std::vector<T> host(static_cast<std::size_t>(count));
    if (count > 0) download_bytes(host.data(), data_, host.size() * sizeof(T));
    return host;
  }
  std::vector<T> download() const { return download(count_); }

 private:
  T* data_ = nullptr;
  std::int64_t count_ = 0;
};

// ---- Inputs -------------------------------------------------------------------------------------------

struct GateCase {
  std::vector<std::int32_t> q_lengths, k_lengths;  // padded layout: all equal per tensor
  bool packed = false;
  std::int64_t q_heads = 4, kv_heads = 4, head_dim = 128;
  bool causal = true;
  std::string gate_type = "Qavg_Kmaxminavg";
  bool force_double = false;
  bool bf16_weights = false;  // weights rounded to bf16, as the released gates are stored
  RopeConfig rope;
};

inline std::string describe(const GateCase& c) {
  std::string text = c.gate_type + (c.force_double ? " (double linear)" : "") + ", q_lengths";
  for (auto l : c.q_lengths) text += " " + std::to_string(l);
  text += ", k_lengths";
  for (auto l : c.k_lengths) text += " " + std::to_string(l);
  return text + ", heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + ", D " +
         std::to_string(c.head_dim) + (c.causal ? ", causal" : ", non-causal") + (c.packed ? ", packed" : ", padded") +
         ", rope " + c.rope.scaling.type + (c.bf16_weights ? ", bf16 weights" : "");
}

// A gate with random weights of the case's layout (normal, variance 1 / fan-in, so features are O(1)).
inline LearnedGate random_gate(const GateCase& c, std::mt19937_64& random) {
  LearnedGateConfig config;
  config.gate_type = c.gate_type;
  config.hidden_size = c.head_dim;
  config.force_double = c.force_double;
  config.rope = c.rope;
  config.rope.head_dim = c.head_dim;
  const LearnedGateLayout layout =
      LearnedGateLayout::of(GateType::parse(c.gate_type), config, c.q_heads, c.kv_heads, c.head_dim);
  auto draw = [&](const std::vector<std::int64_t>& shape) {
    std::vector<float> weights;
    if (shape.empty()) return weights;
    weights.resize(static_cast<std::size_t>(shape[0] * shape[1] * shape[2]));
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(shape[1])));
    for (auto& w : weights) w = c.bf16_weights ? round_to<bfloat16>(normal(random)) : normal(random);
    return weights;
  };
  std::vector<float> k_weights = draw(layout.k_shape);
  std::vector<float> q_weights = draw(layout.q_shape);
  return LearnedGate(config, c.q_heads, c.kv_heads, c.head_dim, std::move(k_weights), std::move(q_weights));
}

// Host tensor plus its SequenceBatch view (host cu_seqlens), and the device copy with device cu_seqlens.
template <class T>
struct Sequences {
  std::vector<T> data;
  std::vector<std::int32_t> cu_seqlens;
  SequenceBatch<const T> host;
};

// Random normal values plus a per-(head, component) offset: block means then differ between heads and
// components (pure noise would pool to ~0 and give nearly uniform gate probabilities).
template <class T>
Sequences<T> make_sequences(const std::vector<std::int32_t>& lengths, std::int64_t heads, std::int64_t head_dim,
                            bool packed, std::mt19937_64& random) {
  Sequences<T> result;
  const std::int64_t batch = static_cast<std::int64_t>(lengths.size());
  const std::int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> offset(static_cast<std::size_t>(heads * head_dim));
  for (auto& o : offset) o = normal(random);
  if (packed) {
    result.cu_seqlens.push_back(0);
    for (auto l : lengths) result.cu_seqlens.push_back(result.cu_seqlens.back() + l);
    result.data.resize(static_cast<std::size_t>(result.cu_seqlens.back() * heads * head_dim));
  } else {
    result.data.resize(static_cast<std::size_t>(batch * longest * heads * head_dim));
  }
  for (std::size_t i = 0; i < result.data.size(); ++i)
    result.data[i] = from_float<T>(normal(random) + offset[i % offset.size()]);
  if (packed) {
    const auto view = TensorView<const T, 3>::contiguous(
        result.data.data(), {static_cast<std::int64_t>(result.cu_seqlens.back()), heads, head_dim});
    result.host = packed_batch(view, result.cu_seqlens.data(), batch, longest, "test");
  } else {
    const auto view = TensorView<const T, 4>::contiguous(result.data.data(), {batch, longest, heads, head_dim});
    result.host = padded_batch(view, "test");
  }
  return result;
}

template <class T>
struct DeviceSequences {
  DeviceArray<T> data;
  DeviceArray<std::int32_t> cu_seqlens;
  SequenceBatch<const T> view;
  explicit DeviceSequences(const Sequences<T>& host) : data(host.data), cu_seqlens(host.cu_seqlens) {
    view = host.host;
    view.data = data.get();
    view.cu_seqlens = host.host.cu_seqlens != nullptr ? cu_seqlens.get() : nullptr;
  }
};

// ---- Downloads ---------------------------------------------------------------------------------------

struct HostFeatures {
  std::vector<float> query, key;
  gpu::GateFeatures shape;
};

inline HostFeatures download_features(const gpu::GateFeatures& features, std::int64_t batch) {
  HostFeatures result;
  result.shape = features;
  result.query.resize(static_cast<std::size_t>(batch * features.heads * features.max_query_blocks * features.dim));
  result.key.resize(static_cast<std::size_t>(batch * features.key_heads * features.max_key_blocks * features.dim));
  if (!result.query.empty()) download_bytes(result.query.data(), features.query, result.query.size() * sizeof(float));
  if (!result.key.empty()) download_bytes(result.key.data(), features.key, result.key.size() * sizeof(float));
  return result;
}

// The GPU's features as CPU scores (float64 copies), so the CPU policies run on the same inputs.
inline BlockFeatureScores scores_from_features(const HostFeatures& features,
                                               const std::vector<BlockGeometry>& sequences) {
  const auto& f = features.shape;
  BlockFeatureScores scores(sequences, f.heads, f.key_heads, f.dim, 1.0 / std::sqrt(static_cast<double>(f.dim)));
  for (std::int64_t b = 0; b < static_cast<std::int64_t>(sequences.size()); ++b) {
    for (std::int64_t h = 0; h < f.heads; ++h)
      for (std::int64_t m = 0; m < sequences[b].query_blocks(); ++m)
        for (std::int64_t d = 0; d < f.dim; ++d)
          scores.query_feature(b, h, m)[d] = features.query[static_cast<std::size_t>(f.query_offset(b, h, m) + d)];
    for (std::int64_t kh = 0; kh < f.key_heads; ++kh)
      for (std::int64_t n = 0; n < sequences[b].key_blocks(); ++n)
        for (std::int64_t d = 0; d < f.dim; ++d)
          scores.key_feature(b, kh, n)[d] = features.key[static_cast<std::size_t>(f.key_offset(b, kh, n) + d)];
  }
  return scores;
}

// Largest |gpu - cpu| over the valid feature rows, relative to the largest |cpu| of the tensor.
struct FeatureErrors {
  double query = 0.0, key = 0.0;
  std::int64_t non_finite = 0;
};

inline FeatureErrors compare_features(const HostFeatures& gpu, const BlockFeatureScores& cpu) {
  FeatureErrors errors;
  const auto& f = gpu.shape;
  double query_scale = 0.0, key_scale = 0.0, query_error = 0.0, key_error = 0.0;
  for (std::int64_t b = 0; b < cpu.batch(); ++b) {
    const BlockGeometry& g = cpu.sequences()[b];
    for (std::int64_t h = 0; h < f.heads; ++h)
      for (std::int64_t m = 0; m < g.query_blocks(); ++m)
        for (std::int64_t d = 0; d < f.dim; ++d) {
          const double value = gpu.query[static_cast<std::size_t>(f.query_offset(b, h, m) + d)];
          if (!std::isfinite(value)) ++errors.non_finite;
          query_scale = std::max(query_scale, std::abs(cpu.query_feature(b, h, m)[d]));
          query_error = std::max(query_error, std::abs(value - cpu.query_feature(b, h, m)[d]));
        }
    for (std::int64_t kh = 0; kh < f.key_heads; ++kh)
      for (std::int64_t n = 0; n < g.key_blocks(); ++n)
        for (std::int64_t d = 0; d < f.dim; ++d) {
          const double value = gpu.key[static_cast<std::size_t>(f.key_offset(b, kh, n) + d)];
          if (!std::isfinite(value)) ++errors.non_finite;
          key_scale = std::max(key_scale, std::abs(cpu.key_feature(b, kh, n)[d]));
          key_error = std::max(key_error, std::abs(value - cpu.key_feature(b, kh, n)[d]));
        }
  }
  errors.query = query_scale > 0.0 ? query_error / query_scale : query_error;
  errors.key = key_scale > 0.0 ? key_error / key_scale : key_error;
  return errors;
}

struct HostBlockSet {
  std::vector<std::int64_t> row_offsets;
  std::vector<std::int32_t> key_blocks;
  std::vector<std::int32_t> query_block_offsets;
  std::int32_t overflow = -1;
};

inline HostBlockSet download_block_set(const gpu::DeviceBlockSetBuffers& buffers, std::int64_t batch,
                                       std::int64_t heads) {
  HostBlockSet result;
  result.query_block_offsets.resize(static_cast<std::size_t>(batch + 1));
  download_bytes(result.query_block_offsets.data(), buffers.query_block_offsets,
                 result.query_block_offsets.size() * sizeof(std::int32_t));
  const std::int64_t rows = heads * result.query_block_offsets.back();
  result.row_offsets.resize(static_cast<std::size_t>(rows + 1));
  download_bytes(result.row_offsets.data(), buffers.row_offsets, result.row_offsets.size() * sizeof(std::int64_t));
  const std::int64_t kept = std::min(result.row_offsets.back(), buffers.key_block_capacity);
  result.key_blocks.resize(static_cast<std::size_t>(std::max<std::int64_t>(kept, 0)));
  if (kept > 0)
    download_bytes(result.key_blocks.data(), buffers.key_blocks, result.key_blocks.size() * sizeof(std::int32_t));
  download_bytes(&result.overflow, buffers.overflow, sizeof(std::int32_t));
  return result;
}

// ---- Selection with margins --------------------------------------------------------------------------

struct SelectionComparison {
  std::int64_t rows = 0;
  std::int64_t identical = 0;
  std::int64_t within_margin = 0;   // differ, explained by rounding at a tie / tau / p
  std::int64_t outside_margin = 0;  // differ without such an explanation: failures
  std::int64_t malformed = 0;       // not ascending, outside the visible range, or a wrong row size
  std::string first_failure;
};

namespace detail {

inline std::vector<double> softmax(const std::vector<double>& logits) {
  std::vector<double> p(logits.size(), 0.0);
  if (logits.empty()) return p;
  const double peak = *std::max_element(logits.begin(), logits.end());
  double total = 0.0;
  for (std::size_t n = 0; n < logits.size(); ++n) total += p[n] = std::exp(logits[n] - peak);
  for (auto& x : p) x /= total;
  return p;
}

// Unforced candidates best first, by the CPU's own rule (ranks_before on float64 logits).
inline std::vector<std::int32_t> best_first(const std::vector<double>& logits,
                                            const std::vector<std::uint8_t>& forced) {
  std::vector<std::int32_t> order;
  for (std::size_t n = 0; n < logits.size(); ++n)
    if (!forced[n]) order.push_back(static_cast<std::int32_t>(n));
  std::sort(order.begin(), order.end(),
            [&](std::int32_t a, std::int32_t b) { return ranks_before(logits[a], a, logits[b], b); });
  return order;
}

// Every block in the symmetric difference lies within `margin` of the cut value.
inline bool differences_near(const std::vector<std::int32_t>& cpu, const std::vector<std::int32_t>& gpu,
                             const std::vector<double>& values, double cut, double margin) {
  std::vector<std::int32_t> difference;
  std::set_symmetric_difference(cpu.begin(), cpu.end(), gpu.begin(), gpu.end(), std::back_inserter(difference));
  for (auto n : difference)
    if (n < 0 || n >= static_cast<std::int32_t>(values.size()) || std::abs(values[n] - cut) > margin) return false;
  return true;
}

inline double logit_margin(const std::vector<double>& logits) {
  double largest = 0.0;
  for (double l : logits) largest = std::max(largest, std::abs(l));
  return 1e-4 * largest + 1e-6;  // fp32 dot products of O(1) features: ~1e-6 relative
}

inline bool explain(const TopK&, const std::vector<double>& logits, const std::vector<std::uint8_t>& forced,
                    const std::vector<std::int32_t>& cpu, const std::vector<std::int32_t>& gpu) {
  if (cpu.size() != gpu.size()) return false;  // TopK row sizes follow from the geometry alone
  std::int64_t forced_count = 0;
  for (auto f : forced) forced_count += f ? 1 : 0;
  const auto order = best_first(logits, forced);
  const std::int64_t take = static_cast<std::int64_t>(cpu.size()) - forced_count;
  if (take <= 0 || take >= static_cast<std::int64_t>(order.size())) return false;
  return differences_near(cpu, gpu, logits, logits[order[take - 1]], logit_margin(logits));
}

inline bool explain(const Threshold& policy, const std::vector<double>& logits, const std::vector<std::uint8_t>&,
                    const std::vector<std::int32_t>& cpu, const std::vector<std::int32_t>& gpu) {
  const auto p = softmax(logits);
  return differences_near(cpu, gpu, p, policy.tau, 1e-4 * policy.tau + 1e-9);
}

inline bool explain(const Nucleus& policy, const std::vector<double>& logits, const std::vector<std::uint8_t>& forced,
                    const std::vector<std::int32_t>& cpu, const std::vector<std::int32_t>& gpu) {
  const auto p = softmax(logits);
  std::int64_t forced_count = 0;
  double forced_mass = 0.0;
  for (std::size_t n = 0; n < forced.size(); ++n)
    if (forced[n]) {
      ++forced_count;
      forced_mass += p[n];
    }
  const auto order = best_first(logits, forced);
  const std::int64_t cpu_take = static_cast<std::int64_t>(cpu.size()) - forced_count;
  const std::int64_t gpu_take = static_cast<std::int64_t>(gpu.size()) - forced_count;
  if (cpu_take == gpu_take) {  // same count: a near-tie in the order at the cut
    if (cpu_take <= 0 || cpu_take >= static_cast<std::int64_t>(order.size())) return false;
    return differences_near(cpu, gpu, logits, logits[order[cpu_take - 1]], logit_margin(logits));
  }
  if (std::abs(cpu_take - gpu_take) != 1) return false;
  // One block more or less: the prefix mass at the shorter cut must be within rounding of p.
  double mass = forced_mass;
  const std::int64_t shorter = std::min(cpu_take, gpu_take);
  for (std::int64_t i = 0; i < shorter; ++i) mass += p[order[i]];
  return std::abs(mass - policy.p) <= 1e-4;
}

// The CPU selection of one row, as select_blocks computes it.
template <class Policy>
std::vector<std::int32_t> cpu_row(const BlockFeatureScores& scores, const Policy& policy, const ForcedBlocks& forced,
                                  std::int64_t b, std::int64_t h, std::int64_t m, std::vector<double>& logits,
                                  std::vector<std::uint8_t>& forced_flags) {
  const BlockGeometry& g = scores.sequences()[b];
  const std::int64_t visible = g.visible_key_blocks(m);
  std::vector<std::int32_t> kept;
  logits.assign(static_cast<std::size_t>(visible), 0.0);
  forced_flags.assign(static_cast<std::size_t>(visible), 0);
  if (visible == 0) return kept;
  scores.score_row(b, h, m, logits.data());
  for (std::int64_t n = 0; n < visible; ++n) forced_flags[n] = forced.is_forced(g, m, n) ? 1 : 0;
  if (forced.row_is_dense(g, m)) {
    for (std::int64_t n = 0; n < visible; ++n) kept.push_back(static_cast<std::int32_t>(n));
    return kept;
  }
  SelectionScratch scratch;
  policy.select(g, RowCandidates{logits.data(), forced_flags.data(), visible}, scratch, kept);
  return kept;
}

}  // namespace detail

// Compares the GPU BlockSet with the CPU policy on the same features, for every row (rows empty) or
// for the listed (b, h, m) rows of a huge case.
template <class Policy>
SelectionComparison compare_selection(const BlockFeatureScores& scores, const Policy& policy,
                                      const ForcedBlocks& forced, const HostBlockSet& gpu,
                                      const std::vector<std::array<std::int64_t, 3>>& sample = {}) {
  SelectionComparison result;
  const auto& sequences = scores.sequences();
  const std::int64_t heads = scores.heads();
  std::vector<std::array<std::int64_t, 3>> rows = sample;
  if (rows.empty())
    for (std::int64_t b = 0; b < static_cast<std::int64_t>(sequences.size()); ++b)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t m = 0; m < sequences[b].query_blocks(); ++m) rows.push_back({b, h, m});
  std::vector<double> logits;
  std::vector<std::uint8_t> forced_flags;
  for (const auto& address : rows) {
    const std::int64_t b = address[0], h = address[1], m = address[2];
    ++result.rows;
    const std::int64_t first = gpu.query_block_offsets[b];
    const std::int64_t count = gpu.query_block_offsets[b + 1] - first;
    const std::int64_t row = heads * first + h * count + m;
    auto fail = [&](std::int64_t& counter, const std::string& why) {
      ++counter;
      if (result.first_failure.empty())
        result.first_failure =
            "row (b " + std::to_string(b) + ", h " + std::to_string(h) + ", m " + std::to_string(m) + "): " + why;
    };
    if (count != sequences[b].query_blocks() || row + 1 >= static_cast<std::int64_t>(gpu.row_offsets.size())) {
      fail(result.malformed, "query_block_offsets disagree with the sequence lengths");
      continue;
    }
    const std::vector<std::int32_t> expected = detail::cpu_row(scores, policy, forced, b, h, m, logits, forced_flags);
    const std::int64_t begin = gpu.row_offsets[row], end = gpu.row_offsets[row + 1];
    if (begin < 0 || end < begin || end > static_cast<std::int64_t>(gpu.key_blocks.size())) {
      fail(result.malformed, "row offsets out of range");
      continue;
    }
    const std::vector<std::int32_t> actual(gpu.key_blocks.begin() + begin, gpu.key_blocks.begin() + end);
    bool ascending = true;
    for (std::size_t i = 0; i < actual.size(); ++i)
      ascending = ascending && actual[i] >= 0 && actual[i] < static_cast<std::int32_t>(logits.size()) &&
                  (i == 0 || actual[i] > actual[i - 1]);
    if (!ascending) {
      fail(result.malformed, "not strictly ascending inside the visible key blocks");
      continue;
    }
    if (actual == expected) {
      ++result.identical;
    } else if (detail::explain(policy, logits, forced_flags, expected, actual)) {
      ++result.within_margin;
    } else {
      fail(result.outside_margin, "kept " + std::to_string(actual.size()) + " blocks, the CPU policy " +
                                      std::to_string(expected.size()) + ", not explained by a near-tie");
    }
  }
  return result;
}

}  // namespace seer::gate_test
