// The ground-truth kernels compiled as HIP (seer::hip::block_ground_truth_2d / _1d: the AMD forward of
// seer/gpu/ground_truth_kernel_amd.hpp and the shared pooling kernels) for gfx90a / gfx942 / gfx1100.
// Host validation runs everywhere; on an AMD GPU the targets are compared with a float64 reference
// written out below (Eigen, which seer::cpu's reference uses, stays out of HIP translation units),
// with the tolerance of tests/gpu/ground_truth (which runs the same kernels' logic on NVIDIA and
// checks them against seer::cpu's reference). Without an AMD GPU the device case skips. The portable
// distillation kernels are instantiated here too (compile checks).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "seer/gpu/distillation_kernels.hpp"
#include "seer/hip/ground_truth.hpp"

namespace {

using namespace seer;

// P_i[j] of dense causal attention for one head, rows [0, length), in double (q_len == k_len).
std::vector<double> probabilities(const std::vector<bfloat16>& q, const std::vector<bfloat16>& k, std::int64_t length,
                                  std::int64_t q_heads, std::int64_t kv_heads, std::int64_t dim, std::int64_t h) {
  const std::int64_t c = h / (q_heads / kv_heads);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  std::vector<double> result(static_cast<std::size_t>(length * length), 0.0);
  for (std::int64_t i = 0; i < length; ++i) {
    double* row = result.data() + i * length;
    double peak = -INFINITY;
    for (std::int64_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (std::int64_t d = 0; d < dim; ++d)
        dot += static_cast<double>(to_float(q[static_cast<std::size_t>((i * q_heads + h) * dim + d)])) *
               static_cast<double>(to_float(k[static_cast<std::size_t>((j * kv_heads + c) * dim + d)]));
      row[j] = dot * scale;
      peak = std::max(peak, row[j]);
    }
    double total = 0.0;
    for (std::int64_t j = 0; j <= i; ++j) total += row[j] = std::exp(row[j] - peak);
    for (std::int64_t j = 0; j <= i; ++j) row[j] /= total;
  }
  return result;
}

template <class T>
struct DeviceBuffer {
  T* data = nullptr;
  std::size_t count = 0;
  explicit DeviceBuffer(std::size_t n) : count(n) {
    data = static_cast<T*>(gpu::vendor::device_allocate(std::max<std::size_t>(n, 1) * sizeof(T), "hipMalloc (test)"));
    gpu::vendor::fill_device_bytes(data, 0xff, std::max<std::size_t>(n, 1) * sizeof(T), "hipMemset (poison)");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { gpu::vendor::device_release(data); }
  std::vector<T> download() const {
    std::vector<T> host(count);
    gpu::vendor::copy_to_host(host.data(), data, count * sizeof(T), "hipMemcpy (download)");
    return host;
  }
};

}  // namespace

// The distillation kernels (seer/gpu/distillation_kernels.hpp) are vendor-portable: compiled here for the
// AMD targets; seer::cuda's launcher and tests/gpu/ground_truth run them on NVIDIA.
template __global__ void seer::gpu::gate_feature_kernel<seer::gpu::kDistillationThreads>(seer::gpu::DistillationParams);
template __global__ void seer::gpu::distillation_row_kernel<seer::gpu::kDistillationThreads>(
    seer::gpu::DistillationParams);
template __global__ void seer::gpu::feature_gradient_kernel<seer::gpu::kDistillationThreads>(
    seer::gpu::DistillationParams);
template __global__ void seer::gpu::weight_gradient_kernel<seer::gpu::kDistillationThreads>(
    seer::gpu::DistillationParams);
template __global__ void seer::gpu::loss_sum_kernel<seer::gpu::kDistillationThreads>(seer::gpu::DistillationParams);
template __global__ void seer::gpu::adam_w_kernel<256>(seer::gpu::AdamWParams);

TEST_CASE("hip ground truth: invalid arguments name the argument") {
  auto* fake = reinterpret_cast<bfloat16*>(std::uintptr_t{1} << 20);
  const auto q = padded_batch(TensorView<const bfloat16, 4>::contiguous(fake, {1, 128, 4, 64}), "q");
  const auto kv = padded_batch(TensorView<const bfloat16, 4>::contiguous(fake, {1, 128, 2, 64}), "k");
  const auto out = padded_batch(TensorView<bfloat16, 4>::contiguous(fake, {1, 128, 4, 64}), "out");
  const auto target = TensorView<float, 4>::contiguous(reinterpret_cast<float*>(fake), {1, 4, 2, 2});
  const std::size_t bytes = hip::ground_truth_workspace_bytes(q, kv);
  const AttentionOptions options;
  CHECK_THROWS_WITH_AS(
      hip::block_ground_truth_2d<bfloat16>(q, kv, kv, options, 32, target, out, {}, fake, bytes, nullptr),
      doctest::Contains("block_size"), InvalidArgument);
  CHECK_THROWS_WITH_AS(
      hip::block_ground_truth_1d<bfloat16>(q, kv, kv, options, 64, target, out, {}, fake, bytes, nullptr),
      doctest::Contains("target"), InvalidArgument);
  CHECK_THROWS_WITH_AS(
      hip::block_ground_truth_2d<bfloat16>(q, kv, kv, options, 64, target, out, {}, fake, bytes - 1, nullptr),
      doctest::Contains("workspace_bytes"), InvalidArgument);
}

TEST_CASE("hip ground truth: 2-D and 1-D targets match a float64 reference (causal, GQA 4/2, 200 tokens)") {
  if (gpu::vendor::device_count() == 0) {
    MESSAGE("no AMD GPU: HIP ground-truth test skipped");
    return;
  }
  constexpr std::int64_t kLength = 200, kQHeads = 4, kKvHeads = 2, kDim = 128, kBlock = 64;
  constexpr std::int64_t kBlocks = (kLength + kBlock - 1) / kBlock;
  std::mt19937 random(7);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  auto draw = [&](std::int64_t count) {
    std::vector<bfloat16> values(static_cast<std::size_t>(count));
    for (auto& value : values) value = from_float<bfloat16>(uniform(random));
    return values;
  };
  const auto q_host = draw(kLength * kQHeads * kDim), k_host = draw(kLength * kKvHeads * kDim),
             v_host = draw(kLength * kKvHeads * kDim);
  DeviceBuffer<bfloat16> q(q_host.size()), k(k_host.size()), v(v_host.size()), out(q_host.size());
  gpu::vendor::copy_to_device(q.data, q_host.data(), q_host.size() * 2, "hipMemcpy (q)");
  gpu::vendor::copy_to_device(k.data, k_host.data(), k_host.size() * 2, "hipMemcpy (k)");
  gpu::vendor::copy_to_device(v.data, v_host.data(), v_host.size() * 2, "hipMemcpy (v)");
  const auto q_view = padded_batch(TensorView<const bfloat16, 4>::contiguous(q.data, {1, kLength, kQHeads, kDim}), "q");
  const auto k_view =
      padded_batch(TensorView<const bfloat16, 4>::contiguous(k.data, {1, kLength, kKvHeads, kDim}), "k");
  const auto v_view =
      padded_batch(TensorView<const bfloat16, 4>::contiguous(v.data, {1, kLength, kKvHeads, kDim}), "v");
  const auto out_view = padded_batch(TensorView<bfloat16, 4>::contiguous(out.data, {1, kLength, kQHeads, kDim}), "out");
  const std::size_t bytes = hip::ground_truth_workspace_bytes(q_view, k_view);
  DeviceBuffer<unsigned char> workspace(bytes);
  DeviceBuffer<float> target_2d(kQHeads * kBlocks * kBlocks), target_1d(kKvHeads * kLength * kBlocks);
  AttentionOptions options;
  hip::block_ground_truth_2d<bfloat16>(q_view, k_view, v_view, options, kBlock,
                                       TensorView<float, 4>::contiguous(target_2d.data, {1, kQHeads, kBlocks, kBlocks}),
                                       out_view, {}, workspace.data, bytes, nullptr);
  const auto two = target_2d.download();
  hip::block_ground_truth_1d<bfloat16>(
      q_view, k_view, v_view, options, kBlock,
      TensorView<float, 4>::contiguous(target_1d.data, {1, kKvHeads, kLength, kBlocks}), out_view, {}, workspace.data,
      bytes, nullptr);
  const auto one = target_1d.download();

  std::vector<std::vector<double>> p;
  for (std::int64_t h = 0; h < kQHeads; ++h)
    p.push_back(probabilities(q_host, k_host, kLength, kQHeads, kKvHeads, kDim, h));
  auto close = [](float actual, double expected) {
    return std::abs(actual - expected) <= 2e-4 * std::abs(expected) + 1e-6;
  };
  std::int64_t failures = 0;
  for (std::int64_t h = 0; h < kQHeads; ++h)
    for (std::int64_t m = 0; m < kBlocks; ++m) {
      std::vector<double> raw(kBlocks, 0.0);
      for (std::int64_t i = m * kBlock; i < std::min(kLength, (m + 1) * kBlock); ++i)
        for (std::int64_t j = 0; j <= i; ++j) raw[j / kBlock] = std::max(raw[j / kBlock], p[h][i * kLength + j]);
      double total = 0.0;
      for (double value : raw) total += value;
      for (std::int64_t n = 0; n < kBlocks; ++n)
        failures += close(two[static_cast<std::size_t>((h * kBlocks + m) * kBlocks + n)], raw[n] / total) ? 0 : 1;
    }
  for (std::int64_t c = 0; c < kKvHeads; ++c)
    for (std::int64_t t = 0; t < kLength; ++t) {
      const std::int64_t count = t / kBlock;  // complete blocks before token t's own
      std::vector<double> raw(kBlocks, 0.0);
      for (std::int64_t h = c * (kQHeads / kKvHeads); h < (c + 1) * (kQHeads / kKvHeads); ++h)
        for (std::int64_t j = 0; j < count * kBlock; ++j)
          raw[j / kBlock] = std::max(raw[j / kBlock], p[h][t * kLength + j]);
      double total = 0.0;
      for (double value : raw) total += value;
      for (std::int64_t n = 0; n < kBlocks; ++n)
        failures +=
            close(one[static_cast<std::size_t>((c * kLength + t) * kBlocks + n)], raw[n] / (total + 1e-9)) ? 0 : 1;
    }
  CHECK(failures == 0);
}
