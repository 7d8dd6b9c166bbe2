#include "device_attention_runner.hpp"

#include <cstring>
#include <memory>

#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/device_block_set.hpp"
#include "seer/gpu/vendor.hpp"

// The attention call the runner exercises: seer::cuda's, unless a TU that includes this file chose
// another (device_attention_runner_amd_kernel.cu: the AMD kernel compiled for NVIDIA).
#ifndef SEER_TEST_ATTENTION_CALL
#define SEER_TEST_ATTENTION_CALL cuda::block_sparse_attention
#endif

namespace seer::gpu_test {

namespace {

using gpu::vendor::check;

// RAII device allocation for the tests (the library itself never allocates in its hot call).
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::int64_t count) : count_(count) {
    check(cudaMalloc(reinterpret_cast<void**>(&data_), static_cast<std::size_t>(count > 0 ? count : 1) * sizeof(T)),
          "cudaMalloc (test buffer)");
  }
  DeviceArray(const T* host, std::int64_t count) : DeviceArray(count) {
    if (count > 0)
      check(cudaMemcpy(data_, host, static_cast<std::size_t>(count) * sizeof(T), cudaMemcpyHostToDevice),
            "cudaMemcpy (upload)");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { static_cast<void>(cudaFree(data_)); }

  T* get() const { return data_; }
  void poison() { check(cudaMemset(data_, 0xff, static_cast<std::size_t>(count_) * sizeof(T)), "cudaMemset"); }
  void download(T* host, std::int64_t count) const {
    check(cudaMemcpy(host, data_, static_cast<std::size_t>(count) * sizeof(T), cudaMemcpyDeviceToHost),
          "cudaMemcpy (download)");
  }

 private:
  T* data_ = nullptr;
  std::int64_t count_ = 0;
};

class Stream {
 public:
  Stream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { static_cast<void>(cudaStreamDestroy(stream_)); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

std::unique_ptr<DeviceArray<std::int32_t>> upload_lengths(const std::int32_t* cu_seqlens, std::int64_t batch) {
  if (cu_seqlens == nullptr) return nullptr;
  return std::make_unique<DeviceArray<std::int32_t>>(cu_seqlens, batch + 1);
}

}  // namespace

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

template <class T>
void run_on_device(const HostAttentionCall<T>& call) {
  DeviceArray<T> q(call.q.data, call.q_elements), k(call.k.data, call.k_elements), v(call.v.data, call.v_elements);
  DeviceArray<T> out(call.out_elements);
  out.poison();
  const auto q_lengths = upload_lengths(call.q.cu_seqlens, call.q.batch);
  const auto k_lengths = upload_lengths(call.k.cu_seqlens, call.k.batch);

  auto on_device = [](auto batch, auto* data, const DeviceArray<std::int32_t>* lengths) {
    batch.data = data;
    batch.cu_seqlens = lengths != nullptr ? lengths->get() : nullptr;
    return batch;
  };
  const SequenceBatch<const T> device_q = on_device(call.q, static_cast<const T*>(q.get()), q_lengths.get());
  const SequenceBatch<const T> device_k = on_device(call.k, static_cast<const T*>(k.get()), k_lengths.get());
  const SequenceBatch<const T> device_v = on_device(call.v, static_cast<const T*>(v.get()), k_lengths.get());
  const SequenceBatch<T> device_out = on_device(call.out, out.get(), q_lengths.get());

  const std::int64_t lse_elements = call.lse.data != nullptr ? call.lse.size() : 0;
  DeviceArray<float> lse(lse_elements);
  TensorView<float, 2> device_lse;
  if (call.lse.data != nullptr) {
    lse.poison();
    device_lse = TensorView<float, 2>{lse.get(), call.lse.extent, call.lse.stride};
  }

  std::unique_ptr<cuda::DeviceBlockSet> blocks;
  if (call.blocks != nullptr) blocks = std::make_unique<cuda::DeviceBlockSet>(*call.blocks);
  const BlockSetView* block_view = blocks != nullptr ? blocks->view() : nullptr;

  Stream stream;
  if (!call.capture_in_graph) {
    SEER_TEST_ATTENTION_CALL<T>(device_q, device_k, device_v, block_view, call.options, device_out, device_lse,
                                stream.get());
  } else {
    cudaGraph_t graph = nullptr;
    check(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
    try {
      SEER_TEST_ATTENTION_CALL<T>(device_q, device_k, device_v, block_view, call.options, device_out, device_lse,
                                  stream.get());
    } catch (...) {
      static_cast<void>(cudaStreamEndCapture(stream.get(), &graph));
      if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
      throw;
    }
    check(cudaStreamEndCapture(stream.get(), &graph), "cudaStreamEndCapture");
    cudaGraphExec_t executable = nullptr;
    const cudaError_t instantiated = cudaGraphInstantiate(&executable, graph, 0);
    static_cast<void>(cudaGraphDestroy(graph));
    check(instantiated, "cudaGraphInstantiate");
    // Replay twice: a graph is meant to be replayed, and the second replay must give the same result.
    cudaError_t launched = cudaGraphLaunch(executable, stream.get());
    if (launched == cudaSuccess) launched = cudaGraphLaunch(executable, stream.get());
    const cudaError_t finished = cudaStreamSynchronize(stream.get());
    static_cast<void>(cudaGraphExecDestroy(executable));
    check(launched, "cudaGraphLaunch");
    check(finished, "cudaStreamSynchronize (graph)");
  }
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");

  out.download(call.out.data, call.out_elements);
  if (call.lse.data != nullptr) lse.download(call.lse.data, lse_elements);
}

template void run_on_device<bfloat16>(const HostAttentionCall<bfloat16>&);
template void run_on_device<half>(const HostAttentionCall<half>&);

namespace {

// Deterministic pseudo-random values in [-2, 2), drawn on the device: the long-sequence inputs are
// 8 GiB per tensor, too large to draw on the host.
__global__ void fill_random(__nv_bfloat16* data, std::int64_t count, std::uint64_t seed) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    std::uint64_t x = static_cast<std::uint64_t>(i) + seed * 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    data[i] = __float2bfloat16(static_cast<float>(x >> 40) * (4.0f / 16777216.0f) - 2.0f);
  }
}

}  // namespace

std::vector<LongSequenceSlice> run_long_sequence(std::int64_t tokens, std::int64_t heads,
                                                 const std::vector<std::int64_t>& slice_starts, std::string& message) {
  constexpr std::int64_t kHeadDim = 128, kSlice = 64;
  const std::int64_t elements = tokens * heads * kHeadDim;
  std::size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  const std::int64_t needed = 4 * elements * 2 + tokens * heads * 4 + (std::int64_t{1} << 30);
  if (static_cast<std::int64_t>(free_bytes) < needed) {
    message = "needs " + std::to_string(needed >> 20) + " MiB of device memory, " + std::to_string(free_bytes >> 20) +
              " MiB free";
    return {};
  }

  DeviceArray<bfloat16> q(elements), k(elements), v(elements), out(elements);
  DeviceArray<float> lse(heads * tokens);
  out.poison();
  lse.poison();
  std::uint64_t seed = 1;
  for (auto* array : {&q, &k, &v}) {
    fill_random<<<1024, 256>>>(reinterpret_cast<__nv_bfloat16*>(array->get()), elements, seed++);
    gpu::vendor::check_last_launch("fill_random");
  }

  const BlockGeometry geometry{tokens, tokens, 64, true};
  BlockSet host_blocks(heads, 64, {geometry});
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t m = 0; m < geometry.query_blocks(); ++m) {
      const std::int32_t diagonal = static_cast<std::int32_t>(geometry.diagonal_first(m));
      host_blocks.append_row(&diagonal, 1);
    }
  const cuda::DeviceBlockSet blocks(host_blocks);

