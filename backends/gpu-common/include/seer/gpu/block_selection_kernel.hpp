// Stage B of the GPU gate: logits and block selection per query-block row, writing a BlockSet in
// device memory. The (S/B)^2 logit matrix never exists in global memory.
//
// block_selection_kernel: one work item is a tile of up to R consecutive query-block rows of one
// (sequence, head). Its CTA computes the tile's logits, scale * dot(Qg[m], Kg[n]) for the visible key
// blocks n of each row: on NVIDIA on tensor cores in split TF32, each warp streaming its share of the key
// features from L2 straight into registers (one load serves all R rows); on AMD with fp32 FMA tiles, the
// key features staged through shared memory 32 or 64 blocks at a time. The key features are read ~S/(B R)
// times per head from L2, so R should stay large. The logits go to a per-CTA buffer: shared memory when at
// least 4 rows fit (R = 16 up to 128k tokens on CUDA), else R = 16 rows in a slice of the workspace that only the
// CTA holding it touches (1M tokens: 16384 candidates per row, 1 MiB per slice); then each warp selects its
// rows from that buffer (rows of up to 512 candidates with their keys in registers):
//   - TopK (k = TopK::budget(geometry), forced blocks inside k), ranking the logits: a radix select on
//     the order-preserving bit pattern of the fp32 logits, 8 bits per pass, finds the k-th best key;
//     ties at that key go to the lower index, as in row_candidates.hpp's ranks_before.
//   - Threshold: softmax over the row's visible logits (fp32), keep p > tau (Threshold::keeps).
//   - Nucleus: the same softmax; a radix select on (count, probability mass) histograms finds how many
//     best-first blocks reach the mass p after the forced blocks' mass, then Nucleus's min_k / max_k rule
//     (written out in nucleus_take below, equal to looping Nucleus::wants_more), then the TopK select
//     takes that many. Masses are summed as 48-bit fixed point integers, so the result does not depend
//     on the order of the (atomic) additions: graph replays give the same BlockSet.
// Forced blocks (ForcedBlocks::is_forced, row_is_dense) are the CPU policies' own functions.
//
// block_layout_kernel runs first, one CTA per sequence: the row facts every head's row needs (RowLayout)
// and the sequences' query-block offsets.
// Writing a compressed row set needs every row's place first. TopK sizes follow from the geometry alone:
// block_layout_kernel also scans them per sequence, and the selection kernel places its rows and writes
// row_offsets itself. Threshold and Nucleus run the selection kernel twice, first counting, then writing
// (recomputing logits is cheaper than storing them); between the two, an exclusive scan over the rows
// (scan_tile_totals_kernel + scan_rows_kernel) turns sizes into row_offsets. Offsets are clamped to the
// caller's key_blocks capacity; when the kept blocks exceed it, the overflow flag is set and the clamped
// rows hold ascending prefixes, so the BlockSet stays safe to read (and the caller learns it is incomplete).
#pragma once

#include <cstdint>
#include <type_traits>

#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/platform.hpp"
#include "seer/gpu/fp32_tensor_dot.hpp"
#include "seer/gpu/gate_features_kernel.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/nucleus.hpp"
#include "seer/selection/threshold.hpp"
#include "seer/selection/top_k.hpp"

namespace seer::gpu {

#if defined(__HIPCC__)
inline constexpr int kSelectionMaxRows = 16;  // rows per work item (the FMA register tiles)
#else
inline constexpr int kSelectionMaxRows = 32;  // rows per work item: two 16-row tensor-core tiles share each key operand
#endif
inline constexpr int kSelectionWorkspaceRows = 16;       // rows per work item when the logits live in workspace
inline constexpr int kRadixBins = 256;                   // 8 bits per radix pass
inline constexpr int kScanTile = 2048;                   // rows per CTA of the row-offset scan (8 per thread)
inline constexpr int kLayoutThreads = 256;               // block_layout_kernel: the row facts of a sequence
inline constexpr double kMassScale = 281474976710656.0;  // 2^48: fixed-point unit of probability mass

// Visible key blocks of query block m that ForcedBlocks forces, in closed form (the sink prefix plus
// the diagonal range beyond it); equal to counting ForcedBlocks::is_forced over [0, visible).
SEER_HOST_DEVICE inline std::int64_t forced_block_count(const ForcedBlocks& forced, const BlockGeometry& g,
                                                        std::int64_t m, std::int64_t visible) {
  const std::int64_t sinks = forced.sink_blocks < visible ? forced.sink_blocks : visible;
  if (!forced.keep_diagonal) return sinks;
  std::int64_t first = g.diagonal_first(m), last = g.diagonal_last(m);
  if (first < sinks) first = sinks;
  if (last > visible - 1) last = visible - 1;
  return sinks + (last >= first ? last - first + 1 : 0);
}

// Blocks a TopK row keeps: the whole visible row when dense, else the forced blocks plus the best
// budget - forced others (TopK::select).
// From the row's counts (the budget is TopK::budget of its sequence):
SEER_HOST_DEVICE inline std::int64_t top_k_kept(std::int64_t visible, bool dense, std::int64_t forced_count,
                                                std::int64_t budget) {
  if (visible <= 0) return 0;
  if (dense) return visible;
  std::int64_t extra = budget - forced_count;
  if (extra < 0) extra = 0;
  if (extra > visible - forced_count) extra = visible - forced_count;
  return forced_count + extra;
}
SEER_HOST_DEVICE inline std::int64_t top_k_row_size(const TopK& policy, const ForcedBlocks& forced,
                                                    const BlockGeometry& g, std::int64_t m) {
  const std::int64_t visible = g.visible_key_blocks(m);
  if (visible <= 0) return 0;
  return top_k_kept(visible, forced.row_is_dense(g, m), forced_block_count(forced, g, m, visible), policy.budget(g));
}

// Unforced blocks Nucleus adds best-first: it keeps adding while Nucleus::wants_more(mass, count), and
// wants_more turns false for good at the first count that reaches max_k, or reaches both min_k and the
// count where the mass first reaches p (mass_count: unforced blocks needed for the mass).
SEER_HOST_DEVICE inline std::int64_t nucleus_take(const Nucleus& policy, std::int64_t forced_count,
                                                  std::int64_t mass_count, std::int64_t unforced) {
  std::int64_t wanted = policy.min_k - forced_count;
  if (wanted < mass_count) wanted = mass_count;
  const std::int64_t room = policy.max_k - forced_count;  // max_k may be INT64_MAX: no overflow, forced >= 0
  if (wanted > room) wanted = room;
  if (wanted > unforced) wanted = unforced;
  return wanted < 0 ? 0 : wanted;
}

// Where the selection writes: the BlockSetView's arrays (device memory, caller-owned).
struct SelectionOutput {
  std::int64_t* row_offsets = nullptr;  // [row bound + 1]; rows = heads * query_block_offsets[batch]
  std::int32_t* key_blocks = nullptr;   // [key_block_capacity]
  std::int64_t key_block_capacity = 0;
  std::int32_t* query_block_offsets = nullptr;  // [batch + 1]
  std::int32_t* overflow = nullptr;             // [1]: 1 when the kept blocks exceeded key_block_capacity
};

namespace detail {
struct RowView;
}

// What block_layout_kernel computes once per (sequence, query block) for every head's row (workspace of the
// plan):
// - facts: the row's visible blocks, forced bounds, dense flag and TopK budget (detail::RowView without its
//   logits), which cost 64-bit divisions and a square root, read by the selection kernel instead;
// - TopK only, where the rows go, known from the geometry alone: top_k_prefix[b * (max_query_blocks + 1) + m]
//   = kept blocks of one head's rows of sequence b before query block m (m up to the sequence's query
//   blocks: the last entry is the head's total). Row (b, h, m) starts at heads * (totals of the sequences
//   before b) + h * total_b + prefix_b(m), so the selection kernel places its rows itself: no row-size pass
//   and no scan over all rows.
struct RowLayout {
  detail::RowView* facts = nullptr;      // [batch][max_query_blocks]
  std::int64_t* top_k_prefix = nullptr;  // [batch][max_query_blocks + 1]; null unless the policy is TopK
  std::int64_t max_query_blocks = 0;
};

template <class Policy>
struct SelectionParams {
  GateFeatures features;  // read only
  GateSequences sequences;
  Policy policy;
  ForcedBlocks forced;
  SelectionOutput output;
  RowLayout layout;                // row facts; TopK: the rows' places (its selection has no count pass)
  bool write = false;              // false: count pass (row sizes into row_offsets[row + 1])
  int rows_per_item = 1;           // R <= kSelectionMaxRows, and R <= 2 * kGateThreads / key_tile
  int key_tile = 32;               // AMD: key blocks per shared tile, 32 (16 rows) or 64 (8 rows); unused on NVIDIA
  std::int64_t row_stride = 0;     // logit buffer floats per row (>= max visible key blocks)
  float* global_logits = nullptr;  // null: logits in shared memory; else [gridDim.x][R][row_stride]
  std::int64_t items = 0;          // batch * heads * item_tiles
  std::int64_t item_tiles = 0;     // ceil(max_query_blocks / R)
};

namespace detail {

// Policies that need the softmax mass histogram (8 more bytes per bin and warp).
template <class Policy>
inline constexpr bool kSelectionNeedsMass = false;
template <>
inline constexpr bool kSelectionNeedsMass<Nucleus> = true;

template <class Policy>
inline constexpr int kSelectionWarpScratchBytes = kRadixBins*(4 + (kSelectionNeedsMass<Policy> ? 8 : 0));

__device__ inline int lane_count(std::uint32_t mask) { return __popc(mask); }
__device__ inline int lane_count(std::uint64_t mask) { return __popcll(static_cast<unsigned long long>(mask)); }

__device__ inline vendor::lane_mask_t lanes_below() {
  return warp::lanes_below_mask<vendor::warp_size>(vendor::lane_index());
}

__device__ inline float warp_maximum(float value) {
  for (int offset = vendor::warp_size / 2; offset > 0; offset /= 2)
    value = fmaxf(value, vendor::shuffle_xor(value, offset));
  return value;
}
__device__ inline float warp_sum(float value) {
  for (int offset = vendor::warp_size / 2; offset > 0; offset /= 2) value += vendor::shuffle_xor(value, offset);
  return value;
}
__device__ inline std::uint64_t shuffle_xor_u64(std::uint64_t value, int offset) {
  const int low = vendor::shuffle_xor(static_cast<int>(static_cast<std::uint32_t>(value)), offset);
  const int high = vendor::shuffle_xor(static_cast<int>(static_cast<std::uint32_t>(value >> 32)), offset);
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(high)) << 32) | static_cast<std::uint32_t>(low);
}
__device__ inline std::uint64_t gather_u64(std::uint64_t value, int source_lane) {
  const int low = vendor::broadcast(static_cast<int>(static_cast<std::uint32_t>(value)), source_lane);
  const int high = vendor::broadcast(static_cast<int>(static_cast<std::uint32_t>(value >> 32)), source_lane);
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(high)) << 32) | static_cast<std::uint32_t>(low);
}
__device__ inline std::uint64_t warp_sum_u64(std::uint64_t value) {
  for (int offset = vendor::warp_size / 2; offset > 0; offset /= 2) value += shuffle_xor_u64(value, offset);
  return value;
}
// Exclusive prefix sum over the lanes in lane order (Hillis-Steele through per-lane gathers).
__device__ inline std::uint64_t warp_exclusive_sum_u64(std::uint64_t value) {
  const int lane = vendor::lane_index();
  std::uint64_t inclusive = value;
  for (int offset = 1; offset < vendor::warp_size; offset *= 2) {
    const std::uint64_t other = gather_u64(inclusive, lane >= offset ? lane - offset : 0);
    if (lane >= offset) inclusive += other;
  }
  return inclusive - value;
}

