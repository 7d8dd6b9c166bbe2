// DeviceBlockSet: a BlockSet copied to GPU memory (CUDA or HIP, through the vendor layer), owning
// its device buffers.
//
// Uploading allocates and copies synchronously; do it once per selection, outside the hot call.
// view() hands block_sparse_attention a BlockSetView whose pointers refer to device memory; the
// host-side metadata (heads, block size, batch, sequence geometries) stays readable on the host
// for validation.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "seer/core/block_set.hpp"
#include "seer/core/error.hpp"
#include "seer/gpu/device_upload.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

class DeviceBlockSet {
 public:
  DeviceBlockSet() = default;

  explicit DeviceBlockSet(const BlockSet& blocks) : sequences_(blocks.sequences()) {
    require(blocks.complete(), "blocks", "only ", blocks.rows_filled(), " of ", blocks.rows(), " rows are filled");
    try {
      row_offsets_ = upload_to_device(blocks.row_offsets(), "DeviceBlockSet");
      key_blocks_ = upload_to_device(blocks.key_blocks(), "DeviceBlockSet");
      query_block_offsets_ = upload_to_device(blocks.query_block_offsets(), "DeviceBlockSet");
    } catch (...) {
      release();
      throw;
    }
    view_ = BlockSetView{row_offsets_,   key_blocks_,    query_block_offsets_,
                         blocks.batch(), blocks.heads(), blocks.block_size()};
  }

  DeviceBlockSet(const DeviceBlockSet&) = delete;
  DeviceBlockSet& operator=(const DeviceBlockSet&) = delete;
  DeviceBlockSet(DeviceBlockSet&& other) noexcept { swap(other); }
  DeviceBlockSet& operator=(DeviceBlockSet&& other) noexcept {
    if (this != &other) {
      release();
      swap(other);
    }
    return *this;
  }
  ~DeviceBlockSet() { release(); }

  // Pointers into device memory; valid while this object lives.
  const BlockSetView* view() const { return &view_; }
  const std::vector<BlockGeometry>& sequences() const { return sequences_; }

 private:
  // Destructors cannot throw: a failing release here (e.g. after a sticky device error) has already
  // been reported by the call that caused it.
  void release() noexcept {
    vendor::device_release(row_offsets_);
    vendor::device_release(key_blocks_);
    vendor::device_release(query_block_offsets_);
    row_offsets_ = nullptr;
    key_blocks_ = nullptr;
    query_block_offsets_ = nullptr;
    view_ = BlockSetView{};
  }

  void swap(DeviceBlockSet& other) noexcept {
    std::swap(row_offsets_, other.row_offsets_);
    std::swap(key_blocks_, other.key_blocks_);
    std::swap(query_block_offsets_, other.query_block_offsets_);
    std::swap(view_, other.view_);
    std::swap(sequences_, other.sequences_);
  }

  std::int64_t* row_offsets_ = nullptr;
  std::int32_t* key_blocks_ = nullptr;
  std::int32_t* query_block_offsets_ = nullptr;
  BlockSetView view_{};
  std::vector<BlockGeometry> sequences_;
};

}  // namespace seer::gpu
