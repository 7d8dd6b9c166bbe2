// Shared pieces of the decode tests: small decode-gate configurations with random weights, and a
// random KV cache of double keys readable as a contiguous or a paged (shuffled pages) view.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "seer/core/tensor_view.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gate/decode_gate.hpp"

namespace seer_test {

inline seer::DecodeGateConfig small_decode_config(seer::QueryHeadPooling pooling, std::int64_t dim, std::int64_t block,
                                                  bool norm, bool rope) {
  seer::DecodeGateConfig config;
  config.block_size = block;
  config.hidden_size = dim;
  config.query_head_pooling = pooling;
  config.use_qk_norm = norm;
  config.use_rope = rope;
  config.rope.head_dim = dim;
  config.rope.theta = 500.0;  // fast-turning angles at small positions
  return config;
}

inline std::vector<float> random_floats(std::size_t count, std::mt19937& random, double mean, double spread) {
  std::normal_distribution<double> normal(mean, spread);
  std::vector<float> values(count);
  for (auto& x : values) x = static_cast<float>(normal(random));
  return values;
}

inline seer::DecodeGate random_decode_gate(const seer::DecodeGateConfig& config, std::int64_t q_heads,
                                           std::int64_t kv_heads, std::int64_t dim, unsigned seed) {
  std::mt19937 random(seed);
  const auto layout = seer::DecodeGateLayout::of(config, q_heads, kv_heads, dim);
  seer::DecodeGateWeights weights;
  const double spread = 0.5;
  weights.q_projection =
      random_floats(static_cast<std::size_t>(seer::DecodeGateLayout::elements(layout.q_shape)), random, 0.0, spread);
  weights.k_projection =
      random_floats(static_cast<std::size_t>(seer::DecodeGateLayout::elements(layout.k_shape)), random, 0.0, spread);
  // Norm weights around 1 but not 1, so a wrong weight index shows.
  weights.q_norm =
      random_floats(static_cast<std::size_t>(seer::DecodeGateLayout::elements(layout.norm_shape)), random, 1.0, 0.3);
  weights.k_norm =
      random_floats(static_cast<std::size_t>(seer::DecodeGateLayout::elements(layout.norm_shape)), random, 1.0, 0.3);
  return seer::DecodeGate(config, q_heads, kv_heads, dim, std::move(weights));
}

// Keys (and equal values) [batch, capacity, kv_heads, dim] of random doubles, also laid out as a
// page pool with a shuffled page table.
struct RandomKvCache {
  std::int64_t batch, capacity, kv_heads, dim, page_size, pages_per_sequence;
  std::vector<double> keys;       // contiguous
  std::vector<double> page_pool;  // [batch * pages_per_sequence, page_size, kv_heads, dim]
  std::vector<std::int32_t> page_table;

  RandomKvCache(std::int64_t batch_, std::int64_t capacity_, std::int64_t kv_heads_, std::int64_t dim_,
                std::int64_t page_size_, unsigned seed)
      : batch(batch_),
        capacity(capacity_),
        kv_heads(kv_heads_),
        dim(dim_),
        page_size(page_size_),
        pages_per_sequence((capacity_ + page_size_ - 1) / page_size_) {
    std::mt19937 random(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    keys.resize(static_cast<std::size_t>(batch * capacity * kv_heads * dim));
    for (auto& x : keys) x = normal(random);
    page_table.resize(static_cast<std::size_t>(batch * pages_per_sequence));
    std::iota(page_table.begin(), page_table.end(), 0);
    std::shuffle(page_table.begin(), page_table.end(), random);
    refresh_pages();
  }

  // Copies the contiguous keys into the page pool (after editing `keys`).
  void refresh_pages() {
    page_pool.assign(static_cast<std::size_t>(batch * pages_per_sequence * page_size * kv_heads * dim), 0.0);
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < capacity; ++t) {
        const std::int64_t page = page_table[b * pages_per_sequence + t / page_size];
        std::copy_n(contiguous_key(b, t, 0), kv_heads * dim,
                    page_pool.data() + ((page * page_size + t % page_size) * kv_heads) * dim);
      }
  }

  double* contiguous_key(std::int64_t b, std::int64_t t, std::int64_t h) {
    return keys.data() + ((b * capacity + t) * kv_heads + h) * dim;
  }
  std::vector<double> key_vector(std::int64_t b, std::int64_t t, std::int64_t h) {
    const double* key = contiguous_key(b, t, h);
    return std::vector<double>(key, key + dim);
  }

