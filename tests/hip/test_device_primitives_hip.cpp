// The AMD device primitives under the prefill kernel, on an AMD GPU: the width-parameterised warp
// algorithms at the wavefront's native width (64 on CDNA, 32 on RDNA) and the 16x16x16 tile multiply
// (MFMA, WMMA or the portable loop, whichever the target compiles) against float64 host results.
// These check the MFMA/WMMA operand and accumulator layouts that the CPU tests can only assume.
// Without an AMD GPU every case skips.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "seer/core/numeric_types.hpp"
#include "seer/gpu/tensor_core.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"
#include "seer/gpu/warp_exchange.hpp"

namespace {

using namespace seer;

bool have_amd_gpu() {
  int count = 0;
  return hipGetDeviceCount(&count) == hipSuccess && count > 0;
}

int device_warp_size() {
  int width = 0;
  gpu::vendor::check(hipDeviceGetAttribute(&width, hipDeviceAttributeWarpSize, 0), "hipDeviceGetAttribute");
  return width;
}

template <class T>
struct DeviceBuffer {
  T* data = nullptr;
  explicit DeviceBuffer(std::size_t count) { gpu::vendor::check(hipMalloc(&data, count * sizeof(T)), "hipMalloc"); }
  ~DeviceBuffer() { static_cast<void>(hipFree(data)); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// One wavefront: group sums (16 lanes: an accumulator row) and maxima, the warp sum, and all_lanes.
__global__ void warp_algorithms_kernel(const float* input, float* group_sums, float* group_maxima, float* warp_sums,
                                       int* all_positive) {
  const gpu::NativeWarpExchange exchange;
  const int lane = gpu::vendor::lane_index();
  const float value = input[lane];
  group_sums[lane] = gpu::warp::reduce_within_groups<16>(value, exchange, gpu::warp::Sum{});
  group_maxima[lane] = gpu::warp::reduce_within_groups<16>(value, exchange, gpu::warp::Maximum{});
  warp_sums[lane] = gpu::warp::reduce_warp(value, exchange, gpu::warp::Sum{});
  all_positive[lane] = gpu::warp::all_lanes(value > 0.0f, exchange) ? 1 : 0;
}

// One wavefront: c = a * b_transposed^T (16x16x16), written out through the accumulator layout.
template <class T>
__global__ void tile_multiply_kernel(const T* a, const T* b_transposed, float* c) {
  float accumulator[gpu::kAccumulatorRegisters];
  for (float& x : accumulator) x = 0.0f;
  gpu::tile_multiply_accumulate<T>(accumulator, gpu::TileOperand<T>{a, 16, 1},
                                   gpu::TileOperand<T>{b_transposed, 1, 16});
  const int lane = gpu::vendor::lane_index();
  for (int r = 0; r < gpu::kAccumulatorRegisters; ++r)
    c[gpu::AccumulatorLayout::row(lane, r) * 16 + gpu::AccumulatorLayout::column(lane, r)] = accumulator[r];
}

template <class T>
void check_tile_multiply(std::mt19937& generator, int width) {
  std::normal_distribution<float> distribution(0.0f, 1.0f);
  std::vector<T> a(256), b(256);
  for (T& x : a) x = from_float<T>(distribution(generator));
  for (T& x : b) x = from_float<T>(distribution(generator));
  DeviceBuffer<T> device_a(256), device_b(256);
  DeviceBuffer<float> device_c(256);
  gpu::vendor::check(hipMemcpy(device_a.data, a.data(), 256 * sizeof(T), hipMemcpyHostToDevice), "hipMemcpy");
  gpu::vendor::check(hipMemcpy(device_b.data, b.data(), 256 * sizeof(T), hipMemcpyHostToDevice), "hipMemcpy");
  gpu::vendor::check(hipMemset(device_c.data, 0xff, 256 * sizeof(float)), "hipMemset");  // NaN poison
  hipLaunchKernelGGL(tile_multiply_kernel<T>, dim3(1), dim3(width), 0, nullptr, device_a.data, device_b.data,
                     device_c.data);
  gpu::vendor::check_last_launch("tile_multiply_kernel");
  std::vector<float> c(256);
  gpu::vendor::check(hipMemcpy(c.data(), device_c.data, 256 * sizeof(float), hipMemcpyDeviceToHost), "hipMemcpy");
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double expected = 0.0;
      for (int k = 0; k < 16; ++k) expected += static_cast<double>(to_float(a[m * 16 + k])) * to_float(b[n * 16 + k]);
      CHECK(c[m * 16 + n] == doctest::Approx(expected).epsilon(1e-4).scale(1.0));
    }
}

}  // namespace

TEST_CASE("hip device primitives: warp algorithms at the native wavefront width") {
  if (!have_amd_gpu()) {
    MESSAGE("no AMD GPU: skipped");
    return;
  }
  const int width = device_warp_size();
  std::mt19937 generator(5u);
  std::uniform_real_distribution<float> distribution(0.5f, 8.0f);
  std::vector<float> input(width);
  for (float& x : input) x = distribution(generator);
  input[width - 1] = -1.0f;  // the last lane dissents (lane 63 on CDNA: a 32-bit mask would miss it)
  DeviceBuffer<float> device_input(width), sums(width), maxima(width), totals(width);
  DeviceBuffer<int> votes(width);
  gpu::vendor::check(hipMemcpy(device_input.data, input.data(), width * sizeof(float), hipMemcpyHostToDevice),
                     "hipMemcpy");
  hipLaunchKernelGGL(warp_algorithms_kernel, dim3(1), dim3(width), 0, nullptr, device_input.data, sums.data,
                     maxima.data, totals.data, votes.data);
  gpu::vendor::check_last_launch("warp_algorithms_kernel");
  std::vector<float> host_sums(width), host_maxima(width), host_totals(width);
  std::vector<int> host_votes(width);
  gpu::vendor::check(hipMemcpy(host_sums.data(), sums.data, width * sizeof(float), hipMemcpyDeviceToHost), "hipMemcpy");
  gpu::vendor::check(hipMemcpy(host_maxima.data(), maxima.data, width * sizeof(float), hipMemcpyDeviceToHost),
                     "hipMemcpy");
  gpu::vendor::check(hipMemcpy(host_totals.data(), totals.data, width * sizeof(float), hipMemcpyDeviceToHost),
                     "hipMemcpy");
  gpu::vendor::check(hipMemcpy(host_votes.data(), votes.data, width * sizeof(int), hipMemcpyDeviceToHost), "hipMemcpy");
  double total = 0.0;
  for (float x : input) total += x;
  for (int l = 0; l < width; ++l) {
    double sum = 0.0;
    float maximum = -std::numeric_limits<float>::infinity();
    for (int m = l / 16 * 16; m < l / 16 * 16 + 16; ++m) {
      sum += input[m];
      maximum = std::fmax(maximum, input[m]);
    }
    CHECK(host_sums[l] == doctest::Approx(sum).epsilon(1e-5));
    CHECK(host_maxima[l] == maximum);
    CHECK(host_totals[l] == doctest::Approx(total).epsilon(1e-5));
    CHECK(host_votes[l] == 0);
  }
}

TEST_CASE("hip device primitives: 16x16x16 tile multiply (MFMA / WMMA / portable), bf16 and fp16") {
  if (!have_amd_gpu()) {
    MESSAGE("no AMD GPU: skipped");
    return;
  }
  const int width = device_warp_size();
  std::mt19937 generator(11u);
  for (int trial = 0; trial < 3; ++trial) {
    check_tile_multiply<bfloat16>(generator, width);
    check_tile_multiply<half>(generator, width);
  }
}