  const auto view = TensorView<const bfloat16, 4>::contiguous(q.get(), {1, tokens, heads, kHeadDim});
  const auto batch = padded_batch(view, "q");
  auto k_batch = batch, v_batch = batch;
  k_batch.data = k.get();
  v_batch.data = v.get();
  SequenceBatch<bfloat16> out_batch =
      padded_batch(TensorView<bfloat16, 4>::contiguous(out.get(), {1, tokens, heads, kHeadDim}), "out");
  const auto lse_view = TensorView<float, 2>::contiguous(lse.get(), {heads, tokens});
  Stream stream;
  SEER_TEST_ATTENTION_CALL<bfloat16>(batch, k_batch, v_batch, blocks.view(), AttentionOptions{}, out_batch, lse_view,
                                     stream.get());
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");

  std::vector<LongSequenceSlice> slices;
  const std::int64_t slice_elements = kSlice * heads * kHeadDim;
  for (const std::int64_t start : slice_starts) {
    LongSequenceSlice slice;
    slice.first_token = start;
    const std::int64_t offset = start * heads * kHeadDim;
    const DeviceArray<bfloat16>* arrays[] = {&q, &k, &v, &out};
    std::vector<bfloat16>* hosts[] = {&slice.q, &slice.k, &slice.v, &slice.out};
    for (int i = 0; i < 4; ++i) {
      hosts[i]->resize(static_cast<std::size_t>(slice_elements));
      check(cudaMemcpy(hosts[i]->data(), arrays[i]->get() + offset,
                       static_cast<std::size_t>(slice_elements) * sizeof(bfloat16), cudaMemcpyDeviceToHost),
            "cudaMemcpy (slice)");
    }
    slice.lse.resize(static_cast<std::size_t>(heads * kSlice));
    check(cudaMemcpy2D(slice.lse.data(), kSlice * sizeof(float), lse.get() + start, tokens * sizeof(float),
                       kSlice * sizeof(float), heads, cudaMemcpyDeviceToHost),
          "cudaMemcpy2D (lse slice)");
    slices.push_back(std::move(slice));
  }
  return slices;
}

}  // namespace seer::gpu_test
