// RoPE with the gate's pooling fused in, host side: for engines that rotate q and k before attention
// (their own pass, or this one), the gate's pooled block features come out of that pass, so the gate
// does not read q and k a second time. Then gate_features_from_pooled and select_blocks as usual:
//
//   DeviceRotaryEmbedding model_rope(rotary_embedding);   // the MODEL's RoPE (upload once)
//   rope_and_pool(model_rope, gate, plan, q, sequences, true, pooled_query, stream);   // q rotated in place
//   rope_and_pool(model_rope, gate, plan, k, sequences, false, pooled_key, stream);    // k rotated in place
//   auto features = gate_features_from_pooled(gate, plan, {pooled_query, pooled_key}, sequences, workspace, stream);
//   auto blocks = select_blocks(plan, features, sequences, policy, forced, output, workspace, stream);
//   block_sparse_attention(q, k, v, &blocks, ...);   // q and k now hold the rotated vectors
//
// `pooled` = nullptr rotates without pooling (the plain RoPE pass; benchmarks compare the two).
// Kernel and layout: seer/gpu/rope_and_pool_kernel.hpp.
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gate/rotary_embedding.hpp"
#include "seer/gpu/device_upload.hpp"
#include "seer/gpu/gate_selection.hpp"
#include "seer/gpu/prefill_arguments.hpp"
#include "seer/gpu/rope_and_pool_kernel.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

// The model's rotary embedding in device memory (inverse frequencies in double, as the CPU table).
class DeviceRotaryEmbedding {
 public:
  explicit DeviceRotaryEmbedding(const RotaryEmbedding& rope)
      : dim_(rope.dim()), attention_factor_(rope.attention_factor()) {
    inverse_frequencies_ = upload_to_device(rope.inverse_frequencies(), "DeviceRotaryEmbedding");
  }
  DeviceRotaryEmbedding(const DeviceRotaryEmbedding&) = delete;
  DeviceRotaryEmbedding& operator=(const DeviceRotaryEmbedding&) = delete;
  ~DeviceRotaryEmbedding() { vendor::device_release(inverse_frequencies_); }

  std::int64_t dim() const { return dim_; }
  double attention_factor() const { return attention_factor_; }
  const double* inverse_frequencies() const { return inverse_frequencies_; }

 private:
  std::int64_t dim_;
  double attention_factor_;
  double* inverse_frequencies_ = nullptr;
};

// Rotates `tensor` (q when is_query, else k; [.., heads, D], device memory, dim stride 1, 16-byte
// aligned vectors) in place with the model's RoPE and, when `pooled` is not null, writes the gate's
// poolings of its pre-RoPE vectors there: [batch, heads, max blocks of the plan's side, |pools| * D] fp32,
// 16-byte aligned, the layout of PooledBlockFeatures. The sequence lengths and positions are those of
// `sequences` (gate_sequences(q, k, gate.block_size(), causal)). Enqueued on `stream`, no synchronisation.
template <class T>
void rope_and_pool(const DeviceRotaryEmbedding& model_rope, const DeviceLearnedGate& gate,
                   const GateSelectionPlan& plan, SequenceBatch<T> tensor, const GateSequences& sequences,
                   bool is_query, float* pooled, vendor::stream_t stream) {
  static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "rope_and_pool rotates seer::bfloat16 or seer::half elements");
  const char* name = is_query ? "q" : "k";
  const std::int64_t heads = is_query ? gate.num_q_heads() : gate.num_kv_heads();
  require(tensor.heads == heads, name, "has ", tensor.heads, " heads, expected the gate's ", heads);
  require(tensor.head_dim == gate.head_dim(), name, "head dim is ", tensor.head_dim, ", expected the gate's ",
          gate.head_dim());
  require(tensor.head_dim == 64 || tensor.head_dim == 128, name, "head dim is ", tensor.head_dim,
          ", the fused RoPE + pooling pass takes 64 or 128");
  require(model_rope.dim() == tensor.head_dim, "model_rope", "rotates ", model_rope.dim(),
          " dimensions, the heads have ", tensor.head_dim, " (partial rotary is not supported)");
  require(tensor.batch <= 65535, name, "batch is ", tensor.batch, ", at most 65535 sequences per call");
  require(tensor.batch == sequences.batch, name, "batch is ", tensor.batch, ", the sequences' is ", sequences.batch);
  require(tensor.max_length <= (is_query ? sequences.q_max_length : sequences.k_max_length), name, "max_length ",
          tensor.max_length, " exceeds the sequences'");
  require(tensor.data != nullptr || tensor.batch == 0, name, "data pointer is null");
  require_prefill_vectors(tensor, name);
  require(reinterpret_cast<std::uintptr_t>(pooled) % 16 == 0, "pooled", "must be 16-byte aligned");
  detail::validate_sequences(plan, sequences);
  const std::int64_t shared_bytes = rope_pool_shared_bytes(sequences.block_size, tensor.head_dim);
  require(shared_bytes <= 48 * 1024, "gate", "block size ", sequences.block_size, " with head dim ", tensor.head_dim,
          " needs ", shared_bytes, " bytes for the RoPE table, at most 49152 fit");
  const std::int64_t max_blocks = is_query ? plan.max_query_blocks() : plan.max_key_blocks();
  if (tensor.batch == 0 || max_blocks == 0) return;

  RopePoolParams<T> params;
  params.tensor = tensor;
  params.sequences = sequences;
  params.is_query = is_query;
  const auto& pools = is_query ? gate.query_pools() : gate.key_pools();
  for (std::size_t p = 0; p < pools.size(); ++p) params.pools[p] = pools[p];
  params.pool_count = static_cast<int>(pools.size());
  params.pooled = pooled;
  params.max_blocks = max_blocks;
  params.inverse_frequencies = model_rope.inverse_frequencies();
  params.attention_factor = model_rope.attention_factor();
  const dim3 grid(static_cast<unsigned>(max_blocks), static_cast<unsigned>(tensor.batch));
  // The running statistics the pools need: the mean alone (Qavg queries) or all three.
  using Sums = detail::PoolingSums;
  int keep = 0;
  for (int p = 0; p < params.pool_count; ++p) keep |= Sums::keep_for(params.pools[p]);
  const auto shared = static_cast<std::size_t>(shared_bytes);
  if (pooled == nullptr) {
    rope_and_pool_kernel<T, 0><<<grid, kRopePoolThreads, shared, stream>>>(params);
  } else if (keep == Sums::kKeepSum) {
    rope_and_pool_kernel<T, Sums::kKeepSum><<<grid, kRopePoolThreads, shared, stream>>>(params);
  } else {
    rope_and_pool_kernel<T, Sums::kKeepAll><<<grid, kRopePoolThreads, shared, stream>>>(params);
  }
  vendor::check_last_launch(is_query ? "rope_and_pool_kernel launch (q)" : "rope_and_pool_kernel launch (k)");
}

}  // namespace seer::gpu
