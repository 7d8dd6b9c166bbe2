// The ground-truth kernels of gate distillation (SeerAttention §4.1 and SeerAttention-R §4.2, the
// definitions of seer/cpu/ground_truth.hpp) on the GPU, in two launches:
//
//   1. A dense FlashAttention forward (the prefill kernel's tiles, fragments and online softmax)
//      that also stores, for every query row i and 64-key tile n it visits, the row's largest scaled
//      logit in that tile, r[i, n] = scale * max_{visible j in tile n} q_i . k_j, in fp32 ("store row
//      max and rescale"; the original stores bf16, whose 0.25 steps at |r| ~ 50 cost up to 19% per
//      entry). It writes O and the natural-log LSE like the prefill kernel.
//   2. A pooling kernel that turns r into probabilities with the row's final LSE,
//      max_{j in tile n} P_i[j] = exp(r[i, n] - LSE_i), pools them into blocks and normalises:
//        two_dimensional_target_kernel: max over the rows of query block m and the tiles of key block
//          n, then divided by the row's sum over key blocks (the prefill gate's target);
//        one_dimensional_target_kernel: per query token, max over the query heads of a KV head's group
//          and the tiles of key block n, over the complete blocks before the token's own, then divided
//          by (sum + 1e-9) (the decode gate's target).
//      exp is monotone, so the maxima are taken over r - LSE and exponentiated once per output.
//
// Why r goes through global memory (a caller-provided workspace, [Hq, key tiles, query tokens]) rather
// than shared memory: a 64-row tile holds 64 * 4 bytes per key tile, 128 KiB at 32k keys, while the
// forward keeps 4 CTAs of 48 KiB on an SM for its speed. Stored with the token index fastest, one
// tile's 64 row maxima are 256 contiguous bytes, so the extra traffic is whole sectors: at 32k,
// H = 32 it is about 1 GiB written and read once, against ~9 TFLOP of attention.
//
// The targets are dense fp32 arrays (the layouts of the original and of the CPU's dense()), zero
// outside the valid entries: 2-D [B, Hq, query blocks of the longest q, key blocks of the longest k];
// 1-D [B, Hkv, longest q, key blocks of the longest k]. Every entry is written.
//
// The forward below is NVIDIA's (mma.sync, ldmatrix); AMD targets use ground_truth_kernel_amd.hpp,
// written over the AMD tile multiply like prefill_kernel_amd.hpp. The pooling kernels are portable
// (vendor layer only) and shared.
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gpu/ground_truth_params.hpp"
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/vendor.hpp"

#if !defined(__HIPCC__)
#include "seer/gpu/prefill_kernel.hpp"
#include "seer/gpu/prefill_kernel_hopper.hpp"
#include "seer/gpu/tensor_core.hpp"
#endif

