// The GPU gate and block selection, host side: gate -> features -> BlockSet in device memory, written
// once against the vendor layer; seer::cuda and seer::hip re-export it (seer/cuda/gate_selection.hpp,
// seer/hip/gate_selection.hpp) with their device limits.
//
//   DeviceLearnedGate gate(learned_gate);                    // upload once (allocates, synchronous)
//   GateSelectionPlan plan(gate, batch, q_max_length, k_max_length, limits);
//   // caller allocates plan.workspace_bytes() and the BlockSet arrays (GateSelectionStorage does both)
//   BlockSetView blocks = gate_and_select(gate, plan, q, k, causal, policy, forced, output, workspace, stream);
//   block_sparse_attention(q_rope, k_rope, v, &blocks, options, out, lse, stream);
//
// Every call validates on the host (nothing that reads device memory), then enqueues kernels on
// `stream`: no host synchronisation, no allocation, capturable in a CUDA graph with the attention that
// follows. Sequence lengths of packed batches stay on the device: the BlockSet's query_block_offsets
// are computed there, and row_offsets has room for the plan's bound (heads * batch * max query blocks)
// of which the first heads * query_block_offsets[batch] rows are used.
//
// Kernels, in stream order (seer/gpu/gate_features_kernel.hpp, seer/gpu/block_selection_kernel.hpp):
//   features: pool Q (and RoPE it right away when the gate has no q projection), pool K, the RoPE table,
//             project K (+ Q in the double-linear layout) with RoPE; or, from pre-pooled features, the table
//             and the projections
//   select:   query_block_offsets (TopK: with each sequence's row places, from the geometry); Threshold /
//             Nucleus: a counting pass of the selection kernel and a scan of its sizes into row_offsets;
//             the selection kernel's writing pass (TopK: it places its rows and writes row_offsets).
//
// Key-block capacity: TopK rows have known sizes (selected_blocks_bound is exact for them); Threshold and
// Nucleus can keep up to every visible block (the bound is the causal triangle, 0.5 GiB per head at 1M
// tokens), so callers may pass less and check the device overflow flag (DeviceBlockSetBuffers::overflow)
// when they next synchronise: on overflow, rows are cut to ascending prefixes (safe to read, incomplete).
//
// Numerics: features and logits in fp32 (the CPU reference is double; on NVIDIA the products run on
// tensor cores in split TF32, within a few fp32 roundings: seer/gpu/fp32_tensor_dot.hpp), pooling sums in
// fp32, RoPE angles in double. Selections equal seer::select_blocks on the same inputs except where that
// rounding decides a near-tie (TopK, Nucleus order) or a probability within rounding of tau or of the mass p.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gpu/block_selection_kernel.hpp"
#include "seer/gpu/device_upload.hpp"
#include "seer/gpu/gate_features_kernel.hpp"
#include "seer/gpu/prefill_arguments.hpp"
#include "seer/gpu/project_features_warpgroup_kernel.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/nucleus.hpp"
#include "seer/selection/threshold.hpp"
#include "seer/selection/top_k.hpp"

namespace seer::gpu {

// What the launch configuration depends on; each backend reads it off its device.
struct DeviceLimits {
  int multiprocessors = 1;
  std::int64_t logit_shared_bytes = 16 * 1024;               // shared memory a selection CTA may spend on logits
  std::int64_t shared_bytes_per_block = 48 * 1024;           // the most dynamic shared memory one CTA may have
  std::int64_t shared_bytes_per_multiprocessor = 64 * 1024;  // all CTAs resident on one multiprocessor
  int warp_size = 32;                                        // lanes per warp (64 on AMD CDNA)
  // The projection may use Hopper's warpgroup instructions (project_features_warpgroup_kernel): the device
  // is sm_90 and the build has sm_90a device code. False forces the mma.sync kernel (tests, comparisons).
  bool warpgroup_projection = false;
};

// The gate's weights and RoPE frequencies in device memory, uploaded once from a LearnedGate.
class DeviceLearnedGate {
 public:
  explicit DeviceLearnedGate(const LearnedGate& gate)
      : num_q_heads_(gate.num_q_heads()),
        num_kv_heads_(gate.num_kv_heads()),
        head_dim_(gate.head_dim()),
        hidden_size_(gate.config().hidden_size),
        block_size_(gate.config().block_size),
        key_heads_(gate.key_heads()),
        has_q_projection_(gate.has_q_projection()),
        attention_factor_(gate.rotary_embedding().attention_factor()) {
    require(head_dim_ % 8 == 0 && head_dim_ <= kGateMaxHeadDim, "gate", "head dim is ", head_dim_,
            ", the GPU gate takes multiples of 8 up to ", kGateMaxHeadDim);
    require(hidden_size_ % 8 == 0 && hidden_size_ <= kGateMaxFeatureDim, "gate", "hidden size is ", hidden_size_,
            ", the GPU gate takes multiples of 8 up to ", kGateMaxFeatureDim);
    for (BlockPooling pooling : gate.gate_type().query_pools) query_pools_.push_back(static_cast<int>(pooling));
    for (BlockPooling pooling : gate.gate_type().key_pools) key_pools_.push_back(static_cast<int>(pooling));
    try {
      // Each projection is uploaded only in the form its kernel reads (see uses_tensor_projection).
      if (uses_tensor_projection()) {
        key_projection_transposed_ = upload_transposed(gate.k_projection(), key_input_width());
        if (has_q_projection_)
          query_projection_transposed_ = upload_transposed(gate.q_projection(), query_input_width());
        projections_tf32_exact_ = tf32_exact(gate.k_projection()) && tf32_exact(gate.q_projection());
      } else {
        key_projection_ = upload_to_device(gate.k_projection(), "DeviceLearnedGate");
        if (has_q_projection_) query_projection_ = upload_to_device(gate.q_projection(), "DeviceLearnedGate");
      }
      inverse_frequencies_ = upload_to_device(gate.rotary_embedding().inverse_frequencies(), "DeviceLearnedGate");
    } catch (...) {
      release();
      throw;
    }
  }
  DeviceLearnedGate(const DeviceLearnedGate&) = delete;
  DeviceLearnedGate& operator=(const DeviceLearnedGate&) = delete;
  ~DeviceLearnedGate() { release(); }

