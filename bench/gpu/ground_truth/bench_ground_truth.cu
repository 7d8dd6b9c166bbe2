// Times seer's dense prefill forward (seer::cuda::block_sparse_attention, blocks = nullptr) against the
// ground-truth kernels (seer::cuda::block_ground_truth_2d and _1d: the same forward plus the stored row
// maxima and the pooling launch) on one GPU, in one process, with CUDA events. B = 1, D = 128, bf16,
// causal; inputs uniform in [-1, 1]. Each configuration: 2 warm-up calls, then `repetitions` calls of
// each kernel in turn (dense, 2-D, 1-D, dense, ...), median per kernel.
//   bench_ground_truth [repetitions]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/ground_truth.hpp"

namespace {

using seer::bfloat16;
using seer::gpu::vendor::check;

__global__ void fill_uniform(bfloat16* data, std::int64_t count, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;  // a small integer hash
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    const float value = static_cast<float>(x) * (2.0f / 4294967296.0f) - 1.0f;
    const __nv_bfloat16 converted = __float2bfloat16(value);
    data[i] = *reinterpret_cast<const bfloat16*>(&converted);
  }
}

void* device_allocate(std::size_t bytes) {
  void* pointer = nullptr;
  check(cudaMalloc(&pointer, bytes), "cudaMalloc");
  return pointer;
}

struct Timing {
  std::vector<float> milliseconds;
  float median() {
    std::sort(milliseconds.begin(), milliseconds.end());
    return milliseconds[milliseconds.size() / 2];
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int repetitions = argc > 1 ? std::atoi(argv[1]) : 10;
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  std::printf("device: %s\n", properties.name);
  std::printf("%8s %6s %6s | %10s %10s %10s | %8s %8s | %9s\n", "seq", "heads", "kv", "dense ms", "gt-2d ms",
              "gt-1d ms", "2d/dense", "1d/dense", "dense TF/s");
  struct Config {
    std::int64_t seq, heads, kv_heads;
  };
  const std::vector<Config> configs = {{8192, 32, 32}, {32768, 32, 32}, {32768, 32, 8}};
  constexpr std::int64_t kDim = 128, kBlock = 64;
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");

  for (const Config& config : configs) {
    const std::int64_t q_count = config.seq * config.heads * kDim, kv_count = config.seq * config.kv_heads * kDim;
    auto* q = static_cast<bfloat16*>(device_allocate(q_count * sizeof(bfloat16)));
    auto* k = static_cast<bfloat16*>(device_allocate(kv_count * sizeof(bfloat16)));
    auto* v = static_cast<bfloat16*>(device_allocate(kv_count * sizeof(bfloat16)));
    auto* out = static_cast<bfloat16*>(device_allocate(q_count * sizeof(bfloat16)));
    auto* lse = static_cast<float*>(device_allocate(config.heads * config.seq * sizeof(float)));
    fill_uniform<<<1024, 256, 0, stream>>>(q, q_count, 1u);
    fill_uniform<<<1024, 256, 0, stream>>>(k, kv_count, 2u);
    fill_uniform<<<1024, 256, 0, stream>>>(v, kv_count, 3u);
    check(cudaGetLastError(), "fill_uniform");

    const auto q_view = seer::padded_batch(
        seer::TensorView<const bfloat16, 4>::contiguous(q, {1, config.seq, config.heads, kDim}), "q");
    const auto k_view = seer::padded_batch(
        seer::TensorView<const bfloat16, 4>::contiguous(k, {1, config.seq, config.kv_heads, kDim}), "k");
    const auto v_view = seer::padded_batch(
        seer::TensorView<const bfloat16, 4>::contiguous(v, {1, config.seq, config.kv_heads, kDim}), "v");
    const auto out_view =
        seer::padded_batch(seer::TensorView<bfloat16, 4>::contiguous(out, {1, config.seq, config.heads, kDim}), "out");
    const auto lse_view = seer::TensorView<float, 2>::contiguous(lse, {config.heads, config.seq});
    const std::int64_t blocks = config.seq / kBlock;
    auto* target_2d = static_cast<float*>(device_allocate(config.heads * blocks * blocks * sizeof(float)));
    auto* target_1d = static_cast<float*>(device_allocate(config.kv_heads * config.seq * blocks * sizeof(float)));
    const auto target_2d_view = seer::TensorView<float, 4>::contiguous(target_2d, {1, config.heads, blocks, blocks});
    const auto target_1d_view =
        seer::TensorView<float, 4>::contiguous(target_1d, {1, config.kv_heads, config.seq, blocks});
    const std::size_t workspace_bytes = seer::cuda::ground_truth_workspace_bytes(q_view, k_view);
    void* workspace = device_allocate(workspace_bytes);
    seer::AttentionOptions options;
    options.causal = true;

    const std::vector<std::function<void()>> calls = {
        [&] {
          seer::cuda::block_sparse_attention<bfloat16>(q_view, k_view, v_view, nullptr, options, out_view, lse_view,
                                                       stream);
        },
        [&] {
          seer::cuda::block_ground_truth_2d<bfloat16>(q_view, k_view, v_view, options, kBlock, target_2d_view, out_view,
                                                      lse_view, workspace, workspace_bytes, stream);
        },
        [&] {
          seer::cuda::block_ground_truth_1d<bfloat16>(q_view, k_view, v_view, options, kBlock, target_1d_view, out_view,
                                                      lse_view, workspace, workspace_bytes, stream);
        }};
    std::vector<Timing> timings(calls.size());
    for (int warm = 0; warm < 2; ++warm)
      for (const auto& call : calls) call();
    for (int repetition = 0; repetition < repetitions; ++repetition)
      for (std::size_t c = 0; c < calls.size(); ++c) {
        check(cudaEventRecord(start, stream), "cudaEventRecord");
        calls[c]();
        check(cudaEventRecord(stop, stream), "cudaEventRecord");
        check(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float milliseconds = 0.0f;
        check(cudaEventElapsedTime(&milliseconds, start, stop), "cudaEventElapsedTime");
        timings[c].milliseconds.push_back(milliseconds);
      }
    const float dense = timings[0].median(), two = timings[1].median(), one = timings[2].median();
    // Causal attention FLOPs: 2 matrix products of 2 * S^2 * D / 2 each, per head.
    const double flops = 2.0 * 2.0 * static_cast<double>(config.seq) * config.seq * kDim / 2.0 * config.heads;
    std::printf("%8lld %6lld %6lld | %10.3f %10.3f %10.3f | %8.3f %8.3f | %9.1f\n", static_cast<long long>(config.seq),
                static_cast<long long>(config.heads), static_cast<long long>(config.kv_heads), dense, two, one,
                two / dense, one / dense, flops / (dense * 1e-3) / 1e12);
    for (void* pointer :
         {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(out),
          static_cast<void*>(lse), static_cast<void*>(target_2d), static_cast<void*>(target_1d), workspace})
      check(cudaFree(pointer), "cudaFree");
  }
  return 0;
}
