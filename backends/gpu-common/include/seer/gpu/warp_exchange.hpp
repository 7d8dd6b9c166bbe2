// The device Exchange for seer/gpu/warp_algorithms.hpp: lanes trade values through the vendor's
// warp shuffles, at the target's native width (32 on NVIDIA and RDNA, 64 on CDNA).
#pragma once

#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"

namespace seer::gpu {

struct NativeWarpExchange {
  static constexpr int kWidth = vendor::warp_size;

  template <class Value>
  __device__ Value shuffle_xor(Value value, int lane_offset) const {
    return vendor::shuffle_xor(value, lane_offset);
  }
  template <class Value>
  __device__ Value broadcast(Value value, int source_lane) const {
    return vendor::broadcast(value, source_lane);
  }
  __device__ warp::LaneMask<kWidth> ballot(bool predicate) const { return vendor::ballot(predicate); }
};

}  // namespace seer::gpu