  std::int64_t num_q_heads() const { return num_q_heads_; }
  std::int64_t num_kv_heads() const { return num_kv_heads_; }
  std::int64_t head_dim() const { return head_dim_; }
  std::int64_t hidden_size() const { return hidden_size_; }
  std::int64_t block_size() const { return block_size_; }
  std::int64_t key_heads() const { return key_heads_; }
  bool has_q_projection() const { return has_q_projection_; }
  const std::vector<int>& query_pools() const { return query_pools_; }
  const std::vector<int>& key_pools() const { return key_pools_; }
  std::int64_t query_input_width() const { return static_cast<std::int64_t>(query_pools_.size()) * head_dim_; }
  std::int64_t key_input_width() const { return static_cast<std::int64_t>(key_pools_.size()) * head_dim_; }
  // NVIDIA projections up to kTensorProjectionColumns wide run on the tensor cores from the transposed
  // weights; wider ones, and every AMD build, on project_features_kernel from the weights as
  // given. Null where the other form is used.
  bool uses_tensor_projection() const {
#if defined(__HIPCC__)
    return false;
#else
    return hidden_size_ <= kTensorProjectionColumns;
#endif
  }
  const float* key_projection() const { return key_projection_; }
  const float* query_projection() const { return query_projection_; }
  // The weights as [heads, dim, input width] (the tensor-core projection reads output columns as rows).
  const float* key_projection_transposed() const { return key_projection_transposed_; }
  // Every projection weight is a TF32 number (low 13 mantissa bits zero: bf16 or TF32 checkpoints); the
  // tensor-core projection then needs two products per step instead of three, with identical results.
  bool projections_tf32_exact() const { return projections_tf32_exact_; }
  const float* query_projection_transposed() const { return query_projection_transposed_; }
  DeviceRope rope() const { return DeviceRope{inverse_frequencies_, hidden_size_ / 2, attention_factor_}; }

 private:
  void release() noexcept {
    vendor::device_release(key_projection_);
    vendor::device_release(query_projection_);
    vendor::device_release(std::exchange(key_projection_transposed_, nullptr));
    vendor::device_release(std::exchange(query_projection_transposed_, nullptr));
    vendor::device_release(inverse_frequencies_);
    key_projection_ = query_projection_ = nullptr;
    inverse_frequencies_ = nullptr;
  }

  std::int64_t num_q_heads_, num_kv_heads_, head_dim_, hidden_size_, block_size_, key_heads_;
  bool has_q_projection_;
  double attention_factor_;
  std::vector<int> query_pools_, key_pools_;
  static bool tf32_exact(const std::vector<float>& weights) {
    for (const float w : weights) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, &w, sizeof bits);
      if ((bits & 0x1fffu) != 0) return false;
    }
    return true;
  }
  // Weights [heads, rows, hidden] uploaded as [heads, hidden, rows].
  float* upload_transposed(const std::vector<float>& weights, std::int64_t rows) const {
    const std::int64_t columns = hidden_size_;
    std::vector<float> transposed(weights.size());
    const std::int64_t heads = static_cast<std::int64_t>(weights.size()) / (rows * columns);
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < columns; ++c)
          transposed[static_cast<std::size_t>((h * columns + c) * rows + r)] =
              weights[static_cast<std::size_t>((h * rows + r) * columns + c)];
    return upload_to_device(transposed, "DeviceLearnedGate");
  }

  float* key_projection_ = nullptr;
  float* query_projection_ = nullptr;
  bool projections_tf32_exact_ = false;
  float* key_projection_transposed_ = nullptr;
  float* query_projection_transposed_ = nullptr;
  double* inverse_frequencies_ = nullptr;
};

// Caller-owned scratch memory of a plan's size.
struct GateWorkspace {
  void* data = nullptr;
  std::int64_t bytes = 0;
};

// The BlockSet arrays the selection writes (device memory, caller-owned). view() of the result is
// what block_sparse_attention takes.
struct DeviceBlockSetBuffers {
  std::int64_t* row_offsets = nullptr;
  std::int64_t row_offset_entries = 0;  // >= plan.row_offset_entries()
  std::int32_t* key_blocks = nullptr;
  std::int64_t key_block_capacity = 0;
  std::int32_t* query_block_offsets = nullptr;
  std::int64_t query_block_offset_entries = 0;  // >= batch + 1
  std::int32_t* overflow = nullptr;             // one int, 1 after a selection whose blocks did not fit
};

// Pooled block features computed elsewhere (e.g. fused into an engine's QKV projection epilogue), fp32
// device memory in the gate's pooling order: query [batch, Hq, max_query_blocks, |q pools| * D], key
// [batch, Hkv, max_key_blocks, |k pools| * D], rows past a sequence's blocks ignored.
struct PooledBlockFeatures {
  const float* query = nullptr;
  const float* key = nullptr;
};

