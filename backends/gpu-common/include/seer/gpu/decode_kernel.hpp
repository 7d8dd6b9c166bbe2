// The split-KV sparse decode kernels (flash-decoding over the kept blocks of a DecodeBlockList).
//
// One CTA serves (split s, KV head x chunk of its query heads, sequence b). The query heads of the GQA
// group and the 1-8 new tokens of the sequence are the rows of one MMA tile (row r: head r / q_len,
// token r % q_len; padded to 16, 32 or 64 rows): every K/V tile is loaded once for all of them. The
// CTA walks its range of the row's kept 64-key tiles (seer/gpu/decode_params.hpp: splits balanced over
// the kept tiles) with asynchronous copies in a kStages-deep shared-memory pipeline (their L2 lines
// marked evict-first: each K/V byte is read once per call); paged caches are
// addressed through KvCacheView::offset, once per tile when a tile cannot straddle pages, else per
// token row. Its 4 warps split the tile: with R row blocks of 16 rows, warp w takes row block w % R
// and keys [(w / R) * 64 / (4 / R), ...) of every tile, with its own online softmax (base 2, fp32).
// At the end the warps' (max, sum, output) are combined through shared memory, and the CTA either
// writes the output and log-sum-exp (a row with one effective split) or an fp32 partial; the last CTA
// of the (sequence, KV head, head chunk) to finish combines the partials by log-sum-exp (no second
// kernel: its launch and the wait for the whole decode grid cost more than the combination). On sm_90
// the split CTAs of a row may instead form one thread-block cluster (ClusterMerge): each keeps its
// partial rows in its shared memory, and after a cluster barrier all of them merge a share of the rows
// by reading each other's shared memory (no workspace round trips at the end of a call).
//
// Masking: query token t of sequence b sees cache tokens j <= BlockGeometry{q_len, length, 64,
// causal}.last_visible_key(t) = length - q_len + t; the per-element test (selects, no branch) masks keys
// only in the last tile or two (the new tokens, the ragged end). Rows past a sequence's length are
// zero-filled, never read.
//
// Shared by both vendors: the CTA plan, the epilogue and the merge. The NVIDIA kernel
// (mma.sync m16n8k16, ldmatrix, cp.async) is compiled only by nvcc; the AMD kernel
// (seer/gpu/decode_kernel_amd.hpp) by both compilers.
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/block_geometry.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"
#include "seer/gpu/decode_params.hpp"
#include "seer/gpu/tensor_core.hpp"
#include "seer/gpu/tile_copy.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

namespace decode_detail {

inline constexpr int kStagingPad = 8;  // floats after each staged output row: fewer bank conflicts, 16-byte rows
inline constexpr float kLn2 = 0.6931471805599453f;

// What one CTA computes, from its block index and the row's device-side sizes.
struct DecodeCtaWork {
  std::int64_t sequence = 0, kv_head = 0, chunk = 0, first_head = 0, heads = 0;
  std::int64_t query_tokens = 0, cached_tokens = 0, rows = 0;
  std::int64_t key_tiles = 0;                // tiles holding cached tokens
  const std::int32_t* kept_tiles = nullptr;  // null: dense
  std::int64_t effective_splits = 1, split = 0, steps = 0;
  std::int64_t first_kept = 0;   // kept_tiles[split], loaded together with the row's count
  bool contiguous = false;       // params.contiguous_splits
  std::int64_t first_index = 0;  // contiguous: the CTA's range of the row's tiles starts here
  BlockGeometry geometry;

  // Tile of step `step` of this CTA. Interleaved (the default): the row's kept tile split + step *
  // effective_splits; as balanced as contiguous ranges (within one tile), and a CTA's first kept
  // index does not depend on the row's count, so its load overlaps the count's instead of following
  // it (one memory round trip less before the first K/V copy). Contiguous: first_index + step, a
  // range of the list whose tiles lie close together in the cache (fewer address-translation pages
  // per CTA), at the price of that round trip. An index outside the sequence becomes key_tiles, a
  // tile that is all masked (its rows are zero-filled and never read).
  __device__ std::int64_t tile(std::int64_t step) const {
    const std::int64_t index = contiguous ? first_index + step : split + step * effective_splits;
    std::int64_t tile = index;
    if (kept_tiles != nullptr)
      tile = step == 0 && !contiguous ? first_kept : static_cast<std::int64_t>(kept_tiles[index]);
    return checked_tile(tile);
  }
  __device__ std::int64_t checked_tile(std::int64_t tile) const {
    return tile < 0 || tile >= key_tiles ? key_tiles : tile;
  }
  // Rows (< kDecodeMaxRows) and query tokens (1 .. kDecodeMaxQueryTokens) divide in 32 bits: a 64-bit division
  // is a branch between a 32-bit path and a long one.
  __device__ std::int64_t row_head(std::int64_t row) const {
    return first_head + static_cast<int>(row) / static_cast<int>(query_tokens);
  }
  __device__ std::int64_t row_token(std::int64_t row) const {
    return static_cast<int>(row) % static_cast<int>(query_tokens);
  }
  // Last key row `row` may see; padding rows (row >= rows) get the sequence's last token.
  __device__ std::int64_t row_limit(std::int64_t row) const {
    return row < rows ? geometry.last_visible_key(row_token(row)) : cached_tokens - 1;
  }
};

// KvCacheView::offset of a paged cache (token, head of sequence `sequence`), cheaper on the device: the per-row
// copy path runs it for each of a thread's rows of every tile, and a lone batch-1 CTA waits on its instruction
// chain. Power-of-two page sizes (1, 16, 32, 64, ...) take a shift and a mask, others a 32-bit division (a 64-bit
// one is a long software routine); the host bounds a paged cache to 2^31 - 1 tokens per sequence
// (validate_decode_call).
template <class T>
__device__ inline std::int64_t paged_offset(const KvCacheView<const T>& cache, std::int64_t sequence,
                                            std::int64_t token, std::int64_t head) {
  const unsigned position = static_cast<unsigned>(token), page_size = static_cast<unsigned>(cache.page_size);
  unsigned page_index, slot;
  if ((page_size & (page_size - 1)) == 0) {
    page_index = position >> (__ffs(static_cast<int>(page_size)) - 1);
    slot = position & (page_size - 1);
  } else {
    page_index = position / page_size;
    slot = position - page_index * page_size;
  }
  const std::int64_t page = cache.page_table[sequence * cache.pages_per_sequence + page_index];
  return page * cache.page_stride + static_cast<std::int64_t>(slot) * cache.token_stride + head * cache.head_stride;
}

// Asks for the L2 line holding `address` without waiting for it (NVIDIA; nothing on AMD).
__device__ inline void prefetch_to_l2(const void* address) {
#if defined(__HIPCC__)
  (void)address;
#else
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(address));
#endif
}