// Order-preserving key of an fp32 logit: larger logit, larger key. -0 is folded into +0 (they are equal
// logits, which rank by index).
__device__ inline std::uint32_t radix_key(float logit) {
  const std::uint32_t bits = __float_as_uint(logit == 0.0f ? 0.0f : logit);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// One row as a warp sees it.
// ForcedBlocks::is_forced(geometry, m, n) is "n < sink_blocks, or keep_diagonal and n in
// [diagonal_first(m), diagonal_last(m)]"; the row keeps the two bounds (BlockGeometry's own functions,
// evaluated once per row) because the candidate loops ask for every n, and the geometry's 64-bit
// divisions per candidate cost more than the rest of a radix pass. Candidates are counted in 32 bits
// (key block indices are int32 in a BlockSet, the plan checks it): the bounds are clamped to [0, visible],
// which keeps is_forced(n) for every candidate n and halves the instructions of the candidate loops.
// The facts depend on the sequence and the query block, not on the head: block_layout_kernel computes them
// once per (sequence, query block) into the plan's workspace (make_row_view), and the selection kernel
// reads them for each head's row (only `logits` differs).
struct RowView {
  float* logits = nullptr;  // [visible], the CTA's own buffer (keep_best overwrites it with radix keys)
  int visible = 0;
  int sinks = 0;
  int diagonal_first = 1, diagonal_last = 0;  // empty unless keep_diagonal
  std::int64_t forced_count = 0;
  std::int64_t top_k_budget = 0;  // TopK::budget of the row's sequence, when the policy is TopK
  bool dense = false;             // ForcedBlocks::row_is_dense

  __device__ void set_forced(const ForcedBlocks& forced, const BlockGeometry& geometry, std::int64_t m) {
    const auto clamp = [&](std::int64_t value) {
      return static_cast<int>(value < 0 ? 0 : value > visible ? visible : value);
    };
    sinks = clamp(forced.sink_blocks);
    forced_count = sinks;
    if (forced.keep_diagonal) {
      diagonal_first = clamp(geometry.diagonal_first(m));
      diagonal_last = clamp(geometry.diagonal_last(m) + 1) - 1;
      // forced_block_count from the bounds already at hand (the same clamps; two divisions fewer per row)
      const int first = diagonal_first > sinks ? diagonal_first : sinks;
      if (diagonal_last >= first) forced_count += diagonal_last - first + 1;
    }
  }
  __device__ bool is_forced(int n) const { return n < sinks || (n >= diagonal_first && n <= diagonal_last); }
};

template <class Policy>
__device__ inline RowView make_row_view(const BlockGeometry& g, std::int64_t m, const ForcedBlocks& forced,
                                        const Policy& policy) {
  RowView view;
  view.visible = static_cast<int>(g.visible_key_blocks(m));
  view.set_forced(forced, g, m);
  view.dense = forced.row_is_dense(g, m);
  if constexpr (std::is_same_v<Policy, TopK>) {
    view.top_k_budget = policy.budget(g);
  } else {
    static_cast<void>(policy);
  }
  return view;
}

// Result of a radix select: the unforced blocks whose key, masked, is above `prefix` are taken, and of
// those equal to it the first `ties` in index order (all of them when `ties_all`).
struct RadixCut {
  std::uint32_t prefix = 0;
  std::uint32_t mask = 0;
  std::int64_t ties = 0;
  bool ties_all = false;
};

// Replaces the row's logits, in place, by their radix keys, 0 for forced blocks (finite logits never have
// key 0): the radix passes and the final walk then read one word per candidate instead of recomputing the
// key and the forced test in every pass. The logits are not read afterwards (each warp owns its rows).
__device__ inline const std::uint32_t* logits_to_keys(const RowView& row) {
  auto* keys = reinterpret_cast<std::uint32_t*>(row.logits);
  for (int n = vendor::lane_index(); n < row.visible; n += vendor::warp_size)
    keys[n] = row.is_forced(n) ? 0u : radix_key(row.logits[n]);
  vendor::sync_warp();
  return keys;
}

// The cut that takes exactly `take` (1 <= take < unforced) unforced blocks best first, from the keys of
// logits_to_keys.
__device__ inline RadixCut radix_select_count(const std::uint32_t* keys, int visible, std::int64_t take,
                                              unsigned int* histogram) {
  constexpr int kBinsPerLane = kRadixBins / vendor::warp_size;
  const int lane = vendor::lane_index();
  RadixCut cut;
  std::int64_t need = take;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = lane; i < kRadixBins; i += vendor::warp_size) histogram[i] = 0u;
    vendor::sync_warp();
    for (int n = lane; n < visible; n += vendor::warp_size) {
      const std::uint32_t key = keys[n];
      if (key != 0u && (key & cut.mask) == cut.prefix) atomicAdd(&histogram[(key >> shift) & 0xffu], 1u);
    }
    vendor::sync_warp();
    // Lane l owns bins 255 - (l * kBinsPerLane + j): the lanes in order walk the bins from the top.
    std::uint64_t lane_total = 0;
    for (int j = 0; j < kBinsPerLane; ++j) lane_total += histogram[kRadixBins - 1 - (lane * kBinsPerLane + j)];
    std::int64_t above = static_cast<std::int64_t>(warp_exclusive_sum_u64(lane_total));
    int found_bin = -1;
    std::int64_t found_above = 0, found_count = 0;
    for (int j = 0; j < kBinsPerLane; ++j) {
      const int bin = kRadixBins - 1 - (lane * kBinsPerLane + j);
      const std::int64_t count = histogram[bin];
      if (found_bin < 0 && above < need && above + count >= need) {
        found_bin = bin;
        found_above = above;
        found_count = count;
      }
      above += count;
    }
    const vendor::lane_mask_t winners = vendor::ballot(found_bin >= 0);
    const int winner = lane_count(static_cast<vendor::lane_mask_t>((winners & (~winners + 1)) - 1));  // lowest set lane
    found_bin = vendor::broadcast(found_bin, winner);
    const std::int64_t bin_above =
        static_cast<std::int64_t>(gather_u64(static_cast<std::uint64_t>(found_above), winner));
    const std::int64_t bin_count =
        static_cast<std::int64_t>(gather_u64(static_cast<std::uint64_t>(found_count), winner));
    need -= bin_above;
    cut.prefix |= static_cast<std::uint32_t>(found_bin) << shift;
    cut.mask |= 0xffu << shift;
    vendor::sync_warp();  // the histogram is reused by the next pass
    if (bin_count == need) {
      cut.ties_all = true;
      return cut;
    }
  }
  cut.ties = need;
  return cut;
}