namespace seer::gpu {

inline constexpr int kGroundTruthPoolingThreads = 256;  // threads of the pooling kernels

namespace ground_truth_detail {

// Complete key blocks strictly before the block holding query token t's key position (the 1-D
// target's row length; the same rule as seer::cpu's complete_blocks_before).
SEER_HOST_DEVICE inline std::int64_t complete_blocks_before(const BlockGeometry& geometry, std::int64_t t) {
  const std::int64_t position = t + geometry.diagonal_offset();
  return position <= 0 ? 0 : position / geometry.block_size;
}

// The CTA's sum of one float per thread (blockDim.x threads, a multiple of the warp width).
__device__ inline float block_sum(float value, float* shared_partials) {
  for (int offset = vendor::warp_size / 2; offset > 0; offset /= 2) value += vendor::shuffle_xor(value, offset);
  const int warps = static_cast<int>(blockDim.x) / vendor::warp_size;
  if (vendor::lane_index() == 0) shared_partials[vendor::warp_index()] = value;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += shared_partials[w];
  return total;
}

}  // namespace ground_truth_detail

#if !defined(__HIPCC__)

// The NVIDIA forward: block_sparse_prefill_kernel's dense path (same traits, tile loads, fragments,
// grid order and online softmax) plus the store of r. Kept as its own kernel so the prefill kernel's
// register allocation and speed stay untouched.
template <class T, int HeadDim>
__global__ void __launch_bounds__(PrefillTraits<T, HeadDim>::kThreads,
                                  PrefillTraits<T, HeadDim>::kMinBlocksPerMultiprocessor)
    ground_truth_forward_kernel(const GroundTruthParams<T> ground_truth) {
  using Traits = PrefillTraits<T, HeadDim>;
  using Mma = matrix_multiply_accumulate<T>;
  const PrefillParams<T>& params = ground_truth.attention;
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kRowBlocks = Traits::kRowBlocks;
  constexpr int kKeyFragments = Traits::kTileRows / 8;
  constexpr int kDimFragments = HeadDim / 8;
  constexpr int kDimSteps = HeadDim / 16;
  constexpr float kLn2 = 0.6931471805599453f;
  const float negative_infinity = -__int_as_float(0x7f800000);

  // The prefill kernel's grid (seer/gpu/prefill_schedule.hpp); dense: every visible key tile.
  detail::PrefillCta cta;
  if (!detail::head_grouped_prefill_cta(params.q.heads, params.max_query_tiles, cta)) return;
  const std::int64_t query_tile = cta.query_tile, sequence = cta.sequence;
  const unsigned head = cta.head;

  const BlockGeometry tiles{params.q.length(sequence), params.k.length(sequence), Traits::kTileRows, params.causal};
  if (query_tile >= tiles.query_blocks()) return;

  const std::int64_t kv_head = head / params.group;
  detail::KeyTileSchedule schedule;
  schedule.visible_tiles = tiles.visible_key_blocks(query_tile);
  schedule.steps = schedule.visible_tiles;
  const std::int64_t first_masked_tile = tiles.first_masked_key_block(query_tile);

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  T* const shared_query = reinterpret_cast<T*>(shared_bytes);
  T* const shared_keys = shared_query + Traits::kTileElements;
  T* const shared_values = shared_query + 2 * Traits::kTileElements;

  const std::int64_t first_query = query_tile * Traits::kTileRows;
  const std::int64_t query_rows =
      tiles.q_len - first_query < Traits::kTileRows ? tiles.q_len - first_query : Traits::kTileRows;
  const std::int64_t key_length = tiles.k_len;
  const std::int64_t first_token = params.q.start(sequence) + first_query;

  auto load_keys = [&](std::int64_t tile) {
    const std::int64_t first_key = tile * Traits::kTileRows;
    detail::load_tile_async<Traits>(shared_keys, params.k.vector(sequence, first_key, kv_head), params.k.token_stride,
                                    key_length - first_key);
  };
  auto load_values = [&](std::int64_t tile) {
    const std::int64_t first_key = tile * Traits::kTileRows;
    detail::load_tile_async<Traits>(shared_values, params.v.vector(sequence, first_key, kv_head), params.v.token_stride,
                                    key_length - first_key);
  };

  detail::load_tile_async<Traits>(shared_query, params.q.vector(sequence, first_query, head), params.q.token_stride,
                                  query_rows);
  std::int64_t step = 0;
  std::int64_t tile = schedule.tile(step);
  if (tile >= 0) {
    load_keys(tile);
    load_values(tile);
  }
  vendor::commit_async_copies();

  const int lane = vendor::lane_index();
  const int warp = vendor::warp_index();
  const int warp_row = warp * Traits::kRowsPerWarp;
  const int group_row = lane / 4;
  const int group_column = lane % 4;
  const int query_ldm_row = warp_row + (lane % 8) + 8 * ((lane / 8) % 2);
  const int query_ldm_chunk = lane / 16;
  const int key_ldm_row = (lane % 8) + 8 * (lane / 16);
  const int key_ldm_chunk = (lane / 8) % 2;
  const int value_ldm_row = (lane % 8) + 8 * ((lane / 8) % 2);
  const int value_ldm_chunk = lane / 16;
  const int lane_low_bits = lane % 8;

  // This lane's r of tile n for row block rb, half h: row_maxima_rows[n * token_capacity + 16 rb + 8 h].
  // Only the first lane of each row's quad stores (all four hold the row's maximum after the shuffles).
  float* const row_maxima_rows =
      ground_truth.row_maxima +
      (static_cast<std::int64_t>(head) * ground_truth.key_tiles) * ground_truth.token_capacity + first_token +
      warp_row + group_row;
  const bool stores_row_maxima = group_column == 0;

  auto load_query_fragment = [&](std::uint32_t(&fragment)[4], int row_block, int step_d) {
    load_matrix_x4(fragment,
                   shared_query + swizzled_pair_offset<kChunksPerRow>(query_ldm_row + 16 * row_block, lane_low_bits,
                                                                      step_d, query_ldm_chunk));
  };

  std::uint32_t query_fragments[Traits::kQueryInRegisters ? kRowBlocks : 1][Traits::kQueryInRegisters ? kDimSteps : 1]
                               [4];
  float output[kRowBlocks][kDimFragments][4];
#pragma unroll
  for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f)
      output[rb][f][0] = output[rb][f][1] = output[rb][f][2] = output[rb][f][3] = 0.0f;
  float running_max[kRowBlocks][2];
  float running_sum[kRowBlocks][2];
#pragma unroll
  for (int rb = 0; rb < kRowBlocks; ++rb) {
    running_max[rb][0] = running_max[rb][1] = negative_infinity;
    running_sum[rb][0] = running_sum[rb][1] = 0.0f;
  }

