// The Hopper warpgroup instructions and the swizzled operand layout of seer/gpu/warpgroup_mma.hpp,
// checked on their own against a float64 product: S = A * K^T (K tile read K-major) and
// O = P * V (V tile read transposed), with A and P supplied from registers in the documented
// fragment layout. The prefill kernel builds on exactly these pieces, so a layout mistake shows
// here first, naming the operand. Skips unless the device is a Hopper GPU (compute capability 9.0).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "device_test_support.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warpgroup_mma.hpp"

namespace {

using seer::bfloat16;

// One warpgroup. a: [64][Dim] row-major, keys/values: [64][Dim] row-major, probabilities: [64][64].
// scores: [64][64] = a * keys^T; output: [64][Dim] = probabilities * values.
template <int Dim>
__global__ void warpgroup_products(const bfloat16* a, const bfloat16* keys, const bfloat16* probabilities,
                                   const bfloat16* values, float* scores, float* output) {
  namespace hopper = seer::gpu::hopper;
  constexpr int kChunks = Dim / 8;
  constexpr int kPanelBytes = 64 * hopper::kSwizzlePanelRowBytes;
  __shared__ __align__(1024) unsigned char key_tile[64 * Dim * 2];
  __shared__ __align__(1024) unsigned char value_tile[64 * Dim * 2];
  const int thread = static_cast<int>(threadIdx.x);
  for (int index = thread; index < 64 * kChunks; index += 128) {
    const int row = index / kChunks, chunk = index % kChunks;
    const int offset = hopper::swizzled_panel_offset<64>(row, chunk);
    *reinterpret_cast<uint4*>(key_tile + offset) = *reinterpret_cast<const uint4*>(keys + row * Dim + chunk * 8);
    *reinterpret_cast<uint4*>(value_tile + offset) = *reinterpret_cast<const uint4*>(values + row * Dim + chunk * 8);
  }
  hopper::fence_shared_for_async_proxy();
  __syncthreads();

  const int warp = thread / 32, lane = thread % 32;
  const int row0 = 16 * warp + lane / 4, column0 = 2 * (lane % 4);
  auto pack = [](const bfloat16* pair) {
    return static_cast<std::uint32_t>(pair[0].bits) | (static_cast<std::uint32_t>(pair[1].bits) << 16);
  };
  auto fragment = [&](const bfloat16* matrix, int stride, int k0, std::uint32_t(&out)[4]) {
    out[0] = pack(matrix + row0 * stride + k0 + column0);
    out[1] = pack(matrix + (row0 + 8) * stride + k0 + column0);
    out[2] = pack(matrix + row0 * stride + k0 + 8 + column0);
    out[3] = pack(matrix + (row0 + 8) * stride + k0 + 8 + column0);
  };

  float score[32];
  for (int step = 0; step < Dim / 16; ++step) {
    std::uint32_t fragment_a[4];
    fragment(a, Dim, 16 * step, fragment_a);
    const std::uint64_t descriptor = hopper::swizzled_descriptor(key_tile + (step / 4) * kPanelBytes + (step % 4) * 32,
                                                                 kPanelBytes, hopper::kSwizzleGroupBytes);
    hopper::warpgroup_fence();
    hopper::warpgroup_multiply<bfloat16, 64, false>(score, fragment_a, descriptor, step > 0);
    hopper::warpgroup_commit();
  }
  hopper::warpgroup_wait<0>();
  hopper::pin_registers(score);

  float out[Dim / 2];
  for (int step = 0; step < 4; ++step) {
    std::uint32_t fragment_p[4];
    fragment(probabilities, 64, 16 * step, fragment_p);
    const std::uint64_t descriptor = hopper::swizzled_descriptor(value_tile + step * 2 * hopper::kSwizzleGroupBytes,
                                                                 kPanelBytes, hopper::kSwizzleGroupBytes);
    hopper::warpgroup_fence();
    hopper::warpgroup_multiply<bfloat16, Dim, true>(out, fragment_p, descriptor, step > 0);
    hopper::warpgroup_commit();
  }
  hopper::warpgroup_wait<0>();
  hopper::pin_registers(out);

  for (int f = 0; f < 8; ++f)
    for (int c = 0; c < 4; ++c) scores[(row0 + 8 * (c / 2)) * 64 + 8 * f + column0 + c % 2] = score[4 * f + c];
  for (int f = 0; f < Dim / 8; ++f)
    for (int c = 0; c < 4; ++c) output[(row0 + 8 * (c / 2)) * Dim + 8 * f + column0 + c % 2] = out[4 * f + c];
}

bool hopper_present() {
  if (!seer::gpu_test::device_present()) return false;
  int device = 0, major = 0;
  seer::gpu::vendor::check(cudaGetDevice(&device), "cudaGetDevice");
  seer::gpu::vendor::check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                           "cudaDeviceGetAttribute");
  return major == 9;
}

template <int Dim>
void check_products() {
  std::mt19937 random(1234 + Dim);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto draw = [&](std::int64_t count) {
    std::vector<bfloat16> values(static_cast<std::size_t>(count));
    for (auto& value : values) value = seer::from_float<bfloat16>(uniform(random));
    return values;
  };
  const auto a = draw(64 * Dim), keys = draw(64 * Dim), probabilities = draw(64 * 64), values = draw(64 * Dim);
  seer::gpu_test::DeviceArray<bfloat16> device_a(a.data(), 64 * Dim), device_keys(keys.data(), 64 * Dim),
      device_probabilities(probabilities.data(), 64 * 64), device_values(values.data(), 64 * Dim);
  seer::gpu_test::DeviceArray<float> device_scores(64 * 64), device_output(64 * Dim);
  device_scores.poison();
  device_output.poison();
  warpgroup_products<Dim><<<1, 128>>>(device_a.get(), device_keys.get(), device_probabilities.get(),
                                      device_values.get(), device_scores.get(), device_output.get());
  seer::gpu::vendor::check_last_launch("warpgroup_products");
  seer::gpu::vendor::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  std::vector<float> scores(64 * 64), output(64 * Dim);
  device_scores.download(scores.data(), 64 * 64);
  device_output.download(output.data(), 64 * Dim);

  auto f = [](bfloat16 x) { return static_cast<double>(seer::to_float(x)); };
  double score_error = 0.0, output_error = 0.0;
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j) {
      double expected = 0.0;
      for (int d = 0; d < Dim; ++d) expected += f(a[i * Dim + d]) * f(keys[j * Dim + d]);
      const double got = scores[i * 64 + j];
      score_error = std::isfinite(got) ? std::max(score_error, std::abs(got - expected)) : INFINITY;
    }
  for (int i = 0; i < 64; ++i)
    for (int d = 0; d < Dim; ++d) {
      double expected = 0.0;
      for (int j = 0; j < 64; ++j) expected += f(probabilities[i * 64 + j]) * f(values[j * Dim + d]);
      const double got = output[i * Dim + d];
      output_error = std::isfinite(got) ? std::max(output_error, std::abs(got - expected)) : INFINITY;
    }
  INFO("head dim ", Dim, ": max |S - S_ref| ", score_error, ", max |O - O_ref| ", output_error);
  // fp32 accumulation of exact bf16 products: only summation rounding (sums of <= 128 terms of size <= 1).
  CHECK(score_error < 1e-4);
  CHECK(output_error < 1e-4);
}

}  // namespace

TEST_CASE("warpgroup MMA: swizzled K-major and transposed operands match a float64 product") {
  if (!hopper_present()) {
    MESSAGE("skipped: no Hopper GPU");
    return;
  }
  check_products<64>();
  check_products<128>();
}