// Unforced blocks that the best-first walk needs for their probability mass to reach `need_mass`
// (fixed point), or `unforced` when all of them do not.
__device__ inline std::int64_t radix_select_mass(const RowView& row, float peak, float inverse_total,
                                                 std::uint64_t need_mass, std::int64_t unforced,
                                                 unsigned int* histogram, unsigned long long* mass_histogram) {
  constexpr int kBinsPerLane = kRadixBins / vendor::warp_size;
  const int lane = vendor::lane_index();
  std::uint32_t prefix = 0, mask = 0;
  std::int64_t taken = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = lane; i < kRadixBins; i += vendor::warp_size) {
      histogram[i] = 0u;
      mass_histogram[i] = 0ull;
    }
    vendor::sync_warp();
    for (int n = lane; n < row.visible; n += vendor::warp_size) {
      const float logit = row.logits[n];
      const std::uint32_t key = radix_key(logit);
      if ((key & mask) == prefix && !row.is_forced(n)) {
        const int bin = static_cast<int>((key >> shift) & 0xffu);
        atomicAdd(&histogram[bin], 1u);
        const double probability = static_cast<double>(expf(logit - peak) * inverse_total);
        atomicAdd(&mass_histogram[bin], static_cast<unsigned long long>(probability * kMassScale + 0.5));
      }
    }
    vendor::sync_warp();
    std::uint64_t lane_mass = 0, lane_count_total = 0;
    for (int j = 0; j < kBinsPerLane; ++j) {
      const int bin = kRadixBins - 1 - (lane * kBinsPerLane + j);
      lane_mass += mass_histogram[bin];
      lane_count_total += histogram[bin];
    }
    std::uint64_t mass_above = warp_exclusive_sum_u64(lane_mass);
    std::uint64_t count_above = warp_exclusive_sum_u64(lane_count_total);
    int found_bin = -1;
    std::uint64_t found_mass_above = 0, found_count_above = 0, found_mass = 0, found_count = 0;
    for (int j = 0; j < kBinsPerLane; ++j) {
      const int bin = kRadixBins - 1 - (lane * kBinsPerLane + j);
      const std::uint64_t mass = mass_histogram[bin], count = histogram[bin];
      if (found_bin < 0 && count > 0 && mass_above < need_mass && mass_above + mass >= need_mass) {
        found_bin = bin;
        found_mass_above = mass_above;
        found_count_above = count_above;
        found_mass = mass;
        found_count = count;
      }
      mass_above += mass;
      count_above += count;
    }
    const vendor::lane_mask_t winners = vendor::ballot(found_bin >= 0);
    vendor::sync_warp();
    if (winners == 0) return unforced;  // the candidates' whole mass stays below the target
    const int winner = lane_count(static_cast<vendor::lane_mask_t>((winners & (~winners + 1)) - 1));
    found_bin = vendor::broadcast(found_bin, winner);
    need_mass -= gather_u64(found_mass_above, winner);
    taken += static_cast<std::int64_t>(gather_u64(found_count_above, winner));
    const std::uint64_t bin_mass = gather_u64(found_mass, winner);
    const std::uint64_t bin_count = gather_u64(found_count, winner);
    prefix |= static_cast<std::uint32_t>(found_bin) << shift;
    mask |= 0xffu << shift;
    if (bin_count == 1) return taken + 1;
    if (shift == 0) {
      // bin_count equal logits, each bin_mass / bin_count: the first j with j * each >= need_mass.
      const std::uint64_t each = bin_mass / bin_count;
      std::uint64_t j = each == 0 ? bin_count : (need_mass + each - 1) / each;
      if (j < 1) j = 1;
      if (j > bin_count) j = bin_count;
      return taken + static_cast<std::int64_t>(j);
    }
  }
  return unforced;  // not reached
}

// Walks the row in index order and keeps forced blocks plus what `keep` says of the others, writing
// their indices to out[0, capacity) in ascending order. Returns how many are kept.
template <class Keep>
__device__ inline std::int64_t compact_row(const RowView& row, const Keep& keep, bool write, std::int32_t* out,
                                           std::int64_t capacity) {
  const int lane = vendor::lane_index();
  const vendor::lane_mask_t below = lanes_below();
  std::int64_t kept = 0;
  std::int64_t ties_seen = 0;
  for (int first = 0; first < row.visible; first += vendor::warp_size) {
    const int n = first + lane;
    const bool valid = n < row.visible;
    const bool forced = valid && row.is_forced(n);
    int tie_state = 0;  // 0 not kept, 1 kept, 2 a tie (kept by rank)
    if (valid && !forced) tie_state = keep.state(row.logits[n]);
    const vendor::lane_mask_t ties = vendor::ballot(tie_state == 2);
    const std::int64_t tie_rank = ties_seen + lane_count(static_cast<vendor::lane_mask_t>(ties & below));
    const bool take = forced || tie_state == 1 || (tie_state == 2 && keep.tie_taken(tie_rank));
    const vendor::lane_mask_t taken = vendor::ballot(take);
    const std::int64_t position = kept + lane_count(static_cast<vendor::lane_mask_t>(taken & below));
    if (write && take && position < capacity) out[position] = static_cast<std::int32_t>(n);
    kept += lane_count(taken);
    ties_seen += lane_count(ties);
  }
  return kept;
}

struct KeepAll {
  __device__ int state(float) const { return 1; }
  __device__ bool tie_taken(std::int64_t) const { return true; }
};
struct KeepNone {
  __device__ int state(float) const { return 0; }
  __device__ bool tie_taken(std::int64_t) const { return false; }
};
// Reads the keys that logits_to_keys stored in place of the logits.
struct KeepCut {
  RadixCut cut;
  __device__ int state(float stored_key) const {
    const std::uint32_t key = __float_as_uint(stored_key) & cut.mask;
    return key > cut.prefix ? 1 : key == cut.prefix ? (cut.ties_all ? 1 : 2) : 0;
  }
  __device__ bool tie_taken(std::int64_t rank) const { return rank < cut.ties; }
};
struct KeepAboveThreshold {
  Threshold policy;
  float peak = 0.0f, inverse_total = 0.0f;
  __device__ int state(float logit) const {
    return policy.keeps(static_cast<double>(expf(logit - peak) * inverse_total)) ? 1 : 0;
  }
  __device__ bool tie_taken(std::int64_t) const { return false; }
};

