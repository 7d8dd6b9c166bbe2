// The device side of decode_runner.hpp: uploads, poisons, runs seer::cuda::sparse_decode (or the AMD
// decode kernel through the same parameters), downloads.
#include "decode_runner.hpp"

#include <memory>
#include <vector>

#include "device_test_support.hpp"
#include "seer/cuda/sparse_decode.hpp"
#include "seer/gpu/decode_kernel_amd.hpp"
#include "seer/gpu/decode_params.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::decode_test {

namespace {

using gpu_test::DeviceArray;
using gpu_test::Stream;

// The AMD kernel on NVIDIA: 4 warps of 32 lanes, the portable tile path (what seer::hip launches, with
// the width read from the device there).
template <class T, int HeadDim, int RowBlocks>
void launch_amd_decode(const gpu::DecodeParams<T>& params, cudaStream_t stream) {
  using Traits = gpu::AmdDecodeTraits<T, HeadDim, RowBlocks>;
  auto* kernel = &gpu::sparse_decode_kernel_amd<T, HeadDim, RowBlocks>;
  gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
  const dim3 grid(static_cast<unsigned>(params.splits), static_cast<unsigned>(params.cache.heads * params.head_chunks),
                  static_cast<unsigned>(params.q.batch));
  kernel<<<grid, Traits::kWarps * gpu::vendor::warp_size, Traits::kSharedBytes, stream>>>(params);
  gpu::vendor::check_last_launch("sparse_decode_kernel_amd launch");
}

template <class T>
void amd_decode(SequenceBatch<const T> q, KvCacheView<const T> cache, const DecodeBlockListView* blocks,
                const AttentionOptions& options, SequenceBatch<T> out, TensorView<float, 2> lse, void* workspace,
                std::int64_t workspace_bytes, const gpu::DecodeLaunchShape& shape, cudaStream_t stream) {
  const gpu::DecodeParams<T> params =
      gpu::make_decode_params<T>(q, cache, blocks, options, out, lse, shape, workspace, workspace_bytes);
  if (q.batch == 0) return;
  gpu::dispatch_decode_kernel(params, [&](auto head_dim, auto row_blocks) {
    launch_amd_decode<T, decltype(head_dim)::value, decltype(row_blocks)::value>(params, stream);
  });
}

template <class U>
std::unique_ptr<DeviceArray<U>> upload(const U* host, std::int64_t count) {
  if (host == nullptr) return nullptr;
  return std::make_unique<DeviceArray<U>>(host, count);
}

}  // namespace

bool have_gpu() { return gpu_test::device_present(); }

