// The block-sparse prefill kernel for Hopper GPUs (sm_90a): the same attention as
// block_sparse_prefill_kernel (prefill_kernel.hpp), computed with warpgroup matrix instructions.
//
// Why a second kernel: mma.sync keeps every accumulator and operand fragment in the issuing warp's
// registers and reached about half of Hopper's tensor-core rate here (bench/gpu/NOTES.md: ~335
// TFLOP/s, parity with FlashAttention-2). wgmma reads K and V straight from shared memory and runs
// asynchronously, which frees registers and issue slots for the softmax.
//
// One CTA = one warpgroup (4 warps) = one 64-row query tile of one head, as in the mma.sync kernel;
// two CTAs share an SM, and their phases drift apart, so one's softmax overlaps the other's matrix
// products. (A CTA of two warpgroups walking the merged key stream of two query tiles, sharing each
// K/V copy, measured 0.81x FlashAttention-2 dense: in lockstep the two softmaxes leave the tensor
// cores idle; see bench/gpu/NOTES.md.)
//
// Per key tile: S = Q K^T (Q fragments in registers, K from a 128-byte-swizzled tile), the masked
// online softmax of prefill_kernel.hpp (base 2, scale folded in, warp-vote rescale skip), then
// O += P V with P packed from S's registers and V read transposed from its swizzled tile. K and V
// tiles stream through two shared-memory stages filled by asynchronous copies of all threads.
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gpu/prefill_kernel.hpp"
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/tensor_core.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warpgroup_mma.hpp"