// keep_best for rows of at most Slots * warp_size candidates, their keys held in registers (lane l: candidates
// l, l + warp_size, ...; 0 past the row). Forced blocks get the largest key, above every logit's: they are
// counted and kept like the best candidates, so the search looks for the (take + forced)-th key and the final
// walk needs no forced test. That key is found bit by bit from the top: per bit, one count of the keys at or
// above a trial threshold (a warp reduction), starting below the bits that every unforced candidate shares
// and stopping as soon as a threshold keeps exactly the wanted number. Ties at the final key go to the lower
// index, as in radix_select_count. Rows of 512 candidates (32k tokens) cost ~15 counting steps of 16
// compares per lane instead of four shared-memory histogram passes.
// How many of a lane's keys are >= trial. On NVIDIA through the carry of key - trial (no borrow: key >=
// trial): two instructions per key instead of the compiler's compare, add and select.
template <int Slots>
__device__ inline int keys_at_or_above(const std::uint32_t (&key)[Slots], std::uint32_t trial) {
#if defined(__HIPCC__)
  int count = 0;
#pragma unroll
  for (int j = 0; j < Slots; ++j) count += key[j] >= trial ? 1 : 0;
  return count;
#else
  std::uint32_t count = 0;
#pragma unroll
  for (int j = 0; j < Slots; ++j)
    asm("{\n .reg .u32 difference;\n sub.cc.u32 difference, %1, %2;\n addc.u32 %0, %0, 0;\n}"
        : "+r"(count)
        : "r"(key[j]), "r"(trial));
  return static_cast<int>(count);
#endif
}

template <int Slots>
__device__ inline std::int64_t keep_best_in_registers(const RowView& row, int take, bool write, std::int32_t* out,
                                                      std::int64_t capacity) {
  constexpr int kWarp = vendor::warp_size;
  constexpr std::uint32_t kForcedKey = 0xffffffffu;  // radix_key of a finite logit is at most 0xff7fffff
  const int lane = vendor::lane_index();
  std::uint32_t key[Slots];
  std::uint32_t high = 0u, low = 0xffffffffu;  // over the unforced candidates
#pragma unroll
  for (int j = 0; j < Slots; ++j) {
    const int n = j * kWarp + lane;
    key[j] = 0u;
    if (n < row.visible) {
      if (row.is_forced(n)) {
        key[j] = kForcedKey;
      } else {
        key[j] = radix_key(row.logits[n]);
        high = key[j] > high ? key[j] : high;
        low = key[j] < low ? key[j] : low;
      }
    }
  }
  high = vendor::warp_max_uint(high);
  low = vendor::warp_min_uint(low);
  const int wanted = take + static_cast<int>(row.forced_count);
  // Every unforced key has the bits of `high` above the highest bit where high and low differ. No trial
  // exceeds high: at most the forced keys (fewer than wanted) reach such a threshold.
  const std::uint32_t differ = high ^ low;
  int bit = differ == 0u ? -1 : 31 - __clz(static_cast<int>(differ));
  std::uint32_t threshold = bit < 0 ? high : high & ~((2u << bit) - 1u);  // 2u << 31 wraps to 0: no bits kept
  int at_or_above = row.visible;                                          // keys >= threshold (all of them)
  for (; bit >= 0; --bit) {
    const std::uint32_t trial = threshold | (1u << bit);
    const int count = vendor::warp_sum_int(keys_at_or_above(key, trial));
    if (count >= wanted) {
      threshold = trial;
      at_or_above = count;
      if (count == wanted) break;
    }
  }
  // 0 < threshold <= high here. Either exactly `wanted` keys reach it, or it is the wanted-th key itself,
  // shared by several unforced candidates: then the keys above it plus the first ties in index order.
  const vendor::lane_mask_t below = lanes_below();
  const int limit = capacity < row.visible ? static_cast<int>(capacity) : row.visible;
  int kept = 0;
  if (at_or_above == wanted) {
#pragma unroll
    for (int j = 0; j < Slots; ++j) {
      if (j * kWarp >= row.visible) break;  // uniform across the warp
      const bool taken = key[j] >= threshold;
      const vendor::lane_mask_t taken_lanes = vendor::ballot(taken);
      const int position = kept + lane_count(static_cast<vendor::lane_mask_t>(taken_lanes & below));
      if (write && taken && position < limit) out[position] = j * kWarp + lane;
      kept += lane_count(taken_lanes);
    }
    return kept;
  }
  int above = 0;
#pragma unroll
  for (int j = 0; j < Slots; ++j) above += key[j] > threshold ? 1 : 0;
  const int ties_needed = wanted - vendor::warp_sum_int(above);
  int ties_seen = 0;
#pragma unroll
  for (int j = 0; j < Slots; ++j) {
    if (j * kWarp >= row.visible) break;  // uniform across the warp
    const bool tie = key[j] == threshold;
    const vendor::lane_mask_t tie_lanes = vendor::ballot(tie);
    const int tie_rank = ties_seen + lane_count(static_cast<vendor::lane_mask_t>(tie_lanes & below));
    const bool taken = key[j] > threshold || (tie && tie_rank < ties_needed);
    const vendor::lane_mask_t taken_lanes = vendor::ballot(taken);
    const int position = kept + lane_count(static_cast<vendor::lane_mask_t>(taken_lanes & below));
    if (write && taken && position < limit) out[position] = j * kWarp + lane;
    kept += lane_count(taken_lanes);
    ties_seen += lane_count(tie_lanes);
  }
  return kept;
}

// Forced blocks plus the best `take` unforced ones (0 <= take <= unforced).
__device__ inline std::int64_t keep_best(const RowView& row, std::int64_t take, bool write, std::int32_t* out,
                                         std::int64_t capacity, unsigned int* histogram) {
  const std::int64_t unforced = row.visible - row.forced_count;
  if (take >= unforced) return compact_row(row, KeepAll{}, write, out, capacity);
  if (take <= 0) return compact_row(row, KeepNone{}, write, out, capacity);
  constexpr int kWarp = vendor::warp_size;
  const int wanted = static_cast<int>(take);
  if (row.visible <= 4 * kWarp) return keep_best_in_registers<4>(row, wanted, write, out, capacity);
  if (row.visible <= 8 * kWarp) return keep_best_in_registers<8>(row, wanted, write, out, capacity);
  if (row.visible <= 16 * kWarp) return keep_best_in_registers<16>(row, wanted, write, out, capacity);
  // Longer rows: radix passes over keys stored in place of the logits.
  const std::uint32_t* keys = logits_to_keys(row);
  return compact_row(row, KeepCut{radix_select_count(keys, row.visible, take, histogram)}, write, out, capacity);
}

// Softmax statistics of the row: its largest logit and 1 / sum(exp(logit - largest)).
__device__ inline void row_softmax_statistics(const RowView& row, float& peak, float& inverse_total) {
  float largest = -__int_as_float(0x7f800000);
  for (int n = vendor::lane_index(); n < row.visible; n += vendor::warp_size) largest = fmaxf(largest, row.logits[n]);
  largest = warp_maximum(largest);
  float total = 0.0f;
  for (int n = vendor::lane_index(); n < row.visible; n += vendor::warp_size) total += expf(row.logits[n] - largest);
  peak = largest;
  inverse_total = 1.0f / warp_sum(total);
}

struct WarpScratch {
  unsigned int* histogram = nullptr;             // [kRadixBins]
  unsigned long long* mass_histogram = nullptr;  // [kRadixBins], Nucleus only
};

// (The policy's budget is in the row: top_k_budget.)
__device__ inline std::int64_t select_row(const TopK&, const RowView& row, bool write, std::int32_t* out,
                                          std::int64_t capacity, const WarpScratch& scratch) {
  std::int64_t take = row.top_k_budget - row.forced_count;
  return keep_best(row, take < 0 ? 0 : take, write, out, capacity, scratch.histogram);
}

__device__ inline std::int64_t select_row(const Threshold& policy, const RowView& row, bool write, std::int32_t* out,
                                          std::int64_t capacity, const WarpScratch&) {
  KeepAboveThreshold keep{policy, 0.0f, 0.0f};
  row_softmax_statistics(row, keep.peak, keep.inverse_total);
  return compact_row(row, keep, write, out, capacity);
}

__device__ inline std::int64_t select_row(const Nucleus& policy, const RowView& row, bool write, std::int32_t* out,
                                          std::int64_t capacity, const WarpScratch& scratch) {
  float peak = 0.0f, inverse_total = 0.0f;
  row_softmax_statistics(row, peak, inverse_total);
  std::uint64_t forced_mass = 0;
  for (int n = vendor::lane_index(); n < row.visible; n += vendor::warp_size)
    if (row.is_forced(n)) {
      const double probability = static_cast<double>(expf(row.logits[n] - peak) * inverse_total);
      forced_mass += static_cast<std::uint64_t>(probability * kMassScale + 0.5);
    }
  forced_mass = warp_sum_u64(forced_mass);
  const std::uint64_t target = static_cast<std::uint64_t>(policy.p * kMassScale + 0.5);
  const std::int64_t unforced = row.visible - row.forced_count;
  std::int64_t mass_count = 0;
  if (forced_mass < target && unforced > 0)
    mass_count = radix_select_mass(row, peak, inverse_total, target - forced_mass, unforced, scratch.histogram,
                                   scratch.mass_histogram);
  const std::int64_t take = nucleus_take(policy, row.forced_count, mass_count, unforced);
  return keep_best(row, take, write, out, capacity, scratch.histogram);
}

}  // namespace detail