  vendor::wait_async_copies<0>();
  __syncthreads();
  if constexpr (Traits::kQueryInRegisters) {
#pragma unroll
    for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
      for (int step_d = 0; step_d < kDimSteps; ++step_d) load_query_fragment(query_fragments[rb][step_d], rb, step_d);
  }

  bool first_iteration = true;
  while (tile >= 0) {
    if (!first_iteration) {
      vendor::wait_async_copies<0>();
      __syncthreads();
      load_values(tile);
      vendor::commit_async_copies();
    }
    first_iteration = false;
    const std::int64_t next_tile = schedule.tile(step + 1);

    // ---- scores = Q * K^T ----
    float scores[kRowBlocks][kKeyFragments][4];
#pragma unroll
    for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
        scores[rb][f][0] = scores[rb][f][1] = scores[rb][f][2] = scores[rb][f][3] = 0.0f;
#pragma unroll
    for (int step_d = 0; step_d < kDimSteps; ++step_d) {
      std::uint32_t a[kRowBlocks][4];
#pragma unroll
      for (int rb = 0; rb < kRowBlocks; ++rb) {
        if constexpr (Traits::kQueryInRegisters) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[rb][r] = query_fragments[rb][step_d][r];
        } else {
          load_query_fragment(a[rb], rb, step_d);
        }
      }
#pragma unroll
      for (int pair = 0; pair < kKeyFragments / 2; ++pair) {
        std::uint32_t b[4];
        load_matrix_x4(b, shared_keys + swizzled_pair_offset<kChunksPerRow>(16 * pair + key_ldm_row, lane_low_bits,
                                                                            step_d, key_ldm_chunk));
#pragma unroll
        for (int rb = 0; rb < kRowBlocks; ++rb) {
          Mma::run(scores[rb][2 * pair], a[rb], b[0], b[1]);
          Mma::run(scores[rb][2 * pair + 1], a[rb], b[2], b[3]);
        }
      }
    }

    // ---- mask: causal boundary and ragged tail (a masked score is -inf, so it never is a row max) ----
    if (tile >= first_masked_tile) {
      const std::int64_t first_key = tile * Traits::kTileRows;
#pragma unroll
      for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const std::int64_t query_index = first_query + warp_row + 16 * rb + group_row + 8 * half;
          const std::int64_t limit = tiles.last_visible_key(query_index) - first_key;
          const int last_visible =
              limit < -1 ? -1 : (limit > Traits::kTileRows ? Traits::kTileRows : static_cast<int>(limit));
#pragma unroll
          for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
            for (int c = 0; c < 2; ++c)
              if (8 * f + 2 * group_column + c > last_visible) scores[rb][f][2 * half + c] = negative_infinity;
        }
    }

    // ---- online softmax, and the row maxima of this tile into the workspace ----
    float* const tile_row_maxima = row_maxima_rows + tile * ground_truth.token_capacity;
    float rescale[kRowBlocks][2];
    bool max_unchanged = true;