  seer::KvCacheView<const double> contiguous(const std::vector<std::int32_t>& lengths, std::int64_t max_length = -1) {
    const auto view = seer::TensorView<const double, 4>::contiguous(keys.data(), {batch, capacity, kv_heads, dim});
    return seer::contiguous_kv_cache(view, view, lengths.data(), max_length < 0 ? capacity : max_length);
  }
  seer::KvCacheView<const double> paged(const std::vector<std::int32_t>& lengths) {
    refresh_pages();
    const auto view = seer::TensorView<const double, 4>::contiguous(
        page_pool.data(), {batch * pages_per_sequence, page_size, kv_heads, dim});
    return seer::paged_kv_cache(view, view, page_table.data(), batch, pages_per_sequence, lengths.data(), capacity);
  }
};

// Independent RoPE (default type): pair i with i + D/2, angle position * theta^(-2i/D).
inline void reference_rope(std::vector<double>& v, double theta, std::int64_t position) {
  const std::size_t half = v.size() / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * std::pow(theta, -2.0 * static_cast<double>(i) / (2.0 * half));
    const double a = v[i], b = v[i + half];
    v[i] = a * std::cos(angle) - b * std::sin(angle);
    v[i + half] = b * std::cos(angle) + a * std::sin(angle);
  }
}

inline void reference_rms(std::vector<double>& v, const std::vector<float>& weight, double eps) {
  double mean_square = 0.0;
  for (double x : v) mean_square += x * x / static_cast<double>(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = v[i] / std::sqrt(mean_square + eps) * weight[i];
}

// Straight from the paper's equations, with explicit index arithmetic on the row-major weights.
// heads: [Hq][D] query vectors of one token.
inline std::vector<double> reference_query(const seer::DecodeGateConfig& config, const seer::DecodeGateWeights& w,
                                           const std::vector<std::vector<double>>& heads, std::int64_t kv_heads,
                                           std::int64_t c, std::int64_t position) {
  const std::int64_t q_heads = static_cast<std::int64_t>(heads.size()), g = q_heads / kv_heads;
  const std::int64_t dim = static_cast<std::int64_t>(heads[0].size()), dg = config.hidden_size;
  std::vector<double> u(static_cast<std::size_t>(dg), 0.0);
  if (config.query_head_pooling == seer::QueryHeadPooling::projection) {
    for (std::int64_t k = 0; k < g; ++k)
      for (std::int64_t i = 0; i < dim; ++i)
        for (std::int64_t o = 0; o < dg; ++o)
          u[o] += heads[c * g + k][i] * w.q_projection[((c * g + k) * dim + i) * dg + o];
  } else {
    std::vector<double> mean(static_cast<std::size_t>(dim), 0.0);
    for (std::int64_t k = 0; k < g; ++k)
      for (std::int64_t i = 0; i < dim; ++i) mean[i] += heads[c * g + k][i] / static_cast<double>(g);
    if (config.query_head_pooling == seer::QueryHeadPooling::average) {
      u = mean;
    } else {
      for (std::int64_t i = 0; i < dim; ++i)
        for (std::int64_t o = 0; o < dg; ++o) u[o] += mean[i] * w.q_projection[(c * dim + i) * dg + o];
    }
  }
  if (config.use_qk_norm) reference_rms(u, w.q_norm, config.rms_norm_epsilon);
  if (config.use_rope) reference_rope(u, config.rope.theta, position);
  return u;
}

// tokens: the key vectors [count][D] of one block of one KV head.
inline std::vector<double> reference_key(const seer::DecodeGateConfig& config, const seer::DecodeGateWeights& w,
                                         const std::vector<std::vector<double>>& tokens, std::int64_t c,
                                         std::int64_t position) {
  const std::int64_t dim = static_cast<std::int64_t>(tokens[0].size()), dg = config.hidden_size;
  std::vector<double> pooled(static_cast<std::size_t>(3 * dim));
  for (std::int64_t d = 0; d < dim; ++d) {
    double hi = -std::numeric_limits<double>::infinity(), lo = std::numeric_limits<double>::infinity(), sum = 0.0;
    for (const auto& t : tokens) {
      hi = std::max(hi, t[d]);
      lo = std::min(lo, t[d]);
      sum += t[d];
    }
    pooled[d] = hi;
    pooled[dim + d] = lo;
    pooled[2 * dim + d] = sum / static_cast<double>(tokens.size());
  }
  std::vector<double> v(static_cast<std::size_t>(dg), 0.0);
  for (std::int64_t i = 0; i < 3 * dim; ++i)
    for (std::int64_t o = 0; o < dg; ++o) v[o] += pooled[i] * w.k_projection[(c * 3 * dim + i) * dg + o];
  if (config.use_qk_norm) reference_rms(v, w.k_norm, config.rms_norm_epsilon);
  if (config.use_rope) reference_rope(v, config.rope.theta, position);
  return v;
}

}  // namespace seer_test
