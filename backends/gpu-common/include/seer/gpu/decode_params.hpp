// The parameters of seer's split-KV decode kernels (seer/gpu/decode_kernel.hpp, NVIDIA, and
// seer/gpu/decode_kernel_amd.hpp, AMD), the split schedule both kernels and the merge kernel share,
// and the host validation that turns a decode call into parameters. Plain C++: no GPU headers, and
// nothing here reads device memory on the host.
//
// Work decomposition. One CTA serves (sequence b, KV head, chunk of the group's query heads, split s).
// The kept tiles of row (b, KV head) (its DecodeBlockList row, or every tile of the sequence when
// dense) are shared among `effective_splits` CTAs, either as contiguous ranges of near-equal length or
// interleaved (split s takes every effective_splits-th tile from s on; DecodeParams::contiguous_splits),
// so splits balance over the tiles a row really reads, not over the whole context. The host fixes only an upper bound
// (`splits`, the grid's x extent) from what it knows without reading device memory (the block list
// capacity, the cache's max_length, the number of multiprocessors); each row derives its own
// effective count on the device from its kept-tile count: at least kDecodeMinTilesPerSplit tiles per
// split, so rows with few blocks use one split and write their output directly. Rows with more than
// one effective split write fp32 partial outputs and log-sum-exps to the workspace; the last CTA of a
// (sequence, KV head, head chunk) to finish, found with a completion counter in the workspace, combines
// them in split order (deterministic whatever the order the CTAs finish in) and resets the counter.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "seer/core/attention_problem.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/platform.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/decode/decode_block_list.hpp"
#include "seer/decode/kv_cache.hpp"