#if defined(__HIPCC__)
namespace detail {

// Adds a thread's 4 x 4 register tile of partial dots over the kLogitSlices lanes of its slice group
// (lanes lane ^ 1 .. lane ^ 7): each step keeps half of the values and sends the other half to the
// partner lane, so that after three steps slice s holds the complete dots number 2s and 2s + 1 (row-major
// in the tile: row s / 2, keys 2 (s % 2) and 2 (s % 2) + 1) for 14 shuffles instead of 48.
__device__ inline void reduce_logit_tile(const float (&dot)[16], int slice, float& first, float& second) {
  float eight[8], four[4];
  const bool upper4 = (slice & 4) != 0, upper2 = (slice & 2) != 0, upper1 = (slice & 1) != 0;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    eight[j] = (upper4 ? dot[j + 8] : dot[j]) + vendor::shuffle_xor(upper4 ? dot[j] : dot[j + 8], 4);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    four[j] = (upper2 ? eight[j + 4] : eight[j]) + vendor::shuffle_xor(upper2 ? eight[j] : eight[j + 4], 2);
  first = (upper1 ? four[2] : four[0]) + vendor::shuffle_xor(upper1 ? four[0] : four[2], 1);
  second = (upper1 ? four[3] : four[1]) + vendor::shuffle_xor(upper1 ? four[1] : four[3], 1);
}

}  // namespace detail
#endif

// What the logit phase of one work item reads and writes. Logits of row r (< rows) and visible key n
// go to logits[r * row_stride + n], scaled; nothing else is written there.
struct ItemLogits {
  GateFeatures features;
  std::int64_t b = 0, h = 0, m0 = 0;
  int rows = 0;                      // rows of the item (<= kSelectionMaxRows)
  std::int64_t last_visible = 0;     // visible key blocks of the item's last row (the most of any row)
  const int* row_visible = nullptr;  // visible key blocks of each row (shared memory)
  float* logits = nullptr;
  std::int64_t row_stride = 0;
  int rows_per_item = kSelectionMaxRows;  // the plan's: sizes the shared query tiles (selection_tile_floats)
};