#if !defined(__HIPCC__)
// The L2 eviction policy of the K/V copies (DecodeParams::kv_evict_first): evict-first or normal.
__device__ inline std::uint64_t kv_copy_policy(bool evict_first) {
  std::uint64_t policy;
  if (evict_first) {
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  } else {
    asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
  }
  return policy;
}

// A 16-byte asynchronous copy (cp.async.cg) whose L2 lines take `policy`; with `valid` false it reads
// nothing and fills zeros.
__device__ inline void copy_kv_16_bytes(void* shared_destination, const void* global_source, std::uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(
                   vendor::shared_address(shared_destination)),
               "l"(global_source), "l"(policy));
}
__device__ inline void copy_kv_16_bytes(void* shared_destination, const void* global_source, std::uint64_t policy,
                                        bool valid) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(
                   vendor::shared_address(shared_destination)),
               "l"(global_source), "r"(valid ? 16 : 0), "l"(policy));
}

// The copy policy of detail::load_tile_async (seer/gpu/tile_copy.hpp) for K/V tiles: the calls' L2 policy.
struct KvTileCopy {
  std::uint64_t policy;
  __device__ void operator()(void* destination, const void* source) const {
    copy_kv_16_bytes(destination, source, policy);
  }
  __device__ void operator()(void* destination, const void* source, bool valid) const {
    copy_kv_16_bytes(destination, source, policy, valid);
  }
};
#endif  // !__HIPCC__

// Fills `work` for this CTA; false when it has nothing to do (a split beyond the row's effective
// splits, or a sequence without query tokens). `guessed[k]` receives the kept index of step k of a row
// that uses all `splits` with interleaved splits (kept_tiles[split + k * splits]), read together with the
// row's count: a long row (the common case of a small batch) has effective splits == splits, and its
// first copies then need no second memory round trip (guessed[0] = first_kept holds for any row).
template <class T, int GuessedSteps>
__device__ inline bool plan_decode_cta(const DecodeParams<T>& params, DecodeCtaWork& work,
                                       std::int32_t (&guessed)[GuessedSteps]) {
  work.sequence = blockIdx.z;
  const unsigned head_chunks = static_cast<unsigned>(params.head_chunks);  // <= 65535 (make_decode_params)
  work.kv_head = blockIdx.y / head_chunks;
  work.chunk = blockIdx.y % head_chunks;
  work.split = blockIdx.x;
  // Every load of the plan first, none depending on another: one memory round trip before the copies.
  const std::int64_t query_tokens = params.q.length(work.sequence);
  const std::int64_t length = params.cache.length(work.sequence);
  std::int64_t count = 0;
  if (params.has_blocks) {
    const std::int64_t row = params.blocks.row(work.sequence, work.kv_head);
    work.kept_tiles = params.blocks.row_begin(row);
    count = params.blocks.row_size(row);
    // Indices past the capacity read a valid address (used only when split < effective splits <= count).
    const std::int64_t capacity = params.blocks.capacity;
#pragma unroll
    for (int step = 0; step < GuessedSteps; ++step) {
      const std::int64_t index = work.split + step * params.splits;
      guessed[step] = *(index < capacity ? work.kept_tiles + index : params.blocks.counts + row);
    }
    work.first_kept = guessed[0];
    // Contiguous splits: the range's start needs the count (a second round trip); meanwhile the L2
    // fetches the line where it starts if the row is about as long as the capacity.
    if (params.contiguous_splits && capacity > 0)
      prefetch_to_l2(work.kept_tiles + work.split * capacity / params.splits);
  }

  const std::int64_t chunk = work.chunk;
  // More tokens than max_query_tokens breaks the caller's contract; clamping keeps the CTA inside its tile.
  work.query_tokens = query_tokens > params.max_query_tokens ? params.max_query_tokens : query_tokens;
  if (work.query_tokens <= 0) return false;
  work.first_head = work.kv_head * params.group + chunk * params.heads_per_cta;
  const std::int64_t remaining = params.group - chunk * params.heads_per_cta;
  work.heads = remaining < params.heads_per_cta ? remaining : params.heads_per_cta;
  work.rows = work.heads * work.query_tokens;
  // decode_cached_tokens and decode_row_tiles (decode_params.hpp) on the values loaded above.
  const std::int64_t capacity = params.cache.capacity();
  work.cached_tokens = length < 0 ? 0 : (length < capacity ? length : capacity);
  work.geometry = BlockGeometry{work.query_tokens, work.cached_tokens, kDecodeTileKeys, params.causal};
  work.key_tiles = (work.cached_tokens + kDecodeTileKeys - 1) / kDecodeTileKeys;
  const std::int64_t tiles = !params.has_blocks ? work.key_tiles
                             : count < 0        ? 0
                                                : (count < params.blocks.capacity ? count : params.blocks.capacity);
  work.effective_splits = decode_effective_splits(tiles, params.splits);
  if (work.split >= work.effective_splits) return false;
  work.contiguous = params.contiguous_splits;
  if (work.contiguous) {  // ranges of floor / ceil(tiles / effective splits) >= 1 tiles
    work.first_index = work.split * tiles / work.effective_splits;
    work.steps = (work.split + 1) * tiles / work.effective_splits - work.first_index;
  } else {
    work.steps = (tiles - work.split + work.effective_splits - 1) / work.effective_splits;
  }
  return true;
}

template <class T>
__device__ inline bool plan_decode_cta(const DecodeParams<T>& params, DecodeCtaWork& work) {
  std::int32_t first_kept[1];
  return plan_decode_cta(params, work, first_kept);
}

// Stores 4 consecutive output elements (8 bytes).
template <class T>
__device__ inline void store_four(T* destination, float a, float b, float c, float d) {
  uint2 packed;
  packed.x = vendor::element_traits<T>::pack(a, b);
  packed.y = vendor::element_traits<T>::pack(c, d);
  *reinterpret_cast<uint2*>(destination) = packed;
}

// A load that reads the L2, not a possibly stale L1 line: partials written by other CTAs (after the
// fence and the completion counter that order them before this read).
__device__ inline float4 load_partial(const float* address) {
#if defined(__HIPCC__)
  return *reinterpret_cast<const float4*>(address);  // the acquire fence invalidates AMD's vector L1
#else
  return __ldcg(reinterpret_cast<const float4*>(address));
#endif
}
__device__ inline float load_partial_lse(const float* address) {
#if defined(__HIPCC__)
  return *address;
#else
  return __ldcg(address);
#endif
}

