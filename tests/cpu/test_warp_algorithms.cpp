// The width-parameterised warp algorithms of seer/gpu/warp_algorithms.hpp, run in the host emulation
// for 32 lanes (NVIDIA, RDNA) and 64 lanes (CDNA), against direct loops over the lanes. The same
// algorithm source runs on the GPU (tests/gpu/test_warp_algorithms.cu on the H100, both widths); no
// AMD GPU is reachable here, so this emulation is what checks the 64-lane logic.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "seer/gpu/warp_algorithms.hpp"

namespace {

using namespace seer::gpu::warp;

template <int W>
struct Width {
  static constexpr int value = W;
};

template <int W>
LaneArray<float, W> random_lanes(std::mt19937& generator) {
  std::uniform_real_distribution<float> distribution(-8.0f, 8.0f);
  LaneArray<float, W> values;
  for (int l = 0; l < W; ++l) values.lane[l] = distribution(generator);
  return values;
}

// Checks reduce_within_groups<G> for one group size against direct loops, for sum and max.
template <int W, int G>
void check_group_reduction(const LaneArray<float, W>& values) {
  const EmulatedExchange<W> exchange;
  const LaneArray<float, W> sums = reduce_within_groups<G>(values, exchange, Sum{});
  const LaneArray<float, W> maxima = reduce_within_groups<G>(values, exchange, Maximum{});
  for (int l = 0; l < W; ++l) {
    double expected_sum = 0.0;
    float expected_max = -std::numeric_limits<float>::infinity();
    for (int m = l / G * G; m < l / G * G + G; ++m) {
      expected_sum += values.lane[m];
      expected_max = std::fmax(expected_max, values.lane[m]);
    }
    CHECK(sums.lane[l] == doctest::Approx(expected_sum).epsilon(1e-5));
    CHECK(maxima.lane[l] == expected_max);
  }
  if constexpr (G < W) check_group_reduction<W, 2 * G>(values);
}

// Scatters a random 16-row tile (some entries masked to -inf) into Layout's registers, reduces each
// row over its lanes the way the kernel does (registers of the same row inside the lane first, then
// reduce_within_groups over kRowGroupLanes), and checks every lane against the row's true max and sum.
template <class Layout>
void check_row_reduction(std::mt19937& generator) {
  constexpr int W = Layout::kWidth;
  constexpr int R = Layout::kRegisters;
  static_assert(W * R == Layout::kRows * Layout::kColumns, "a layout holds each element once");
  std::uniform_real_distribution<float> distribution(-4.0f, 4.0f);
  std::vector<float> tile(Layout::kRows * Layout::kColumns);
  for (float& x : tile) x = distribution(generator) < -3.0f ? -std::numeric_limits<float>::infinity() : x;
  for (float& x : tile)
    if (x == 0.0f) x = distribution(generator);

  // Each element owned exactly once.
  std::vector<int> owners(tile.size(), 0);
  for (int l = 0; l < W; ++l)
    for (int r = 0; r < R; ++r) {
      const int row = Layout::row(l, r), column = Layout::column(l, r);
      REQUIRE(row >= 0);
      REQUIRE(row < Layout::kRows);
      REQUIRE(column >= 0);
      REQUIRE(column < Layout::kColumns);
      ++owners[row * Layout::kColumns + column];
    }
  for (int count : owners) CHECK(count == 1);

  // The lanes that hold a row in register r are exactly the aligned group of kRowGroupLanes lanes.
  for (int l = 0; l < W; ++l)
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < W; ++m) {
        const bool same_group = m / Layout::kRowGroupLanes == l / Layout::kRowGroupLanes;
        bool holds_row = false;
        for (int s = 0; s < R; ++s) holds_row = holds_row || Layout::row(m, s) == Layout::row(l, r);
        CHECK(holds_row == same_group);
      }