#pragma unroll
    for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = negative_infinity;
#pragma unroll
        for (int f = 0; f < kKeyFragments; ++f)
          tile_max = fmaxf(tile_max, fmaxf(scores[rb][f][2 * half], scores[rb][f][2 * half + 1]));
        tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 1));
        tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 2));
        // Rows past the sequence's end would write into the next sequence's tokens.
        if (stores_row_maxima && warp_row + 16 * rb + group_row + 8 * half < query_rows)
          tile_row_maxima[16 * rb + 8 * half] = tile_max * ground_truth.softmax_scale;
        const float new_max = fmaxf(running_max[rb][half], tile_max * params.scale_log2);
        const float base = new_max == negative_infinity ? 0.0f : new_max;
        rescale[rb][half] = vendor::fast_exp2(running_max[rb][half] - base);
        max_unchanged = max_unchanged && new_max == running_max[rb][half];
        running_max[rb][half] = new_max;
        float tile_sum = 0.0f;
#pragma unroll
        for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float probability = vendor::fast_exp2(fmaf(scores[rb][f][2 * half + c], params.scale_log2, -base));
            scores[rb][f][2 * half + c] = probability;
            tile_sum += probability;
          }
        running_sum[rb][half] = running_sum[rb][half] * rescale[rb][half] + tile_sum;
      }
    if (!vendor::warp_all(max_unchanged)) {
#pragma unroll
      for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
          for (int f = 0; f < kDimFragments; ++f) {
            output[rb][f][2 * half] *= rescale[rb][half];
            output[rb][f][2 * half + 1] *= rescale[rb][half];
          }
    }

    vendor::wait_async_copies<0>();
    __syncthreads();
    if (next_tile >= 0) {
      load_keys(next_tile);
      vendor::commit_async_copies();
    }

    // ---- output += P * V ----
#pragma unroll
    for (int step_k = 0; step_k < Traits::kTileRows / 16; ++step_k) {
      std::uint32_t a[kRowBlocks][4];
#pragma unroll
      for (int rb = 0; rb < kRowBlocks; ++rb) {
        a[rb][0] = vendor::element_traits<T>::pack(scores[rb][2 * step_k][0], scores[rb][2 * step_k][1]);
        a[rb][1] = vendor::element_traits<T>::pack(scores[rb][2 * step_k][2], scores[rb][2 * step_k][3]);
        a[rb][2] = vendor::element_traits<T>::pack(scores[rb][2 * step_k + 1][0], scores[rb][2 * step_k + 1][1]);
        a[rb][3] = vendor::element_traits<T>::pack(scores[rb][2 * step_k + 1][2], scores[rb][2 * step_k + 1][3]);
      }
#pragma unroll
      for (int pair = 0; pair < kDimFragments / 2; ++pair) {
        std::uint32_t b[4];
        load_matrix_x4_transposed(
            b, shared_values + swizzled_pair_offset<kChunksPerRow>(16 * step_k + value_ldm_row, lane_low_bits, pair,
                                                                   value_ldm_chunk));
#pragma unroll
        for (int rb = 0; rb < kRowBlocks; ++rb) {
          Mma::run(output[rb][2 * pair], a[rb], b[0], b[1]);
          Mma::run(output[rb][2 * pair + 1], a[rb], b[2], b[3]);
        }
      }
    }

    ++step;
    tile = next_tile;
  }
  vendor::wait_async_copies<0>();

  // ---- epilogue (as the prefill kernel's): normalise, stage in the warp's Q rows, store O and LSE ----
  float log_sum_exp[kRowBlocks][2];
#pragma unroll
  for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = running_sum[rb][half];
      sum += vendor::shuffle_xor(sum, 1);
      sum += vendor::shuffle_xor(sum, 2);
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
      for (int f = 0; f < kDimFragments; ++f) {
        output[rb][f][2 * half] *= inverse;
        output[rb][f][2 * half + 1] *= inverse;
      }
      log_sum_exp[rb][half] = sum > 0.0f ? (running_max[rb][half] + __log2f(sum)) * kLn2 : negative_infinity;
    }

  vendor::sync_warp();
