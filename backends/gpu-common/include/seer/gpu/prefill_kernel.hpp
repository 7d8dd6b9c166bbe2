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
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/prefill_schedule.hpp"
#include "seer/gpu/tensor_core.hpp"
#include "seer/gpu/tile_copy.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

// Tile shapes and shared-memory budget per head dim. The primary template is the one to
// instantiate; kSupported guards the head dims the fragment loops are written for.
//
// Each warp owns kRowBlocks m16 row blocks of the 64-row query tile. Two row blocks (32 rows, 2 warps
// per CTA) halve the shared-memory reads per multiply: every K/V fragment loaded by ldmatrix feeds
// four mma instead of two, which is what limits a 16-rows-per-warp kernel on Hopper's mma.sync path.
// Head dim 256 keeps one row block: its fp32 output alone would take 256 registers per thread.
template <class T, int HeadDim>
struct PrefillTraits {
  static constexpr bool kSupported = HeadDim == 64 || HeadDim == 128 || HeadDim == 256;
  static_assert(kSupported, "the prefill kernel supports head dims 64, 128 and 256");
  static constexpr int kTileRows = 64;  // query rows per CTA = keys per tile = smallest block size
  static constexpr int kRowBlocks = HeadDim <= 128 ? 2 : 1;
  static constexpr int kRowsPerWarp = 16 * kRowBlocks;
  static constexpr int kWarps = kTileRows / kRowsPerWarp;
  static constexpr int kThreads = kWarps * vendor::warp_size;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks
  static constexpr int kTileElements = kTileRows * HeadDim;
  // Q fragments in registers cost kRowBlocks * HeadDim / 4 registers per thread; above 32 they
  // crowd out the accumulators, and the fragments are re-read from shared memory instead.
  static constexpr bool kQueryInRegisters = kRowBlocks * HeadDim <= 128;
  // Q, K and V tiles, one buffer each: V[i] is copied during Q*K[i]^T and K[i+1] during P*V[i].
  static constexpr int kSharedBytes = 3 * kTileElements * static_cast<int>(sizeof(T));
  static constexpr int kMinBlocksPerMultiprocessor = HeadDim <= 128 ? 4 : 2;
};