namespace seer::gpu {

// The head dims the warpgroup kernel is written for (the host's kernel choice asks this).
constexpr bool warpgroup_prefill_supports_head_dim(std::int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

template <class T, int HeadDim>
struct WarpgroupPrefillTraits {
  static constexpr bool kSupported = warpgroup_prefill_supports_head_dim(HeadDim);
  static_assert(kSupported, "the warpgroup prefill kernel is written for head dims 64 and 128");
  static constexpr int kTileRows = 64;               // query rows per CTA = keys per tile
  static constexpr int kThreads = 128;               // one warpgroup
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks
  // K/V tiles in flight: the current one and the next. Two CTAs per SM (registers: ~225 per thread).
  static constexpr int kStages = 2;
  static constexpr int kMinBlocksPerMultiprocessor = 2;
  static constexpr int kTileBytes = kTileRows * HeadDim * static_cast<int>(sizeof(T));
  static constexpr int kPanelBytes = kTileRows * hopper::kSwizzlePanelRowBytes;  // one 64-column panel of a tile
  // Q staging, then kStages x (K, V); +1024: the dynamic allocation is aligned up to the swizzle period.
  static constexpr int kSharedBytes = kTileBytes + kStages * 2 * kTileBytes + 1024;
};

namespace detail {

// Asynchronously copies `valid_rows` rows (the rest zero-filled) of a Rows x HeadDim tile into the
// 128-byte-swizzled panel layout of warpgroup_mma.hpp. All Threads threads take part.
template <int Rows, int HeadDim, int Threads, class T>
__device__ inline void load_panel_tile_async(unsigned char* shared_tile, const T* first_row, std::int64_t row_stride,
                                             std::int64_t valid_rows, int thread) {
  constexpr int kChunksPerRow = HeadDim / 8;
  constexpr int kRowsPerPass = Threads / kChunksPerRow;
  static_assert(Threads % kChunksPerRow == 0 && Rows % kRowsPerPass == 0 && kRowsPerPass % 8 == 0,
                "passes must cover whole rows and keep each thread's swizzle phase");
  const int chunk = thread % kChunksPerRow;
  const int first = thread / kChunksPerRow;
  // kRowsPerPass is a multiple of 8, so row % 8 and hence the swizzled chunk are the same in every pass.
  unsigned char* const destination = shared_tile + hopper::swizzled_panel_offset<Rows>(first, chunk);
  const T* source = first_row + first * row_stride + chunk * 8;
  const std::int64_t pass_stride = kRowsPerPass * row_stride;
  if (valid_rows >= Rows) {
#pragma unroll
    for (int pass = 0; pass < Rows / kRowsPerPass; ++pass) {
      vendor::copy_async_16_bytes(destination + pass * kRowsPerPass * hopper::kSwizzlePanelRowBytes, source);
      source += pass_stride;
    }
    return;
  }
#pragma unroll
  for (int pass = 0; pass < Rows / kRowsPerPass; ++pass) {
    const bool valid = first + pass * kRowsPerPass < valid_rows;
    vendor::copy_async_16_bytes(destination + pass * kRowsPerPass * hopper::kSwizzlePanelRowBytes,
                                valid ? source : first_row, valid);
    source += pass_stride;
  }
}

}  // namespace detail

namespace detail {

// What the forward stores besides O and the LSE. A prefill: nothing.
struct NoTileRowMaxima {
  static constexpr bool kStores = false;
};
// The ground-truth forward (seer/gpu/ground_truth_kernel.hpp): for every query row and 64-key tile it
// visits, r = softmax_scale * (the row's largest visible q . k in the tile), -inf when none is visible, at
// row_maxima[(head * key_tiles + tile) * token_capacity + token].
struct TileRowMaxima {
  static constexpr bool kStores = true;
  float* row_maxima = nullptr;
  std::int64_t key_tiles = 0;
  std::int64_t token_capacity = 0;
  float softmax_scale = 0.0f;
};

// The warpgroup forward of one CTA (see the kernels below); RowMaxima says what it stores besides O and LSE.
template <class T, int HeadDim, class RowMaxima>
__device__ __forceinline__ void warpgroup_forward(const PrefillParams<T>& params, const RowMaxima& row_maxima) {
  using Traits = WarpgroupPrefillTraits<T, HeadDim>;
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kStages = Traits::kStages;
  constexpr int kKeyFragments = Traits::kTileRows / 8;  // n8 column groups of a score row
  constexpr int kDimFragments = HeadDim / 8;            // n8 column groups of an output row
  constexpr int kDimSteps = HeadDim / 16;               // k16 steps of Q * K^T
  constexpr float kLn2 = 0.6931471805599453f;
  const float negative_infinity = -__int_as_float(0x7f800000);

  // Grid and schedule as block_sparse_prefill_kernel's (seer/gpu/prefill_schedule.hpp).
  detail::PrefillCta cta;
  if (!detail::head_grouped_prefill_cta(params.q.heads, params.max_query_tiles, cta)) return;
  const std::int64_t query_tile = cta.query_tile, sequence = cta.sequence;
  const unsigned head = cta.head;

  const BlockGeometry tiles{params.q.length(sequence), params.k.length(sequence), Traits::kTileRows, params.causal};
  if (query_tile >= tiles.query_blocks()) return;
  const std::int64_t kv_head = head / params.group;
  const detail::KeyTileSchedule schedule = detail::key_tile_schedule(params, tiles, sequence, head, query_tile);
  const std::int64_t first_masked_tile = tiles.first_masked_key_block(query_tile);

  extern __shared__ unsigned char dynamic_shared[];
  // The swizzle assumes 1024-byte-aligned panels; the dynamic allocation is only 16-byte aligned.
  unsigned char* const shared_base = dynamic_shared + ((1024 - (vendor::shared_address(dynamic_shared) & 1023)) & 1023);
  unsigned char* const shared_query = shared_base;
  unsigned char* const shared_stages = shared_base + Traits::kTileBytes;
  auto stage_keys = [&](int stage) { return shared_stages + stage * 2 * Traits::kTileBytes; };
  auto stage_values = [&](int stage) { return shared_stages + stage * 2 * Traits::kTileBytes + Traits::kTileBytes; };

  const int thread = static_cast<int>(threadIdx.x);
  const std::int64_t first_query = query_tile * Traits::kTileRows;
  const std::int64_t query_rows = tiles.q_len - first_query;  // valid rows of the tile; may exceed 64
  const std::int64_t key_length = tiles.k_len;
  // The head's r of this tile's first row (RowMaxima::kStores only).
  float* tile_maxima = nullptr;
  if constexpr (RowMaxima::kStores)
    tile_maxima = row_maxima.row_maxima +
                  static_cast<std::int64_t>(head) * row_maxima.key_tiles * row_maxima.token_capacity +
                  params.q.start(sequence) + first_query;
  else
    static_cast<void>(row_maxima);

  auto load_key_tile = [&](std::int64_t key_tile, int stage) {
    const std::int64_t first_key = key_tile * Traits::kTileRows;
    detail::load_panel_tile_async<Traits::kTileRows, HeadDim, Traits::kThreads>(
        stage_keys(stage), params.k.vector(sequence, first_key, kv_head), params.k.token_stride, key_length - first_key,
        thread);
    detail::load_panel_tile_async<Traits::kTileRows, HeadDim, Traits::kThreads>(
        stage_values(stage), params.v.vector(sequence, first_key, kv_head), params.v.token_stride,
        key_length - first_key, thread);
  };

  // Prologue: Q with the first key tile (one group), then the next kStages - 2 tiles, one group each.
  // The producer step runs kStages - 1 kept tiles ahead of the consumer step.
  std::int64_t producer_step = 0;
  detail::load_panel_tile_async<Traits::kTileRows, HeadDim, Traits::kThreads>(
      shared_query, params.q.vector(sequence, first_query, head), params.q.token_stride, query_rows, thread);
#pragma unroll
  for (int stage = 0; stage < kStages - 1; ++stage) {
    const std::int64_t key_tile = schedule.tile(producer_step);
    if (key_tile >= 0) {
      load_key_tile(key_tile, stage);
      ++producer_step;
    }
    vendor::commit_async_copies();
  }

  const int lane = vendor::lane_index();
  const int group_row = lane / 4;                  // accumulator rows g and g + 8 of the warp's 16
  const int group_column = lane % 4;               // accumulator columns 2t, 2t + 1 of each n8 group
  const int warp_row = 16 * vendor::warp_index();  // the warp's 16 rows of the tile

  std::uint32_t query_fragments[kDimSteps][4];
  float output[HeadDim / 2];
#pragma unroll
  for (int i = 0; i < HeadDim / 2; ++i) output[i] = 0.0f;
  float running_max[2] = {negative_infinity, negative_infinity};  // scaled log2 units
  float running_sum[2] = {0.0f, 0.0f};                            // this lane's partial sums

  int stage = 0;
  for (std::int64_t step = 0;; ++step) {
    const std::int64_t key_tile = schedule.tile(step);
    if (key_tile < 0) break;
    vendor::wait_async_copies<kStages - 2>();  // this tile's group (and Q with the first) has landed
    hopper::fence_shared_for_async_proxy();    // ... and is visible to the tensor cores
    __syncthreads();                           // for every thread's copies; the stage refilled below is free

    // Q fragments (A operand, mma.sync layout): matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15), read from the Q tile,
    // which stays in shared memory until the epilogue. Head dim 64 reads them again for every key tile: held in
    // registers across the loop, its results were wrong from the second key tile on (H100, 2026-11-23: every
    // second-tile product off, first tiles exact; reloading fixes it at 4 ldmatrix per warp and tile). Head dim 128
    // keeps them (passes every test; its loop is register-bound).
    if (HeadDim == 64 || step == 0) {
      const int row = warp_row + (lane % 8) + 8 * ((lane / 8) % 2);
#pragma unroll
      for (int step_d = 0; step_d < kDimSteps; ++step_d)
        load_matrix_x4(query_fragments[step_d],
                       shared_query + hopper::swizzled_panel_offset<Traits::kTileRows>(row, 2 * step_d + lane / 16));
    }

    // Refill the stage the previous step read (its products completed before the barrier).
    {
      const std::int64_t next_tile = schedule.tile(producer_step);
      if (next_tile >= 0) {
        load_key_tile(next_tile, (stage + kStages - 1) % kStages);
        ++producer_step;
      }
      vendor::commit_async_copies();  // an empty group when nothing is left keeps the count uniform
    }

    // ---- scores = Q * K^T: 64 rows x 64 keys ----
    float scores[Traits::kTileRows / 2];
    hopper::warpgroup_fence();
#pragma unroll
    for (int step_d = 0; step_d < kDimSteps; ++step_d) {
      const std::uint64_t descriptor =
          hopper::swizzled_descriptor(stage_keys(stage) + (step_d / 4) * Traits::kPanelBytes + (step_d % 4) * 32,
                                      Traits::kPanelBytes, hopper::kSwizzleGroupBytes);
      hopper::warpgroup_multiply<T, Traits::kTileRows, false>(scores, query_fragments[step_d], descriptor,
                                                              step_d > 0 ? 1u : 0u);
    }
    hopper::warpgroup_commit();
    hopper::warpgroup_wait<0>();
    hopper::pin_registers(scores);

    // ---- mask: only tiles on the causal boundary or the ragged tail ----
    if (key_tile >= first_masked_tile) {
      const std::int64_t first_key = key_tile * Traits::kTileRows;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const std::int64_t query_index = first_query + warp_row + group_row + 8 * half;
        const std::int64_t limit = tiles.last_visible_key(query_index) - first_key;
        const int last_visible =
            limit < -1 ? -1 : (limit > Traits::kTileRows ? Traits::kTileRows : static_cast<int>(limit));
#pragma unroll
        for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            if (8 * f + 2 * group_column + c > last_visible) scores[4 * f + 2 * half + c] = negative_infinity;
      }
    }

    // ---- online softmax (base 2; running_max in units of scale * log2(e)) ----
    float rescale[2];
    bool max_unchanged = true;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = negative_infinity;
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
        tile_max = fmaxf(tile_max, fmaxf(scores[4 * f + 2 * half], scores[4 * f + 2 * half + 1]));
      tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 1));
      tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 2));
      if constexpr (RowMaxima::kStores) {
        const int row = warp_row + group_row + 8 * half;
        if (group_column == 0 && row < query_rows)
          tile_maxima[key_tile * row_maxima.token_capacity + row] = tile_max * row_maxima.softmax_scale;
      }
      const float new_max = fmaxf(running_max[half], tile_max * params.scale_log2);
      const float base = new_max == negative_infinity ? 0.0f : new_max;  // all masked so far: stay at 0
      rescale[half] = vendor::fast_exp2(running_max[half] - base);
      max_unchanged = max_unchanged && new_max == running_max[half];
      running_max[half] = new_max;
      float tile_sum = 0.0f;
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float probability = vendor::fast_exp2(fmaf(scores[4 * f + 2 * half + c], params.scale_log2, -base));
          scores[4 * f + 2 * half + c] = probability;
          tile_sum += probability;
        }
      running_sum[half] = running_sum[half] * rescale[half] + tile_sum;
    }
    if (!vendor::warp_all(max_unchanged)) {
#pragma unroll
      for (int f = 0; f < kDimFragments; ++f) {
        output[4 * f] *= rescale[0];
        output[4 * f + 1] *= rescale[0];
        output[4 * f + 2] *= rescale[1];
        output[4 * f + 3] *= rescale[1];
      }
    }

    // ---- output += P * V ----
    std::uint32_t probabilities[Traits::kTileRows / 16][4];