  const EmulatedExchange<W> exchange;
  for (int r = 0; r < R; ++r) {
    LaneArray<float, W> partial_max, partial_sum;
    for (int l = 0; l < W; ++l) {
      partial_max.lane[l] = -std::numeric_limits<float>::infinity();
      partial_sum.lane[l] = 0.0f;
      for (int s = 0; s < R; ++s)
        if (Layout::row(l, s) == Layout::row(l, r)) {
          const float x = tile[Layout::row(l, s) * Layout::kColumns + Layout::column(l, s)];
          partial_max.lane[l] = std::fmax(partial_max.lane[l], x);
          partial_sum.lane[l] += std::isinf(x) ? 0.0f : x;
        }
    }
    const auto row_max = reduce_within_groups<Layout::kRowGroupLanes>(partial_max, exchange, Maximum{});
    const auto row_sum = reduce_within_groups<Layout::kRowGroupLanes>(partial_sum, exchange, Sum{});
    for (int l = 0; l < W; ++l) {
      const int row = Layout::row(l, r);
      float expected_max = -std::numeric_limits<float>::infinity();
      double expected_sum = 0.0;
      for (int c = 0; c < Layout::kColumns; ++c) {
        const float x = tile[row * Layout::kColumns + c];
        expected_max = std::fmax(expected_max, x);
        expected_sum += std::isinf(x) ? 0.0 : x;
      }
      CHECK(row_max.lane[l] == expected_max);
      CHECK(row_sum.lane[l] == doctest::Approx(expected_sum).epsilon(1e-5));
    }
  }
}

}  // namespace

TEST_CASE("warp algorithms: lane masks are as wide as the warp") {
  CHECK(all_lanes_mask<32>() == 0xffffffffu);
  CHECK(all_lanes_mask<64>() == ~std::uint64_t{0});
  CHECK(sizeof(LaneMask<64>) == 8);
  CHECK(lanes_below_mask<64>(0) == 0);
  CHECK(lanes_below_mask<64>(40) == (std::uint64_t{1} << 40) - 1);
  CHECK(lanes_below_mask<64>(63) == ~std::uint64_t{0} >> 1);
  CHECK(lanes_below_mask<32>(31) == 0x7fffffffu);
  CHECK(count_lanes(lanes_below_mask<64>(50)) == 50);
  CHECK(group_mask<64, 16>(37) == std::uint64_t{0xffff} << 32);
  CHECK(group_mask<64, 64>(5) == ~std::uint64_t{0});
  CHECK(group_mask<32, 4>(30) == 0xf0000000u);
}

TEST_CASE_TEMPLATE("warp algorithms: group and warp reductions, broadcast, votes", WidthType, Width<32>, Width<64>) {
  constexpr int W = WidthType::value;
  std::mt19937 generator(20261123u + W);
  const EmulatedExchange<W> exchange;
  for (int trial = 0; trial < 20; ++trial) {
    const LaneArray<float, W> values = random_lanes<W>(generator);
    check_group_reduction<W, 1>(values);

    const LaneArray<float, W> total = reduce_warp(values, exchange, Sum{});
    double expected = 0.0;
    for (int l = 0; l < W; ++l) expected += values.lane[l];
    for (int l = 0; l < W; ++l) CHECK(total.lane[l] == doctest::Approx(expected).epsilon(1e-5));

    const int source = static_cast<int>(generator() % W);
    const LaneArray<float, W> broadcast = exchange.broadcast(values, source);
    for (int l = 0; l < W; ++l) CHECK(broadcast.lane[l] == values.lane[source]);
  }

  // Votes: a single dissenting lane anywhere, the last lane included (a 32-bit mask would miss lanes
  // 32-63 of a wavefront), flips all_lanes; a single assenting lane flips any_lane.
  for (int dissenter = 0; dissenter < W; ++dissenter) {
    LaneArray<bool, W> predicate = LaneArray<bool, W>::filled(true);
    CHECK(all_lanes(predicate, exchange));
    predicate.lane[dissenter] = false;
    CHECK_FALSE(all_lanes(predicate, exchange));
    CHECK(exchange.ballot(predicate) == (all_lanes_mask<W>() & ~(LaneMask<W>{1} << dissenter)));
    LaneArray<bool, W> single = LaneArray<bool, W>::filled(false);
    CHECK_FALSE(any_lane(single, exchange));
    single.lane[dissenter] = true;
    CHECK(any_lane(single, exchange));
    CHECK(count_lanes(exchange.ballot(single)) == 1);
  }
}

TEST_CASE("warp algorithms: row max and sum over the lanes of each accumulator layout") {
  std::mt19937 generator(7u);
  for (int trial = 0; trial < 10; ++trial) {
    check_row_reduction<NvidiaMma16x8Layout>(generator);  // 32 lanes, rows over 4 lanes
    check_row_reduction<CdnaMfma16x16Layout>(generator);  // 64 lanes, rows over 16 lanes
    check_row_reduction<RdnaWmma16x16Layout>(generator);  // 32 lanes, rows over 16 lanes
  }
  CHECK(Amd16x16Layout<64>::kWidth == 64);
  CHECK(Amd16x16Layout<32>::kWidth == 32);
}