template <class T, int HeadDim>
__global__ void __launch_bounds__(PrefillTraits<T, HeadDim>::kThreads,
                                  PrefillTraits<T, HeadDim>::kMinBlocksPerMultiprocessor)
    block_sparse_prefill_kernel(const PrefillParams<T> params) {
  using Traits = PrefillTraits<T, HeadDim>;
  using Mma = matrix_multiply_accumulate<T>;
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kRowBlocks = Traits::kRowBlocks;
  constexpr int kKeyFragments = Traits::kTileRows / 8;  // n8 accumulator tiles of the 64-key score row
  constexpr int kDimFragments = HeadDim / 8;            // n8 accumulator tiles of the output row
  constexpr int kDimSteps = HeadDim / 16;               // k16 steps of Q * K^T
  constexpr float kLn2 = 0.6931471805599453f;
  const float negative_infinity = -__int_as_float(0x7f800000);

  // Grid: detail::head_grouped_prefill_cta (seer/gpu/prefill_schedule.hpp).
  detail::PrefillCta cta;
  if (!detail::head_grouped_prefill_cta(params.q.heads, params.max_query_tiles, cta)) return;
  const std::int64_t query_tile = cta.query_tile, sequence = cta.sequence;
  const unsigned head = cta.head;

  const BlockGeometry tiles{params.q.length(sequence), params.k.length(sequence), Traits::kTileRows, params.causal};
  if (query_tile >= tiles.query_blocks()) return;

  const std::int64_t kv_head = head / params.group;
  const detail::KeyTileSchedule schedule = detail::key_tile_schedule(params, tiles, sequence, head, query_tile);
  const std::int64_t first_masked_tile = tiles.first_masked_key_block(query_tile);

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  T* const shared_query = reinterpret_cast<T*>(shared_bytes);
  T* const shared_keys = shared_query + Traits::kTileElements;
  T* const shared_values = shared_query + 2 * Traits::kTileElements;

  const std::int64_t first_query = query_tile * Traits::kTileRows;
  const std::int64_t query_rows =
      tiles.q_len - first_query < Traits::kTileRows ? tiles.q_len - first_query : Traits::kTileRows;
  const std::int64_t key_length = tiles.k_len;

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
  if (tile >= 0) {  // the first K and V tiles travel with Q: one memory round trip before the first multiply
    load_keys(tile);
    load_values(tile);
  }
  vendor::commit_async_copies();

  const int lane = vendor::lane_index();
  const int warp = vendor::warp_index();
  const int warp_row = warp * Traits::kRowsPerWarp;
  const int group_row = lane / 4;     // g: accumulator rows g and g + 8 of each row block
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
  const int lane_low_bits = lane % 8;  // row % 8 of every ldmatrix row address above

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
  float running_max[kRowBlocks][2];  // scaled log2 units
  float running_sum[kRowBlocks][2];  // this lane's partial sums
#pragma unroll
  for (int rb = 0; rb < kRowBlocks; ++rb) {
    running_max[rb][0] = running_max[rb][1] = negative_infinity;
    running_sum[rb][0] = running_sum[rb][1] = 0.0f;
  }

  vendor::wait_async_copies<0>();  // Q and the first K and V tiles have landed
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
      vendor::wait_async_copies<0>();  // K[i] has landed
      __syncthreads();                 // ... for every thread; and every warp is done with V[i-1]
      load_values(tile);
      vendor::commit_async_copies();
    }
    first_iteration = false;
    // Read the next kept block index now: its global-memory latency then hides behind Q * K^T.
    const std::int64_t next_tile = schedule.tile(step + 1);

    // ---- scores = Q * K^T (kRowBlocks x 16 rows x 64 keys per warp) ----
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

    // ---- mask: only tiles on the causal boundary or the ragged tail ----
    // visible(i, j) is j <= last_visible_key(i) (which never exceeds k_len - 1); comparing against
    // the row's limit relative to the tile keeps the per-element test in 32-bit registers.
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

    // ---- online softmax (base 2; running_max is in units of scale * log2(e)) ----
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
        const float new_max = fmaxf(running_max[rb][half], tile_max * params.scale_log2);
        // A row that has seen only masked keys keeps max -inf; subtracting 0 then keeps every
        // exponent -inf (probability 0) instead of producing -inf - (-inf) = NaN.
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
    // After the first few tiles the running maxima rarely move: skip the output rescale (HeadDim
    // multiplies per row) when no row of the warp changed. An unchanged finite maximum means a
    // rescale factor of exactly 1; an unchanged -inf means the output is still 0.
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

    vendor::wait_async_copies<0>();  // V[i] has landed
    __syncthreads();                 // ... for every thread; and every warp is done with K[i]
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
  vendor::wait_async_copies<0>();  // no copy may still target shared memory when the CTA exits

  // ---- epilogue: normalise, stage the warp's rows in its own rows of the Q tile, store ----
  float log_sum_exp[kRowBlocks][2];
#pragma unroll
  for (int rb = 0; rb < kRowBlocks; ++rb)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = running_sum[rb][half];
      sum += vendor::shuffle_xor(sum, 1);
      sum += vendor::shuffle_xor(sum, 2);
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row with no visible kept key gives 0
#pragma unroll
      for (int f = 0; f < kDimFragments; ++f) {
        output[rb][f][2 * half] *= inverse;
        output[rb][f][2 * half + 1] *= inverse;
      }
      log_sum_exp[rb][half] = sum > 0.0f ? (running_max[rb][half] + __log2f(sum)) * kLn2 : negative_infinity;
    }

  vendor::sync_warp();  // the warp's own Q rows are no longer read
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

  if (params.lse != nullptr && group_column == 0) {
    const std::int64_t first_token = params.q.start(sequence) + first_query;
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

}  // namespace seer::gpu