// Combines the partials of one row over its `splits` effective splits, 4 output dims (quad) per call:
// out = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m), with load_lse(s) the base-2 log-sum-exp and
// load_output(s) the quad of split s. Splits are read kMergeBatch at a time, all loads of a batch issued
// before their first use (one memory round trip per batch: 16, the deep kernel's splits at batch 1), always
// in split order (the result does not depend on which CTA finished last).
// Returns the normalised quad; `log2_sum_exp` receives the row's (-inf when it saw no key).
template <class LoadLse, class LoadOutput>
__device__ inline float4 combine_partials(std::int64_t splits, const LoadLse& load_lse, const LoadOutput& load_output,
                                          float& log2_sum_exp) {
  constexpr int kMergeBatch = 16;
  const float negative_infinity = -__int_as_float(0x7f800000);
  float peak = negative_infinity, sum = 0.0f, o0 = 0.0f, o1 = 0.0f, o2 = 0.0f, o3 = 0.0f;
  for (std::int64_t first = 0; first < splits; first += kMergeBatch) {
    float lse[kMergeBatch];
    float4 o[kMergeBatch];
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      const bool valid = first + i < splits;
      lse[i] = valid ? load_lse(first + i) : negative_infinity;
      o[i] = valid ? load_output(first + i) : make_float4(0, 0, 0, 0);
    }
    float batch_peak = peak;
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) batch_peak = fmaxf(batch_peak, lse[i]);
    const float base = batch_peak == negative_infinity ? 0.0f : batch_peak;  // no -inf - -inf
    const float rescale = vendor::fast_exp2(peak - base);
    sum *= rescale;
    o0 *= rescale;
    o1 *= rescale;
    o2 *= rescale;
    o3 *= rescale;
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      const float weight = vendor::fast_exp2(lse[i] - base);
      sum += weight;
      o0 += o[i].x * weight;
      o1 += o[i].y * weight;
      o2 += o[i].z * weight;
      o3 += o[i].w * weight;
    }
    peak = batch_peak;
  }
  const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
  log2_sum_exp = sum > 0.0f ? peak + __log2f(sum) : negative_infinity;
  return make_float4(o0 * inverse, o1 * inverse, o2 * inverse, o3 * inverse);
}

// Stores a merged quad of (sequence, token, head) and, for the first quad, its natural-log LSE.
template <class T>
__device__ inline void store_merged_quad(const DecodeParams<T>& params, std::int64_t sequence, std::int64_t token,
                                         std::int64_t head, int quad, float4 o, float log2_sum_exp) {
  const float negative_infinity = -__int_as_float(0x7f800000);
  store_four(params.out.vector(sequence, token, head) + 4 * quad, o.x, o.y, o.z, o.w);
  if (quad == 0 && params.lse != nullptr)
    params.lse[head * params.lse_head_stride + (params.q.start(sequence) + token) * params.lse_token_stride] =
        log2_sum_exp == negative_infinity ? negative_infinity : log2_sum_exp * kLn2;
}

// Merges one (sequence, token, head) row's partials from the workspace (combine_partials).
template <class T, int HeadDim>
__device__ inline void merge_partial_row(const DecodeParams<T>& params, std::int64_t sequence, std::int64_t token,
                                         std::int64_t head, int quad, std::int64_t splits) {
  const std::int64_t row = params.partial_row(sequence, token, head);
  const float* const lses = params.partial_lse + row * params.splits;
  const float* const partials = params.partial_output + row * params.splits * HeadDim + 4 * quad;
  float log2_sum_exp;
  const float4 o = combine_partials(
      splits, [&](std::int64_t split) { return load_partial_lse(lses + split); },
      [&](std::int64_t split) { return load_partial(partials + split * HeadDim); }, log2_sum_exp);
  store_merged_quad(params, sequence, token, head, quad, o, log2_sum_exp);
}

// Where a CTA of a cluster merge keeps its normalised partial rows ([rows][HeadDim]) and their base-2
// log-sum-exps, in its own shared memory (the same offsets in every CTA of the cluster).
struct ClusterPartials {
  float* outputs = nullptr;
  float* lses = nullptr;
};

#if !defined(__HIPCC__)
// ---- thread-block clusters (sm_90): the split CTAs of a row merge through distributed shared memory ----

// Every thread of every CTA of the cluster arrives; returns once all have. Release / acquire: shared
// memory written before it by any CTA of the cluster is visible after it to all of them.
__device__ inline void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// The shared::cluster address of `local` (this CTA's shared memory) in the CTA of cluster rank `rank`.
__device__ inline std::uint32_t cluster_shared_address(const void* local, std::uint32_t rank) {
  std::uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(vendor::shared_address(local)), "r"(rank));
  return remote;
}
__device__ inline float load_cluster_float(std::uint32_t address) {
  float value;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(value) : "r"(address) : "memory");
  return value;
}
__device__ inline float4 load_cluster_float4(std::uint32_t address) {
  float4 value;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(value.x), "=f"(value.y), "=f"(value.z), "=f"(value.w)
               : "r"(address)
               : "memory");
  return value;
}

// The cluster merge: the grid's x extent (params.splits) is the cluster, cluster rank = blockIdx.x = the
// split. After one cluster barrier every CTA of the cluster, those beyond the row's effective splits too,
// merges an equal share of the (row, quad) items from the effective splits' shared memories and stores
// them; a second barrier keeps each CTA's shared memory alive until every CTA has read it. Every thread of
// every CTA of the cluster calls this (it holds cluster-wide barriers).
template <class T, int HeadDim>
__device__ inline void merge_cluster_rows(const DecodeParams<T>& params, const DecodeCtaWork& work,
                                          const ClusterPartials& partials) {
  constexpr int kQuads = HeadDim / 4;
  cluster_barrier();  // every effective split's partial rows are in its shared memory
  const int items = static_cast<int>(work.rows) * kQuads;
  const int ctas = static_cast<int>(params.splits), rank = static_cast<int>(blockIdx.x);
  const int last = (rank + 1) * items / ctas;
  for (int item = rank * items / ctas + static_cast<int>(threadIdx.x); item < last;
       item += static_cast<int>(blockDim.x)) {
    const int row = item / kQuads, quad = item % kQuads;
    float log2_sum_exp;
    const float4 o = combine_partials(
        work.effective_splits,
        [&](std::int64_t split) {
          return load_cluster_float(cluster_shared_address(partials.lses + row, static_cast<std::uint32_t>(split)));
        },
        [&](std::int64_t split) {
          return load_cluster_float4(
              cluster_shared_address(partials.outputs + row * HeadDim + 4 * quad, static_cast<std::uint32_t>(split)));
        },
        log2_sum_exp);
    store_merged_quad(params, work.sequence, work.row_token(row), work.row_head(row), quad, o, log2_sum_exp);
  }
  cluster_barrier();  // no CTA leaves (its shared memory with it) while another may still read it
}
#endif  // !__HIPCC__