namespace detail {

#if defined(__HIPCC__)
// AMD: fp32 FMA. Thread (tile, slice), slice = thread % kLogitSlices, accumulates a 4-row x 4-key
// register tile over its share of the feature dimension (the 16-byte chunks slice, slice + 8, ...), then
// the 8 slices of a tile sum their partial dots by shuffles (reduce_logit_tile). The 32 tiles cover 16
// rows x 32 keys (key_tile 32) or 8 rows x 64 keys (key_tile 64, items of at most 8 rows). Per chunk a
// thread reads 4 query and 4 key vectors for 64 multiply-adds; the 4 tiles of a 32-lane warp are 2 row
// groups x 2 key groups, so each of those reads is 2 shared-memory wavefronts (256 distinct bytes).
// Shared tiles: the query rows [kSelectionMaxRows][dim], one key tile [key_tile][dim + 4].
__device__ inline void item_logits(const ItemLogits& item, int keys_per_tile, float* tiles) {
  constexpr int kLogitSlices = 8;
  static_assert(kGateThreads / kLogitSlices == 32, "32 register tiles of 4 x 4 logits per key tile");
  const GateFeatures& features = item.features;
  const int dim = static_cast<int>(features.dim);
  const int key_stride =
      dim + 4;  // 16 bytes of padding: lanes reading 16-byte vectors of different keys hit different banks
  float* query_tile = tiles;
  float* key_tile = query_tile + kSelectionMaxRows * dim;
  const int thread = static_cast<int>(threadIdx.x);
  const int slice = thread % kLogitSlices;
  const int tile_index = thread / kLogitSlices;
  // 4 row groups x 8 key groups (key_tile 32) or 2 x 16 (key_tile 64); bit 0 of the tile index picks the
  // row group and bit 1 the key group, so a warp's 4 tiles are 2 x 2.
  const int row_groups = keys_per_tile == 64 ? 2 : 4;
  const int row_group = (tile_index & 1) + 2 * ((tile_index >> 2) & (row_groups / 2 - 1));
  const int key_group = ((tile_index >> 1) & 1) + 2 * (tile_index >> (row_groups == 4 ? 3 : 2));
  // After the reduction this thread holds the logits of one row and two adjacent keys of its tile.
  const int out_row = 4 * row_group + (slice >> 1);
  const int out_key = 4 * key_group + 2 * (slice & 1);
  const int vectors = dim / 4;  // 16-byte vectors per key feature
  const int tile_vectors = keys_per_tile * vectors;
  // Key of tile vector i, i / vectors, without an integer division per vector: i < 2048 and vectors <= 64,
  // so (i + 0.5) / vectors stays at least 1/128 away from an integer and fp32 rounding cannot cross one.
  const float inverse_vectors = 1.0f / static_cast<float>(vectors);
  const auto padded_at = [&](int i) {  // float offset of vector i in the key tile (+ 4 floats of padding per key)
    return 4 * (i + static_cast<int>((static_cast<float>(i) + 0.5f) * inverse_vectors));
  };
  constexpr int kTileVectors = 8;    // 16-byte vectors of a key tile per thread: up to 8
  constexpr int kStagedVectors = 4;  // of which the first 4 are prefetched during the previous tile
  const std::int64_t last_visible = item.last_visible;
  const std::int64_t key_head = features.key_head_of(item.h);
  for (int i = thread; i < item.rows * dim; i += kGateThreads)
    query_tile[i] = features.query[features.query_offset(item.b, item.h, item.m0 + i / dim) + i % dim];
  for (int i = thread + item.rows * dim; i < kSelectionMaxRows * dim; i += kGateThreads) query_tile[i] = 0.0f;
  const std::int64_t out_visible = out_row < item.rows ? item.row_visible[out_row] : 0;
  float4 staged[kStagedVectors];
  // Consecutive key features are contiguous: a tile is one run of keys_per_tile * dim floats.
  const float* key_features = features.key + features.key_offset(item.b, key_head, 0);
  auto load_tile = [&](std::int64_t key_first) {
    const float* source = key_features + key_first * dim;
    const std::int64_t valid_vectors = (last_visible - key_first) * vectors;
#pragma unroll
    for (int j = 0; j < kStagedVectors; ++j) {
      const int i = thread + j * kGateThreads;
      staged[j] = i < tile_vectors && i < valid_vectors ? *reinterpret_cast<const float4*>(source + 4 * i)
                                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  load_tile(0);
  const float* query_rows = query_tile + 4 * row_group * dim;
  const float* key_rows = key_tile + 4 * key_group * key_stride;
  for (std::int64_t key_first = 0; key_first < last_visible; key_first += keys_per_tile) {
    __syncthreads();  // the key tile is free
#pragma unroll
    for (int j = 0; j < kStagedVectors; ++j) {
      const int i = thread + j * kGateThreads;
      if (i < tile_vectors) *reinterpret_cast<float4*>(key_tile + padded_at(i)) = staged[j];
    }
    const std::int64_t valid_vectors = (last_visible - key_first) * vectors;
    for (int j = kStagedVectors; j < kTileVectors; ++j) {
      const int i = thread + j * kGateThreads;
      if (i >= tile_vectors) break;
      *reinterpret_cast<float4*>(key_tile + padded_at(i)) =
          i < valid_vectors ? *reinterpret_cast<const float4*>(key_features + key_first * dim + 4 * i)
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    __syncthreads();
    if (key_first + keys_per_tile < last_visible) load_tile(key_first + keys_per_tile);
    float dot[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) dot[j] = 0.0f;
#pragma unroll 1
    for (int c = 4 * slice; c < dim; c += 4 * kLogitSlices) {
      float4 k[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) k[j] = *reinterpret_cast<const float4*>(key_rows + j * key_stride + c);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float4 a = *reinterpret_cast<const float4*>(query_rows + r * dim + c);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          dot[4 * r + j] = fmaf(a.w, k[j].w, fmaf(a.z, k[j].z, fmaf(a.y, k[j].y, fmaf(a.x, k[j].x, dot[4 * r + j]))));
      }
    }
    float first = 0.0f, second = 0.0f;
    reduce_logit_tile(dot, slice, first, second);
    const std::int64_t n = key_first + out_key;
    float* out = item.logits + static_cast<std::int64_t>(out_row) * item.row_stride;
    if (n < out_visible) out[n] = first * features.scale;
    if (n + 1 < out_visible) out[n + 1] = second * features.scale;
  }
}

// Shared floats of item_logits' tiles.
SEER_HOST_DEVICE constexpr std::int64_t selection_tile_floats(std::int64_t dim, int keys_per_tile, int rows_per_item) {
  static_cast<void>(rows_per_item);
  return kSelectionMaxRows * dim + keys_per_tile * (dim + 4);
}
#else
// Row capacity of the query planes: one 16-row tile, or two for items of more than 16 rows.
SEER_HOST_DEVICE constexpr int selection_row_capacity(int rows_per_item) { return rows_per_item > 16 ? 32 : 16; }
// NVIDIA: tensor cores in split TF32 (seer/gpu/fp32_tensor_dot.hpp: near-fp32 accuracy). The item's query
// rows (up to 32: two 16-row tiles) sit in shared memory as planes in fragment order (their big and small
// parts, split once: all 8 warps read them), with zeros past dim and past the item's rows. The keys are not
// staged: warp w walks the 8-key tiles w, w + 8, ... of the item's visible keys and loads its B operands
// straight from the row-major key features (lane (g, t)'s 16 bytes of chunk c of key tile n lie at
// (8n + g) * dim + 16c + 4t, so a warp's load covers 8 keys x 64 contiguous bytes: whole 32-byte sectors),
// the next pass in flight while it multiplies the current one; each key operand, loaded and split once,
// serves both row tiles. No barrier until the logits are complete.
__device__ inline void item_logits(const ItemLogits& item, int keys_per_tile, float* tiles) {
  static_cast<void>(keys_per_tile);
  constexpr int kChunksPerPass = 4;  // 16-float chunks of a key tile in registers at once (dim 128: half)
  constexpr int kWarps = kGateThreads / 32;
  constexpr int kTileRows = 16;
  static_assert(kSelectionMaxRows == 2 * kTileRows, "two row tiles per item");
  const GateFeatures& features = item.features;
  const int dim = static_cast<int>(features.dim);
  const int depth = (dim + 15) / 16 * 16;
  const int stride = padded_row_stride(dim);
  // Planes of row tile u: big at query_big + u * plane, small at query_small + u * plane.
  const int plane = kTileRows * depth;
  float* query_big = tiles;
  float* query_small = query_big + selection_row_capacity(item.rows_per_item) * stride;  // stride >= depth
  const int thread = static_cast<int>(threadIdx.x);
  const int warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t key_head = features.key_head_of(item.h);
  const bool two_tiles = item.rows > kTileRows;  // uniform: the second tile's products only when it has rows
  // Query rows, split into the fragment-ordered planes (zeros past dim and past the item's rows), one
  // fragment slot (chunk, step) of a row tile per warp at a time: rows g and g + 8, two columns, stored as
  // one 16-byte vector per plane and lane (whole 512-byte rows of the planes: no bank conflicts).
  const float* query = features.query + features.query_offset(item.b, item.h, item.m0);
  const int slots = depth / 8;
  for (int i = warp; i < (two_tiles ? 2 : 1) * slots; i += kWarps) {
    const int u = i / slots, slot = i % slots;
    const int column = left_fragment_column(slot, lane);
    const int upper = kTileRows * u + g, lower = upper + 8;
    const float2 zero = make_float2(0.0f, 0.0f);
    // dim is a multiple of 8 and column even: a pair is wholly inside or past the row.
    const float2 upper_pair =
        column < dim && upper < item.rows ? *reinterpret_cast<const float2*>(query + upper * dim + column) : zero;
    const float2 lower_pair =
        column < dim && lower < item.rows ? *reinterpret_cast<const float2*>(query + lower * dim + column) : zero;
    const float values[4] = {upper_pair.x, lower_pair.x, upper_pair.y, lower_pair.y};
    store_left_fragment_slot(query_big + u * plane, query_small + u * plane, slot, lane, values);
  }
  __syncthreads();  // the query planes are complete

  const float* key_features = features.key + features.key_offset(item.b, key_head, 0);
  // This lane's accumulator rows: g + 8 e (e = 0, 1 in tile 0; 2, 3 in tile 1).
  int visible[4];
  float* out[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    visible[e] = g + 8 * e < item.rows ? item.row_visible[g + 8 * e] : 0;
    out[e] = item.logits + static_cast<std::int64_t>(g + 8 * e) * item.row_stride;
  }
  const LeftFragments left[2] = {{query_big, query_small}, {query_big + plane, query_small + plane}};

  // A pass: chunks [chunk, chunk + kChunksPerPass) of key tile `tile` (dim 128: two passes per tile; eight
  // chunks at once spilled), loaded from one address with constant offsets. Lanes of keys past the item's
  // last visible one read that key instead: their dots are never stored, and the other keys' dots do not
  // depend on them. Ragged dims (dim = 8 mod 16: the last chunk's second half lies past the row) read the
  // 8 columns before instead, finite values that meet zeros in the query planes.
  const int chunks = depth / 16;
  const bool ragged = depth != dim;
  const int key_tiles = static_cast<int>((item.last_visible + 7) / 8);
  const int last_key = static_cast<int>(item.last_visible) - 1;
  auto fetch = [&](int tile, int chunk, float4(&into)[kChunksPerPass]) {
    const int key = 8 * tile + g < last_key ? 8 * tile + g : last_key;
    const float* at = key_features + static_cast<std::int64_t>(key) * dim + 16 * chunk + 4 * t;
    if (!ragged) {  // uniform; constant offsets from one address
#pragma unroll
      for (int c = 0; c < kChunksPerPass; ++c)
        if (chunk + c < chunks) into[c] = *reinterpret_cast<const float4*>(at + 16 * c);
      return;
    }
#pragma unroll
    for (int c = 0; c < kChunksPerPass; ++c) {
      if (chunk + c >= chunks) break;  // uniform across the warp
      const int back = 16 * (chunk + c) + 4 * t >= dim ? 8 : 0;
      into[c] = *reinterpret_cast<const float4*>(at + 16 * c - back);
    }
  };
  DotAccumulators<2, 1> dots;  // one 16 x 8 tile per row tile: two independent chains (see below for one tile)
  // One pass: multiplies `now` (the pass at tile, chunk), advances to the next pass and loads it into `next`.
  int tile = warp, chunk = 0;
  auto pass = [&](const float4(&now)[kChunksPerPass], float4(&next)[kChunksPerPass]) {
    const int now_tile = tile, now_chunk = chunk;
    chunk += kChunksPerPass;
    if (chunk >= chunks) chunk = 0, tile += kWarps;
    if (tile < key_tiles) fetch(tile, chunk, next);
#pragma unroll
    for (int c = 0; c < kChunksPerPass; ++c) {
      if (now_chunk + c >= chunks) break;  // uniform across the warp
      SplitTf32 column[4];
      Fp32Rows::split(now[c], column);
      const SplitTf32 b_first[2] = {column[0], column[1]};
      const SplitTf32 b_second[2] = {column[2], column[3]};
      if (two_tiles) {  // uniform across the warp
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          SplitTf32 first[4], second[4];
          LeftFragments::fragments(left[u].fetch(16 * (now_chunk + c)), first, second);
          multiply_split(dots, u, 0, first, b_first);
          multiply_split(dots, u, 1, second, b_second);
        }
      } else {  // one row tile: its second k-step accumulates into the other tile's registers (a second chain)
        SplitTf32 first[4], second[4];
        LeftFragments::fragments(left[0].fetch(16 * (now_chunk + c)), first, second);
        multiply_split(dots, 0, 0, first, b_first);
        multiply_split(dots, 1, 1, second, b_second);
      }
    }
    if (now_chunk + kChunksPerPass >= chunks) {  // the tile's dots are complete
      const int n = 8 * now_tile + 2 * t;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int u = e / 2, half = e % 2;  // accumulator elements 2 half, 2 half + 1 of tile u
        float first = 0.0f, second = 0.0f;
        if (two_tiles) {
          first = dots.total(u, 2 * half), second = dots.total(u, 2 * half + 1);
        } else if (u == 0) {
          first = dots.total(0, 2 * half) + dots.total(1, 2 * half);
          second = dots.total(0, 2 * half + 1) + dots.total(1, 2 * half + 1);
        }
        if (n + 1 < visible[e]) {  // n is even and row strides are even: an aligned 8-byte store
          *reinterpret_cast<float2*>(out[e] + n) = make_float2(first * features.scale, second * features.scale);
        } else if (n < visible[e]) {
          out[e][n] = first * features.scale;
        }
      }
      dots = DotAccumulators<2, 1>();
    }
  };
  // Two register buffers take turns (no copies between passes).
  float4 even[kChunksPerPass], odd[kChunksPerPass];
  if (tile < key_tiles) fetch(tile, chunk, even);
  while (tile < key_tiles) {
    pass(even, odd);
    if (tile >= key_tiles) break;
    pass(odd, even);
  }
}

// Shared floats of item_logits' tiles.
SEER_HOST_DEVICE constexpr std::int64_t selection_tile_floats(std::int64_t dim, int keys_per_tile, int rows_per_item) {
  static_cast<void>(keys_per_tile);  // no key tiles: the query planes only
  return 2 * selection_row_capacity(rows_per_item) * padded_row_stride(static_cast<int>(dim));
}
#endif

}  // namespace detail

