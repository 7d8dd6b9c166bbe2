#include "cuda_layer_attention.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/device_block_set.hpp"

namespace example {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw seer::BackendError(std::string(what) + ": " + cudaGetErrorString(status));
}

// A device buffer that grows to the largest size asked for.
struct DeviceBuffer {
  void* data = nullptr;
  std::size_t bytes = 0;
  void reserve(std::size_t wanted) {
    if (wanted <= bytes) return;
    if (data) cudaFree(data);
    data = nullptr;
    check(cudaMalloc(&data, wanted), "cudaMalloc");
    bytes = wanted;
  }
  ~DeviceBuffer() {
    if (data) cudaFree(data);
  }
};

}  // namespace

std::string cuda_device_name(std::string& why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);  // leaves count unwritten without a driver
  if (status != cudaSuccess || count == 0) {
    why = status != cudaSuccess ? cudaGetErrorString(status) : "no CUDA device";
    return "";
  }
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  return properties.name;
}

struct CudaLayerAttention::State {
  DeviceBuffer q, k, v, out;
  std::int64_t tokens = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
};

CudaLayerAttention::CudaLayerAttention() : state_(std::make_unique<State>()) {
  check(cudaStreamCreate(&state_->stream), "cudaStreamCreate");
  check(cudaEventCreate(&state_->start), "cudaEventCreate");
  check(cudaEventCreate(&state_->stop), "cudaEventCreate");
}

CudaLayerAttention::~CudaLayerAttention() {
  cudaEventDestroy(state_->start);
  cudaEventDestroy(state_->stop);
  cudaStreamDestroy(state_->stream);
}

void CudaLayerAttention::upload(const seer::SequenceBatch<const float>& q, const seer::SequenceBatch<const float>& k,
                                const seer::SequenceBatch<const float>& v) {
  State& s = *state_;
  s.tokens = q.max_length;
  s.q_heads = q.heads;
  s.kv_heads = k.heads;
  s.head_dim = q.head_dim;
  auto send = [&](const seer::SequenceBatch<const float>& x, DeviceBuffer& buffer) {
    std::vector<seer::bfloat16> host(static_cast<std::size_t>(x.max_length * x.heads * x.head_dim));
    for (std::int64_t t = 0; t < x.max_length; ++t)
      for (std::int64_t h = 0; h < x.heads; ++h)
        for (std::int64_t d = 0; d < x.head_dim; ++d)
          host[static_cast<std::size_t>((t * x.heads + h) * x.head_dim + d)] =
              seer::from_float<seer::bfloat16>(x.vector(0, t, h)[d * x.dim_stride]);
    buffer.reserve(host.size() * sizeof(seer::bfloat16));
    check(cudaMemcpy(buffer.data, host.data(), host.size() * sizeof(seer::bfloat16), cudaMemcpyHostToDevice),
          "cudaMemcpy (upload)");
  };
  send(q, s.q);
  send(k, s.k);
  send(v, s.v);
  s.out.reserve(static_cast<std::size_t>(s.tokens * s.q_heads * s.head_dim) * sizeof(seer::bfloat16));
}

CudaAttentionResult CudaLayerAttention::run(const seer::BlockSet* blocks, int repetitions) {
  State& s = *state_;
  using seer::bfloat16;
  using seer::TensorView;
  const auto q = seer::padded_batch(TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(s.q.data),
                                                                              {1, s.tokens, s.q_heads, s.head_dim}),
                                    "q");
  const auto k = seer::padded_batch(TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(s.k.data),
                                                                              {1, s.tokens, s.kv_heads, s.head_dim}),
                                    "k");
  const auto v = seer::padded_batch(TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(s.v.data),
                                                                              {1, s.tokens, s.kv_heads, s.head_dim}),
                                    "v");
  const auto out = seer::padded_batch(
      TensorView<bfloat16, 4>::contiguous(static_cast<bfloat16*>(s.out.data), {1, s.tokens, s.q_heads, s.head_dim}),
      "out");
  seer::cuda::DeviceBlockSet device_blocks;
  if (blocks != nullptr) device_blocks = seer::cuda::DeviceBlockSet(*blocks);
  const seer::BlockSetView* view = blocks != nullptr ? device_blocks.view() : nullptr;

  // Poison the output (all bits set: NaN in bf16) so an unwritten element cannot pass as a result.
  check(cudaMemsetAsync(s.out.data, 0xff, s.out.bytes, s.stream), "cudaMemsetAsync");
  std::vector<float> times;
  for (int r = 0; r < std::max(1, repetitions) + 1; ++r) {  // the first run is a warm-up
    check(cudaEventRecord(s.start, s.stream), "cudaEventRecord");
    seer::cuda::block_sparse_attention(q, k, v, view, seer::AttentionOptions{}, out, TensorView<float, 2>{}, s.stream);
    check(cudaEventRecord(s.stop, s.stream), "cudaEventRecord");
    check(cudaEventSynchronize(s.stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, s.start, s.stop), "cudaEventElapsedTime");
    if (r > 0) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  CudaAttentionResult result;
  result.milliseconds = times[times.size() / 2];
  std::vector<bfloat16> host(static_cast<std::size_t>(s.tokens * s.q_heads * s.head_dim));
  check(cudaMemcpy(host.data(), s.out.data, host.size() * sizeof(bfloat16), cudaMemcpyDeviceToHost),
        "cudaMemcpy (download)");
  result.out.resize(host.size());
  for (std::size_t i = 0; i < host.size(); ++i) result.out[i] = seer::to_float(host[i]);
  return result;
}

}  // namespace example