// The epilogue of a decode CTA. Warp slot w staged, for its 16 rows of row block w % RowBlocks, the
// running maximum (log2 units), the row sum and the unnormalised output (stride HeadDim + kStagingPad).
// Rows combine their KeyGroups slots, then go to the output (one effective split) or the workspace;
// in the second case the CTA counts itself done, and the last of the effective splits to do so merges
// every split's partial. With ClusterMerge (NVIDIA) the partial rows go to this CTA's `cluster_partials`
// instead, and the cluster's CTAs merge them together (merge_cluster_rows). Every thread of the CTA calls
// this (it holds block-wide barriers; with ClusterMerge and more than one effective split, cluster-wide).
template <class T, int HeadDim, int RowBlocks, int KeyGroups, bool ClusterMerge = false>
__device__ inline void write_decode_rows(const DecodeParams<T>& params, const DecodeCtaWork& work, const float* maxima,
                                         const float* sums, const float* outputs,
                                         const ClusterPartials& cluster_partials = ClusterPartials{}) {
  constexpr int kQuads = HeadDim / 4;
  constexpr int kStride = HeadDim + kStagingPad;
  const float negative_infinity = -__int_as_float(0x7f800000);
  const bool direct = work.effective_splits == 1;
  const int items = static_cast<int>(work.rows) * kQuads;
  for (int item = static_cast<int>(threadIdx.x); item < items; item += static_cast<int>(blockDim.x)) {
    const int row = item / kQuads, quad = item % kQuads;
    const int row_block = row / 16, row_in_block = row % 16;
    float peak = negative_infinity;
#pragma unroll
    for (int group = 0; group < KeyGroups; ++group)
      peak = fmaxf(peak, maxima[(group * RowBlocks + row_block) * 16 + row_in_block]);
    const float base = peak == negative_infinity ? 0.0f : peak;  // no -inf - -inf
    float sum = 0.0f, o0 = 0.0f, o1 = 0.0f, o2 = 0.0f, o3 = 0.0f;
#pragma unroll
    for (int group = 0; group < KeyGroups; ++group) {
      const int slot = (group * RowBlocks + row_block) * 16 + row_in_block;
      const float weight = vendor::fast_exp2(maxima[slot] - base);
      sum += sums[slot] * weight;
      const float4 o = *reinterpret_cast<const float4*>(outputs + slot * kStride + 4 * quad);
      o0 += o.x * weight;
      o1 += o.y * weight;
      o2 += o.z * weight;
      o3 += o.w * weight;
    }
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row that saw no kept visible key gives 0
    const float log2_sum_exp = sum > 0.0f ? peak + __log2f(sum) : negative_infinity;
    const std::int64_t head = work.row_head(row), token = work.row_token(row);
    if (direct) {
      store_four(params.out.vector(work.sequence, token, head) + 4 * quad, o0 * inverse, o1 * inverse, o2 * inverse,
                 o3 * inverse);
      if (quad == 0 && params.lse != nullptr)
        params.lse[head * params.lse_head_stride + (params.q.start(work.sequence) + token) * params.lse_token_stride] =
            sum > 0.0f ? log2_sum_exp * kLn2 : negative_infinity;
    } else if (ClusterMerge) {
      *reinterpret_cast<float4*>(cluster_partials.outputs + row * HeadDim + 4 * quad) =
          make_float4(o0 * inverse, o1 * inverse, o2 * inverse, o3 * inverse);
      if (quad == 0) cluster_partials.lses[row] = log2_sum_exp;
    } else {
      const std::int64_t partial = params.partial_row(work.sequence, token, head) * params.splits + work.split;
      *reinterpret_cast<float4*>(params.partial_output + partial * HeadDim + 4 * quad) =
          make_float4(o0 * inverse, o1 * inverse, o2 * inverse, o3 * inverse);
      if (quad == 0) params.partial_lse[partial] = log2_sum_exp;
    }
  }
  if (direct) return;  // uniform over the CTA (and over the cluster: every CTA of it serves the same row)
#if !defined(__HIPCC__)
  if constexpr (ClusterMerge) {
    merge_cluster_rows<T, HeadDim>(params, work, cluster_partials);
    return;
  }
#endif

  // Completion count: each thread's partial stores are made visible device-wide (fence) before the
  // CTA's arrival is counted; the CTA whose arrival completes the count merges, after an acquiring
  // fence, and puts the counter back to zero for the next call (no other CTA of this launch touches
  // it again, and the next launch is ordered after this one).
  __threadfence();
  __syncthreads();
  bool last = false;
  if (threadIdx.x == 0) {
    std::uint32_t* const counter =
        params.split_counters + params.counter_index(work.sequence, work.kv_head, work.chunk);
    const std::uint32_t arrived = atomicAdd(counter, 1u) + 1u;
    last = arrived == static_cast<std::uint32_t>(work.effective_splits);
    if (last) *counter = 0u;
  }
  if (__syncthreads_or(last ? 1 : 0) == 0) return;
  __threadfence();
  for (int item = static_cast<int>(threadIdx.x); item < items; item += static_cast<int>(blockDim.x)) {
    const int row = item / kQuads, quad = item % kQuads;
    merge_partial_row<T, HeadDim>(params, work.sequence, work.row_token(row), work.row_head(row), quad,
                                  work.effective_splits);
  }
}

}  // namespace decode_detail

// Tile shapes and the shared-memory budget of the NVIDIA kernel (RowBlocks: 16-row blocks of the
// query tile, 1, 2 or 4; Deep: the one-CTA-per-multiprocessor variant for small grids).
template <class T, int HeadDim, int RowBlocks, bool Deep = false>
struct DecodeTraits {
  static_assert(HeadDim == 64 || HeadDim == 128, "the decode kernel supports head dims 64 and 128");
  static_assert(RowBlocks == 1 || RowBlocks == 2 || RowBlocks == 4, "query tiles have 16, 32 or 64 rows");
  static constexpr int kTileRows = 64;  // keys per K/V tile (the name detail::load_tile_async reads)
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBlocks = RowBlocks;
  static constexpr int kKeyGroups = kWarps / RowBlocks;
  static constexpr int kKeysPerWarp = kTileRows / kKeyGroups;  // 16, 32 or 64
  static constexpr int kQueryRows = 16 * RowBlocks;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks
  static constexpr int kTileElements = kTileRows * HeadDim;
  // Tiles in flight: two or three 32 KB K+V tiles per CTA at head dim 128 keep enough bytes moving
  // with 2 CTAs per multiprocessor and many CTAs. A small grid (batch 1: 8 KV heads x splits) has one
  // CTA per multiprocessor at most, which then holds 5 tiles in flight (7 at head dim 64): a CTA of
  // up to that many tiles issues all its loads at once instead of waiting a memory latency per pair.
  static constexpr int kStages = Deep ? (HeadDim <= 64 ? 8 : 6) : (HeadDim <= 64 ? 4 : 3);
  static constexpr int kCtasPerMultiprocessor = Deep ? 1 : 2;
  static constexpr int kQueryBytes = kQueryRows * HeadDim * static_cast<int>(sizeof(T));
  static constexpr int kPipelineBytes = kStages * 2 * kTileElements * static_cast<int>(sizeof(T));
  static constexpr int kStagingBytes = kWarps * 16 * (HeadDim + decode_detail::kStagingPad + 2) * 4;
  static constexpr int kSharedBytes = kQueryBytes + (kPipelineBytes > kStagingBytes ? kPipelineBytes : kStagingBytes);
  // A cluster merge keeps the CTA's normalised partial rows ([kQueryRows][HeadDim]) and their log-sum-exps
  // in the tile buffers, after the staging area (the tiles are done by then; the staging is read meanwhile).
  static constexpr int kClusterPartialsOffset = kStagingBytes;
  static constexpr int kClusterPartialsBytes = kQueryRows * (HeadDim + 1) * 4;
  static_assert(kClusterPartialsOffset % 16 == 0 && kClusterPartialsOffset + kClusterPartialsBytes <= kPipelineBytes,
                "the cluster merge's partial rows must fit in the tile buffers after the staging area");
};