template <class T>
std::int64_t run_decode_on_device(const HostDecodeCall<T>& call) {
  DeviceArray<T> q(call.q.data, call.q_elements);
  DeviceArray<T> keys(call.cache.keys, call.cache_elements), values(call.cache.values, call.cache_elements);
  DeviceArray<std::int32_t> lengths(call.cache.lengths, call.cache.batch);
  const auto page_table = upload(call.cache.page_table, call.page_table_elements);
  const auto cu_seqlens = upload(call.q.cu_seqlens, call.q.batch + 1);
  DeviceArray<T> out(call.out_elements);
  out.poison();

  SequenceBatch<const T> device_q = call.q;
  device_q.data = q.get();
  device_q.cu_seqlens = cu_seqlens != nullptr ? cu_seqlens->get() : nullptr;
  SequenceBatch<T> device_out = call.out;
  device_out.data = out.get();
  device_out.cu_seqlens = device_q.cu_seqlens;
  KvCacheView<const T> device_cache = call.cache;
  device_cache.keys = keys.get();
  device_cache.values = values.get();
  device_cache.lengths = lengths.get();
  device_cache.page_table = page_table != nullptr ? page_table->get() : nullptr;

  std::unique_ptr<DeviceArray<std::int32_t>> key_blocks, counts;
  DecodeBlockListView device_blocks;
  if (call.blocks != nullptr) {
    device_blocks = *call.blocks;
    key_blocks = upload(call.blocks->key_blocks, call.blocks->batch * call.blocks->kv_heads * call.blocks->capacity);
    counts = upload(call.blocks->counts, call.blocks->batch * call.blocks->kv_heads);
    device_blocks.key_blocks = key_blocks->get();
    device_blocks.counts = counts->get();
  }
  const DecodeBlockListView* blocks = call.blocks != nullptr ? &device_blocks : nullptr;

  const std::int64_t lse_elements = call.lse.data != nullptr ? call.lse.size() : 0;
  DeviceArray<float> lse(lse_elements);
  TensorView<float, 2> device_lse;
  if (call.lse.data != nullptr) {
    lse.poison();
    device_lse = TensorView<float, 2>{lse.get(), call.lse.extent, call.lse.stride};
  }

  gpu::DecodeLaunchShape shape = cuda::detail::automatic_decode_shape(device_q, device_cache, blocks);
  if (call.forced_splits > 0) shape.splits = call.forced_splits;
  if (call.pipeline != 0) shape.deep_pipeline = call.pipeline == 2;
  if (call.split_order != 0) shape.contiguous_splits = call.split_order == 2;
  if (call.cluster_merge != 0) shape.cluster_merge = call.cluster_merge == 2;
  shape.one_cta_per_multiprocessor = call.one_cta_per_multiprocessor;
  shape.lean_kernel = call.lean_kernel;
  const std::int64_t workspace_bytes =
      gpu::decode_workspace_bytes_for(call.q.batch, call.q.heads, call.q.max_length, call.q.head_dim, shape.splits);
  const bool forced = call.forced_splits > 0 || call.pipeline != 0 || call.split_order != 0 ||
                      call.cluster_merge != 0 || call.one_cta_per_multiprocessor || call.lean_kernel;
  if (!forced && !call.amd_kernel)  // public query
    if (cuda::decode_workspace_bytes(device_q, device_cache, blocks) != workspace_bytes)
      throw Error("decode_workspace_bytes disagrees with the shape sparse_decode uses");
  DeviceArray<float> workspace((workspace_bytes + 3) / 4);
  workspace.poison();  // the partials: every one the merge reads must have been written
  // The completion counters start zeroed (the documented contract), and every call leaves them so.
  const std::int64_t counter_offset = gpu::decode_workspace_counter_offset(
      call.q.batch, call.q.heads, call.q.max_length, call.q.head_dim, shape.splits);
  const std::int64_t counters = workspace_bytes > 0 ? (workspace_bytes - counter_offset) / 4 : 0;
  if (counters > 0)
    gpu::vendor::fill_device_bytes(reinterpret_cast<unsigned char*>(workspace.get()) + counter_offset, 0,
                                   static_cast<std::size_t>(counters) * 4, "zero the completion counters");

  // The uploads, poisons and the counters' memset ran on the legacy default stream (cudaMemset of device
  // memory returns before it is done), which a non-blocking stream does not wait for: finish them first.
  gpu::vendor::check(cudaDeviceSynchronize(), "finish the uploads and fills before the decode call");
  Stream stream;
  auto enqueue = [&](cudaStream_t on) {
    if (call.amd_kernel) {
      amd_decode<T>(device_q, device_cache, blocks, call.options, device_out, device_lse, workspace.get(),
                    workspace_bytes, shape, on);
    } else if (forced) {
      cuda::detail::sparse_decode_with_shape<T>(device_q, device_cache, blocks, call.options, device_out, device_lse,
                                                workspace.get(), workspace_bytes, shape, on);
    } else {
      cuda::sparse_decode<T>(device_q, device_cache, blocks, call.options, device_out, device_lse, workspace.get(),
                             workspace_bytes, on);
    }
  };
  if (call.capture_in_graph) {
    gpu::vendor::capture_and_replay(stream.get(), 2, enqueue);
  } else {
    enqueue(stream.get());
  }
  stream.synchronize();
  if (counters > 0) {
    std::vector<std::uint32_t> left(static_cast<std::size_t>(counters));
    gpu::vendor::copy_to_host(left.data(), reinterpret_cast<unsigned char*>(workspace.get()) + counter_offset,
                              left.size() * 4, "download the completion counters");
    for (const std::uint32_t value : left)
      if (value != 0) throw Error("a completion counter was not reset to zero by the call");
  }
  out.download(call.out.data, call.out_elements);
  if (call.lse.data != nullptr) lse.download(call.lse.data, lse_elements);
  return shape.splits;
}

std::int64_t decode_cluster_capacity_on_device(std::int64_t head_dim, std::int64_t row_blocks, bool deep,
                                               std::int64_t splits) {
  return cuda::detail::decode_cluster_capacity<bfloat16>(head_dim, row_blocks, deep, splits);
}

template std::int64_t run_decode_on_device<bfloat16>(const HostDecodeCall<bfloat16>&);
template std::int64_t run_decode_on_device<half>(const HostDecodeCall<half>&);

}  // namespace seer::decode_test
