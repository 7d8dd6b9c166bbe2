// The block-sparse prefill kernel: FlashAttention-2-style forward over the kept blocks of a BlockSet.
//
// One CTA computes one 64-row query tile of one query head of one sequence. Its 4 warps own 16 rows
// each; Q fragments stay in registers (head dim <= 128) or are re-read from shared memory (256, where
// registers would spill). Key/value tiles of 64 keys stream through two shared-memory buffers with
// asynchronous copies, the next kept tile in flight while the current one is multiplied. Scores
// and the running output are fp32; the softmax is online, in base 2, with the scale folded into
// one multiply-add.
//
// Masking is decided by seer::BlockGeometry at tile granularity (block_size 64): kept tiles below
// first_masked_key_block(tile) are full and take the mask-free path; the others (causal diagonal,
// ragged tail) test geometry.visible(i, j) per element. A BlockSet with blocks of B = 64 * r keys
// expands each kept block into r tiles; because kept blocks ascend, the tiles that lie beyond the
// visible region (e.g. the part of a diagonal block right of the boundary) form a suffix and end
// the loop.
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gpu/tensor_core.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

// Everything the kernel reads, passed by value. Device pointers only.
template <class T>
struct PrefillParams {
  SequenceBatch<const T> q, k, v;
  SequenceBatch<T> out;
  float* lse = nullptr;  // [Hq, total_q] or null
  std::int64_t lse_head_stride = 0;
  std::int64_t lse_token_stride = 0;
  BlockSetView blocks;      // valid when has_blocks
  bool has_blocks = false;  // false: dense (every visible tile)
  bool causal = true;
  std::int64_t group = 1;            // query heads per KV head
  std::int64_t tiles_per_block = 1;  // BlockSet block_size / tile size
  std::int64_t max_query_tiles = 0;  // grid z extent: tiles of the longest query sequence
  float scale_log2 = 0.0f;           // softmax_scale * log2(e)
};

// Tile shapes and shared-memory budget per head dim. The primary template is the one to
// instantiate; kSupported guards the head dims the fragment loops are written for.
template <class T, int HeadDim>
struct PrefillTraits {
  static constexpr bool kSupported = HeadDim == 64 || HeadDim == 128 || HeadDim == 256;
  static_assert(kSupported, "the prefill kernel supports head dims 64, 128 and 256");
  static constexpr int kTileRows = 64;  // query rows per CTA = keys per tile = smallest block size
  static constexpr int kWarps = 4;
  static constexpr int kRowsPerWarp = kTileRows / kWarps;  // one m16 fragment row block
  static_assert(kRowsPerWarp == 16, "one mma m16 row block per warp");
  static constexpr int kThreads = kWarps * vendor::warp_size;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks
  static constexpr int kTileElements = kTileRows * HeadDim;
  // Q fragments in registers cost HeadDim / 4 registers per thread: affordable up to 128.
  static constexpr bool kQueryInRegisters = HeadDim <= 128;
  static constexpr int kSharedBytes = 5 * kTileElements * static_cast<int>(sizeof(T));  // Q, 2 x K, 2 x V
  static constexpr int kMinBlocksPerMultiprocessor = HeadDim <= 128 ? 2 : 1;
};

namespace detail {

// Asynchronously copies `valid_rows` rows of a 64 x HeadDim tile (zero-filling the rest) into a
// swizzled shared tile. Rows are `row_stride` elements apart in global memory.
template <class Traits, class T>
__device__ inline void load_tile_async(T* shared_tile, const T* first_row, std::int64_t row_stride,
                                       std::int64_t valid_rows) {
  constexpr int kChunks = Traits::kTileRows * Traits::kChunksPerRow;
  for (int index = static_cast<int>(threadIdx.x); index < kChunks; index += Traits::kThreads) {
    const int row = index / Traits::kChunksPerRow;
    const int chunk = index % Traits::kChunksPerRow;
    const bool valid = row < valid_rows;
    const T* source = valid ? first_row + static_cast<std::int64_t>(row) * row_stride + chunk * 8 : first_row;
    vendor::copy_async_16_bytes(shared_tile + swizzled_offset<Traits::kChunksPerRow>(row, chunk), source, valid);
  }
}

// The key tiles one query tile visits: dense (every visible tile) or the kept blocks of its
// BlockSet row, each expanded into tiles_per_block tiles.
struct KeyTileSchedule {
  const std::int32_t* kept_blocks = nullptr;  // null: dense
  std::int64_t steps = 0;
  std::int64_t tiles_per_block = 1;
  std::int64_t visible_tiles = 0;