namespace seer::gpu {

inline constexpr std::int64_t kDecodeTileKeys = 64;         // keys per K/V tile = the block size
inline constexpr std::int64_t kDecodeMaxRows = 64;          // query rows (heads x tokens) of one CTA
inline constexpr std::int64_t kDecodeMaxQueryTokens = 8;    // new tokens per sequence (speculative decoding)
inline constexpr std::int64_t kDecodeMinTilesPerSplit = 2;  // fewer and a split costs more than it saves
inline constexpr std::int64_t kDecodeMaxSplits = 128;       // bound on the workspace and the merge loop
// Most splits whose CTAs can form one thread-block cluster (16: NVIDIA's non-portable cluster size limit).
inline constexpr std::int64_t kDecodeMaxClusterSplits = 16;

inline bool decode_supports_head_dim(std::int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

template <class T>
struct DecodeParams {
  SequenceBatch<const T> q;
  SequenceBatch<T> out;
  KvCacheView<const T> cache;
  DecodeBlockListView blocks;  // valid when has_blocks
  bool has_blocks = false;     // false: dense decoding over every cached token
  bool causal = true;
  float* lse = nullptr;  // [Hq, total_q] or null
  std::int64_t lse_head_stride = 0;
  std::int64_t lse_token_stride = 0;
  float* partial_output = nullptr;  // workspace: [partial rows][splits][head_dim], normalised
  float* partial_lse = nullptr;     // workspace: [partial rows][splits], base-2 log-sum-exp
  // workspace: one completion counter per (sequence, KV head, head chunk); zero between calls
  std::uint32_t* split_counters = nullptr;
  std::int64_t group = 1;          // query heads per KV head
  std::int64_t heads_per_cta = 1;  // query heads of one group served by one CTA
  std::int64_t head_chunks = 1;    // CTAs per group: ceil(group / heads_per_cta)
  std::int64_t max_query_tokens = 1;
  std::int64_t splits = 1;       // grid x: the upper bound on any row's effective splits
  bool tile_in_one_page = true;  // contiguous cache, or pages a multiple of 64 tokens
  bool deep_pipeline = false;    // host-side: launch the one-CTA-per-multiprocessor kernel (more tiles in flight)
  // host-side: launch the kernel whose split CTAs form one thread-block cluster and merge through
  // distributed shared memory (NVIDIA sm_90; see DecodeLaunchShape::cluster_merge)
  bool cluster_merge = false;
  bool one_cta_per_multiprocessor = false;  // host-side: see DecodeLaunchShape
  // host-side: launch the deep kernel's lean version (NVIDIA; DecodeLaunchShape::lean_kernel and
  // decode_lean_kernel_applies)
  bool lean_kernel = false;
  // A CTA takes a contiguous range of its row's tiles instead of every effective_splits-th one.
  bool contiguous_splits = false;
  // K/V copies ask the L2 to evict their lines first (NVIDIA; the AMD kernel ignores it): see
  // DecodeLaunchShape::kv_evict_first.
  bool kv_evict_first = true;
  float scale_log2 = 0.0f;  // softmax_scale * log2(e)

  // Partial rows are indexed (sequence, token, query head) with the token below max_query_tokens,
  // which the host knows for padded and packed batches alike.
  SEER_HOST_DEVICE std::int64_t partial_row(std::int64_t sequence, std::int64_t token, std::int64_t head) const {
    return (sequence * max_query_tokens + token) * q.heads + head;
  }
  SEER_HOST_DEVICE std::int64_t partial_rows() const { return q.batch * max_query_tokens * q.heads; }
  SEER_HOST_DEVICE std::int64_t counter_index(std::int64_t sequence, std::int64_t kv_head, std::int64_t chunk) const {
    return (sequence * cache.heads + kv_head) * head_chunks + chunk;  // < batch x query heads
  }
};

// Tiles that row (sequence, kv_head) reads: its kept-block count, or every tile of the sequence.
// A count outside [0, capacity] (a broken list) is clamped, so no kernel reads past its row.
template <class T>
SEER_HOST_DEVICE std::int64_t decode_row_tiles(const DecodeParams<T>& params, std::int64_t sequence,
                                               std::int64_t kv_head, std::int64_t cached_tokens) {
  if (!params.has_blocks) return (cached_tokens + kDecodeTileKeys - 1) / kDecodeTileKeys;
  const std::int64_t count = params.blocks.row_size(params.blocks.row(sequence, kv_head));
  return count < 0 ? 0 : (count < params.blocks.capacity ? count : params.blocks.capacity);
}

// Splits a row with `tiles` kept tiles actually uses (1 .. splits).
SEER_HOST_DEVICE inline std::int64_t decode_effective_splits(std::int64_t tiles, std::int64_t splits) {
  const std::int64_t wanted = (tiles + kDecodeMinTilesPerSplit - 1) / kDecodeMinTilesPerSplit;
  return wanted < 1 ? 1 : (wanted < splits ? wanted : splits);
}

// Cached tokens of a sequence as the kernels use them: lengths[b] clamped to the cache capacity, so a
// broken length cannot send a kernel outside the cache.
template <class T>
SEER_HOST_DEVICE std::int64_t decode_cached_tokens(const KvCacheView<const T>& cache, std::int64_t sequence) {
  const std::int64_t length = cache.length(sequence);
  const std::int64_t capacity = cache.capacity();
  return length < 0 ? 0 : (length < capacity ? length : capacity);
}

// The launch shape the host derives from host-known sizes: query heads per CTA and the split bound.
struct DecodeLaunchShape {
  std::int64_t heads_per_cta = 1;
  std::int64_t head_chunks = 1;
  std::int64_t splits = 1;
  bool deep_pipeline = false;      // one CTA per multiprocessor with more K/V tiles in flight
  bool contiguous_splits = false;  // each CTA one contiguous range of its row's tiles (else interleaved)
  // Each K/V byte is read once per call: its L2 lines are marked evict-first, so that the call's misses
  // replace its own spent lines instead of what else the L2 holds (dirty lines of earlier kernels, each
  // of which would cost a write-back to DRAM, and data the next kernels read again).
  bool kv_evict_first = true;
  // The split CTAs of a (sequence, KV head, head chunk) form one thread-block cluster (NVIDIA sm_90, at
  // most kDecodeMaxClusterSplits splits): each CTA keeps its partial rows in shared memory and, after one
  // cluster barrier, the CTAs merge them by reading each other's shared memory, instead of writing fp32
  // partials to the workspace and counting arrivals with a fence and an atomic (three dependent L2 round
  // trips before the last CTA can store the output). Never automatic: on the H100 it measured the same as
  // the workspace merge where its clusters fit (batch 1, 8 deep splits), slower at batch 16 (7-CTA clusters
  // over several waves), and 8 clusters of 16 deep CTAs do not fit on that chip at once (a GPC with fewer
  // than 16 multiprocessors). Ignored with one split or more than kDecodeMaxClusterSplits splits.
  bool cluster_merge = false;
  // A measurement knob, never automatic (NVIDIA): the kernel is launched with more shared memory than it
  // uses, so that one CTA fits per multiprocessor: half the K/V bytes in flight of the shallow kernel
  // (do_bench's flush leaves the L2 full of dirty lines, and each line a pending copy takes is written back).
  bool one_cta_per_multiprocessor = false;
  // NVIDIA: a deep-pipeline call where decode_lean_kernel_applies runs the deep kernel's lean version
  // (sparse_decode_kernel with Lean: only the code a batch-1 CTA runs, so that a CTA whose code was evicted
  // does not wait on instruction fetches for jumps over paths it never takes; see seer/gpu/decode_kernel.hpp).
  // H100, batch 1 / 32k / density 0.1 (bench/gpu/decode/NOTES.md, run 10): 16.8 -> 16.0 us under do_bench,
  // 18.5 -> 15.7 with a clean L2, 11.7 -> 11.4 in a replayed graph. false keeps the general deep kernel.
  bool lean_kernel = true;
};

// `resident_ctas`: how many decode CTAs the device runs at once (multiprocessors x CTAs per
// multiprocessor).
//   Dense: every row of a sequence length has the same work, so the split bound minimises a time model
//   of the longest row: waves of CTAs x (tiles per CTA + 1, the fixed cost of a CTA: Q, pipeline fill,
//   epilogue); ties go to fewer splits (less workspace traffic).
//   Sparse: kept counts differ between rows (by a third between the mean and the fullest row of a
//   random 10% selection), and a single wave of CTAs then waits for the fullest rows. The bound gives
//   CTAs of about 8 kept tiles, at most about three waves of them, so the hardware scheduler fills the
//   time the short rows leave (a scheduling simulation of random rows: 70% -> 80% of the ideal at
//   batch 16, 32k, density 0.1).
//   Sparse, small batches (`deep_pipeline_ctas` > 0: the deep-pipeline kernel exists, and that many of
//   its CTAs run at once, one per multiprocessor): when at least 4 splits of every row fit in one wave
//   and a CTA's share of the longest row fits in the tiles a deep CTA holds in flight
//   (`deep_pipeline_tiles`; 0: no such limit), one wave of deep CTAs; otherwise, when at least 4 splits
//   of every row fit in one wave of shallow CTAs, one such wave. A 3-stage CTA keeps 2 tiles in flight
//   and waits a memory latency for each further pair (H100, batch 1, 32k, density 0.1: deep 16 splits
//   12.5 us, shallow 32 splits 14.0 us, graph replay); a deep CTA with more tiles than stages gains
//   nothing over two shallow ones (128k: deep 16 splits 32.0 us, shallow 33 splits 28.0 us).
//   Split order: a deep CTA issues all its tiles at once, and interleaved splits let it guess their kept
//   indices with the row's count (one memory round trip less: 32k, deep 16 splits 12.3 us interleaved,
//   12.8 contiguous); a shallow CTA walks many tiles, and contiguous ranges (tiles close together in
//   the cache) serve it better (128k, 33 splits 28.0 vs 28.4 us; batch 16 / 32k 83.9 vs 85.1 us; a deep
//   CTA of 13 tiles 28.9 vs 32.0 us). Dense calls keep interleaved tiles.
inline DecodeLaunchShape decode_launch_shape(std::int64_t batch, std::int64_t q_heads, std::int64_t kv_heads,
                                             std::int64_t max_query_tokens, std::int64_t max_cached_tokens,
                                             const DecodeBlockListView* blocks, std::int64_t resident_ctas,
                                             std::int64_t deep_pipeline_ctas = 0,
                                             std::int64_t deep_pipeline_tiles = 0) {
  DecodeLaunchShape shape;
  shape.contiguous_splits = blocks != nullptr;  // sparse and shallow: contiguous ranges (see above)
  const std::int64_t group = q_heads / kv_heads;
  const std::int64_t tokens = std::max<std::int64_t>(1, max_query_tokens);
  shape.heads_per_cta = std::min(group, std::max<std::int64_t>(1, kDecodeMaxRows / tokens));
  shape.head_chunks = (group + shape.heads_per_cta - 1) / shape.heads_per_cta;
  std::int64_t max_tiles = (max_cached_tokens + kDecodeTileKeys - 1) / kDecodeTileKeys;
  if (blocks != nullptr) max_tiles = std::min(max_tiles, blocks->capacity);
  const std::int64_t useful = decode_effective_splits(max_tiles, kDecodeMaxSplits);
  const std::int64_t ctas_per_split = std::max<std::int64_t>(1, batch * kv_heads * shape.head_chunks);
  const std::int64_t slots = std::max<std::int64_t>(1, resident_ctas);
  if (blocks != nullptr && deep_pipeline_ctas >= 4 * ctas_per_split) {
    const std::int64_t splits = std::max<std::int64_t>(1, std::min(useful, deep_pipeline_ctas / ctas_per_split));
    if (deep_pipeline_tiles <= 0 || (max_tiles + splits - 1) / splits <= deep_pipeline_tiles) {
      shape.deep_pipeline = true;
      shape.contiguous_splits = false;  // the guessed prologue
      shape.splits = splits;
      return shape;
    }
  }
  if (blocks != nullptr && slots >= 4 * ctas_per_split) {
    shape.splits = std::max<std::int64_t>(1, std::min(useful, slots / ctas_per_split));
    return shape;
  }
  if (blocks != nullptr) {
    const std::int64_t three_waves = (3 * slots + ctas_per_split - 1) / ctas_per_split;
    const std::int64_t eight_tiles_each = (max_tiles + 7) / 8;  // CTAs long enough to amortise their start
    shape.splits = std::max<std::int64_t>(1, std::min({useful, three_waves, eight_tiles_each}));
    return shape;
  }
  std::int64_t best_cost = -1;
  for (std::int64_t s = 1; s <= useful; ++s) {
    const std::int64_t waves = (ctas_per_split * s + slots - 1) / slots;
    const std::int64_t cost = waves * ((max_tiles + s - 1) / s + 1);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      shape.splits = s;
    }
  }
  return shape;
}

// Query rows of the lean deep kernel: the lower half of its 16-row tile (one-token decode with GQA groups of up to 8).
inline constexpr std::int64_t kDecodeLeanMaxRows = 8;

// Whether a deep-pipeline call may run the deep kernel's lean version (NVIDIA: sparse_decode_kernel with Lean):
// no cluster merge, a contiguous cache, at most kDecodeLeanMaxRows query rows per CTA, and every CTA's tiles
// within the `prologue_tiles` its prologue copies (no refill loop). The tile bound uses what the kernel clamps
// to, not the caller's max_length: the block list's capacity (sparse) and the cache's capacity.
template <class T>
bool decode_lean_kernel_applies(const DecodeParams<T>& params, std::int64_t prologue_tiles) {
  if (!params.deep_pipeline || params.cluster_merge || params.cache.is_paged()) return false;
  if (params.heads_per_cta * params.max_query_tokens > kDecodeLeanMaxRows) return false;
  std::int64_t tiles = (params.cache.capacity() + kDecodeTileKeys - 1) / kDecodeTileKeys;
  if (params.has_blocks) tiles = std::min(tiles, std::max<std::int64_t>(0, params.blocks.capacity));
  const std::int64_t splits = std::max<std::int64_t>(1, params.splits);
  return (tiles + splits - 1) / splits <= prologue_tiles;
}

// Workspace bytes for a launch shape: fp32 partial outputs and log-sum-exps, then the completion
// counters (batch x query heads of them bound the (sequence, KV head, head chunk) triples); none with
// one split.
inline std::int64_t decode_workspace_bytes_for(std::int64_t batch, std::int64_t q_heads, std::int64_t max_query_tokens,
                                               std::int64_t head_dim, std::int64_t splits) {
  if (splits <= 1) return 0;
  const std::int64_t rows = batch * max_query_tokens * q_heads;
  return rows * splits * (head_dim + 1) * static_cast<std::int64_t>(sizeof(float)) +
         batch * q_heads * static_cast<std::int64_t>(sizeof(std::uint32_t));
}

// Byte offset of the completion counters in the workspace (the caller zero-fills them once).
inline std::int64_t decode_workspace_counter_offset(std::int64_t batch, std::int64_t q_heads,
                                                    std::int64_t max_query_tokens, std::int64_t head_dim,
                                                    std::int64_t splits) {
  return batch * max_query_tokens * q_heads * splits * (head_dim + 1) * static_cast<std::int64_t>(sizeof(float));
}

template <class T>
void require_decode_vectors(const SequenceBatch<T>& batch, const char* name) {
  // Tiles move 16-byte chunks (8 elements): every vector must start on a 16-byte boundary.
  require(reinterpret_cast<std::uintptr_t>(batch.data) % 16 == 0, name,
          "data must be 16-byte aligned for vectorised loads");
  require(batch.dim_stride == 1, name, "dim stride is ", batch.dim_stride, ", expected 1 (contiguous head vectors)");
  require(batch.token_stride % 8 == 0 && batch.head_stride % 8 == 0 && batch.batch_stride % 8 == 0, name,
          "token, head and batch strides (", batch.token_stride, ", ", batch.head_stride, ", ", batch.batch_stride,
          ") must be multiples of 8 elements for 16-byte loads");
}

// Everything the host can check of a decode call (nothing in device memory is read).
template <class T>
void validate_decode_call(const SequenceBatch<const T>& q, const KvCacheView<const T>& cache,
                          const DecodeBlockListView* blocks, const AttentionOptions& options,
                          const SequenceBatch<T>& out, const TensorView<float, 2>& lse) {
  static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "sparse_decode takes seer::bfloat16 or seer::half elements");
  require(q.data != nullptr, "q", "data pointer is null");
  require(out.data != nullptr, "out", "data pointer is null");
  require(cache.keys != nullptr && cache.values != nullptr, "cache", "keys or values pointer is null");
  require(cache.lengths != nullptr, "cache", "lengths pointer is null");
  require(q.heads > 0, "q", "has ", q.heads, " heads, expected > 0");
  require(cache.heads > 0, "cache", "has ", cache.heads, " KV heads, expected > 0");
  require(q.heads % cache.heads == 0, "cache", "has ", cache.heads, " KV heads, which does not divide the ", q.heads,
          " query heads (GQA needs num_q_heads % num_kv_heads == 0)");
  require(decode_supports_head_dim(q.head_dim), "q", "head dim is ", q.head_dim, ", supported: 64, 128");
  require(cache.head_dim == q.head_dim, "cache", "head dim is ", cache.head_dim, ", expected q's ", q.head_dim);
  require(cache.batch == q.batch, "cache", "holds ", cache.batch, " sequences, expected q's ", q.batch);
  require(out.heads == q.heads && out.head_dim == q.head_dim, "out", "shape [.., ", out.heads, ", ", out.head_dim,
          "] differs from q's [.., ", q.heads, ", ", q.head_dim, "]");
  require(out.batch == q.batch, "out", "batch ", out.batch, " differs from q's ", q.batch);
  require(out.is_packed() == q.is_packed(), "out", "must use q's layout (padded or packed)");
  require(!out.is_packed() || out.cu_seqlens == q.cu_seqlens, "out", "packed out must share q's cu_seqlens");
  require(out.max_length == q.max_length, "out", "max length ", out.max_length, " differs from q's ", q.max_length);
  require(q.max_length >= 1 && q.max_length <= kDecodeMaxQueryTokens, "q", "max_length (query tokens per sequence) is ",
          q.max_length, ", expected 1 to ", kDecodeMaxQueryTokens);
  require_decode_vectors(q, "q");
  require_decode_vectors(out, "out");
  require(reinterpret_cast<std::uintptr_t>(cache.keys) % 16 == 0 &&
              reinterpret_cast<std::uintptr_t>(cache.values) % 16 == 0,
          "cache", "keys and values must be 16-byte aligned for vectorised loads");
  require(cache.page_stride % 8 == 0 && cache.token_stride % 8 == 0 && cache.head_stride % 8 == 0, "cache",
          "page, token and head strides (", cache.page_stride, ", ", cache.token_stride, ", ", cache.head_stride,
          ") must be multiples of 8 elements for 16-byte loads");
  require(cache.page_size > 0, "cache", "page size is ", cache.page_size, ", expected > 0");
  require(cache.max_length >= 0, "cache", "max_length is ", cache.max_length, ", expected >= 0");
  require(!cache.is_paged() || cache.capacity() <= 0x7fffffff, "cache", "pages hold ", cache.capacity(),
          " tokens per sequence (pages_per_sequence x page_size), at most 2^31 - 1 for the paged kernels");
  require(std::isfinite(options.softmax_scale) && options.softmax_scale >= 0.0, "options.softmax_scale", "is ",
          options.softmax_scale, ", expected a finite value > 0 (or 0 for 1/sqrt(head_dim))");
  require(q.batch <= 65535, "q", "batch is ", q.batch, ", at most 65535 sequences per call");
  if (lse.data != nullptr) {
    validate_view(lse, "lse");
    require(lse.extent[0] == q.heads, "lse", "has ", lse.extent[0], " rows, expected one per query head (", q.heads,
            ")");
    const std::int64_t columns = q.is_packed() ? q.stored_tokens : q.batch * q.max_length;
    require(lse.extent[1] >= columns, "lse", "has ", lse.extent[1], " columns, expected one per query token (", columns,
            ")");
  }
  if (blocks != nullptr) {
    require(blocks->key_blocks != nullptr && blocks->counts != nullptr, "blocks", "has a null device pointer");
    require(blocks->block_size == kDecodeTileKeys, "blocks", "block_size is ", blocks->block_size, ", expected ",
            kDecodeTileKeys);
    require(blocks->batch == q.batch, "blocks", "covers ", blocks->batch, " sequences, expected ", q.batch);
    require(blocks->kv_heads == cache.heads, "blocks", "has ", blocks->kv_heads, " KV heads, expected the cache's ",
            cache.heads);
    require(blocks->capacity >= 0, "blocks", "capacity is ", blocks->capacity, ", expected >= 0");
  }
}

