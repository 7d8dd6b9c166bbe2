// Warp-level algorithms written over the warp width, so one source serves 32-lane NVIDIA warps and
// RDNA wavefronts, 64-lane CDNA wavefronts, and a host emulation that runs either width on the CPU.
//
// An algorithm never calls a shuffle intrinsic itself. It takes an Exchange, which says how lanes
// trade values:
//
//   struct Exchange {
//     static constexpr int kWidth;                     // lanes in the warp: 32 or 64
//     Value shuffle_xor(Value value, int lane_offset) const;   // value of lane (this lane ^ offset)
//     Value broadcast(Value value, int source_lane) const;     // value of one lane, in every lane
//     LaneMask<kWidth> ballot(Predicate predicate) const;      // bit l set when lane l's predicate holds
//   };
//
// On a GPU, Value is a float in each thread and the Exchange wraps the vendor's shuffles (see
// seer/gpu/warp_exchange.hpp). In the host emulation, Value holds one element per lane and the
// Exchange permutes them; the algorithm's source is the same, which is what lets the CPU tests check
// the width-dependent logic (group offsets, 64-bit masks) for both widths without an AMD GPU.
//
// This header needs no GPU compiler: it is plain C++17 plus SEER_HOST_DEVICE.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "seer/core/platform.hpp"

namespace seer::gpu::warp {

// ---- Lane masks ----------------------------------------------------------------------------------

// One bit per lane. A 64-lane wavefront needs all 64 bits: a 32-bit mask silently drops lanes 32-63
// (the classic porting bug), so the type follows the width.
template <int Width>
using LaneMask = std::conditional_t<(Width > 32), std::uint64_t, std::uint32_t>;

template <int Width>
SEER_HOST_DEVICE constexpr LaneMask<Width> all_lanes_mask() {
  static_assert(Width == 32 || Width == 64, "warps have 32 or 64 lanes");
  return static_cast<LaneMask<Width>>(~LaneMask<Width>{0});
}

// Mask of the lanes below `lane` (0 <= lane < Width): the lanes whose vote precedes this one.
template <int Width>
SEER_HOST_DEVICE constexpr LaneMask<Width> lanes_below_mask(int lane) {
  return lane <= 0 ? LaneMask<Width>{0} : (all_lanes_mask<Width>() >> (Width - lane));
}

// Number of set bits, without compiler builtins (valid on host and device).
template <class Mask>
SEER_HOST_DEVICE constexpr int count_lanes(Mask mask) {
  int count = 0;
  for (; mask != 0; mask &= mask - 1) ++count;
  return count;
}

// Aligned group of GroupLanes consecutive lanes that contains `lane`, as a mask.
template <int Width, int GroupLanes>
SEER_HOST_DEVICE constexpr LaneMask<Width> group_mask(int lane) {
  static_assert(GroupLanes >= 1 && GroupLanes <= Width && (GroupLanes & (GroupLanes - 1)) == 0,
                "groups are power-of-two lane counts no wider than the warp");
  const LaneMask<Width> group_bits = GroupLanes == Width
                                         ? all_lanes_mask<Width>()
                                         : static_cast<LaneMask<Width>>((LaneMask<Width>{1} << GroupLanes) - 1);
  return static_cast<LaneMask<Width>>(group_bits << (lane / GroupLanes * GroupLanes));
}

// ---- Combining operations ------------------------------------------------------------------------

struct Sum {
  template <class Value>
  SEER_HOST_DEVICE Value operator()(const Value& a, const Value& b) const {
    return a + b;
  }
};

// fmax semantics: -inf is the identity, and a NaN operand loses to a number.
struct Maximum {
  SEER_HOST_DEVICE float operator()(float a, float b) const { return fmaxf(a, b); }
  template <class Value>
  SEER_HOST_DEVICE Value operator()(const Value& a, const Value& b) const {
    return elementwise_maximum(a, b);  // found by argument-dependent lookup (host emulation)
  }
};

// ---- Algorithms ----------------------------------------------------------------------------------

// Combines `value` over each aligned group of GroupLanes consecutive lanes (a butterfly: every lane
// of the group ends with the group's result). GroupLanes is how many lanes hold one row of a matrix
// fragment: 4 for NVIDIA's m16n8 accumulators, 16 for AMD's 16x16 MFMA and WMMA accumulators.
template <int GroupLanes, class Exchange, class Value, class Combine>
SEER_HOST_DEVICE Value reduce_within_groups(Value value, const Exchange& exchange, Combine combine) {
  static_assert(GroupLanes >= 1 && GroupLanes <= Exchange::kWidth && (GroupLanes & (GroupLanes - 1)) == 0,
                "groups are power-of-two lane counts no wider than the warp");
  // Offsets below GroupLanes never leave the aligned group: lane ^ offset keeps the high bits.
  for (int offset = GroupLanes / 2; offset > 0; offset /= 2)
    value = combine(value, exchange.shuffle_xor(value, offset));
  return value;
}

// Combines `value` over the whole warp; every lane gets the result.
template <class Exchange, class Value, class Combine>
SEER_HOST_DEVICE Value reduce_warp(Value value, const Exchange& exchange, Combine combine) {
  return reduce_within_groups<Exchange::kWidth>(value, exchange, combine);
}

// True in every lane when `predicate` holds in every lane. Compares against the full-width mask, so
// a wavefront's upper 32 lanes count.
template <class Exchange, class Predicate>
SEER_HOST_DEVICE bool all_lanes(const Predicate& predicate, const Exchange& exchange) {
  return exchange.ballot(predicate) == all_lanes_mask<Exchange::kWidth>();
}

// True in every lane when `predicate` holds in at least one lane.
template <class Exchange, class Predicate>
SEER_HOST_DEVICE bool any_lane(const Predicate& predicate, const Exchange& exchange) {
  return exchange.ballot(predicate) != 0;
}

// ---- 16x16 accumulator layouts ---------------------------------------------------------------------
//
// Where the element (row, column) of a 16-row accumulator tile lives: lane and register. The kernel
// reduces a score row over the lanes that hold it, so each layout also names that group
// (row_group_lanes: the row's lanes are one aligned group of that many consecutive lanes).

// NVIDIA mma.sync m16n8k16 (32 lanes, 16 x 8 tile): lane 4g + t holds (g, 2t), (g, 2t+1), (g+8, 2t),
// (g+8, 2t+1) in registers 0-3 (PTX ISA, "Matrix Fragments for mma.m16n8k16").
struct NvidiaMma16x8Layout {
  static constexpr int kWidth = 32;
  static constexpr int kRows = 16;
  static constexpr int kColumns = 8;
  static constexpr int kRegisters = 4;
  static constexpr int kRowGroupLanes = 4;
  SEER_HOST_DEVICE static constexpr int row(int lane, int reg) { return lane / 4 + 8 * (reg / 2); }
  SEER_HOST_DEVICE static constexpr int column(int lane, int reg) { return 2 * (lane % 4) + reg % 2; }
};

// AMD CDNA MFMA f32_16x16x16 (64 lanes): lane l holds column l % 16 of rows 4 (l / 16) + r, r = 0-3.
struct CdnaMfma16x16Layout {
  static constexpr int kWidth = 64;
  static constexpr int kRows = 16;
  static constexpr int kColumns = 16;
  static constexpr int kRegisters = 4;
  static constexpr int kRowGroupLanes = 16;
  SEER_HOST_DEVICE static constexpr int row(int lane, int reg) { return 4 * (lane / 16) + reg; }
  SEER_HOST_DEVICE static constexpr int column(int lane, int /*reg*/) { return lane % 16; }
};

// AMD RDNA3 WMMA f32_16x16x16 wave32: lane l holds column l % 16 of rows 2 r + l / 16, r = 0-7.
struct RdnaWmma16x16Layout {
  static constexpr int kWidth = 32;
  static constexpr int kRows = 16;
  static constexpr int kColumns = 16;
  static constexpr int kRegisters = 8;
  static constexpr int kRowGroupLanes = 16;
  SEER_HOST_DEVICE static constexpr int row(int lane, int reg) { return 2 * reg + lane / 16; }
  SEER_HOST_DEVICE static constexpr int column(int lane, int /*reg*/) { return lane % 16; }
};

// The 16x16 accumulator layout of a warp of Width lanes on AMD hardware: the MFMA layout for 64
// lanes, the WMMA layout for 32. The portable (scalar) tile multiply uses the same layout, so the
// code around the multiply is identical whichever instruction computes it.
template <int Width>
using Amd16x16Layout = std::conditional_t<Width == 64, CdnaMfma16x16Layout, RdnaWmma16x16Layout>;

// ---- Host emulation ------------------------------------------------------------------------------

// One value per lane: what a warp holds in one register. Used by the CPU tests (and by anyone who
// wants to step through an algorithm on the host).
template <class T, int Width>
struct LaneArray {
  T lane[Width];