// Grid: min(items, logit slices) CTAs of kGateThreads threads, each looping over work items. Dynamic
// shared memory: the query and key tiles of detail::item_logits, the warps' radix scratch, and the
// logits when they fit (selection_shared_bytes on the host side computes the same layout).
template <class Policy>
__global__ void __launch_bounds__(kGateThreads, min_blocks_hint(2))
    block_selection_kernel(const SelectionParams<Policy> params) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  extern __shared__ __align__(16) unsigned char selection_shared[];
  constexpr int kWarps = kGateThreads / vendor::warp_size;
  const int dim = static_cast<int>(params.features.dim);
  const int rows_per_item = params.rows_per_item;
  // The warps' radix scratch shares its bytes with the logit phase's tiles: the tiles are consumed before the
  // rows are selected, and the next item's tiles are written after the barrier that ends the selection.
  float* tiles = reinterpret_cast<float*>(selection_shared);
  unsigned char* warp_bytes = selection_shared;
  const std::int64_t tile_bytes = detail::selection_tile_floats(dim, params.key_tile, params.rows_per_item) * 4;
  const std::int64_t scratch_bytes = static_cast<std::int64_t>(kWarps) * detail::kSelectionWarpScratchBytes<Policy>;
  const int warp = vendor::warp_index();
  detail::WarpScratch scratch;
  scratch.histogram = reinterpret_cast<unsigned int*>(warp_bytes + warp * detail::kSelectionWarpScratchBytes<Policy>);
  scratch.mass_histogram = reinterpret_cast<unsigned long long*>(scratch.histogram + kRadixBins);
  float* logits =
      params.global_logits != nullptr
          ? params.global_logits + static_cast<std::int64_t>(blockIdx.x) * rows_per_item * params.row_stride
          : reinterpret_cast<float*>(selection_shared + (tile_bytes > scratch_bytes ? tile_bytes : scratch_bytes));
  const std::int64_t heads = params.features.heads;
  // The facts of each row of the current item, computed by one thread per row (BlockGeometry divides by the
  // block size, TopK's budget takes a square root: once per row here, not by all lanes of a warp per use).
  __shared__ int row_visible[kSelectionMaxRows];
  __shared__ __align__(16) unsigned char row_view_bytes[kSelectionMaxRows * sizeof(detail::RowView)];
  auto* row_views = reinterpret_cast<detail::RowView*>(row_view_bytes);  // raw storage: RowView has initialisers

  for (std::int64_t item = blockIdx.x; item < params.items; item += gridDim.x) {
    // Last query tiles first: under a causal mask they see the most keys, so the long items start in the
    // first wave and the short ones fill the tail.
    // (32-bit divisions: the plan keeps items below 2^31.)
    const std::uint32_t index = static_cast<std::uint32_t>(item);
    const std::uint32_t sequence_heads = static_cast<std::uint32_t>(heads * params.sequences.batch);
    const std::uint32_t within = index % sequence_heads;
    const std::int64_t tile = params.item_tiles - 1 - index / sequence_heads;
    const std::int64_t h = within % static_cast<std::uint32_t>(heads);
    const std::int64_t b = within / static_cast<std::uint32_t>(heads);
    const std::int64_t sequence_first = params.output.query_block_offsets[b];  // from block_layout_kernel
    const std::int64_t query_blocks = params.output.query_block_offsets[b + 1] - sequence_first;
    const std::int64_t m0 = tile * rows_per_item;
    if (m0 >= query_blocks) continue;  // uniform across the CTA
    const int rows = static_cast<int>(query_blocks - m0 < rows_per_item ? query_blocks - m0 : rows_per_item);
    const std::int64_t first_row = heads * sequence_first + h * query_blocks + m0;

    __syncthreads();  // the previous item's logits, tiles and row facts are consumed
    if (const int row_index = static_cast<int>(threadIdx.x); row_index < rows) {
      detail::RowView view = params.layout.facts[b * params.layout.max_query_blocks + m0 + row_index];
      view.logits = logits + row_index * params.row_stride;
      row_views[row_index] = view;
      row_visible[row_index] = view.visible;
    }
    __syncthreads();
    // Logits are needed unless every row of the tile is dense (dense rows are the last ones) or sees nothing.
    const std::int64_t last_visible = row_visible[rows - 1];
    const bool needs_logits = last_visible > 0 && !row_views[0].dense;
    if (needs_logits) {
      ItemLogits work;
      work.features = params.features;
      work.b = b;
      work.h = h;
      work.m0 = m0;
      work.rows = rows;
      work.last_visible = last_visible;
      work.row_visible = row_visible;
      work.logits = logits;
      work.row_stride = params.row_stride;
      work.rows_per_item = rows_per_item;
      detail::item_logits(work, params.key_tile, tiles);
      __syncthreads();  // logits complete (global slices too: the barrier orders the CTA's own writes)
    }

    // TopK: the kept blocks of all heads of the sequences before b (the warp's lanes add their totals).
    std::int64_t sequence_base = 0;
    const std::int64_t* top_k_prefix = nullptr;
    if constexpr (std::is_same_v<Policy, TopK>) {
      const std::int64_t stride = params.layout.max_query_blocks + 1;
      top_k_prefix = params.layout.top_k_prefix + b * stride;
      std::uint64_t before = 0;
      for (std::int64_t earlier = vendor::lane_index(); earlier < b; earlier += vendor::warp_size) {
        const std::int64_t blocks =
            params.output.query_block_offsets[earlier + 1] - params.output.query_block_offsets[earlier];
        before += static_cast<std::uint64_t>(params.layout.top_k_prefix[earlier * stride + blocks]);
      }
      if (b > 0) sequence_base = heads * static_cast<std::int64_t>(detail::warp_sum_u64(before));
    }
    for (int r = warp; r < rows; r += kWarps) {
      const std::int64_t row = first_row + r;
      const detail::RowView view = row_views[r];
      std::int32_t* out = nullptr;
      std::int64_t capacity = 0;
      if (params.write) {
        std::int64_t begin = 0, end = 0;
        if constexpr (std::is_same_v<Policy, TopK>) {
          // The row's place from the layout, clamped to the capacity as scan_rows_kernel clamps offsets.
          const std::int64_t limit = params.output.key_block_capacity;
          begin = sequence_base + h * top_k_prefix[query_blocks] + top_k_prefix[m0 + r];
          end = begin + top_k_prefix[m0 + r + 1] - top_k_prefix[m0 + r];
          if (vendor::lane_index() == 0) {
            params.output.row_offsets[row + 1] = end < limit ? end : limit;
            if (end > limit) *params.output.overflow = 1;
          }
          begin = begin < limit ? begin : limit;
          end = end < limit ? end : limit;
        } else {
          begin = params.output.row_offsets[row];
          end = params.output.row_offsets[row + 1];
        }
        out = params.output.key_blocks + begin;
        capacity = end - begin;
      }
      std::int64_t kept = 0;
      if (view.visible <= 0) {
        kept = 0;
      } else if (view.dense) {
        kept = detail::compact_row(view, detail::KeepAll{}, params.write, out, capacity);
      } else {
        kept = detail::select_row(params.policy, view, params.write, out, capacity, scratch);
      }
      if (!params.write && vendor::lane_index() == 0) params.output.row_offsets[row + 1] = kept;
    }
  }
}

