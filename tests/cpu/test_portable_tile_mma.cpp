// The portable 16x16x16 tile multiply (seer/gpu/portable_tile_mma.hpp), the fallback of the AMD
// tensor-core branch, run lane by lane for 64-lane (CDNA layout) and 32-lane (RDNA layout) warps and
// compared with a float64 product of the same 16-bit inputs, for plain and transposed operand views.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "seer/core/numeric_types.hpp"
#include "seer/gpu/portable_tile_mma.hpp"

namespace {

template <class Layout, class T>
void check_tile_product(std::mt19937& generator) {
  std::uniform_real_distribution<float> distribution(-2.0f, 2.0f);
  // A 16x16 row-major; B stored transposed (column-major: B[k][n] at n * 16 + k), as K is for Q * K^T.
  std::vector<T> a(256), b_transposed(256);
  for (T& x : a) x = seer::from_float<T>(distribution(generator));
  for (T& x : b_transposed) x = seer::from_float<T>(distribution(generator));
  std::vector<float> initial(256);
  for (float& x : initial) x = distribution(generator);

  const seer::gpu::TileOperand<T> a_view{a.data(), 16, 1};
  const seer::gpu::TileOperand<T> b_view{b_transposed.data(), 1, 16};
  std::vector<float> result(256, std::nanf(""));
  for (int lane = 0; lane < Layout::kWidth; ++lane) {
    float accumulator[Layout::kRegisters];
    for (int r = 0; r < Layout::kRegisters; ++r)
      accumulator[r] = initial[Layout::row(lane, r) * 16 + Layout::column(lane, r)];
    seer::gpu::portable_tile_multiply_accumulate<Layout>(accumulator, lane, a_view, b_view);
    for (int r = 0; r < Layout::kRegisters; ++r)
      result[Layout::row(lane, r) * 16 + Layout::column(lane, r)] = accumulator[r];
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double expected = initial[m * 16 + n];
      for (int k = 0; k < 16; ++k)
        expected += static_cast<double>(seer::to_float(a[m * 16 + k])) * seer::to_float(b_transposed[n * 16 + k]);
      CHECK(result[m * 16 + n] == doctest::Approx(expected).epsilon(1e-5).scale(1.0));
    }
}

}  // namespace

TEST_CASE("portable tile multiply: CDNA (64 lanes) and RDNA (32 lanes) layouts, bf16 and fp16") {
  std::mt19937 generator(314u);
  for (int trial = 0; trial < 5; ++trial) {
    check_tile_product<seer::gpu::warp::CdnaMfma16x16Layout, seer::bfloat16>(generator);
    check_tile_product<seer::gpu::warp::CdnaMfma16x16Layout, seer::half>(generator);
    check_tile_product<seer::gpu::warp::RdnaWmma16x16Layout, seer::bfloat16>(generator);
    check_tile_product<seer::gpu::warp::RdnaWmma16x16Layout, seer::half>(generator);
  }
}

TEST_CASE("portable tile multiply: half conversion covers subnormals, infinities and signed zero") {
  using seer::gpu::element_to_float;
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 3.0517578e-05f, -1e-6f})
    CHECK(element_to_float(seer::from_float<seer::half>(x)) == seer::to_float(seer::from_float<seer::half>(x)));
  CHECK(std::isinf(element_to_float(seer::from_float<seer::half>(1e6f))));
  CHECK(std::signbit(element_to_float(seer::from_float<seer::half>(-0.0f))));
  CHECK(std::isnan(element_to_float(seer::from_float<seer::half>(std::nanf("")))));
  CHECK(element_to_float(seer::from_float<seer::bfloat16>(-3.140625f)) == -3.140625f);
}