  // Tile of step s, or -1 when s is past the last useful step.
  __device__ std::int64_t tile(std::int64_t step) const {
    if (step >= steps) return -1;
    const std::int64_t tile =
        kept_blocks == nullptr
            ? step
            : static_cast<std::int64_t>(kept_blocks[step / tiles_per_block]) * tiles_per_block + step % tiles_per_block;
    return tile < visible_tiles ? tile : -1;  // ascending: once past the visible region, always past
  }
};

}  // namespace detail

template <class T, int HeadDim>
__global__ void __launch_bounds__(PrefillTraits<T, HeadDim>::kThreads,
                                  PrefillTraits<T, HeadDim>::kMinBlocksPerMultiprocessor)
    block_sparse_prefill_kernel(const PrefillParams<T> params) {
  using Traits = PrefillTraits<T, HeadDim>;
  using Mma = matrix_multiply_accumulate<T>;
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kKeyFragments = Traits::kTileRows / 8;  // n8 accumulator tiles of the 64-key score row
  constexpr int kDimFragments = HeadDim / 8;            // n8 accumulator tiles of the output row
  constexpr int kDimSteps = HeadDim / 16;               // k16 steps of Q * K^T
  constexpr float kLn2 = 0.6931471805599453f;
  const float negative_infinity = -__int_as_float(0x7f800000);

  const std::int64_t head = blockIdx.x;
  const std::int64_t sequence = blockIdx.y;
  // Highest query tiles first: under causal masking they have the most keys, so the longest CTAs
  // start in the first wave and the short ones fill the tail.
  const std::int64_t query_tile = params.max_query_tiles - 1 - static_cast<std::int64_t>(blockIdx.z);

  const BlockGeometry tiles{params.q.length(sequence), params.k.length(sequence), Traits::kTileRows, params.causal};
  if (query_tile >= tiles.query_blocks()) return;

  const std::int64_t kv_head = head / params.group;
  detail::KeyTileSchedule schedule;
  schedule.visible_tiles = tiles.visible_key_blocks(query_tile);
  if (params.has_blocks) {
    const BlockSetView& blocks = params.blocks;
    const std::int64_t block_head = blocks.heads == params.q.heads ? head : kv_head;
    const std::int64_t row = blocks.row(sequence, block_head, query_tile / params.tiles_per_block);
    const std::int64_t first = blocks.row_offsets[row];
    schedule.kept_blocks = blocks.key_blocks + first;
    schedule.tiles_per_block = params.tiles_per_block;
    schedule.steps = (blocks.row_offsets[row + 1] - first) * params.tiles_per_block;
  } else {
    schedule.steps = schedule.visible_tiles;
  }
  const std::int64_t first_masked_tile = tiles.first_masked_key_block(query_tile);

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  T* shared_query = reinterpret_cast<T*>(shared_bytes);
  // Buffers are addressed arithmetically: an array of two pointers indexed at run time would live in
  // local memory.
  T* const shared_keys = shared_query + Traits::kTileElements;        // buffer b at + 2 * b * tile
  T* const shared_values = shared_query + 2 * Traits::kTileElements;  // buffer b at + 2 * b * tile

  const std::int64_t first_query = query_tile * Traits::kTileRows;
  const std::int64_t query_rows =
      tiles.q_len - first_query < Traits::kTileRows ? tiles.q_len - first_query : Traits::kTileRows;
  const std::int64_t key_length = tiles.k_len;

  detail::load_tile_async<Traits>(shared_query, params.q.vector(sequence, first_query, head), params.q.token_stride,
                                  query_rows);
  vendor::commit_async_copies();

  auto load_key_value_tile = [&](std::int64_t tile, int buffer) {
    const std::int64_t first_key = tile * Traits::kTileRows;
    const std::int64_t rows = key_length - first_key;
    const int offset = 2 * buffer * Traits::kTileElements;
    detail::load_tile_async<Traits>(shared_keys + offset, params.k.vector(sequence, first_key, kv_head),
                                    params.k.token_stride, rows);
    detail::load_tile_async<Traits>(shared_values + offset, params.v.vector(sequence, first_key, kv_head),
                                    params.v.token_stride, rows);
  };

  std::int64_t step = 0;
  std::int64_t tile = schedule.tile(step);
  if (tile >= 0) load_key_value_tile(tile, 0);
  vendor::commit_async_copies();

  const int lane = vendor::lane_index();
  const int warp = vendor::warp_index();
  const int warp_row = warp * Traits::kRowsPerWarp;
  const int group_row = lane / 4;     // g: accumulator rows g and g + 8
  const int group_column = lane % 4;  // t: accumulator columns 2t, 2t + 1

  // ldmatrix row addresses. Q (A operand, x4): matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15).
  const int query_ldm_row = warp_row + (lane % 8) + 8 * ((lane / 8) % 2);
  const int query_ldm_chunk = lane / 16;
  // K (B operand of Q*K^T, x4): keys (0-7 | 8-15) x dims (0-7 | 8-15), ordered b0, b1 of n-tile 0, then n-tile 1.
  const int key_ldm_row = (lane % 8) + 8 * (lane / 16);
  const int key_ldm_chunk = (lane / 8) % 2;
  // V (B operand of P*V, x4 transposed): keys (0-7 | 8-15) x dims (0-7 | 8-15).
  const int value_ldm_row = (lane % 8) + 8 * ((lane / 8) % 2);
  const int value_ldm_chunk = lane / 16;

  vendor::wait_async_copies<1>();  // Q has landed (the first K/V tile may still be in flight)
  __syncthreads();

  std::uint32_t query_fragments[Traits::kQueryInRegisters ? kDimSteps : 1][4];
  if constexpr (Traits::kQueryInRegisters) {
#pragma unroll
    for (int step_d = 0; step_d < kDimSteps; ++step_d)
      load_matrix_x4(query_fragments[step_d],
                     shared_query + swizzled_offset<kChunksPerRow>(query_ldm_row, 2 * step_d + query_ldm_chunk));
  }

  float output[kDimFragments][4];
#pragma unroll
  for (int f = 0; f < kDimFragments; ++f) output[f][0] = output[f][1] = output[f][2] = output[f][3] = 0.0f;
  float running_max[2] = {negative_infinity, negative_infinity};  // scaled log2 units
  float running_sum[2] = {0.0f, 0.0f};                            // this lane's partial sums

  int buffer = 0;
  while (tile >= 0) {
    const std::int64_t next_tile = schedule.tile(step + 1);
    if (next_tile >= 0) load_key_value_tile(next_tile, buffer ^ 1);
    vendor::commit_async_copies();
    vendor::wait_async_copies<1>();  // the current tile has landed
    __syncthreads();

    // ---- scores = Q * K^T (16 rows x 64 keys per warp) ----
    float scores[kKeyFragments][4];
#pragma unroll
    for (int f = 0; f < kKeyFragments; ++f) scores[f][0] = scores[f][1] = scores[f][2] = scores[f][3] = 0.0f;
    const T* keys = shared_keys + 2 * buffer * Traits::kTileElements;
#pragma unroll
    for (int step_d = 0; step_d < kDimSteps; ++step_d) {
      std::uint32_t a[4];
      if constexpr (Traits::kQueryInRegisters) {
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = query_fragments[step_d][r];
      } else {
        load_matrix_x4(a, shared_query + swizzled_offset<kChunksPerRow>(query_ldm_row, 2 * step_d + query_ldm_chunk));
      }
#pragma unroll
      for (int pair = 0; pair < kKeyFragments / 2; ++pair) {
        std::uint32_t b[4];
        load_matrix_x4(b, keys + swizzled_offset<kChunksPerRow>(16 * pair + key_ldm_row, 2 * step_d + key_ldm_chunk));
        Mma::run(scores[2 * pair], a, b[0], b[1]);
        Mma::run(scores[2 * pair + 1], a, b[2], b[3]);
      }
    }

    // ---- mask: only tiles on the causal boundary or the ragged tail ----
    if (tile >= first_masked_tile) {
      const std::int64_t first_key = tile * Traits::kTileRows;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const std::int64_t query_index = first_query + warp_row + group_row + 8 * half;
#pragma unroll
        for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const std::int64_t key_index = first_key + 8 * f + 2 * group_column + c;
            if (!tiles.visible(query_index, key_index)) scores[f][2 * half + c] = negative_infinity;
          }
      }
    }

    // ---- online softmax (base 2; running_max is in units of scale * log2(e)) ----
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = negative_infinity;
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
        tile_max = fmaxf(tile_max, fmaxf(scores[f][2 * half], scores[f][2 * half + 1]));
      tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 1));
      tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 2));
      const float new_max = fmaxf(running_max[half], tile_max * params.scale_log2);
      // A row that has seen only masked keys keeps max -inf; subtracting 0 then keeps every
      // exponent -inf (probability 0) instead of producing -inf - (-inf) = NaN.
      const float base = new_max == negative_infinity ? 0.0f : new_max;
      const float rescale = vendor::fast_exp2(running_max[half] - base);
      running_max[half] = new_max;
      float tile_sum = 0.0f;
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float probability = vendor::fast_exp2(fmaf(scores[f][2 * half + c], params.scale_log2, -base));
          scores[f][2 * half + c] = probability;
          tile_sum += probability;
        }
      running_sum[half] = running_sum[half] * rescale + tile_sum;