#pragma unroll
  for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp_row + 16 * rb + group_row + 8 * half;
#pragma unroll
      for (int f = 0; f < kDimFragments; ++f) {
        const int column = 8 * f + 2 * group_column;
        *reinterpret_cast<std::uint32_t*>(shared_query + swizzled_offset<kChunksPerRow>(row, column / 8) + column % 8) =
            vendor::element_traits<T>::pack(output[rb][f][2 * half], output[rb][f][2 * half + 1]);
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

  if (group_column == 0) {
#pragma unroll
    for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp_row + 16 * rb + group_row + 8 * half;
        if (row < query_rows)
          params.lse[head * params.lse_head_stride + (first_token + row) * params.lse_token_stride] =
              log_sum_exp[rb][half];
      }
  }
}

// Hopper (sm_90a, head dim 64 or 128): the warpgroup prefill kernel's forward, storing r from the row maxima its
// online softmax computes anyway (detail::TileRowMaxima), so the ground truth costs little more than the
// dense forward it extends. The mma.sync forward above serves the other head dims and GPUs.
template <class T, int HeadDim>
__global__ void __launch_bounds__(WarpgroupPrefillTraits<T, HeadDim>::kThreads,
                                  WarpgroupPrefillTraits<T, HeadDim>::kMinBlocksPerMultiprocessor)
    warpgroup_ground_truth_forward_kernel(const GroundTruthParams<T> ground_truth) {
  detail::TileRowMaxima row_maxima;
  row_maxima.row_maxima = ground_truth.row_maxima;
  row_maxima.key_tiles = ground_truth.key_tiles;
  row_maxima.token_capacity = ground_truth.token_capacity;
  row_maxima.softmax_scale = ground_truth.softmax_scale;
  detail::warpgroup_forward<T, HeadDim>(ground_truth.attention, row_maxima);
}
#endif  // !__HIPCC__

// ---- pooling kernels (portable) -------------------------------------------------------------------