// Sizes and launch shapes for one (gate, batch, longest query, longest key) combination. Host-only: the
// actual lengths may be shorter and live on the device.
class GateSelectionPlan {
 public:
  GateSelectionPlan(const DeviceLearnedGate& gate, std::int64_t batch, std::int64_t q_max_length,
                    std::int64_t k_max_length, const DeviceLimits& limits)
      : batch_(batch),
        q_max_length_(q_max_length),
        k_max_length_(k_max_length),
        heads_(gate.num_q_heads()),
        kv_heads_(gate.num_kv_heads()),
        key_heads_(gate.key_heads()),
        dim_(gate.hidden_size()),
        block_size_(gate.block_size()),
        has_q_projection_(gate.has_q_projection()),
        query_input_width_(gate.query_input_width()),
        key_input_width_(gate.key_input_width()) {
    require(batch >= 0 && batch <= 65535, "batch", "is ", batch, ", expected 0 to 65535 sequences");
    require(q_max_length >= 0, "q_max_length", "is ", q_max_length, ", expected >= 0");
    require(k_max_length >= 0, "k_max_length", "is ", k_max_length, ", expected >= 0");
    require(limits.multiprocessors > 0, "limits.multiprocessors", "is ", limits.multiprocessors, ", expected > 0");
    max_query_blocks_ = BlockGeometry::ceil_div(q_max_length, block_size_);
    max_key_blocks_ = BlockGeometry::ceil_div(k_max_length, block_size_);
    require(max_query_blocks_ <= 2147483647 / std::max<std::int64_t>(1, heads_), "q_max_length", q_max_length,
            " tokens give too many query blocks for int32 block offsets");
    require(max_key_blocks_ <= 2147483647, "k_max_length", k_max_length,
            " tokens give too many key blocks for int32 block indices");
    // Logit rows: a multiple of 4 floats (16-byte row loads). On NVIDIA, rows in shared memory are also
    // = 8 (mod 32) floats apart, so that the tensor-core logit stores (8 rows x 4 lanes of float2 per
    // instruction) fall on distinct banks (512 key blocks, 0 mod 32, put all 8 rows on the same banks: 8-way
    // conflicts, ncu at 32k); rows in workspace slices stay 128-byte aligned.
#if defined(__HIPCC__)
    const std::int64_t workspace_row_stride = std::max<std::int64_t>(4, (max_key_blocks_ + 3) / 4 * 4);
    row_stride_ = workspace_row_stride;
#else
    const std::int64_t workspace_row_stride = (std::max<std::int64_t>(1, max_key_blocks_) + 31) / 32 * 32;
    row_stride_ = workspace_row_stride + 8;
#endif
    // The logit budget is counted in unpadded rows, so that the padding never costs a row (128k: 16 rows of
    // 2048 key blocks; 15 padded rows measured 7% slower).
    const std::int64_t row_bytes = workspace_row_stride * static_cast<std::int64_t>(sizeof(float));
    // Logits in shared memory when at least 4 rows fit (fewer rows per item would re-read the key
    // features from L2 too often); otherwise 16 rows per item in per-CTA workspace slices (half the
    // workspace of 32 rows, as fast at 128k: 1.843 vs 1.844 ms TopK measured).
    rows_per_item_ = std::min<std::int64_t>(kSelectionMaxRows, limits.logit_shared_bytes / row_bytes);
    logits_in_shared_ = rows_per_item_ >= 4;
    auto use_workspace_logits = [&] {
      logits_in_shared_ = false;
      rows_per_item_ = kSelectionWorkspaceRows;
      row_stride_ = workspace_row_stride;
    };
    if (!logits_in_shared_) use_workspace_logits();
#if defined(__HIPCC__)
    key_tile_ = rows_per_item_ <= 8 && dim_ <= 128 ? 64 : 32;  // the FMA tiles: 16 x 32 or 8 x 64
#endif  // NVIDIA has no key tiles: each warp streams its keys (key_tile_ is unused there)
#if !defined(__HIPCC__)
    warpgroup_projection_ = limits.warpgroup_projection && dim_ <= kWarpgroupProjectionColumns;
#endif
    require(limits.warp_size == 32 || limits.warp_size == 64, "limits.warp_size", "is ", limits.warp_size,
            ", expected 32 or 64");
    warps_ = kGateThreads / limits.warp_size;
    // Stay inside the device's shared memory per CTA (64 KiB on AMD GPUs): a narrower key tile first,
    // then fewer rows of shared logits, then the workspace slices.
#if defined(__HIPCC__)
    if (selection_shared_bytes_for(kRadixBins * 12) > limits.shared_bytes_per_block) key_tile_ = 32;
#endif
    while (logits_in_shared_ && selection_shared_bytes_for(kRadixBins * 12) > limits.shared_bytes_per_block) {
      if (--rows_per_item_ < 4) use_workspace_logits();
    }
    // More than 16 rows (two tensor-core row tiles per item) only while two CTAs still fit on a multiprocessor:
    // fewer key reads per row do not make up for half the occupancy.
    if (logits_in_shared_ && rows_per_item_ > 16 &&
        2 * (selection_shared_bytes_for(kRadixBins * 12) + 1024) > limits.shared_bytes_per_multiprocessor)
      rows_per_item_ = 16;
    require(selection_shared_bytes_for(kRadixBins * 12) <= limits.shared_bytes_per_block, "gate", "hidden size ", dim_,
            " needs ", selection_shared_bytes_for(kRadixBins * 12),
            " bytes of shared memory per selection CTA, the device offers ", limits.shared_bytes_per_block);
    item_tiles_ = (max_query_blocks_ + rows_per_item_ - 1) / rows_per_item_;
    items_ = batch_ * heads_ * item_tiles_;
    grid_ = logits_in_shared_ ? items_ : std::min<std::int64_t>(items_, 2 * limits.multiprocessors);
    require(items_ <= 2147483647, "q_max_length", "too many selection work items (", items_, ") for one grid");

    // Workspace layout, 256-byte aligned pieces.
    auto reserve = [&](std::int64_t bytes) {
      const std::int64_t at = workspace_bytes_;
      workspace_bytes_ += (bytes + 255) / 256 * 256;
      return at;
    };
    const std::int64_t f = static_cast<std::int64_t>(sizeof(float));
    pooled_query_at_ = reserve(has_q_projection_ ? batch_ * heads_ * max_query_blocks_ * query_input_width_ * f : 0);
    pooled_key_at_ = reserve(batch_ * kv_heads_ * max_key_blocks_ * key_input_width_ * f);
    query_features_at_ = reserve(batch_ * heads_ * max_query_blocks_ * dim_ * f);
    key_features_at_ = reserve(batch_ * key_heads_ * max_key_blocks_ * dim_ * f);
    tile_totals_at_ =
        reserve((row_bound() + kScanTile - 1) / kScanTile * static_cast<std::int64_t>(sizeof(std::int64_t)));
    top_k_prefix_at_ = reserve(batch_ * (max_query_blocks_ + 1) * static_cast<std::int64_t>(sizeof(std::int64_t)));
    row_facts_at_ = reserve(batch_ * max_query_blocks_ * static_cast<std::int64_t>(sizeof(detail::RowView)));
    rope_table_at_ = reserve(rope_table(GateWorkspace{}).entry_count() * 8);
    global_logits_at_ = reserve(logits_in_shared_ ? 0 : grid_ * rows_per_item_ * row_stride_ * f);
  }