#if !defined(__HIPCC__)

// ClusterMerge: launched with the grid's x extent (the splits) as its thread-block cluster; split rows
// merge through distributed shared memory (decode_detail::merge_cluster_rows) instead of the workspace.
// Lean (DecodeLaunchShape::lean_kernel, the default on NVIDIA; H100 NOTES run 10): the deep kernel's batch-1 version,
// launched only where decode_lean_kernel_applies (decode_params.hpp): at most 8 query rows (the tile loop
// without its upper, padding half), a contiguous cache (one copy path), and every CTA's tiles copied by the
// prologue (one tile loop, no refills). A lone CTA runs its code once and fetches it cold (after do_bench's L2
// flush, from DRAM), and ptxas lays the general kernel out in its own order (H100 SASS: the batch-1 path jumps
// 19-30 KB ahead three times, over code it never runs); the lean kernel holds only what such a CTA runs.
template <class T, int HeadDim, int RowBlocks, bool Deep, bool ClusterMerge = false, bool Lean = false>
__global__ void __launch_bounds__(DecodeTraits<T, HeadDim, RowBlocks, Deep>::kThreads,
                                  DecodeTraits<T, HeadDim, RowBlocks, Deep>::kCtasPerMultiprocessor)
    sparse_decode_kernel(const DecodeParams<T> params) {
  using Traits = DecodeTraits<T, HeadDim, RowBlocks, Deep>;
  using Mma = matrix_multiply_accumulate<T>;
  static_assert(!Lean || (Deep && RowBlocks == 1 && !ClusterMerge), "the lean kernel is a deep one-row-block kernel");
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kStages = Traits::kStages;
  constexpr int kKeysPerWarp = Traits::kKeysPerWarp;
  constexpr int kKeyFragments = kKeysPerWarp / 8;  // n8 accumulator tiles of the warp's scores
  constexpr int kDimFragments = HeadDim / 8;       // n8 accumulator tiles of the output row
  constexpr int kDimSteps = HeadDim / 16;          // k16 steps of Q * K^T
  const float negative_infinity = -__int_as_float(0x7f800000);

  extern __shared__ __align__(128) unsigned char decode_shared_bytes[];
  T* const shared_query = reinterpret_cast<T*>(decode_shared_bytes);
  T* const shared_tiles = reinterpret_cast<T*>(decode_shared_bytes + Traits::kQueryBytes);
  decode_detail::ClusterPartials cluster_partials;
  if constexpr (ClusterMerge) {
    cluster_partials.outputs =
        reinterpret_cast<float*>(decode_shared_bytes + Traits::kQueryBytes + Traits::kClusterPartialsOffset);
    cluster_partials.lses = cluster_partials.outputs + Traits::kQueryRows * HeadDim;
  }

  // The shallow kernel is launched after the kernel before it in the stream (vendor::launch_after_prior_grid;
  // sparse_decode.hpp): its CTAs may become resident while that kernel drains, and touch no memory (queries,
  // cache, block lists, the split counters the previous call put back) until it has finished. The next kernel
  // may then launch at once: every CTA of this grid is resident by the time all of them have allowed it, and it
  // waits for this grid likewise. The deep kernel (one wave) is launched plainly and holds neither instruction:
  // with them its batch-1 calls measured 0.3-0.4 us slower in a replayed graph, even when launched plainly
  // (H100, bench/gpu/decode/NOTES.md, run 13).
  if constexpr (!Deep) {
    vendor::wait_for_prior_grid();
    vendor::allow_dependent_launch();
  }

  decode_detail::DecodeCtaWork work;
  std::int32_t guessed_tiles[kStages - 1];  // the prologue's kept indices, if the row uses every split
  if (!decode_detail::plan_decode_cta(params, work, guessed_tiles)) {
    // In a cluster, a split beyond the row's effective ones still takes its share of the merge (and its
    // barriers); the whole cluster serves one row, so this test is uniform over it.
    if constexpr (ClusterMerge)
      if (work.query_tokens > 0 && work.effective_splits > 1)
        decode_detail::merge_cluster_rows<T, HeadDim>(params, work, cluster_partials);
    return;
  }
  // The launch guarantees this (decode_lean_kernel_applies); were it broken, the loop would read buffers that
  // no copy filled.
  if constexpr (Lean) work.steps = work.steps < kStages - 1 ? work.steps : kStages - 1;
  const int thread = static_cast<int>(threadIdx.x);

  // ---- Q: the group's rows, zeros for the padding rows. The sequence's first row is located once (each
  // copy's memory clobber would reload a packed batch's offset for every row), in a fixed number of passes ----
  static_assert(Traits::kQueryRows * kChunksPerRow % Traits::kThreads == 0, "Q copies must cover whole passes");
  const T* const query_base = params.q.vector(work.sequence, 0, work.first_head);
#pragma unroll
  for (int pass = 0; pass < Traits::kQueryRows * kChunksPerRow / Traits::kThreads; ++pass) {
    const int index = thread + pass * Traits::kThreads;
    const int row = index / kChunksPerRow, chunk = index % kChunksPerRow;
    const bool valid = row < work.rows;
    const T* source = valid ? query_base + work.row_token(row) * params.q.token_stride +
                                  (work.row_head(row) - work.first_head) * params.q.head_stride + chunk * 8
                            : params.q.data;
    vendor::copy_async_16_bytes(shared_query + swizzled_offset<kChunksPerRow>(row, chunk), source, valid);
  }

  const KvCacheView<const T>& cache = params.cache;
  const std::uint64_t kv_policy = decode_detail::kv_copy_policy(params.kv_evict_first);
  // A tile of a contiguous cache: one address (KvCacheView::offset of a contiguous cache), no page lookup; its
  // first `rows` rows lie inside the sequence, the others are zero-filled.
  auto load_contiguous_tile = [&](std::int64_t tile, int stage, std::int64_t rows) {
    T* const keys = shared_tiles + stage * 2 * Traits::kTileElements;
    const std::int64_t offset = rows > 0 ? work.sequence * cache.page_stride +
                                               tile * Traits::kTileRows * cache.token_stride +
                                               work.kv_head * cache.head_stride
                                         : 0;
    const decode_detail::KvTileCopy copy{kv_policy};
    detail::load_tile_async<Traits>(keys, cache.keys + offset, cache.token_stride, rows, copy);
    detail::load_tile_async<Traits>(keys + Traits::kTileElements, cache.values + offset, cache.token_stride, rows,
                                    copy);
  };
  // The common tile: a contiguous cache and all 64 rows inside the sequence (no predicates).
  auto load_full_tile = [&](std::int64_t tile, int stage) { load_contiguous_tile(tile, stage, Traits::kTileRows); };
  // Paged caches whose pages are smaller than a tile (or not a multiple of it): each token row has its own page.
  // A tile's rows are looked up before any of its copies: a copy is an asm statement with a memory clobber, so a
  // lookup after one would wait for it, a page-table round trip per row (H100, pages of 16 tokens, batch 16 / 128k /
  // density 0.1: 437 us against 296 for a contiguous cache; NOTES run 16). Thread t copies chunk t % kChunksPerRow
  // of rows t / kChunksPerRow + pass * kRowsPerPass.
  constexpr int kRowsPerPass = Traits::kThreads / kChunksPerRow;
  constexpr int kRowPasses = Traits::kTileRows / kRowsPerPass;
  const int row_chunk = thread % kChunksPerRow, row_first = thread / kChunksPerRow;
  // The element offsets of this thread's rows of `tile` (0 for rows outside the sequence).
  auto look_up_rows = [&](std::int64_t tile, std::int64_t(&offsets)[kRowPasses]) {
#pragma unroll
    for (int pass = 0; pass < kRowPasses; ++pass) {
      const std::int64_t token = tile * Traits::kTileRows + row_first + pass * kRowsPerPass;
      offsets[pass] =
          token < work.cached_tokens ? decode_detail::paged_offset(cache, work.sequence, token, work.kv_head) : 0;
    }
  };
  // Copies this thread's rows of the tile of `stage`, row pass p from element offset `offset(p)`; the first
  // `valid_rows` rows lie inside the sequence, the others are zero-filled.
  auto copy_rows = [&](int stage, std::int64_t valid_rows, auto offset) {
    T* const keys = shared_tiles + stage * 2 * Traits::kTileElements;
#pragma unroll
    for (int pass = 0; pass < kRowPasses; ++pass) {
      const int row = row_first + pass * kRowsPerPass;
      const std::int64_t source = offset(pass) + row_chunk * 8;
      const int destination = swizzled_offset<kChunksPerRow>(row, row_chunk);
      decode_detail::copy_kv_16_bytes(keys + destination, cache.keys + source, kv_policy, row < valid_rows);
      decode_detail::copy_kv_16_bytes(keys + Traits::kTileElements + destination, cache.values + source, kv_policy,
                                      row < valid_rows);
    }
  };
  auto load_tile = [&](std::int64_t tile, int stage) {
    T* const keys = shared_tiles + stage * 2 * Traits::kTileElements;
    T* const values = keys + Traits::kTileElements;
    const std::int64_t first_key = tile * Traits::kTileRows;
    const std::int64_t valid_rows = work.cached_tokens - first_key;
    // The common tile (a contiguous cache, 64 rows inside the sequence) without predicates or page lookup.
    if (__builtin_expect(!cache.is_paged() && valid_rows >= Traits::kTileRows, 1)) {
      load_full_tile(tile, stage);
      return;
    }
    if (params.tile_in_one_page) {  // one address per tile, rows token_stride apart
      const std::int64_t offset = valid_rows <= 0 ? 0
                                  : cache.is_paged()
                                      ? decode_detail::paged_offset(cache, work.sequence, first_key, work.kv_head)
                                      : cache.offset(work.sequence, first_key, work.kv_head);
      const decode_detail::KvTileCopy copy{kv_policy};
      detail::load_tile_async<Traits>(keys, cache.keys + offset, cache.token_stride, valid_rows, copy);
      detail::load_tile_async<Traits>(values, cache.values + offset, cache.token_stride, valid_rows, copy);
      return;
    }
    std::int64_t offsets[kRowPasses];
    look_up_rows(tile, offsets);
    copy_rows(stage, valid_rows, [&](int pass) { return offsets[pass]; });
  };

  // ---- pipeline prologue: Q and the first kStages - 1 tiles, one commit group each. Their
  // kept indices are all known before the first copy (a copy is an asm statement with a memory clobber,
  // which would otherwise order each index load after the previous tile's copies): guessed with the
  // row's count when the row uses every split, else read now (one more memory round trip). The copies
  // themselves run in a loop that is not unrolled: a CTA executes its prologue once, and unrolled it was
  // most of the kernel's code (H100, deep D128 kernel: 181 KB of code, 84 KB rolled; batch 16 / 128k
  // 300 -> 292 us per call, batch 1 / 32k unchanged); the indices then live in local memory (L1) ----
  std::int64_t prologue_tiles[kStages - 1];
  if (work.kept_tiles != nullptr && !work.contiguous && work.effective_splits == params.splits) {
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage)
      prologue_tiles[stage] = stage < work.steps ? work.checked_tile(guessed_tiles[stage]) : 0;
  } else {
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage) prologue_tiles[stage] = stage < work.steps ? work.tile(stage) : 0;
  }
  if constexpr (Lean) {
    // A contiguous cache (the launch's condition): one address per tile, the ragged end's rows predicated.
#pragma unroll 1
    for (int stage = 0; stage < kStages - 1; ++stage) {
      if (stage < work.steps)
        load_contiguous_tile(prologue_tiles[stage], stage,
                             work.cached_tokens - prologue_tiles[stage] * Traits::kTileRows);
      vendor::commit_async_copies();
    }
  } else {
    // Tiles ascend along a CTA's steps (unused stages hold tile 0): when the last is full, all are, and the
    // prologue needs only the common-tile copy. (The hint puts the general loop after the kernel's return in
    // the PTX; ptxas lays it out first, and the common path jumps over it: H100 SASS, run 9.)
    std::int64_t last_prologue_tile = 0;
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage)
      last_prologue_tile = prologue_tiles[stage] > last_prologue_tile ? prologue_tiles[stage] : last_prologue_tile;
    if (__builtin_expect(!cache.is_paged() && (last_prologue_tile + 1) * Traits::kTileRows <= work.cached_tokens, 1)) {
#pragma unroll 1
      for (int stage = 0; stage < kStages - 1; ++stage) {
        if (stage < work.steps) load_full_tile(prologue_tiles[stage], stage);
        vendor::commit_async_copies();
      }
    } else if (cache.is_paged()) {
      // Every row's page of every prologue tile looked up at once, into the one stage buffer the prologue does
      // not fill (the refill loop's first copy into it follows a barrier): one memory round trip for the
      // prologue, where tile-by-tile lookups would wait a round trip per tile (each after the copies before it).
      std::int64_t* const row_offsets =
          reinterpret_cast<std::int64_t*>(shared_tiles + (kStages - 1) * 2 * Traits::kTileElements);
      constexpr int kPrologueRows = (kStages - 1) * Traits::kTileRows;
#pragma unroll
      for (int pass = 0; pass < (kPrologueRows + Traits::kThreads - 1) / Traits::kThreads; ++pass) {
        const int index = thread + pass * Traits::kThreads;
        const int stage = index / Traits::kTileRows;
        const std::int64_t token =
            prologue_tiles[stage < kStages - 1 ? stage : 0] * Traits::kTileRows + index % Traits::kTileRows;
        if (index < kPrologueRows)
          row_offsets[index] = stage < work.steps && token < work.cached_tokens
                                   ? decode_detail::paged_offset(cache, work.sequence, token, work.kv_head)
                                   : 0;
      }
      __syncthreads();
#pragma unroll 1
      for (int stage = 0; stage < kStages - 1; ++stage) {
        if (stage < work.steps)
          copy_rows(stage, work.cached_tokens - prologue_tiles[stage] * Traits::kTileRows,
                    [&](int pass) { return row_offsets[stage * Traits::kTileRows + row_first + pass * kRowsPerPass]; });
        vendor::commit_async_copies();
      }
    } else {
#pragma unroll 1
      for (int stage = 0; stage < kStages - 1; ++stage) {
        if (stage < work.steps) load_tile(prologue_tiles[stage], stage);
        vendor::commit_async_copies();
      }
    }
  }

  const int lane = vendor::lane_index();
  const int warp = vendor::warp_index();
  const int row_block = warp % RowBlocks;
  const int key_base = (warp / RowBlocks) * kKeysPerWarp;  // the warp's keys within each tile
  const int group_row = lane / 4;
  const int group_column = lane % 4;
  const int query_ldm_row = 16 * row_block + (lane % 8) + 8 * ((lane / 8) % 2);
  const int query_ldm_chunk = lane / 16;
  const int key_ldm_row = (lane % 8) + 8 * (lane / 16);
  const int key_ldm_chunk = (lane / 8) % 2;
  const int value_ldm_row = (lane % 8) + 8 * ((lane / 8) % 2);
  const int value_ldm_chunk = lane / 16;
  const int lane_low_bits = lane % 8;

  std::int64_t row_limit[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) row_limit[half] = work.row_limit(16 * row_block + group_row + 8 * half);

  std::uint32_t query_fragments[kDimSteps][4];
  float output[kDimFragments][4];
