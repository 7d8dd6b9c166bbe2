// KCompressionCache: the decode gate's per-layer cache of compressed key blocks (SeerAttention-R §3.2).
//
// Row (b, j, h) holds the DecodeGate's compressed key [dg] of complete block j of sequence b, KV head
// h: [max | min | mean] of the block's pre-RoPE keys -> linear -> RMSNorm -> RoPE at j * block_size.
// Rows are [batch, max_blocks, kv_heads, dg] in `Storage` (float by default; the original stores the
// model dtype). A row is written once, when its block completes, and never changes afterwards, so a
// decode step costs one block's pooling per 64 tokens. Memory per token: dg / B values against the KV
// cache's 2 * D, i.e. 1/128 of the KV cache at B = 64, dg = D and Storage = the KV element type.
//
// Only complete blocks have rows. The newest, partial block is never scored (the gate's training
// convention, gate/decode_gate.hpp) and is always read by the decode step, so it needs no row.
//
// No remainder buffer. The original keeps the pre-RoPE keys of the current partial block in a
// separate 64-token buffer, because its KV cache holds post-RoPE keys and the pre-RoPE values would
// otherwise be gone when the block completes. Here the keys are read back from the caller's cache
// view at completion time: every key of the block is still in the KV cache, so nothing is duplicated.
// Two cases:
//   - the view holds pre-RoPE keys (an engine that ropes K on the fly, or a separate pre-RoPE key
//     store): pass it with applied_rope = nullptr;
//   - the view holds post-RoPE keys (vLLM's and FlashInfer's convention): pass the RoPE the engine
//     applied. RoPE is a rotation times a factor a, so pre = R(-t) post / a, and the cache undoes it
//     token by token before pooling (seer's double-precision RoPE). The recovered keys differ from
//     the pre-RoPE keys by the rounding of the stored values and by any difference between the
//     engine's RoPE tables and seer's: float32 angle tables, as transformers builds them, are off by
//     up to ~1e-2 rad near position 1e5 (rotary_embedding.hpp). Prefer pre-RoPE keys where an engine
//     has them (the original keeps them for exactly this reason).
// Engines with other key stores can pool themselves and call write_block().
//
// Usage per layer: prefill() after the prompt is in the KV cache (a prompt shorter than one block has
// no complete block and writes nothing), then update() after every decode step has appended its 1..8
// tokens (any count per sequence, any lengths): it compresses every block that completed since the
// last call, at its block start, whatever step completed it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/gate/rotary_embedding.hpp"

namespace seer {

template <class Storage = float>
class KCompressionCache {
  static_assert(is_element_type_v<Storage>, "compressed keys are stored as float, double, half or bfloat16");

 public:
  KCompressionCache(std::int64_t batch, std::int64_t max_blocks, std::int64_t kv_heads, std::int64_t hidden_size)
      : batch_(batch), max_blocks_(max_blocks), kv_heads_(kv_heads), hidden_size_(hidden_size) {
    require(batch >= 0, "batch", "is ", batch, ", expected >= 0");
    require(max_blocks >= 0, "max_blocks", "is ", max_blocks, ", expected >= 0");
    require(kv_heads > 0, "kv_heads", "is ", kv_heads, ", expected > 0");
    require(hidden_size > 0, "hidden_size", "is ", hidden_size, ", expected > 0");
    rows_.assign(static_cast<std::size_t>(batch * max_blocks * kv_heads * hidden_size), from_float<Storage>(0.0f));
    completed_.assign(static_cast<std::size_t>(batch), 0);
  }

  // A cache sized for a KV cache: max_blocks = capacity / block_size (whole blocks only have rows).
  template <class T>
  static KCompressionCache for_kv_cache(const KvCacheView<T>& cache, const DecodeGate& gate) {
    return KCompressionCache(cache.batch, cache.capacity() / gate.block_size(), gate.num_kv_heads(),
                             gate.hidden_size());
  }

  std::int64_t batch() const { return batch_; }
  std::int64_t max_blocks() const { return max_blocks_; }
  std::int64_t kv_heads() const { return kv_heads_; }
  std::int64_t hidden_size() const { return hidden_size_; }

  // Rows written for sequence b: blocks [0, completed_blocks(b)).
  std::int64_t completed_blocks(std::int64_t b) const {
    check_sequence(b);
    return completed_[static_cast<std::size_t>(b)];
  }