  std::int64_t workspace_bytes() const { return std::max<std::int64_t>(workspace_bytes_, 256); }
  std::int64_t row_bound() const { return heads_ * batch_ * max_query_blocks_; }
  std::int64_t row_offset_entries() const { return row_bound() + 1; }
  std::int64_t query_block_offset_entries() const { return batch_ + 1; }

  std::int64_t batch() const { return batch_; }
  std::int64_t q_max_length() const { return q_max_length_; }
  std::int64_t k_max_length() const { return k_max_length_; }
  std::int64_t heads() const { return heads_; }
  std::int64_t block_size() const { return block_size_; }
  std::int64_t max_query_blocks() const { return max_query_blocks_; }
  std::int64_t max_key_blocks() const { return max_key_blocks_; }
  std::int64_t rows_per_item() const { return rows_per_item_; }
  int key_tile() const { return key_tile_; }
  bool logits_in_shared_memory() const { return logits_in_shared_; }
  bool warpgroup_projection() const { return warpgroup_projection_; }

  // Where the features live inside a workspace of this plan.
  GateFeatures features(const GateWorkspace& workspace) const {
    GateFeatures result;
    result.query = at<float>(workspace, query_features_at_);
    result.key = at<float>(workspace, key_features_at_);
    result.heads = heads_;
    result.key_heads = key_heads_;
    result.dim = dim_;
    result.max_query_blocks = max_query_blocks_;
    result.max_key_blocks = max_key_blocks_;
    result.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim_)));
    return result;
  }
  float* pooled_query(const GateWorkspace& workspace) const { return at<float>(workspace, pooled_query_at_); }
  RopeTable rope_table(const GateWorkspace& workspace) const {
    RopeTable table;
    table.entries = workspace.data != nullptr ? at<float2>(workspace, rope_table_at_) : nullptr;
    table.batch = batch_;
    table.max_blocks = std::max(max_query_blocks_, max_key_blocks_);
    table.half = dim_ / 2;
    return table;
  }
  float* pooled_key(const GateWorkspace& workspace) const { return at<float>(workspace, pooled_key_at_); }
  std::int64_t* tile_totals(const GateWorkspace& workspace) const {
    return at<std::int64_t>(workspace, tile_totals_at_);
  }
  RowLayout row_layout(const GateWorkspace& workspace) const {
    return RowLayout{at<detail::RowView>(workspace, row_facts_at_), at<std::int64_t>(workspace, top_k_prefix_at_),
                     max_query_blocks_};
  }
  float* global_logits(const GateWorkspace& workspace) const {
    return logits_in_shared_ ? nullptr : at<float>(workspace, global_logits_at_);
  }

  template <class Policy>
  int selection_shared_bytes() const {
    return static_cast<int>(selection_shared_bytes_for(detail::kSelectionWarpScratchBytes<Policy>));
  }
  std::int64_t grid() const { return grid_; }
  std::int64_t items() const { return items_; }
  std::int64_t item_tiles() const { return item_tiles_; }
  std::int64_t row_stride() const { return row_stride_; }

  void validate_workspace(const GateWorkspace& workspace) const {
    require(workspace.data != nullptr, "workspace", "data is null; allocate plan.workspace_bytes() bytes");
    require(reinterpret_cast<std::uintptr_t>(workspace.data) % 256 == 0, "workspace",
            "must be 256-byte aligned (device allocations are)");
    require(workspace.bytes >= workspace_bytes(), "workspace", "holds ", workspace.bytes, " bytes, the plan needs ",
            workspace_bytes());
  }

 private:
  // Dynamic shared memory of a selection CTA (block_selection_kernel's layout): the query rows, one key
  // tile, each warp's radix scratch, and the logits when they are kept in shared memory.
  std::int64_t selection_shared_bytes_for(std::int64_t warp_scratch_bytes) const {
    // The warps' scratch shares its bytes with the tiles (block_selection_kernel), the logits follow.
    const std::int64_t tiles = detail::selection_tile_floats(dim_, key_tile_, static_cast<int>(rows_per_item_)) * 4;
    const std::int64_t logits = logits_in_shared_ ? rows_per_item_ * row_stride_ * 4 : 0;
    return std::max(tiles, warps_ * warp_scratch_bytes) + logits;
  }

  template <class Value>
  static Value* at(const GateWorkspace& workspace, std::int64_t offset) {
    return reinterpret_cast<Value*>(static_cast<unsigned char*>(workspace.data) + offset);
  }

  std::int64_t batch_, q_max_length_, k_max_length_, heads_, kv_heads_, key_heads_, dim_, block_size_;
  bool has_q_projection_;
  std::int64_t query_input_width_, key_input_width_;
  std::int64_t max_query_blocks_ = 0, max_key_blocks_ = 0;
  std::int64_t row_stride_ = 0, rows_per_item_ = 1, item_tiles_ = 0, items_ = 0, grid_ = 0;
  bool logits_in_shared_ = true;
  bool warpgroup_projection_ = false;
  int key_tile_ = 32;
  std::int64_t warps_ = kGateThreads / 32;
  std::int64_t workspace_bytes_ = 0;
  std::int64_t pooled_query_at_ = 0, pooled_key_at_ = 0, query_features_at_ = 0, key_features_at_ = 0,
               tile_totals_at_ = 0, global_logits_at_ = 0, rope_table_at_ = 0, top_k_prefix_at_ = 0, row_facts_at_ = 0;
};