#pragma unroll
  for (int f = 0; f < kDimFragments; ++f) output[f][0] = output[f][1] = output[f][2] = output[f][3] = 0.0f;
  float running_max[2] = {negative_infinity, negative_infinity};  // scaled log2 units
  float running_sum[2] = {0.0f, 0.0f};                            // this lane's partial sums

  // The tile loop holds no data-dependent branch but the copies' refill: a lone CTA (batch 1) runs its few
  // tiles' code once, fetching each instruction line cold (after do_bench's flush, from DRAM: H100 stall
  // sampling with warm caches, 37% of the samples waited for instructions, most at the targets of jumps over
  // the mask, the rescale and the unexecuted refill blocks). So the mask and the rescale are selects and
  // multiplies on every tile, Q's fragments load before the loop, and the last kStages - 1 steps, which
  // refill nothing, run in a second copy of the loop without the copy code (a CTA of up to kStages - 1
  // tiles, the deep kernel's batch-1 case, runs only that one).
  vendor::wait_async_copies<kStages - 2>();  // Q and tile 0 landed for this thread
  __syncthreads();                           // ... for all
#pragma unroll
  for (int step_d = 0; step_d < kDimSteps; ++step_d)
    load_matrix_x4(query_fragments[step_d], shared_query + swizzled_pair_offset<kChunksPerRow>(
                                                               query_ldm_row, lane_low_bits, step_d, query_ldm_chunk));

  // A 16-row block holds query rows in its upper half (rows 8-15) only when the CTA has more than 8 rows: with
  // one row block and at most 8 rows (one-token decode, GQA groups of up to 8 heads) the upper half is
  // padding, and the tiles skip its mask and softmax (about a fifth of a tile's instructions; a lone CTA waits
  // on its instruction chain): its probabilities are zeros, its rows are never stored.
  auto process_tile = [&](std::int64_t step, auto upper_half) {
    constexpr int kHalves = decltype(upper_half)::value ? 2 : 1;
    const std::int64_t tile = work.tile(step);
    const T* const keys = shared_tiles + static_cast<int>(step % kStages) * 2 * Traits::kTileElements;
    const T* const values = keys + Traits::kTileElements;

    // ---- scores = Q * K^T: 16 rows x kKeysPerWarp keys ----
    float scores[kKeyFragments][4];
#pragma unroll
    for (int f = 0; f < kKeyFragments; ++f) scores[f][0] = scores[f][1] = scores[f][2] = scores[f][3] = 0.0f;
#pragma unroll
    for (int step_d = 0; step_d < kDimSteps; ++step_d)
#pragma unroll
      for (int pair = 0; pair < kKeyFragments / 2; ++pair) {
        std::uint32_t b[4];
        load_matrix_x4(b, keys + swizzled_pair_offset<kChunksPerRow>(key_base + 16 * pair + key_ldm_row, lane_low_bits,
                                                                     step_d, key_ldm_chunk));
        Mma::run(scores[2 * pair], query_fragments[step_d], b[0], b[1]);
        Mma::run(scores[2 * pair + 1], query_fragments[step_d], b[2], b[3]);
      }

    // ---- mask: the new tokens' causal edge and the ragged end (the last tile or two); applied to every
    // tile as selects, without a branch (on the others it keeps every key) ----
    const std::int64_t first_key = tile * Traits::kTileRows + key_base;
#pragma unroll
    for (int half = 0; half < kHalves; ++half) {
      const std::int64_t limit = row_limit[half] - first_key;
      const int last_visible = limit < -1 ? -1 : (limit > kKeysPerWarp ? kKeysPerWarp : static_cast<int>(limit));
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
#pragma unroll
        for (int c = 0; c < 2; ++c)
          if (8 * f + 2 * group_column + c > last_visible) scores[f][2 * half + c] = negative_infinity;
    }

    // ---- online softmax ----
    float rescale[2] = {1.0f, 1.0f};
#pragma unroll
    for (int half = 0; half < kHalves; ++half) {
      float tile_max = negative_infinity;
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f)
        tile_max = fmaxf(tile_max, fmaxf(scores[f][2 * half], scores[f][2 * half + 1]));
      tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 1));
      tile_max = fmaxf(tile_max, vendor::shuffle_xor(tile_max, 2));
      const float new_max = fmaxf(running_max[half], tile_max * params.scale_log2);
      const float base = new_max == negative_infinity ? 0.0f : new_max;  // no -inf - -inf
      rescale[half] = vendor::fast_exp2(running_max[half] - base);
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
      running_sum[half] = running_sum[half] * rescale[half] + tile_sum;
    }
    if constexpr (kHalves == 1) {
#pragma unroll
      for (int f = 0; f < kKeyFragments; ++f) scores[f][2] = scores[f][3] = 0.0f;
    }
    // Always rescaled (by exactly 1 when the maximum stayed): no branch in the loop.
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f) {
      output[f][0] *= rescale[0];
      output[f][1] *= rescale[0];
      if constexpr (kHalves == 2) {
        output[f][2] *= rescale[1];
        output[f][3] *= rescale[1];
      }
    }

    // ---- output += P * V ----
