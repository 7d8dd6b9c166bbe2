// The device side of tests/gpu/device_attention_runner.hpp, written once for both backends. A backend's
// runner TU defines SEER_TEST_BACKEND (cuda or hip: the namespace of block_sparse_attention and
// DeviceBlockSet) and includes this file: device_attention_runner.cu (CUDA), device_attention_runner_hip.cpp
// (HIP), device_attention_runner_amd_kernel.cu (the AMD kernel compiled for NVIDIA, through
// SEER_TEST_ATTENTION_CALL).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "device_attention_runner.hpp"
#include "device_test_support.hpp"
#include "seer/gpu/vendor.hpp"

#ifndef SEER_TEST_BACKEND
#error "define SEER_TEST_BACKEND (cuda or hip) before including device_attention_runner_impl.hpp"
#endif
// The attention call the runner exercises: the backend's, unless the including TU chose another.
#ifndef SEER_TEST_ATTENTION_CALL
#define SEER_TEST_ATTENTION_CALL SEER_TEST_BACKEND::block_sparse_attention
#endif

namespace seer::gpu_test {

namespace {

std::unique_ptr<DeviceArray<std::int32_t>> upload_lengths(const std::int32_t* cu_seqlens, std::int64_t batch) {
  if (cu_seqlens == nullptr) return nullptr;
  return std::make_unique<DeviceArray<std::int32_t>>(cu_seqlens, batch + 1);
}

}  // namespace

bool have_gpu() { return device_present(); }

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

  std::unique_ptr<SEER_TEST_BACKEND::DeviceBlockSet> blocks;
  if (call.blocks != nullptr) blocks = std::make_unique<SEER_TEST_BACKEND::DeviceBlockSet>(*call.blocks);
  const BlockSetView* block_view = blocks != nullptr ? blocks->view() : nullptr;

  Stream stream;
  auto enqueue = [&](gpu::vendor::stream_t on) {
    SEER_TEST_ATTENTION_CALL<T>(device_q, device_k, device_v, block_view, call.options, device_out, device_lse, on);
  };
  if (call.capture_in_graph) {
    // Replayed twice: a graph is meant to be replayed, and the second replay must give the same result.
    gpu::vendor::capture_and_replay(stream.get(), 2, enqueue);
  } else {
    enqueue(stream.get());
  }
  stream.synchronize();

  out.download(call.out.data, call.out_elements);
  if (call.lse.data != nullptr) lse.download(call.lse.data, lse_elements);
}

template void run_on_device<bfloat16>(const HostAttentionCall<bfloat16>&);
template void run_on_device<half>(const HostAttentionCall<half>&);

std::vector<LongSequenceSlice> run_long_sequence(std::int64_t tokens, std::int64_t heads,
                                                 const std::vector<std::int64_t>& slice_starts, std::string& message) {
  constexpr std::int64_t kHeadDim = 128, kSlice = 64;
  const std::int64_t elements = tokens * heads * kHeadDim;
  const std::size_t free_bytes = gpu::vendor::free_device_bytes();
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
  for (auto* array : {&q, &k, &v}) fill_random(*array, seed++);

  // Only the diagonal block per row: the call still walks every query block of the 1M-token grid.
  const BlockGeometry geometry{tokens, tokens, 64, true};
  BlockSet host_blocks(heads, 64, {geometry});
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t m = 0; m < geometry.query_blocks(); ++m) {
      const std::int32_t diagonal = static_cast<std::int32_t>(geometry.diagonal_first(m));
      host_blocks.append_row(&diagonal, 1);
    }
  const SEER_TEST_BACKEND::DeviceBlockSet blocks(host_blocks);

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
  stream.synchronize();

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
      gpu::vendor::copy_to_host(hosts[i]->data(), arrays[i]->get() + offset,
                                static_cast<std::size_t>(slice_elements) * sizeof(bfloat16), "download (slice)");
    }
    slice.lse.resize(static_cast<std::size_t>(heads * kSlice));
    gpu::vendor::copy_rows_to_host(slice.lse.data(), kSlice * sizeof(float), lse.get() + start, tokens * sizeof(float),
                                   kSlice * sizeof(float), static_cast<std::size_t>(heads), "download (lse slice)");
    slices.push_back(std::move(slice));
  }
  return slices;
}

}  // namespace seer::gpu_test