// Kept blocks a selection can write for these (host-known) sequences: exact for TopK, the worst case
// for Threshold (every visible block) and Nucleus (forced blocks plus at most max_k - forced others).
template <class Policy>
std::int64_t selected_blocks_bound(const std::vector<BlockGeometry>& sequences, std::int64_t heads,
                                   const Policy& policy, const ForcedBlocks& forced = {}) {
  policy.validate();
  forced.validate();
  require(heads > 0, "heads", "is ", heads, ", expected > 0");
  std::int64_t total = 0;
  for (const BlockGeometry& g : sequences)
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
      const std::int64_t visible = g.visible_key_blocks(m);
      std::int64_t row = visible;
      if constexpr (std::is_same_v<Policy, TopK>) {
        row = top_k_row_size(policy, forced, g, m);
      } else if constexpr (std::is_same_v<Policy, Nucleus>) {
        if (visible > 0 && !forced.row_is_dense(g, m)) {
          const std::int64_t forced_count = forced_block_count(forced, g, m, visible);
          row = forced_count + nucleus_take(policy, forced_count, visible - forced_count, visible - forced_count);
        }
      }
      total += row;
    }
  return total * heads;
}

// Owning storage for one plan: the workspace and the BlockSet arrays (allocation is synchronous: do it
// once, outside the hot path).
class GateSelectionStorage {
 public:
  GateSelectionStorage(const GateSelectionPlan& plan, std::int64_t key_block_capacity) {
    require(key_block_capacity >= 0, "key_block_capacity", "is ", key_block_capacity, ", expected >= 0");
    try {
      workspace_.bytes = plan.workspace_bytes();
      workspace_.data = vendor::device_allocate(static_cast<std::size_t>(workspace_.bytes), "gate workspace");
      buffers_.row_offset_entries = plan.row_offset_entries();
      buffers_.row_offsets = static_cast<std::int64_t*>(vendor::device_allocate(
          static_cast<std::size_t>(buffers_.row_offset_entries) * sizeof(std::int64_t), "BlockSet row_offsets"));
      buffers_.key_block_capacity = key_block_capacity;
      buffers_.key_blocks = static_cast<std::int32_t*>(vendor::device_allocate(
          static_cast<std::size_t>(std::max<std::int64_t>(1, key_block_capacity)) * sizeof(std::int32_t),
          "BlockSet key_blocks"));
      buffers_.query_block_offset_entries = plan.query_block_offset_entries();
      buffers_.query_block_offsets = static_cast<std::int32_t*>(
          vendor::device_allocate(static_cast<std::size_t>(buffers_.query_block_offset_entries) * sizeof(std::int32_t),
                                  "BlockSet query_block_offsets"));
      buffers_.overflow =
          static_cast<std::int32_t*>(vendor::device_allocate(sizeof(std::int32_t), "selection overflow flag"));
    } catch (...) {
      release();
      throw;
    }
  }
  GateSelectionStorage(const GateSelectionStorage&) = delete;
  GateSelectionStorage& operator=(const GateSelectionStorage&) = delete;
  ~GateSelectionStorage() { release(); }

  const GateWorkspace& workspace() const { return workspace_; }
  const DeviceBlockSetBuffers& buffers() const { return buffers_; }

 private:
  void release() noexcept {
    vendor::device_release(workspace_.data);
    vendor::device_release(buffers_.row_offsets);
    vendor::device_release(buffers_.key_blocks);
    vendor::device_release(buffers_.query_block_offsets);
    vendor::device_release(buffers_.overflow);
    workspace_ = GateWorkspace{};
    buffers_ = DeviceBlockSetBuffers{};
  }
  GateWorkspace workspace_;
  DeviceBlockSetBuffers buffers_;
};

// The device-side lengths of a (q, k) pair of batches.
template <class Q, class K>
GateSequences gate_sequences(const SequenceBatch<Q>& q, const SequenceBatch<K>& k, std::int64_t block_size,
                             bool causal) {
  GateSequences sequences;
  sequences.batch = q.batch;
  sequences.q_max_length = q.max_length;
  sequences.k_max_length = k.max_length;
  sequences.q_cu_seqlens = q.cu_seqlens;
  sequences.k_cu_seqlens = k.cu_seqlens;
  sequences.block_size = block_size;
  sequences.causal = causal;
  return sequences;
}