#pragma unroll
    for (int step_k = 0; step_k < kKeysPerWarp / 16; ++step_k) {
      std::uint32_t a[4];
      a[0] = vendor::element_traits<T>::pack(scores[2 * step_k][0], scores[2 * step_k][1]);
      a[1] = vendor::element_traits<T>::pack(scores[2 * step_k][2], scores[2 * step_k][3]);
      a[2] = vendor::element_traits<T>::pack(scores[2 * step_k + 1][0], scores[2 * step_k + 1][1]);
      a[3] = vendor::element_traits<T>::pack(scores[2 * step_k + 1][2], scores[2 * step_k + 1][3]);
#pragma unroll
      for (int pair = 0; pair < kDimFragments / 2; ++pair) {
        std::uint32_t b[4];
        load_matrix_x4_transposed(
            b, values + swizzled_pair_offset<kChunksPerRow>(key_base + 16 * step_k + value_ldm_row, lane_low_bits, pair,
                                                            value_ldm_chunk));
        Mma::run(output[2 * pair], a, b[0], b[1]);
        Mma::run(output[2 * pair + 1], a, b[2], b[3]);
      }
    }
  };

  auto run_tiles = [&](auto upper_half) {
    std::int64_t step = 0;
    if constexpr (!Lean) {  // the lean kernel's tiles all come with the prologue
      const std::int64_t refill_steps = work.steps - (kStages - 1);  // steps whose buffer refill copies a tile
      // The hint puts this loop after the kernel's return in the deep kernel's PTX (its batch-1 CTAs, of up to
      // kStages - 1 tiles, never enter it); ptxas still lays it out before the second loop, which they reach by
      // a jump over it (H100 SASS, run 9).
      if (__builtin_expect(refill_steps > 0, Deep ? 0 : 1)) {
        std::int64_t next_tile = work.tile(kStages - 1);
        for (; step < refill_steps; ++step) {
          vendor::wait_async_copies<kStages - 2>();       // tile `step` landed for this thread
          __syncthreads();                                // ... for all; every warp is done with tile step - 1
          const std::int64_t ahead = step + kStages - 1;  // refills the buffer of tile step - 1
          load_tile(next_tile, static_cast<int>(ahead % kStages));
          next_tile = ahead + 1 < work.steps ? work.tile(ahead + 1) : 0;  // its latency hides behind this tile
          vendor::commit_async_copies();
          process_tile(step, upper_half);
        }
      }
    }
    for (; step < work.steps; ++step) {
      vendor::wait_async_copies<kStages - 2>();  // tile `step` landed for this thread
      __syncthreads();                           // ... for all; every warp is done with tile step - 1
      vendor::commit_async_copies();             // an empty group: the wait above counts one group per step
      process_tile(step, upper_half);
    }
  };
  // Uniform over the CTA (the loops hold block-wide barriers).
  if constexpr (Lean) {
    run_tiles(std::false_type{});  // at most 8 rows (decode_lean_kernel_applies)
  } else if constexpr (RowBlocks == 1) {
    if (__builtin_expect(work.rows <= 8, 1)) {
      run_tiles(std::false_type{});
    } else {
      run_tiles(std::true_type{});
    }
  } else {
    run_tiles(std::true_type{});
  }
  vendor::wait_async_copies<0>();  // no copy may still target the buffers the staging reuses
  __syncthreads();                 // every warp is done with the tiles

  // ---- stage each warp's (max, sum, output) and combine ----
  float* const maxima = reinterpret_cast<float*>(shared_tiles);
  float* const sums = maxima + Traits::kWarps * 16;
  float* const staged = sums + Traits::kWarps * 16;
  constexpr int kStride = HeadDim + decode_detail::kStagingPad;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = running_sum[half];
    sum += vendor::shuffle_xor(sum, 1);
    sum += vendor::shuffle_xor(sum, 2);
    const int slot = warp * 16 + group_row + 8 * half;
    if (group_column == 0) {
      maxima[slot] = running_max[half];
      sums[slot] = sum;
    }