#pragma unroll
    for (int step_k = 0; step_k < Traits::kTileRows / 16; ++step_k) {
      probabilities[step_k][0] = vendor::element_traits<T>::pack(scores[8 * step_k], scores[8 * step_k + 1]);
      probabilities[step_k][1] = vendor::element_traits<T>::pack(scores[8 * step_k + 2], scores[8 * step_k + 3]);
      probabilities[step_k][2] = vendor::element_traits<T>::pack(scores[8 * step_k + 4], scores[8 * step_k + 5]);
      probabilities[step_k][3] = vendor::element_traits<T>::pack(scores[8 * step_k + 6], scores[8 * step_k + 7]);
    }
    hopper::warpgroup_fence();
#pragma unroll
    for (int step_k = 0; step_k < Traits::kTileRows / 16; ++step_k) {
      // 16 keys = two 8-row swizzle groups; the two 64-column panels of V are kPanelBytes apart.
      const std::uint64_t descriptor =
          hopper::swizzled_descriptor(stage_values(stage) + step_k * 2 * hopper::kSwizzleGroupBytes,
                                      Traits::kPanelBytes, hopper::kSwizzleGroupBytes);
      hopper::warpgroup_multiply<T, HeadDim, true>(output, probabilities[step_k], descriptor, 1u);
    }
    hopper::warpgroup_commit();
    hopper::warpgroup_wait<0>();
    hopper::pin_registers(output);
    stage = (stage + 1) % kStages;
  }
  vendor::wait_async_copies<0>();  // no copy may still target shared memory when the CTA exits
  __syncthreads();                 // every thread's Q copies have landed before the epilogue reuses the Q tile

  // ---- epilogue: normalise, stage the warp's rows in its own rows of the Q tile, store ----
  float log_sum_exp[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = running_sum[half];
    sum += vendor::shuffle_xor(sum, 1);
    sum += vendor::shuffle_xor(sum, 2);
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row with no visible kept key gives 0
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f) {
      output[4 * f + 2 * half] *= inverse;
      output[4 * f + 2 * half + 1] *= inverse;
    }
    log_sum_exp[half] = sum > 0.0f ? (running_max[half] + __log2f(sum)) * kLn2 : negative_infinity;
  }

  // The warp's own Q rows were read only by this warp (its fragments), so warp-level syncs suffice.
  vendor::sync_warp();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = warp_row + group_row + 8 * half;
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f) {
      const int column = 8 * f + 2 * group_column;
      *reinterpret_cast<std::uint32_t*>(shared_query +
                                        hopper::swizzled_panel_offset<Traits::kTileRows>(row, column / 8) +
                                        (column % 8) * static_cast<int>(sizeof(T))) =
          vendor::element_traits<T>::pack(output[4 * f + 2 * half], output[4 * f + 2 * half + 1]);
    }
  }
  vendor::sync_warp();

  constexpr int kWarpChunks = 16 * kChunksPerRow;
#pragma unroll
  for (int index = lane; index < kWarpChunks; index += vendor::warp_size) {
    const int row = warp_row + index / kChunksPerRow;
    const int chunk = index % kChunksPerRow;
    if (row < query_rows) {
      const uint4 data =
          *reinterpret_cast<const uint4*>(shared_query + hopper::swizzled_panel_offset<Traits::kTileRows>(row, chunk));
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

}  // namespace detail

template <class T, int HeadDim>
__global__ void __launch_bounds__(WarpgroupPrefillTraits<T, HeadDim>::kThreads,
                                  WarpgroupPrefillTraits<T, HeadDim>::kMinBlocksPerMultiprocessor)
    warpgroup_prefill_kernel(const PrefillParams<T> params) {
  detail::warpgroup_forward<T, HeadDim>(params, detail::NoTileRowMaxima{});
}

}  // namespace seer::gpu