  // The compressed key [dg] of block j, KV head h of sequence b (j < completed_blocks(b)).
  const Storage* row(std::int64_t b, std::int64_t j, std::int64_t h) const {
    check_sequence(b);
    require(j >= 0 && j < completed_[static_cast<std::size_t>(b)], "j", "block ", j, " of sequence ", b,
            " has no compressed row; completed blocks are [0, ", completed_[static_cast<std::size_t>(b)], ")");
    require(h >= 0 && h < kv_heads_, "h", "is ", h, ", expected in [0, ", kv_heads_, ")");
    return rows_.data() + offset(b, j, h);
  }
  // Elements between the rows of consecutive blocks of one (sequence, head).
  std::int64_t block_stride() const { return kv_heads_ * hidden_size_; }

  // All rows, [batch, max_blocks, kv_heads, dg] (unwritten rows are 0), e.g. to copy to a device.
  TensorView<const Storage, 4> rows() const {
    return TensorView<const Storage, 4>::contiguous(rows_.data(), {batch_, max_blocks_, kv_heads_, hidden_size_});
  }

  // Bytes held: the rows plus the per-sequence block counters.
  std::int64_t memory_bytes() const {
    return static_cast<std::int64_t>(rows_.size() * sizeof(Storage) + completed_.size() * sizeof(std::int64_t));
  }

  // Forgets sequence b (a new sequence takes its slot); the next update() compresses its blocks from 0.
  void reset_sequence(std::int64_t b) {
    check_sequence(b);
    completed_[static_cast<std::size_t>(b)] = 0;
  }
  void reset() { std::fill(completed_.begin(), completed_.end(), 0); }

  // Compresses every complete block of every sequence from scratch (after a prompt's prefill).
  template <class T>
  void prefill(const KvCacheView<T>& keys, const DecodeGate& gate, const RotaryEmbedding* applied_rope = nullptr,
               int threads = 0) {
    validate(keys, gate);  // before touching the state, so a bad call leaves the cache as it was
    reset();
    update(keys, gate, applied_rope, threads);
  }

  // Compresses the blocks of each sequence that became complete since the last call: blocks
  // [completed_blocks(b), lengths[b] / block_size). lengths must not shrink (reset_sequence() first).
  // applied_rope: null when `keys` are pre-RoPE; the RoPE applied to them when they are post-RoPE.
  template <class T>
  void update(const KvCacheView<T>& keys, const DecodeGate& gate, const RotaryEmbedding* applied_rope = nullptr,
              int threads = 0) {
    validate(keys, gate);
    if (applied_rope != nullptr)
      require(applied_rope->dim() == keys.head_dim, "applied_rope", "rotates ", applied_rope->dim(),
              " dimensions, but the cached keys have head_dim ", keys.head_dim);
    const std::int64_t block = gate.block_size();
    std::vector<std::int64_t> target(static_cast<std::size_t>(batch_));
    for (std::int64_t b = 0; b < batch_; ++b) {
      target[static_cast<std::size_t>(b)] = keys.length(b) / block;
      require(target[static_cast<std::size_t>(b)] >= completed_[static_cast<std::size_t>(b)], "keys", "sequence ", b,
              " holds ", keys.length(b), " tokens (", target[static_cast<std::size_t>(b)],
              " complete blocks) but the cache already compressed ", completed_[static_cast<std::size_t>(b)],
              " blocks; call reset_sequence(", b, ") when a slot starts a new sequence");
      require(target[static_cast<std::size_t>(b)] <= max_blocks_, "keys", "sequence ", b, " has ",
              target[static_cast<std::size_t>(b)], " complete blocks, above the cache's max_blocks ", max_blocks_);
    }
    const KvCacheView<const T> view = keys;
    parallel_for(batch_ * kv_heads_, threads, [&](std::int64_t unit) {
      const std::int64_t b = unit / kv_heads_, h = unit % kv_heads_;
      std::vector<double> pooled(static_cast<std::size_t>(3 * keys.head_dim));
      std::vector<double> token(static_cast<std::size_t>(keys.head_dim));
      std::vector<double> compressed(static_cast<std::size_t>(hidden_size_));
      for (std::int64_t j = completed_[static_cast<std::size_t>(b)]; j < target[static_cast<std::size_t>(b)]; ++j) {
        pool_block(view, b, j * block, block, h, applied_rope, token.data(), pooled.data());
        gate.compress_key_block(pooled.data(), h, j, compressed.data());
        store(b, j, h, compressed.data());
      }
    });
    for (std::int64_t b = 0; b < batch_; ++b)
      completed_[static_cast<std::size_t>(b)] = target[static_cast<std::size_t>(b)];
  }

