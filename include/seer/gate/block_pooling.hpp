// Pooling of one head's vectors over blocks of tokens along the sequence, as a gate's first step.
//
// A sequence of length L is cut into ceil(L / B) blocks of B tokens from token 0. Each block is
// reduced per component by max, min or mean; a partial last block is reduced over its valid tokens
// only and its mean divides by the valid count (PyTorch's ceil_mode pooling with no padding, which
// the SeerAttention gates use). Inputs of any element type are read as double and pooled in double
// (the original pools in the model's bf16).
//
// Several poolings of one block can be concatenated into one feature vector: with pools {max, min,
// mean} the feature of block n is [max | min | mean], 3 * head_dim values, the layout of the
// SeerAttention gate types ("Kmaxminavg").
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"

namespace seer {

enum class BlockPooling { max, min, mean };

inline const char* block_pooling_name(BlockPooling pooling) {
  switch (pooling) {
    case BlockPooling::max:
      return "max";
    case BlockPooling::min:
      return "min";
    case BlockPooling::mean:
      return "mean";
  }
  return "unknown";
}

namespace detail {

// Pools tokens [first, first + count) of (sequence b, head h) into out[0, head_dim). count >= 1;
// arguments are trusted (the public functions validate them).
template <class T>
void pool_tokens(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h, std::int64_t first,
                 std::int64_t count, BlockPooling pooling, double* out) {
  const std::int64_t dim = batch.head_dim;
  const T* row = batch.vector(b, first, h);
  for (std::int64_t d = 0; d < dim; ++d) out[d] = static_cast<double>(to_float(row[d * batch.dim_stride]));
  for (std::int64_t t = 1; t < count; ++t) {
    row = batch.vector(b, first + t, h);
    for (std::int64_t d = 0; d < dim; ++d) {
      const double x = static_cast<double>(to_float(row[d * batch.dim_stride]));
      switch (pooling) {
        case BlockPooling::max:
          out[d] = std::max(out[d], x);
          break;
        case BlockPooling::min:
          out[d] = std::min(out[d], x);
          break;
        case BlockPooling::mean:
          out[d] += x;
          break;
      }
    }
  }
  if (pooling == BlockPooling::mean)
    for (std::int64_t d = 0; d < dim; ++d) out[d] /= static_cast<double>(count);
}

// Features of every block of (b, h): out is [ceil(length / block_size), pools.size() * head_dim].
template <class T>
void pool_blocks_into(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h, std::int64_t block_size,
                      const std::vector<BlockPooling>& pools, double* out) {
  const std::int64_t length = batch.length(b);
  const std::int64_t blocks = BlockGeometry::ceil_div(length, block_size);
  const std::int64_t width = static_cast<std::int64_t>(pools.size()) * batch.head_dim;
  for (std::int64_t n = 0; n < blocks; ++n) {
    const std::int64_t first = n * block_size;
    const std::int64_t count = std::min(block_size, length - first);
    for (std::size_t p = 0; p < pools.size(); ++p)
      pool_tokens(batch, b, h, first, count, pools[p], out + n * width + static_cast<std::int64_t>(p) * batch.head_dim);
  }
}

}  // namespace detail

// Checks that (b, h) and block_size address a valid part of a host batch.
template <class T>
void validate_pooling_arguments(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h,
                                std::int64_t block_size, const char* name) {
  static_assert(is_element_type_v<T>, "pooling reads float, double, half or bfloat16");
  require(block_size > 0, "block_size", "is ", block_size, ", expected > 0");
  require(b >= 0 && b < batch.batch, "b", "sequence ", b, " is outside [0, ", batch.batch, ")");
  require(h >= 0 && h < batch.heads, "h", "head ", h, " is outside [0, ", batch.heads, ")");
  require(batch.head_dim > 0, name, "head dim is ", batch.head_dim, ", expected > 0");
  validate_host_lengths(batch, name);
  require(batch.data != nullptr || batch.length(b) == 0, name, "data pointer is null but sequence ", b, " has ",
          batch.length(b), " tokens");
}

// The pooled features of every block of sequence b, head h: [ceil(length / block_size), pools.size() *
// head_dim], row-major, the poolings concatenated in the order given. Empty for an empty sequence.
template <class T>
std::vector<double> pool_blocks(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h,
                                std::int64_t block_size, const std::vector<BlockPooling>& pools) {
  validate_pooling_arguments(batch, b, h, block_size, "batch");
  require(!pools.empty(), "pools", "is empty; expected at least one pooling");
  const std::int64_t blocks = BlockGeometry::ceil_div(batch.length(b), block_size);
  std::vector<double> out(static_cast<std::size_t>(blocks * static_cast<std::int64_t>(pools.size()) * batch.head_dim));
  detail::pool_blocks_into(batch, b, h, block_size, pools, out.data());
  return out;
}

template <class T>
std::vector<double> pool_blocks(const SequenceBatch<const T>& batch, std::int64_t b, std::int64_t h,
                                std::int64_t block_size, BlockPooling pooling) {
  return pool_blocks(batch, b, h, block_size, std::vector<BlockPooling>{pooling});
}

}  // namespace seer