namespace detail {

inline dim3 grid_of(std::int64_t x, std::int64_t y, std::int64_t z) {
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

inline void validate_sequences(const GateSelectionPlan& plan, const GateSequences& sequences) {
  require(sequences.batch == plan.batch(), "sequences", "batch is ", sequences.batch, ", the plan's is ", plan.batch());
  require(sequences.q_max_length <= plan.q_max_length(), "sequences", "q max_length ", sequences.q_max_length,
          " exceeds the plan's ", plan.q_max_length());
  require(sequences.k_max_length <= plan.k_max_length(), "sequences", "k max_length ", sequences.k_max_length,
          " exceeds the plan's ", plan.k_max_length());
  require(sequences.block_size == plan.block_size(), "sequences", "block size ", sequences.block_size,
          " differs from the gate's ", plan.block_size());
}

// One projection launch: tiles sized for 128 columns when the features fit, else for 256.
inline void launch_projection(const ProjectParams& params, std::int64_t batch, bool warpgroup, const char* what,
                              vendor::stream_t stream) {
  if (params.weights == nullptr && params.weights_transposed == nullptr) {  // identity: RoPE alone
    constexpr int kThreads = 256;
    const std::int64_t rows_per_cta = rotated_rows_per_cta(kThreads, params.dim);
    vendor::launch_after_prior_grid(
        what, &rotate_rows_kernel<kThreads>,
        grid_of((params.max_blocks + rows_per_cta - 1) / rows_per_cta, params.output_heads, batch), dim3(kThreads), 0,
        stream, params);
    return;
  }
#if !defined(__HIPCC__)
  // NVIDIA: tensor cores (split TF32) for projections up to 128 wide; warpgroup instructions on Hopper.
  if (params.weights_transposed != nullptr && warpgroup) {
    const dim3 grid = grid_of((params.max_blocks + kWarpgroupProjectionRows - 1) / kWarpgroupProjectionRows,
                              params.output_heads, batch);
    const bool exact = params.weights_tf32_exact;
    auto* kernel = exact ? &project_features_warpgroup_kernel<true> : &project_features_warpgroup_kernel<false>;
    const int shared_bytes = WarpgroupProjectionLayout::shared_bytes(exact);
    vendor::set_max_dynamic_shared_bytes(kernel, shared_bytes);
    vendor::launch_after_prior_grid(what, kernel, grid, dim3(128), shared_bytes, stream, params);
    return;
  }
  if (params.weights_transposed != nullptr) {  // the gate's uses_tensor_projection()
    const dim3 grid =
        grid_of((params.max_blocks + kTensorProjectionRows - 1) / kTensorProjectionRows, params.output_heads, batch);
    auto* kernel = params.weights_tf32_exact ? &project_features_tensor_kernel<kTensorProjectionColumns, true>
                                             : &project_features_tensor_kernel<kTensorProjectionColumns, false>;
    vendor::set_max_dynamic_shared_bytes(kernel, tensor_projection_shared_bytes());
    vendor::launch_after_prior_grid(what, kernel, grid, dim3(256), tensor_projection_shared_bytes(), stream, params);
    return;
  }
#else
  static_cast<void>(warpgroup);  // NVIDIA only
#endif
  const dim3 grid = grid_of((params.max_blocks + kProjectionRows - 1) / kProjectionRows, params.output_heads, batch);
  if (params.dim <= 128) {
    vendor::launch_after_prior_grid(what, &project_features_kernel<128>, grid, dim3(128), 0, stream, params);
  } else {
    vendor::launch_after_prior_grid(what, &project_features_kernel<kGateMaxFeatureDim>, grid, dim3(kGateMaxFeatureDim),
                                    0, stream, params);
  }
}

// Projection (+ RoPE) of pooled features into the plan's feature buffers.
inline void launch_projections(const DeviceLearnedGate& gate, const GateSelectionPlan& plan,
                               const GateSequences& sequences, const float* pooled_query, const float* pooled_key,
                               const GateFeatures& features, bool rotate_query, const GateWorkspace& workspace,
                               vendor::stream_t stream) {
  if (plan.batch() == 0) return;
  const RopeTable table = plan.rope_table(workspace);
  if (table.max_blocks > 0) {
    constexpr int kThreads = 256;
    vendor::launch_after_prior_grid("rope_table_kernel launch", &rope_table_kernel<kThreads>,
                                    grid_of((table.max_blocks * table.half + kThreads - 1) / kThreads, table.batch, 2),
                                    dim3(kThreads), 0, stream, sequences, gate.rope(), table);
  }
  ProjectParams key;
  key.input = pooled_key;
  key.input_heads = gate.num_kv_heads();
  key.input_width = gate.key_input_width();
  key.weights = gate.key_projection();
  key.weights_transposed = gate.key_projection_transposed();
  key.weights_tf32_exact = gate.projections_tf32_exact();
  key.output = features.key;
  key.output_heads = gate.key_heads();
  key.dim = gate.hidden_size();
  key.max_blocks = plan.max_key_blocks();
  key.sequences = sequences;
  key.is_query = false;
  key.rope_table = table;
  if (plan.max_key_blocks() > 0) {
    launch_projection(key, plan.batch(), plan.warpgroup_projection(), "project_features_kernel launch (keys)", stream);
  }
  // The query side: its projection, or RoPE alone (rotate_query) for a gate without q projection.
  if ((gate.has_q_projection() || rotate_query) && plan.max_query_blocks() > 0) {
    ProjectParams query = key;
    query.input = pooled_query;
    query.input_heads = gate.num_q_heads();
    query.input_width = gate.query_input_width();
    query.weights = gate.has_q_projection() ? gate.query_projection() : nullptr;
    query.weights_transposed = gate.has_q_projection() ? gate.query_projection_transposed() : nullptr;
    query.output = features.query;
    query.output_heads = gate.num_q_heads();
    query.max_blocks = plan.max_query_blocks();
    query.is_query = true;
    launch_projection(query, plan.batch(), plan.warpgroup_projection(), "project_features_kernel launch (queries)",
                      stream);
  }
}

template <class T>
void launch_pooling(const DeviceLearnedGate& gate, const SequenceBatch<const T>& input, const GateSequences& sequences,
                    bool is_query, const std::vector<int>& pools, float* out, std::int64_t max_blocks, bool rotate,
                    vendor::stream_t stream) {
  if (input.batch == 0 || max_blocks == 0) return;
  PoolParams<T> params;
  params.input = input;
  params.sequences = sequences;
  params.is_query = is_query;
  for (std::size_t p = 0; p < pools.size(); ++p) params.pools[p] = pools[p];
  params.pool_count = static_cast<int>(pools.size());
  params.out = out;
  params.max_blocks = max_blocks;
  params.rotate = rotate;
  params.rope = gate.rope();
  // vendor::warp_size is the widest warp on HIP's host pass, the exact one on CUDA: the grid covers all blocks.
  const std::int64_t per_cta = pool_blocks_per_cta(vendor::warp_size);
  vendor::launch_after_prior_grid(
      is_query ? "pool_blocks_kernel launch (queries)" : "pool_blocks_kernel launch (keys)", &pool_blocks_kernel<T>,
      grid_of((max_blocks + per_cta - 1) / per_cta, input.heads, input.batch), dim3(kPoolThreads), 0, stream, params);
}

inline void validate_buffers(const GateSelectionPlan& plan, const DeviceBlockSetBuffers& output) {
  require(output.row_offsets != nullptr, "output", "row_offsets is null");
  require(output.row_offset_entries >= plan.row_offset_entries(), "output", "row_offsets holds ",
          output.row_offset_entries, " entries, the plan needs ", plan.row_offset_entries());
  require(output.query_block_offsets != nullptr, "output", "query_block_offsets is null");
  require(output.query_block_offset_entries >= plan.query_block_offset_entries(), "output",
          "query_block_offsets holds ", output.query_block_offset_entries,
          " entries, expected batch + 1 = ", plan.query_block_offset_entries());
  require(output.key_block_capacity >= 0, "output", "key_block_capacity is ", output.key_block_capacity,
          ", expected >= 0");
  require(output.key_blocks != nullptr || output.key_block_capacity == 0, "output", "key_blocks is null");
  require(output.overflow != nullptr, "output", "overflow flag pointer is null");
}

template <class Policy>
void launch_selection(const GateSelectionPlan& plan, SelectionParams<Policy> params, vendor::stream_t stream) {
  if (plan.grid() == 0) return;
  auto* kernel = &block_selection_kernel<Policy>;
  const int shared_bytes = plan.selection_shared_bytes<Policy>();
  vendor::set_max_dynamic_shared_bytes(kernel, shared_bytes);
  vendor::launch_after_prior_grid(
      params.write ? "block_selection_kernel launch (write)" : "block_selection_kernel launch (count)", kernel,
      grid_of(plan.grid(), 1, 1), dim3(kGateThreads), static_cast<std::size_t>(shared_bytes), stream, params);
}

}  // namespace detail

// Gate features from pre-RoPE q [.., Hq, D] and k [.., Hkv, D] (device memory, bf16 or half, dim stride
// 1, 16-byte aligned vectors; padded or packed with device cu_seqlens). Returns where they are.
template <class T>
GateFeatures gate_features(const DeviceLearnedGate& gate, const GateSelectionPlan& plan,
                           SequenceBatch<const T> q_before_rope, SequenceBatch<const T> k_before_rope, bool causal,
                           const GateWorkspace& workspace, vendor::stream_t stream) {
  static_assert(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "the GPU gate reads seer::bfloat16 or seer::half elements");
  const auto& q = q_before_rope;
  const auto& k = k_before_rope;
  require(q.heads == gate.num_q_heads(), "q_before_rope", "has ", q.heads, " heads, expected the gate's ",
          gate.num_q_heads());
  require(k.heads == gate.num_kv_heads(), "k_before_rope", "has ", k.heads, " heads, expected the gate's ",
          gate.num_kv_heads());
  require(q.head_dim == gate.head_dim(), "q_before_rope", "head dim is ", q.head_dim, ", expected ", gate.head_dim());
  require(k.head_dim == gate.head_dim(), "k_before_rope", "head dim is ", k.head_dim, ", expected ", gate.head_dim());
  require(k.batch == q.batch, "k_before_rope", "batch is ", k.batch, " but q_before_rope has batch ", q.batch);
  require(q.data != nullptr, "q_before_rope", "data pointer is null");
  require(k.data != nullptr, "k_before_rope", "data pointer is null");
  require_prefill_vectors(q, "q_before_rope");
  require_prefill_vectors(k, "k_before_rope");
  const GateSequences sequences = gate_sequences(q, k, gate.block_size(), causal);
  detail::validate_sequences(plan, sequences);
  plan.validate_workspace(workspace);

  const GateFeatures features = plan.features(workspace);
  // Without a q projection the pooled query is the gate's query: pool and rotate in one kernel.
  const bool query_direct = !gate.has_q_projection();
  detail::launch_pooling(gate, q, sequences, true, gate.query_pools(),
                         query_direct ? features.query : plan.pooled_query(workspace), plan.max_query_blocks(),
                         query_direct, stream);
  detail::launch_pooling(gate, k, sequences, false, gate.key_pools(), plan.pooled_key(workspace), plan.max_key_blocks(),
                         false, stream);
  detail::launch_projections(gate, plan, sequences, plan.pooled_query(workspace), plan.pooled_key(workspace), features,
                             false, workspace, stream);
  return features;
}

// Gate features from pre-pooled block features (see PooledBlockFeatures): the projections and RoPE only.
inline GateFeatures gate_features_from_pooled(const DeviceLearnedGate& gate, const GateSelectionPlan& plan,
                                              const PooledBlockFeatures& pooled, const GateSequences& sequences,
                                              const GateWorkspace& workspace, vendor::stream_t stream) {
  require(pooled.key != nullptr || sequences.batch == 0, "pooled", "key features pointer is null");
  require(pooled.query != nullptr || sequences.batch == 0, "pooled", "query features pointer is null");
  require(reinterpret_cast<std::uintptr_t>(pooled.query) % 16 == 0 &&
              reinterpret_cast<std::uintptr_t>(pooled.key) % 16 == 0,
          "pooled", "feature pointers must be 16-byte aligned");
  detail::validate_sequences(plan, sequences);
  plan.validate_workspace(workspace);
  const GateFeatures features = plan.features(workspace);
  detail::launch_projections(gate, plan, sequences, pooled.query, pooled.key, features, true, workspace, stream);
  return features;
}

// Block selection from gate features (gate_features' result, or any features of that layout).
template <class Policy>
BlockSetView select_blocks(const GateSelectionPlan& plan, const GateFeatures& features, const GateSequences& sequences,
                           const Policy& policy, const ForcedBlocks& forced, const DeviceBlockSetBuffers& output,
                           const GateWorkspace& workspace, vendor::stream_t stream) {
  static_assert(std::is_same_v<Policy, TopK> || std::is_same_v<Policy, Threshold> || std::is_same_v<Policy, Nucleus>,
                "the GPU selection implements TopK, Threshold and Nucleus");
  policy.validate();
  forced.validate();
  detail::validate_sequences(plan, sequences);
  plan.validate_workspace(workspace);
  detail::validate_buffers(plan, output);
  require(features.query != nullptr && features.key != nullptr, "features", "has a null device pointer");
  require(features.heads == plan.heads() && features.max_query_blocks == plan.max_query_blocks() &&
              features.max_key_blocks == plan.max_key_blocks(),
          "features", "do not have the plan's shape (use plan.features(workspace))");

  SelectionOutput out;
  out.row_offsets = output.row_offsets;
  out.key_blocks = output.key_blocks;
  out.key_block_capacity = output.key_block_capacity;
  out.query_block_offsets = output.query_block_offsets;
  out.overflow = output.overflow;
  const BlockSetView view{output.row_offsets, output.key_blocks, output.query_block_offsets,
                          plan.batch(),       plan.heads(),      plan.block_size()};

  // One layout CTA per sequence: the row facts (TopK: and the rows' places).
  const RowLayout layout = plan.row_layout(workspace);
  vendor::launch_after_prior_grid("block_layout_kernel launch", &block_layout_kernel<Policy>,
                                  detail::grid_of(std::max<std::int64_t>(1, plan.batch()), 1, 1), dim3(kLayoutThreads),
                                  0, stream, sequences, out, policy, forced, layout);
  if (plan.batch() == 0 || plan.max_query_blocks() == 0) return view;

  SelectionParams<Policy> params;
  params.features = features;
  params.sequences = sequences;
  params.policy = policy;
  params.forced = forced;
  params.output = out;
  params.rows_per_item = static_cast<int>(plan.rows_per_item());
  params.key_tile = plan.key_tile();
  params.row_stride = plan.row_stride();
  params.global_logits = plan.global_logits(workspace);
  params.items = plan.items();
  params.item_tiles = plan.item_tiles();

  params.layout = layout;
  // Row places: TopK's come from the layout; other policies count their rows in a first pass of the
  // selection, then scan the sizes into row_offsets.
  if constexpr (!std::is_same_v<Policy, TopK>) {
    params.write = false;
    detail::launch_selection(plan, params, stream);
    const std::int64_t tiles = (plan.row_bound() + kScanTile - 1) / kScanTile;
    vendor::launch_after_prior_grid("scan_tile_totals_kernel launch", &scan_tile_totals_kernel<kGateThreads>,
                                    detail::grid_of(tiles, 1, 1), dim3(kGateThreads), 0, stream, plan.heads(),
                                    plan.batch(), out, plan.tile_totals(workspace));
    vendor::launch_after_prior_grid("scan_rows_kernel launch", &scan_rows_kernel<kGateThreads>,
                                    detail::grid_of(tiles, 1, 1), dim3(kGateThreads), 0, stream, plan.heads(),
                                    plan.batch(), out, static_cast<const std::int64_t*>(plan.tile_totals(workspace)));
  }
  params.write = true;
  detail::launch_selection(plan, params, stream);
  return view;
}

// gate_features followed by select_blocks.
template <class T, class Policy>
BlockSetView gate_and_select(const DeviceLearnedGate& gate, const GateSelectionPlan& plan,
                             SequenceBatch<const T> q_before_rope, SequenceBatch<const T> k_before_rope, bool causal,
                             const Policy& policy, const ForcedBlocks& forced, const DeviceBlockSetBuffers& output,
                             const GateWorkspace& workspace, vendor::stream_t stream) {
  policy.validate();
  forced.validate();
  detail::validate_buffers(plan, output);
  const GateFeatures features = gate_features<T>(gate, plan, q_before_rope, k_before_rope, causal, workspace, stream);
  return select_blocks(plan, features, gate_sequences(q_before_rope, k_before_rope, gate.block_size(), causal), policy,
                       forced, output, workspace, stream);
}

}  // namespace seer::gpu