  static LaneArray filled(T value) {
    LaneArray result;
    for (int l = 0; l < Width; ++l) result.lane[l] = value;
    return result;
  }
  friend LaneArray operator+(const LaneArray& a, const LaneArray& b) {
    LaneArray result;
    for (int l = 0; l < Width; ++l) result.lane[l] = a.lane[l] + b.lane[l];
    return result;
  }
  friend LaneArray elementwise_maximum(const LaneArray& a, const LaneArray& b) {
    LaneArray result;
    for (int l = 0; l < Width; ++l) result.lane[l] = std::fmax(a.lane[l], b.lane[l]);
    return result;
  }
};

// Exchange for LaneArray values: runs every lane in lock step, as the hardware does.
template <int Width>
struct EmulatedExchange {
  static_assert(Width == 32 || Width == 64, "warps have 32 or 64 lanes");
  static constexpr int kWidth = Width;

  template <class T>
  LaneArray<T, Width> shuffle_xor(const LaneArray<T, Width>& value, int lane_offset) const {
    LaneArray<T, Width> result;
    for (int l = 0; l < Width; ++l) result.lane[l] = value.lane[(l ^ lane_offset) % Width];
    return result;
  }
  template <class T>
  LaneArray<T, Width> broadcast(const LaneArray<T, Width>& value, int source_lane) const {
    return LaneArray<T, Width>::filled(value.lane[source_lane % Width]);
  }
  LaneMask<Width> ballot(const LaneArray<bool, Width>& predicate) const {
    LaneMask<Width> mask = 0;
    for (int l = 0; l < Width; ++l)
      if (predicate.lane[l]) mask |= static_cast<LaneMask<Width>>(LaneMask<Width>{1} << l);
    return mask;
  }
};

}  // namespace seer::gpu::warp