  // Writes block j of sequence b from pooled pre-RoPE keys [kv_heads, 3D] ([max | min | mean] per
  // head), for engines that pool keys themselves. Blocks must arrive in order: j == completed_blocks(b).
  void write_block(std::int64_t b, std::int64_t j, const double* pooled, const DecodeGate& gate) {
    check_sequence(b);
    check_gate(gate);
    require(pooled != nullptr, "pooled", "is null");
    require(j == completed_[static_cast<std::size_t>(b)], "j", "is ", j, ", expected the next block of sequence ", b,
            " (", completed_[static_cast<std::size_t>(b)], ")");
    require(j < max_blocks_, "j", "is ", j, ", above the cache's max_blocks ", max_blocks_);
    std::vector<double> compressed(static_cast<std::size_t>(hidden_size_));
    for (std::int64_t h = 0; h < kv_heads_; ++h) {
      gate.compress_key_block(pooled + h * gate.key_input_width(), h, j, compressed.data());
      store(b, j, h, compressed.data());
    }
    ++completed_[static_cast<std::size_t>(b)];
  }

  // [max | min | mean] of tokens [first, first + count) of (b, h) into pooled [3D], reading keys as
  // double (token is scratch [D]); undoes `applied_rope` first when it is not null.
  template <class T>
  static void pool_block(const KvCacheView<const T>& keys, std::int64_t b, std::int64_t first, std::int64_t count,
                         std::int64_t h, const RotaryEmbedding* applied_rope, double* token, double* pooled) {
    const std::int64_t dim = keys.head_dim;
    double* maximum = pooled;
    double* minimum = pooled + dim;
    double* mean = pooled + 2 * dim;
    const double unscale =
        applied_rope != nullptr ? 1.0 / (applied_rope->attention_factor() * applied_rope->attention_factor()) : 1.0;
    for (std::int64_t t = 0; t < count; ++t) {
      const T* key = keys.key(b, first + t, h);
      for (std::int64_t d = 0; d < dim; ++d) token[d] = static_cast<double>(to_float(key[d]));
      if (applied_rope != nullptr) {
        // apply(-p) multiplies by a R(-p); with post = a R(p) pre that gives a^2 pre.
        applied_rope->apply(token, -(first + t));
        for (std::int64_t d = 0; d < dim; ++d) token[d] *= unscale;
      }
      for (std::int64_t d = 0; d < dim; ++d) {
        maximum[d] = t == 0 ? token[d] : std::max(maximum[d], token[d]);
        minimum[d] = t == 0 ? token[d] : std::min(minimum[d], token[d]);
        mean[d] = t == 0 ? token[d] : mean[d] + token[d];
      }
    }
    for (std::int64_t d = 0; d < dim; ++d) mean[d] /= static_cast<double>(count);
  }

 private:
  std::int64_t offset(std::int64_t b, std::int64_t j, std::int64_t h) const {
    return ((b * max_blocks_ + j) * kv_heads_ + h) * hidden_size_;
  }

  void store(std::int64_t b, std::int64_t j, std::int64_t h, const double* values) {
    Storage* destination = rows_.data() + offset(b, j, h);
    for (std::int64_t d = 0; d < hidden_size_; ++d) {
      if constexpr (std::is_same_v<Storage, double>) {
        destination[d] = values[d];
      } else {
        destination[d] = from_float<Storage>(static_cast<float>(values[d]));
      }
    }
  }

  void check_sequence(std::int64_t b) const {
    require(b >= 0 && b < batch_, "b", "is ", b, ", expected in [0, ", batch_, ")");
  }

  void check_gate(const DecodeGate& gate) const {
    require(gate.num_kv_heads() == kv_heads_, "gate", "has ", gate.num_kv_heads(), " KV heads, the cache ", kv_heads_);
    require(gate.hidden_size() == hidden_size_, "gate", "hidden size is ", gate.hidden_size(), ", the cache's ",
            hidden_size_);
  }

  template <class T>
  void validate(const KvCacheView<T>& keys, const DecodeGate& gate) const {
    static_assert(is_element_type_v<std::remove_const_t<T>>, "keys are float, double, half or bfloat16");
    check_gate(gate);
    require(keys.batch == batch_, "keys", "batch is ", keys.batch, ", the cache was built for ", batch_);
    require(keys.heads == kv_heads_, "keys", "has ", keys.heads, " KV heads, the cache ", kv_heads_);
    require(keys.head_dim == gate.head_dim(), "keys", "head_dim is ", keys.head_dim, ", the gate's ", gate.head_dim());
    require(keys.keys != nullptr || batch_ == 0, "keys", "key pointer is null");
    require(keys.lengths != nullptr || batch_ == 0, "keys", "lengths pointer is null");
    validate_host_kv_cache(keys);
  }

  std::int64_t batch_, max_blocks_, kv_heads_, hidden_size_;
  std::vector<Storage> rows_;
  std::vector<std::int64_t> completed_;  // per sequence: blocks [0, completed) have rows
};

}  // namespace seer
