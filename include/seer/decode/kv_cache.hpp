// KvCacheView: the key/value cache that decoding reads, contiguous or paged, in one view.
//
// Contiguous: keys/values are [batch, capacity, kv_heads, head_dim] (FlashAttention's
// flash_attn_with_kvcache layout) and sequence b holds lengths[b] tokens, so sequences of different
// lengths share one batch.
// Paged: keys/values are a pool [pages, page_size, kv_heads, head_dim] and token t of sequence b lives
// in page page_table[b * pages_per_sequence + t / page_size] at slot t % page_size (vLLM's and
// FlashInfer's block tables). A contiguous cache is the paged one whose page b is sequence b, so one
// offset() serves both and every executor handles both layouts with the same code.
//
// Keys and values share one layout (separate pointers). `lengths` and `page_table` may point to device
// memory: GPU executors read them only on the device; host executors call validate_host_kv_cache().
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"
#include "seer/core/tensor_view.hpp"

namespace seer {

template <class T>
struct KvCacheView {
  T* keys = nullptr;
  T* values = nullptr;
  std::int64_t batch = 0;
  std::int64_t heads = 0;  // KV heads
  std::int64_t head_dim = 0;
  std::int64_t page_stride = 0;              // elements between pages (contiguous: between sequences)
  std::int64_t token_stride = 0;             // elements between consecutive tokens of a page
  std::int64_t head_stride = 0;              // elements between heads; the dim stride is 1
  std::int64_t page_size = 0;                // tokens per page (contiguous: the capacity of a sequence)
  std::int64_t page_count = 0;               // pages in the pool (contiguous: batch)
  const std::int32_t* page_table = nullptr;  // paged: [batch, pages_per_sequence]; null when contiguous
  std::int64_t pages_per_sequence = 1;
  const std::int32_t* lengths = nullptr;  // [batch] tokens cached per sequence, new tokens included
  std::int64_t max_length = 0;            // host-known upper bound on lengths[b]

  SEER_HOST_DEVICE bool is_paged() const { return page_table != nullptr; }
  SEER_HOST_DEVICE std::int64_t length(std::int64_t b) const { return lengths[b]; }
  SEER_HOST_DEVICE std::int64_t capacity() const { return is_paged() ? pages_per_sequence * page_size : page_size; }

  // Element offset of token t, head h, dimension 0 of sequence b.
  SEER_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t t, std::int64_t h) const {
    const std::int64_t page = is_paged() ? page_table[b * pages_per_sequence + t / page_size] : b;
    const std::int64_t slot = is_paged() ? t % page_size : t;
    return page * page_stride + slot * token_stride + h * head_stride;
  }
  SEER_HOST_DEVICE T* key(std::int64_t b, std::int64_t t, std::int64_t h) const { return keys + offset(b, t, h); }
  SEER_HOST_DEVICE T* value(std::int64_t b, std::int64_t t, std::int64_t h) const { return values + offset(b, t, h); }

  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator KvCacheView<const U>() const {
    return {keys,        values,    batch,      heads,      head_dim,           page_stride, token_stride,
            head_stride, page_size, page_count, page_table, pages_per_sequence, lengths,     max_length};
  }
};

namespace detail {
template <class T>
void fill_kv_layout(KvCacheView<T>& cache, const TensorView<T, 4>& keys, const TensorView<T, 4>& values) {
  validate_view(keys, "keys");
  validate_view(values, "values");
  for (int axis = 0; axis < 4; ++axis) {
    require(keys.extent[axis] == values.extent[axis], "values", "extent ", axis, " is ", values.extent[axis],
            " but keys have ", keys.extent[axis]);
    require(keys.stride[axis] == values.stride[axis], "values", "stride ", axis, " is ", values.stride[axis],
            " but keys have ", keys.stride[axis], "; keys and values must share one layout");
  }
  require(keys.stride[3] == 1, "keys", "dim stride is ", keys.stride[3], ", expected 1");
  cache.keys = keys.data;
  cache.values = values.data;
  cache.page_count = keys.extent[0];
  cache.page_size = keys.extent[1];
  cache.heads = keys.extent[2];
  cache.head_dim = keys.extent[3];
  cache.page_stride = keys.stride[0];
  cache.token_stride = keys.stride[1];
  cache.head_stride = keys.stride[2];
}
}  // namespace detail

// keys/values [batch, capacity, kv_heads, head_dim]; lengths[batch] (host or device); max_length bounds them.
template <class T>
KvCacheView<T> contiguous_kv_cache(const TensorView<T, 4>& keys, const TensorView<T, 4>& values,
                                   const std::int32_t* lengths, std::int64_t max_length) {
  KvCacheView<T> cache;
  detail::fill_kv_layout(cache, keys, values);
  require(lengths != nullptr, "lengths", "is null; expected one cache length per sequence");
  require(max_length >= 0 && max_length <= cache.page_size, "max_length", "is ", max_length, ", expected in [0, ",
          cache.page_size, "] (the cache capacity)");
  cache.batch = cache.page_count;
  cache.lengths = lengths;
  cache.max_length = max_length;
  return cache;
}

// keys/values [pages, page_size, kv_heads, head_dim]; page_table [batch, pages_per_sequence].
template <class T>
KvCacheView<T> paged_kv_cache(const TensorView<T, 4>& keys, const TensorView<T, 4>& values,
                              const std::int32_t* page_table, std::int64_t batch, std::int64_t pages_per_sequence,
                              const std::int32_t* lengths, std::int64_t max_length) {
  KvCacheView<T> cache;
  detail::fill_kv_layout(cache, keys, values);
  require(page_table != nullptr, "page_table", "is null; a paged cache needs a page table");
  require(lengths != nullptr, "lengths", "is null; expected one cache length per sequence");
  require(batch >= 0, "batch", "is ", batch, ", expected >= 0");
  require(cache.page_size > 0, "keys", "page size is 0");
  require(pages_per_sequence > 0, "pages_per_sequence", "is ", pages_per_sequence, ", expected > 0");
  require(max_length >= 0 && max_length <= pages_per_sequence * cache.page_size, "max_length", "is ", max_length,
          ", expected in [0, ", pages_per_sequence * cache.page_size, "] (pages_per_sequence x page_size)");
  cache.batch = batch;
  cache.page_table = page_table;
  cache.pages_per_sequence = pages_per_sequence;
  cache.lengths = lengths;
  cache.max_length = max_length;
  return cache;
}

// Host check of lengths and page table (both must be host memory here).
template <class T>
void validate_host_kv_cache(const KvCacheView<T>& cache) {
  for (std::int64_t b = 0; b < cache.batch; ++b) {
    const std::int64_t length = cache.lengths[b];
    require(length >= 0 && length <= cache.max_length, "lengths", "sequence ", b, " has ", length,
            " cached tokens, expected in [0, ", cache.max_length, "]");
    if (!cache.is_paged()) continue;
    const std::int64_t used_pages = (length + cache.page_size - 1) / cache.page_size;
    for (std::int64_t p = 0; p < used_pages; ++p) {
      const std::int64_t page = cache.page_table[b * cache.pages_per_sequence + p];
      require(page >= 0 && page < cache.page_count, "page_table", "sequence ", b, " page ", p, " is ", page,
              ", expected in [0, ", cache.page_count, ")");
    }
  }
}

}  // namespace seer