// Validates the call, checks the workspace against the shape, and fills the kernels' parameters.
template <class T>
DecodeParams<T> make_decode_params(SequenceBatch<const T> q, KvCacheView<const T> cache,
                                   const DecodeBlockListView* blocks, const AttentionOptions& options,
                                   SequenceBatch<T> out, TensorView<float, 2> lse, const DecodeLaunchShape& shape,
                                   void* workspace, std::int64_t workspace_bytes) {
  validate_decode_call(q, cache, blocks, options, out, lse);
  DecodeParams<T> params;
  params.q = q;
  params.out = out;
  params.cache = cache;
  params.causal = options.causal;
  params.group = q.heads / cache.heads;
  params.heads_per_cta = shape.heads_per_cta;
  params.head_chunks = shape.head_chunks;
  params.max_query_tokens = q.max_length;
  params.splits = shape.splits;
  params.deep_pipeline = shape.deep_pipeline;
  params.cluster_merge = shape.cluster_merge && shape.splits > 1 && shape.splits <= kDecodeMaxClusterSplits;
  params.one_cta_per_multiprocessor = shape.one_cta_per_multiprocessor;
  params.contiguous_splits = shape.contiguous_splits;
  params.kv_evict_first = shape.kv_evict_first;
  params.tile_in_one_page = !cache.is_paged() || cache.page_size % kDecodeTileKeys == 0;
  params.scale_log2 = static_cast<float>(options.scale_for(q.head_dim) * 1.4426950408889634);
  require(cache.heads * shape.head_chunks <= 65535, "cache", "has ", cache.heads,
          " KV heads, too many for one grid (at most 65535 KV heads x head chunks)");
  if (lse.data != nullptr) {
    params.lse = lse.data;
    params.lse_head_stride = lse.stride[0];
    params.lse_token_stride = lse.stride[1];
  }
  if (blocks != nullptr) {
    params.blocks = *blocks;
    params.has_blocks = true;
  }
  const std::int64_t needed = decode_workspace_bytes_for(q.batch, q.heads, q.max_length, q.head_dim, shape.splits);
  if (needed > 0) {
    require(workspace != nullptr, "workspace", "is null but this call needs ", needed,
            " bytes (ask decode_workspace_bytes)");
    require(reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0, "workspace", "must be 16-byte aligned");
    require(workspace_bytes >= needed, "workspace", "holds ", workspace_bytes, " bytes, this call needs ", needed,
            " (ask decode_workspace_bytes)");
    params.partial_output = static_cast<float*>(workspace);
    params.partial_lse = params.partial_output + params.partial_rows() * shape.splits * q.head_dim;
    params.split_counters = reinterpret_cast<std::uint32_t*>(params.partial_lse + params.partial_rows() * shape.splits);
  }
  return params;
}

}  // namespace seer::gpu