#pragma unroll
    for (int f = 0; f < kDimFragments; ++f)
      *reinterpret_cast<float2*>(staged + slot * kStride + 8 * f + 2 * group_column) =
          make_float2(output[f][2 * half], output[f][2 * half + 1]);
  }
  __syncthreads();
  decode_detail::write_decode_rows<T, HeadDim, RowBlocks, Traits::kKeyGroups, ClusterMerge>(params, work, maxima, sums,
                                                                                            staged, cluster_partials);
}

#endif  // !__HIPCC__

// Calls launch(std::integral_constant<int, D>{}, std::integral_constant<int, R>{}) for the compiled
// head dim D and the row blocks R (1, 2 or 4) that hold heads_per_cta x max_query_tokens rows.
template <class T, class Launch>
void dispatch_decode_kernel(const DecodeParams<T>& params, Launch&& launch) {
  const std::int64_t rows = params.heads_per_cta * params.max_query_tokens;
  auto with_rows = [&](auto head_dim) {
    if (rows <= 16) {
      launch(head_dim, std::integral_constant<int, 1>{});
    } else if (rows <= 32) {
      launch(head_dim, std::integral_constant<int, 2>{});
    } else {
      launch(head_dim, std::integral_constant<int, 4>{});
    }
  };
  if (params.q.head_dim == 64) {
    with_rows(std::integral_constant<int, 64>{});
  } else {
    with_rows(std::integral_constant<int, 128>{});
  }
}

}  // namespace seer::gpu
