// Which query tile a prefill CTA computes, and which key tiles it visits: shared by the prefill kernels
// (mma.sync, Hopper warpgroup, AMD) and the ground-truth forwards, so that they all read a BlockSet
// row and walk its kept tiles the same way. Vendor-neutral (both compilers).
#pragma once

#include <cstdint>

#include "seer/core/block_geometry.hpp"
#include "seer/core/block_set.hpp"
#include "seer/gpu/prefill_params.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu::detail {

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
    std::int64_t tile = step;
    if (kept_blocks != nullptr) {
      // Blocks of one tile (the common case) need no 64-bit division.
      tile = tiles_per_block == 1 ? static_cast<std::int64_t>(kept_blocks[step])
                                  : static_cast<std::int64_t>(kept_blocks[step / tiles_per_block]) * tiles_per_block +
                                        step % tiles_per_block;
    }
    return tile < visible_tiles ? tile : -1;  // ascending: once past the visible region, always past
  }
};

// The schedule of query tile `query_tile` of (sequence, query head `head`): its BlockSet row when the call has
// one (per query head, or per KV head when the BlockSet has the KV heads' count), else every visible tile.
template <class T>
__device__ inline KeyTileSchedule key_tile_schedule(const PrefillParams<T>& params, const BlockGeometry& tiles,
                                                    std::int64_t sequence, std::int64_t head, std::int64_t query_tile) {
  KeyTileSchedule schedule;
  schedule.visible_tiles = tiles.visible_key_blocks(query_tile);
  if (params.has_blocks) {
    const BlockSetView& blocks = params.blocks;
    const std::int64_t block_head = blocks.heads == params.q.heads ? head : head / params.group;
    const std::int64_t row = blocks.row(sequence, block_head, query_tile / params.tiles_per_block);
    const std::int64_t first = blocks.row_offsets[row];
    schedule.kept_blocks = blocks.key_blocks + first;
    schedule.tiles_per_block = params.tiles_per_block;
    schedule.steps = (blocks.row_offsets[row + 1] - first) * params.tiles_per_block;
  } else {
    schedule.steps = schedule.visible_tiles;
  }
  return schedule;
}

// A CTA of the NVIDIA prefill grid (query tile x head within a head group, head group, sequence), x fastest.
// gridDim.y groups split the heads into near-equal runs of consecutive heads whose K/V fit in L2 together (the
// host picks the count; gridDim.y == heads, gridDim.x == max_query_tiles is one head per group). Inside a group
// the highest query tiles of all its heads come first: under causal masking they have the most keys, so the
// longest CTAs start early and the short ones fill the tail. With one head per group the last head's longest
// CTAs start when little other work is left (8k dense: about 14% idle tail in a list-scheduling simulation);
// several heads per group spread them out.
struct PrefillCta {
  std::int64_t query_tile = 0;
  std::int64_t sequence = 0;
  unsigned head = 0;
};

// This CTA's tile; false for the spare CTAs of a smaller head group. 32-bit arithmetic: heads and groups are
// below 2^16 and grid x below 2^31 (the host checks both).
__device__ inline bool head_grouped_prefill_cta(std::int64_t q_heads, std::int64_t max_query_tiles, PrefillCta& cta) {
  const unsigned heads = static_cast<unsigned>(q_heads);
  const unsigned group_first_head = blockIdx.y * heads / gridDim.y;
  const unsigned group_heads = (blockIdx.y + 1) * heads / gridDim.y - group_first_head;
  const unsigned tile_rank = blockIdx.x / group_heads;  // 0: the highest query tile
  if (tile_rank >= max_query_tiles) return false;
  cta.query_tile = max_query_tiles - 1 - static_cast<std::int64_t>(tile_rank);
  cta.head = group_first_head + blockIdx.x % group_heads;
  cta.sequence = blockIdx.z;
  return true;
}

}  // namespace seer::gpu::detail