#pragma unroll
      for (int f = 0; f < kDimFragments; ++f) {
        output[f][2 * half] *= rescale;
        output[f][2 * half + 1] *= rescale;
      }
    }

    // ---- output += P * V ----
    const T* values = shared_values + 2 * buffer * Traits::kTileElements;
#pragma unroll
    for (int step_k = 0; step_k < Traits::kTileRows / 16; ++step_k) {
      const std::uint32_t a[4] = {
          vendor::element_traits<T>::pack(scores[2 * step_k][0], scores[2 * step_k][1]),
          vendor::element_traits<T>::pack(scores[2 * step_k][2], scores[2 * step_k][3]),
          vendor::element_traits<T>::pack(scores[2 * step_k + 1][0], scores[2 * step_k + 1][1]),
          vendor::element_traits<T>::pack(scores[2 * step_k + 1][2], scores[2 * step_k + 1][3])};
#pragma unroll
      for (int pair = 0; pair < kDimFragments / 2; ++pair) {
        std::uint32_t b[4];
        load_matrix_x4_transposed(
            b, values + swizzled_offset<kChunksPerRow>(16 * step_k + value_ldm_row, 2 * pair + value_ldm_chunk));
        Mma::run(output[2 * pair], a, b[0], b[1]);
        Mma::run(output[2 * pair + 1], a, b[2], b[3]);
      }
    }

    __syncthreads();  // every warp is done with this buffer before the next iteration refills it
    buffer ^= 1;
    ++step;
    tile = next_tile;
  }
  vendor::wait_async_copies<0>();  // no copy may still target shared memory when the CTA exits

  // ---- epilogue: normalise, stage the warp's 16 rows in its own rows of the Q tile, store ----
  float log_sum_exp[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = running_sum[half];
    sum += vendor::shuffle_xor(sum, 1);
    sum += vendor::shuffle_xor(sum, 2);
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row with no visible kept key gives 0
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f) {
      output[f][2 * half] *= inverse;
      output[f][2 * half + 1] *= inverse;
    }
    log_sum_exp[half] = sum > 0.0f ? (running_max[half] + __log2f(sum)) * kLn2 : negative_infinity;
  }

  vendor::sync_warp();  // the warp's own Q rows are no longer read (Q-in-shared-memory variant)
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = warp_row + group_row + 8 * half;
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f) {
      const int column = 8 * f + 2 * group_column;
      *reinterpret_cast<std::uint32_t*>(shared_query + swizzled_offset<kChunksPerRow>(row, column / 8) + column % 8) =
          vendor::element_traits<T>::pack(output[f][2 * half], output[f][2 * half + 1]);
    }
  }
  vendor::sync_warp();

  constexpr int kWarpChunks = Traits::kRowsPerWarp * kChunksPerRow;
#pragma unroll
  for (int index = lane; index < kWarpChunks; index += vendor::warp_size) {
    const int row = warp_row + index / kChunksPerRow;
    const int chunk = index % kChunksPerRow;
    if (row < query_rows) {
      const uint4 data = *reinterpret_cast<const uint4*>(shared_query + swizzled_offset<kChunksPerRow>(row, chunk));
      *reinterpret_cast<uint4*>(params.out.vector(sequence, first_query + row, head) + chunk * 8) = data;
    }
  }

  if (params.lse != nullptr && group_column == 0) {
    const std::int64_t first_token = params.q.start(sequence) + first_query;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp_row + group_row + 8 * half;
      if (row < query_rows)
        params.lse[head * params.lse_head_stride + (first_token + row) * params.lse_token_stride] = log_sum_exp[half];
    }
  }
}

}  // namespace seer::gpu
