// Vendor-neutral pieces of the decode-gate tests (CUDA and HIP): a random DecodeGate and the call that
// reports which argument a call rejects. Host code only.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/gate/decode_gate.hpp"

namespace seer::decode_gate_test {

// The argument a call rejects, "(accepted)", or the text of a backend error.
template <class Call>
std::string rejected_argument(Call&& call) {
  try {
    call();
  } catch (const InvalidArgument& error) {
    return error.argument();
  } catch (const BackendError& error) {
    return std::string("(backend error: ") + error.what() + ")";
  }
  return "(accepted)";
}

struct GateShape {
  std::int64_t q_heads = 8, kv_heads = 2, head_dim = 128, hidden_size = 128, block_size = 64;
  QueryHeadPooling pooling = QueryHeadPooling::projection;
  bool use_qk_norm = true;
  bool use_rope = true;
  RopeConfig rope;  // head_dim is set from head_dim
};

// Weights with unit-variance projections (scaled by 1/sqrt(fan-in)) and norm weights around 1, so the
// logits are O(1) and the softmax is neither flat nor one-hot.
inline DecodeGate random_gate(const GateShape& shape, std::mt19937_64& random) {
  DecodeGateConfig config;
  config.block_size = shape.block_size;
  config.hidden_size = shape.hidden_size;
  config.query_head_pooling = shape.pooling;
  config.use_qk_norm = shape.use_qk_norm;
  config.use_rope = shape.use_rope;
  config.rope = shape.rope;
  config.rope.head_dim = shape.head_dim;
  const DecodeGateLayout layout = DecodeGateLayout::of(config, shape.q_heads, shape.kv_heads, shape.head_dim);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](const std::vector<std::int64_t>& tensor_shape, float scale, float offset) {
    std::vector<float> values(static_cast<std::size_t>(DecodeGateLayout::elements(tensor_shape)));
    for (auto& x : values) x = offset + scale * normal(random);
    return values;
  };
  const auto q_fan_in = static_cast<float>(layout.q_shape.empty() ? 1 : layout.q_shape[layout.q_shape.size() - 2]);
  const auto q_fan = shape.pooling == QueryHeadPooling::projection
                         ? q_fan_in * static_cast<float>(shape.q_heads / shape.kv_heads)
                         : q_fan_in;
  DecodeGateWeights weights;
  weights.q_projection = fill(layout.q_shape, 1.5f / std::sqrt(q_fan), 0.0f);
  weights.k_projection = fill(layout.k_shape, 1.5f / std::sqrt(static_cast<float>(3 * shape.head_dim)), 0.0f);
  weights.q_norm = fill(layout.norm_shape, 0.2f, 1.0f);
  weights.k_norm = fill(layout.norm_shape, 0.2f, 1.0f);
  return DecodeGate(config, shape.q_heads, shape.kv_heads, shape.head_dim, std::move(weights));
}

}  // namespace seer::decode_gate_test