// Two-dimensional target. Grid (target rows = query blocks, query heads, sequences); one CTA per row
// (b, h, m). Pass 1: each warp takes key blocks n = warp, warp + warps, ...; its lanes read 64
// consecutive row maxima of one tile (coalesced) and reduce max(r - LSE) over the warp; the raw
// maximum probability goes to the target row. Pass 2: the CTA sums the row and normalises it, and
// writes zeros past the visible key blocks (whole rows of zeros past the sequence's query blocks).
template <class T>
__global__ void __launch_bounds__(kGroundTruthPoolingThreads)
    two_dimensional_target_kernel(const GroundTruthParams<T> ground_truth) {
  const PrefillParams<T>& params = ground_truth.attention;
  const float negative_infinity = -__int_as_float(0x7f800000);
  const std::int64_t m = blockIdx.x, head = blockIdx.y, sequence = blockIdx.z;
  const std::int64_t q_len = params.q.length(sequence), k_len = params.k.length(sequence);
  const BlockGeometry blocks{q_len, k_len, ground_truth.block_size, params.causal};
  const BlockGeometry tiles{q_len, k_len, kGroundTruthTile, params.causal};
  const std::int64_t tiles_per_block = ground_truth.block_size / kGroundTruthTile;
  const std::int64_t count = m < blocks.query_blocks() ? blocks.visible_key_blocks(m) : 0;
  float* const row = ground_truth.target + sequence * ground_truth.target_stride[0] +
                     head * ground_truth.target_stride[1] + m * ground_truth.target_stride[2];
  const std::int64_t column_stride = ground_truth.target_stride[3];
  const int lane = vendor::lane_index();
  const int warps = static_cast<int>(blockDim.x) / vendor::warp_size;
  constexpr int kRowsPerLane = kGroundTruthTile / vendor::warp_size;  // 2 on 32-lane warps, 1 on 64

  const std::int64_t first_tile = m * tiles_per_block;
  const std::int64_t end_tile =
      count == 0
          ? first_tile
          : (first_tile + tiles_per_block < tiles.query_blocks() ? first_tile + tiles_per_block : tiles.query_blocks());
  for (std::int64_t query_tile = first_tile; query_tile < end_tile; ++query_tile) {
    // This lane's rows of the tile: their LSE, or -inf for rows past the end or rows that see no key
    // (their r are all -inf too; skipping them avoids -inf - -inf).
    const std::int64_t first_token = params.q.start(sequence) + query_tile * kGroundTruthTile;
    std::int64_t token[kRowsPerLane];
    float lse[kRowsPerLane];
    bool valid[kRowsPerLane];
#pragma unroll
    for (int i = 0; i < kRowsPerLane; ++i) {
      const std::int64_t local = lane + i * vendor::warp_size;
      token[i] = first_token + local;
      valid[i] = query_tile * kGroundTruthTile + local < q_len;
      lse[i] =
          valid[i] ? params.lse[head * params.lse_head_stride + token[i] * params.lse_token_stride] : negative_infinity;
      valid[i] = valid[i] && lse[i] != negative_infinity;
    }
    const std::int64_t visited_tiles = tiles.visible_key_blocks(query_tile);  // tiles whose r were stored
    for (std::int64_t n = vendor::warp_index(); n < count; n += warps) {
      float best = negative_infinity;  // max over rows and tiles of r - LSE
      const std::int64_t key_tile_end =
          (n + 1) * tiles_per_block < visited_tiles ? (n + 1) * tiles_per_block : visited_tiles;
      for (std::int64_t key_tile = n * tiles_per_block; key_tile < key_tile_end; ++key_tile) {
        const float* const maxima =
            ground_truth.row_maxima + (head * ground_truth.key_tiles + key_tile) * ground_truth.token_capacity;
#pragma unroll
        for (int i = 0; i < kRowsPerLane; ++i)
          if (valid[i]) best = fmaxf(best, maxima[token[i]] - lse[i]);
      }
      for (int offset = vendor::warp_size / 2; offset > 0; offset /= 2)
        best = fmaxf(best, vendor::shuffle_xor(best, offset));
      if (lane == 0) {
        const float probability = expf(best);  // exp(-inf) = 0: no row of the tile sees the block
        float& entry = row[n * column_stride];
        entry = query_tile == first_tile ? probability : fmaxf(entry, probability);
      }
    }
  }
  __syncthreads();  // pass 1's global writes are visible to the whole CTA

  __shared__ float partials[kGroundTruthPoolingThreads / 32];
  float partial = 0.0f;
  for (std::int64_t n = threadIdx.x; n < count; n += blockDim.x) partial += row[n * column_stride];
  const float total = ground_truth_detail::block_sum(partial, partials);
  const float inverse = total > 0.0f ? 1.0f / total : 0.0f;  // total > 0 whenever count > 0
  for (std::int64_t n = threadIdx.x; n < ground_truth.target_columns; n += blockDim.x)
    row[n * column_stride] = n < count ? row[n * column_stride] * inverse : 0.0f;
}