namespace detail {

// Inclusive block-wide sum of one value per thread, in thread order: a scan within each warp, then the
// warps' totals (two barriers instead of a barrier pair per doubling step). `shared` holds one value per
// warp; the sums are non-negative (row and block counts).
__device__ inline std::int64_t block_inclusive_sum(std::int64_t value, std::int64_t* shared) {
  const int thread = static_cast<int>(threadIdx.x);
  const int warp = thread / vendor::warp_size, lane = thread % vendor::warp_size;
  const std::uint64_t mine = static_cast<std::uint64_t>(value);
  const std::uint64_t inclusive = warp_exclusive_sum_u64(mine) + mine;
  if (lane == vendor::warp_size - 1) shared[warp] = static_cast<std::int64_t>(inclusive);
  __syncthreads();
  std::int64_t before = 0;
  for (int w = 0; w < warp; ++w) before += shared[w];
  __syncthreads();  // `shared` may be written again by the caller's next scan
  return before + static_cast<std::int64_t>(inclusive);
}

}  // namespace detail

// Grid: one CTA per sequence. CTA 0 also writes query_block_offsets[b] = sum of query blocks of sequences
// < b and row_offsets[0] = 0, and clears the overflow flag. CTA b writes its sequence's RowLayout: the row
// facts of every query block, and for TopK the row-size prefix (kScanTile / kLayoutThreads rows per thread,
// a CTA scan per kScanTile rows). (1024 threads measured no faster: the kernel waits on memory.)
template <class Policy>
__global__ void __launch_bounds__(kLayoutThreads)
    block_layout_kernel(const GateSequences sequences, const SelectionOutput output, const Policy policy,
                        const ForcedBlocks forced, const RowLayout layout) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  __shared__ std::int64_t scan[kGateThreads];
  __shared__ std::int64_t tile_total;
  const int thread = static_cast<int>(threadIdx.x);
  if (blockIdx.x == 0) {
    if (thread == 0) {
      output.query_block_offsets[0] = 0;
      output.row_offsets[0] = 0;
      *output.overflow = 0;
    }
    std::int64_t base = 0;
    for (std::int64_t first = 0; first < sequences.batch; first += kLayoutThreads) {
      const std::int64_t b = first + thread;
      const std::int64_t blocks = b < sequences.batch ? sequences.geometry(b).query_blocks() : 0;
      const std::int64_t inclusive = detail::block_inclusive_sum(blocks, scan) + base;
      if (b < sequences.batch) output.query_block_offsets[b + 1] = static_cast<std::int32_t>(inclusive);
      if (thread == kLayoutThreads - 1) tile_total = inclusive;  // the next tile starts after this one
      __syncthreads();
      base = tile_total;
      __syncthreads();
    }
  }
  constexpr int kPerThread = kScanTile / kLayoutThreads;
  const std::int64_t b = blockIdx.x;
  if (b >= sequences.batch) return;  // an empty batch still runs CTA 0
  const BlockGeometry g = sequences.geometry(b);
  const std::int64_t blocks = g.query_blocks();
  detail::RowView* facts = layout.facts + b * layout.max_query_blocks;
  constexpr bool kTopK = std::is_same_v<Policy, TopK>;
  std::int64_t* prefix = kTopK ? layout.top_k_prefix + b * (layout.max_query_blocks + 1) : nullptr;
  if (kTopK && thread == 0) prefix[0] = 0;
  __shared__ std::int64_t tile_sizes[kScanTile];
  std::int64_t running = 0;
  for (std::int64_t first = 0; first < blocks; first += kScanTile) {
    // Facts (and TopK sizes) with the rows spread over all threads, so that a short sequence keeps every
    // thread busy; then TopK's scan over kPerThread consecutive rows per thread.
    for (int i = thread; i < kScanTile; i += kLayoutThreads) {
      std::int64_t size = 0;
      if (first + i < blocks) {
        const detail::RowView view = detail::make_row_view(g, first + i, forced, policy);
        facts[first + i] = view;
        if constexpr (kTopK) size = top_k_kept(view.visible, view.dense, view.forced_count, view.top_k_budget);
      }
      tile_sizes[i] = size;
    }
    if constexpr (kTopK) {
      __syncthreads();
      const std::int64_t mine = first + static_cast<std::int64_t>(thread) * kPerThread;
      std::int64_t sizes[kPerThread];
      std::int64_t sum = 0;
      for (int i = 0; i < kPerThread; ++i) {
        sizes[i] = tile_sizes[thread * kPerThread + i];
        sum += sizes[i];
      }
      const std::int64_t inclusive = detail::block_inclusive_sum(sum, scan);
      std::int64_t at = running + inclusive - sum;  // sizes before this thread's rows
      for (int i = 0; i < kPerThread && mine + i < blocks; ++i) {
        at += sizes[i];
        prefix[mine + i + 1] = at;
      }
      if (thread == kLayoutThreads - 1) tile_total = inclusive;
      __syncthreads();
      running += tile_total;
      __syncthreads();
    }
  }
}

// Tile totals of the row sizes in row_offsets[1 .. rows] (rows = heads * query_block_offsets[batch]).
template <int Threads>
__global__ void __launch_bounds__(Threads)
    scan_tile_totals_kernel(const std::int64_t heads, const std::int64_t batch, const SelectionOutput output,
                            std::int64_t* tile_totals) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  static_assert(Threads == kGateThreads, "the scans run kGateThreads threads");
  __shared__ std::int64_t scan[kGateThreads];
  const std::int64_t rows = heads * output.query_block_offsets[batch];
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kScanTile;
  if (first >= rows) return;
  std::int64_t sum = 0;
  for (int i = 0; i < kScanTile / kGateThreads; ++i) {
    const std::int64_t row = first + threadIdx.x * (kScanTile / kGateThreads) + i;
    if (row < rows) sum += output.row_offsets[row + 1];
  }
  const std::int64_t total = detail::block_inclusive_sum(sum, scan);
  if (threadIdx.x == kGateThreads - 1) tile_totals[blockIdx.x] = total;
}

// Sizes -> offsets, in place: row_offsets[0] = 0 and row_offsets[r + 1] = sizes of rows <= r, each clamped
// to the key_blocks capacity; sets the overflow flag when the total exceeds it.
template <int Threads>
__global__ void __launch_bounds__(Threads)
    scan_rows_kernel(const std::int64_t heads, const std::int64_t batch, const SelectionOutput output,
                     const std::int64_t* tile_totals) {
  vendor::wait_for_prior_grid();  // launched by launch_after_prior_grid
  static_assert(Threads == kGateThreads, "the scans run kGateThreads threads");
  __shared__ std::int64_t scan[kGateThreads];
  constexpr int kPerThread = kScanTile / kGateThreads;
  const std::int64_t rows = heads * output.query_block_offsets[batch];
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kScanTile;
  if (first >= rows) return;
  std::int64_t base = 0;
  for (std::int64_t t = threadIdx.x; t < blockIdx.x; t += kGateThreads) base += tile_totals[t];
  base = detail::block_inclusive_sum(base, scan);
  __shared__ std::int64_t tile_base;
  if (threadIdx.x == kGateThreads - 1) tile_base = base;
  __syncthreads();
  base = tile_base;

  std::int64_t sizes[kPerThread];
  std::int64_t sum = 0;
  const std::int64_t mine = first + threadIdx.x * kPerThread;
  for (int i = 0; i < kPerThread; ++i) {
    sizes[i] = mine + i < rows ? output.row_offsets[mine + i + 1] : 0;
    sum += sizes[i];
  }
  std::int64_t running = base + detail::block_inclusive_sum(sum, scan) - sum;  // sizes before this thread's rows
  const std::int64_t capacity = output.key_block_capacity;
  for (int i = 0; i < kPerThread; ++i) {
    if (mine + i >= rows) break;
    running += sizes[i];
    output.row_offsets[mine + i + 1] = running < capacity ? running : capacity;
    if (mine + i == rows - 1 && running > capacity) *output.overflow = 1;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) output.row_offsets[0] = 0;
}

}  // namespace seer::gpu
