// A batch of sequences of per-head vectors: the one input layout every seer entry point takes.
//
// Two physical layouts are accepted, both with arbitrary (64-bit) token/head strides:
//   padded: a [batch, seq, heads, dim] view; every sequence has the same length `seq`.
//   packed: a [total_tokens, heads, dim] view plus cumulative sequence lengths cu_seqlens[batch+1]
//           (the variable-length convention of FlashAttention's *_varlen functions).
// Global token index g of (sequence b, position t) is start(b) + t, where start(b) = b*seq for padded
// and cu_seqlens[b] for packed; per-token outputs such as the log-sum-exp are indexed by it.
//
// cu_seqlens may point to device memory: the GPU backends read it on the device and never on the
// host, so constructing a SequenceBatch never dereferences it. Host executors call
// validate_host_lengths() first.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"
#include "seer/core/tensor_view.hpp"

namespace seer {

template <class T>
struct SequenceBatch {
  T* data = nullptr;
  std::int64_t batch = 0;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t batch_stride = 0;  // padded layout only
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;
  std::int64_t dim_stride = 1;
  std::int64_t max_length = 0;               // padded: the common length; packed: an upper bound
  const std::int32_t* cu_seqlens = nullptr;  // packed layout: [batch + 1]; null for padded
  std::int64_t stored_tokens = 0;            // packed layout: token extent of the underlying view

  SEER_HOST_DEVICE bool is_packed() const { return cu_seqlens != nullptr; }

  SEER_HOST_DEVICE std::int64_t start(std::int64_t b) const { return is_packed() ? cu_seqlens[b] : b * max_length; }

  SEER_HOST_DEVICE std::int64_t length(std::int64_t b) const {
    return is_packed() ? static_cast<std::int64_t>(cu_seqlens[b + 1]) - cu_seqlens[b] : max_length;
  }

  SEER_HOST_DEVICE std::int64_t total_tokens() const { return is_packed() ? cu_seqlens[batch] : batch * max_length; }

  // Element offset of vector (b, t, h), dimension 0.
  SEER_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t t, std::int64_t h) const {
    const std::int64_t base = is_packed() ? static_cast<std::int64_t>(cu_seqlens[b]) * token_stride : b * batch_stride;
    return base + t * token_stride + h * head_stride;
  }

  SEER_HOST_DEVICE T* vector(std::int64_t b, std::int64_t t, std::int64_t h) const { return data + offset(b, t, h); }

  // A template so that SequenceBatch<const T> has no conversion to itself (nvcc warns about one).
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator SequenceBatch<const U>() const {
    return {data,        batch,      heads,      head_dim,   batch_stride, token_stride,
            head_stride, dim_stride, max_length, cu_seqlens, stored_tokens};
  }
};

// [batch, seq, heads, dim]
template <class T>
SequenceBatch<T> padded_batch(const TensorView<T, 4>& view, const char* name) {
  validate_view(view, name);
  SequenceBatch<T> result;
  result.data = view.data;
  result.batch = view.extent[0];
  result.max_length = view.extent[1];
  result.heads = view.extent[2];
  result.head_dim = view.extent[3];
  result.batch_stride = view.stride[0];
  result.token_stride = view.stride[1];
  result.head_stride = view.stride[2];
  result.dim_stride = view.stride[3];
  return result;
}

// [total_tokens, heads, dim] with cu_seqlens[batch + 1] (host or device memory) and an upper bound
// on the sequence lengths (FlashAttention's max_seqlen).
template <class T>
SequenceBatch<T> packed_batch(const TensorView<T, 3>& view, const std::int32_t* cu_seqlens, std::int64_t batch,
                              std::int64_t max_length, const char* name) {
  validate_view(view, name);
  require(cu_seqlens != nullptr, name, "cu_seqlens is null; a packed batch needs cumulative sequence lengths");
  require(batch >= 0, name, "batch is ", batch, ", expected >= 0");
  require(max_length >= 0, name, "max_length is ", max_length, ", expected >= 0");
  SequenceBatch<T> result;
  result.data = view.data;
  result.batch = batch;
  result.max_length = max_length;
  result.heads = view.extent[1];
  result.head_dim = view.extent[2];
  result.token_stride = view.stride[0];
  result.head_stride = view.stride[1];
  result.dim_stride = view.stride[2];
  result.cu_seqlens = cu_seqlens;
  result.stored_tokens = view.extent[0];
  return result;
}

// Host check of the sequence lengths: cu_seqlens starts at 0, never decreases, stays within the
// tokens of the view, and no sequence exceeds max_length. Padded batches always pass.
template <class T>
void validate_host_lengths(const SequenceBatch<T>& batch, const char* name) {
  if (!batch.is_packed()) return;
  require(batch.cu_seqlens[0] == 0, name, "cu_seqlens[0] is ", batch.cu_seqlens[0], ", expected 0");
  for (std::int64_t b = 0; b < batch.batch; ++b) {
    const std::int64_t length = batch.length(b);
    require(length >= 0, name, "cu_seqlens decreases at sequence ", b, " (length ", length, ")");
    require(length <= batch.max_length, name, "sequence ", b, " has length ", length, ", above max_length ",
            batch.max_length);
  }
  require(batch.total_tokens() <= batch.stored_tokens, name, "cu_seqlens ends at ", batch.total_tokens(),
          " tokens but the view holds only ", batch.stored_tokens);
}

// Host-side packed batch: batch and max_length are read off cu_seqlens, which must stay alive.
template <class T>
SequenceBatch<T> packed_batch(const TensorView<T, 3>& view, const std::vector<std::int32_t>& cu_seqlens,
                              const char* name) {
  require(!cu_seqlens.empty(), name, "cu_seqlens is empty; expected batch + 1 entries starting at 0");
  std::int64_t longest = 0;
  for (std::size_t b = 0; b + 1 < cu_seqlens.size(); ++b)
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(cu_seqlens[b + 1]) - cu_seqlens[b]);
  auto result = packed_batch(view, cu_seqlens.data(), static_cast<std::int64_t>(cu_seqlens.size()) - 1, longest, name);
  validate_host_lengths(result, name);
  return result;
}

}  // namespace seer