// One-dimensional target. Grid (64-token query tiles of the longest q, KV heads, sequences); threads
// (token of the tile) x (column 0-3). A thread pools its token's key blocks n = column, column + 4, ...
// over the group's query heads and the block's tiles (the r reads are coalesced across the tokens).
// Pass 1 only sums a row's pooled values. Pass 2 pools again, chunk by chunk of key blocks, normalised,
// into a shared [chunk][token] tile that the CTA then writes row by row: the target (as large as r
// itself) is written once, in whole rows, zeros past each row's length included. Pooling twice reads
// r twice; the first version, which wrote raw values in 4-byte pieces strided by a row and then
// rewrote every row normalised, made the whole 1-D call 32.8 ms against 29.1 ms now (H100, 32k tokens,
// 32 heads, MHA; the 2-D call 26.4 ms, the dense forward 24.9 ms).
template <class T>
__global__ void __launch_bounds__(kGroundTruthPoolingThreads)
    one_dimensional_target_kernel(const GroundTruthParams<T> ground_truth) {
  const PrefillParams<T>& params = ground_truth.attention;
  constexpr int kColumns = kGroundTruthPoolingThreads / kGroundTruthTile;
  constexpr int kChunk = 32;  // key blocks staged per pass-2 step
  const float negative_infinity = -__int_as_float(0x7f800000);
  const std::int64_t query_tile = blockIdx.x, kv_head = blockIdx.y, sequence = blockIdx.z;
  const std::int64_t q_len = params.q.length(sequence), k_len = params.k.length(sequence);
  const BlockGeometry blocks{q_len, k_len, ground_truth.block_size, params.causal};
  const std::int64_t tiles_per_block = ground_truth.block_size / kGroundTruthTile;
  const int local = static_cast<int>(threadIdx.x) % kGroundTruthTile;
  const int column = static_cast<int>(threadIdx.x) / kGroundTruthTile;
  const std::int64_t t = query_tile * kGroundTruthTile + local;
  const std::int64_t token = params.q.start(sequence) + t;
  const std::int64_t count = t < q_len ? ground_truth_detail::complete_blocks_before(blocks, t) : 0;

  // max over the group's heads and block n's tiles of p = exp(r - LSE), for the kBatch blocks
  // n = first + u * kColumns (u < kBatch; those past `count` give 0). Every tile of a complete block before
  // the token's own block was visited by the forward. The kBatch loads of a head and tile are issued
  // together: one load at a time per thread left this memory-bound pass at ~1 TB/s.
  constexpr int kBatch = kChunk / kColumns;
  auto pooled = [&](std::int64_t first, float(&p)[kBatch]) {
    if (first >= count) {  // none of the blocks (and a token past the sequence: no LSE to read)
#pragma unroll
      for (int u = 0; u < kBatch; ++u) p[u] = 0.0f;
      return;
    }
    float best[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) best[u] = negative_infinity;
    for (std::int64_t h = kv_head * params.group; h < (kv_head + 1) * params.group; ++h) {
      const float lse = params.lse[h * params.lse_head_stride + token * params.lse_token_stride];
      const float* const maxima = ground_truth.row_maxima + h * ground_truth.key_tiles * ground_truth.token_capacity;
      for (std::int64_t tile = 0; tile < tiles_per_block; ++tile) {
        float r[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const std::int64_t n = first + u * kColumns;
          r[u] = n < count ? maxima[(n * tiles_per_block + tile) * ground_truth.token_capacity + token]
                           : negative_infinity;
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) best[u] = fmaxf(best[u], r[u] - lse);
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) p[u] = first + u * kColumns < count ? expf(best[u]) : 0.0f;
  };

  float partial = 0.0f;
  for (std::int64_t first = column; first < count; first += kChunk) {
    float p[kBatch];
    pooled(first, p);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) partial += p[u];  // n order, as one block at a time
  }
  __shared__ float row_sums[kColumns][kGroundTruthTile];
  __shared__ float staged[kChunk][kGroundTruthTile + 1];  // +1: the row-wise reads hit distinct banks
  row_sums[column][local] = partial;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) total += row_sums[c][local];
  const float inverse = 1.0f / (total + 1e-9f);  // the original's + 1e-9

  float* const target_base = ground_truth.target + sequence * ground_truth.target_stride[0] +
                             kv_head * ground_truth.target_stride[1] +
                             query_tile * kGroundTruthTile * ground_truth.target_stride[2];
  const std::int64_t rows_here = ground_truth.target_rows - query_tile * kGroundTruthTile;
  const int rows = rows_here < kGroundTruthTile ? static_cast<int>(rows_here) : kGroundTruthTile;
  for (std::int64_t first = 0; first < ground_truth.target_columns; first += kChunk) {
    {
      float p[kBatch];
      pooled(first + column, p);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) staged[column + u * kColumns][local] = p[u] * inverse;
    }
    __syncthreads();
    const int width =
        ground_truth.target_columns - first < kChunk ? static_cast<int>(ground_truth.target_columns - first) : kChunk;
    for (int index = static_cast<int>(threadIdx.x); index < rows * kChunk; index += static_cast<int>(blockDim.x)) {
      const int r = index / kChunk, c = index % kChunk;
      if (c < width)
        target_base[r * ground_truth.target_stride[2] + (first + c) * ground_truth.target_stride[3]] = staged[c][r];
    }
    __syncthreads();  // the tile is reused by the next chunk
  }
}

}  // namespace seer::gpu
