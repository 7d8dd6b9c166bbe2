#include "ground_truth_runner.hpp"

#include <cstring>
#include <memory>

#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/ground_truth.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu_test {

namespace {

using gpu::vendor::check;

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
  void poison() {
    check(cudaMemset(data_, 0xff, static_cast<std::size_t>(count_ > 0 ? count_ : 1) * sizeof(T)), "cudaMemset");
  }
  std::vector<T> download() const {
    std::vector<T> host(static_cast<std::size_t>(count_));
    if (count_ > 0)
      check(cudaMemcpy(host.data(), data_, static_cast<std::size_t>(count_) * sizeof(T), cudaMemcpyDeviceToHost),
            "cudaMemcpy (download)");
    return host;
  }

 private:
  T* data_ = nullptr;
  std::int64_t count_ = 0;
};

template <class T>
SequenceBatch<const T> on_device(SequenceBatch<const T> host, const T* data, const std::int32_t* cu_seqlens) {
  host.data = data;
  host.cu_seqlens = host.is_packed() ? cu_seqlens : nullptr;
  return host;
}

}  // namespace

bool have_ground_truth_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

template <class T>
GroundTruthResult<T> run_ground_truth(const HostGroundTruthCall<T>& call) {
  const auto& q_host = call.q;
  DeviceArray<T> q(q_host.data, call.q_elements), k(call.k.data, call.k_elements), v(call.v.data, call.v_elements);
  std::unique_ptr<DeviceArray<std::int32_t>> q_lengths, k_lengths;
  if (q_host.is_packed()) q_lengths = std::make_unique<DeviceArray<std::int32_t>>(q_host.cu_seqlens, q_host.batch + 1);
  if (call.k.is_packed()) k_lengths = std::make_unique<DeviceArray<std::int32_t>>(call.k.cu_seqlens, call.k.batch + 1);
  const auto q_view = on_device<T>(q_host, q.get(), q_lengths ? q_lengths->get() : nullptr);
  const auto k_view = on_device<T>(call.k, k.get(), k_lengths ? k_lengths->get() : nullptr);
  const auto v_view = on_device<T>(call.v, v.get(), k_lengths ? k_lengths->get() : nullptr);
  const std::int64_t total_q = gpu::ground_truth_token_capacity(q_host);

  DeviceArray<T> out(call.q_elements), dense_out(call.q_elements);
  SequenceBatch<T> out_view{out.get(),           q_host.batch,        q_host.heads,        q_host.head_dim,
                            q_host.batch_stride, q_host.token_stride, q_host.head_stride,  q_host.dim_stride,
                            q_host.max_length,   q_view.cu_seqlens,   q_host.stored_tokens};
  SequenceBatch<T> dense_out_view = out_view;
  dense_out_view.data = dense_out.get();
  DeviceArray<float> lse(q_host.heads * total_q), dense_lse(q_host.heads * total_q);
  TensorView<float, 2> lse_view;
  if (call.caller_lse)
    lse_view = TensorView<float, 2>::contiguous(lse.get(), std::array<std::int64_t, 2>{q_host.heads, total_q});
  const auto dense_lse_view =
      TensorView<float, 2>::contiguous(dense_lse.get(), std::array<std::int64_t, 2>{q_host.heads, total_q});

  const std::int64_t key_blocks = (call.k.max_length + call.block_size - 1) / call.block_size;
  GroundTruthResult<T> result;
  result.extent =
      call.one_dimensional
          ? std::array<std::int64_t, 4>{q_host.batch, call.k.heads, q_host.max_length, key_blocks}
          : std::array<std::int64_t, 4>{q_host.batch, q_host.heads,
                                        (q_host.max_length + call.block_size - 1) / call.block_size, key_blocks};
  const std::int64_t target_elements = result.extent[0] * result.extent[1] * result.extent[2] * result.extent[3];
  DeviceArray<float> target(target_elements);
  const std::size_t workspace_bytes = cuda::ground_truth_workspace_bytes(q_view, k_view);
  DeviceArray<unsigned char> workspace(static_cast<std::int64_t>(workspace_bytes));
  for (auto* buffer : {&lse, &dense_lse, &target}) buffer->poison();
  out.poison();
  dense_out.poison();
  workspace.poison();
  const auto target_view = TensorView<float, 4>::contiguous(target.get(), result.extent);

  const auto kind =
      call.one_dimensional ? gpu::GroundTruthTarget::one_dimensional : gpu::GroundTruthTarget::two_dimensional;
  if (call.forward == GroundTruthForward::nvidia) {
    if (call.one_dimensional)
      cuda::block_ground_truth_1d<T>(q_view, k_view, v_view, call.options, call.block_size, target_view, out_view,
                                     lse_view, workspace.get(), workspace_bytes, nullptr);
    else
      cuda::block_ground_truth_2d<T>(q_view, k_view, v_view, call.options, call.block_size, target_view, out_view,
                                     lse_view, workspace.get(), workspace_bytes, nullptr);
  } else {
    const auto params =
        gpu::make_ground_truth_params<T>(kind, q_view, k_view, v_view, call.options, call.block_size, target_view,
                                         out_view, lse_view, workspace.get(), workspace_bytes);
    run_amd_ground_truth_forward(params, q_host.batch);
    cuda::detail::launch_ground_truth_pooling(kind, params, q_host.batch, nullptr);
  }
  cuda::block_sparse_attention<T>(q_view, k_view, v_view, nullptr, call.options, dense_out_view, dense_lse_view,
                                  nullptr);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (ground truth)");

  result.target = target.download();
  result.out = out.download();
  result.dense_out = dense_out.download();
  if (call.caller_lse) result.lse = lse.download();
  result.dense_lse = dense_lse.download();
  return result;
}

template GroundTruthResult<bfloat16> run_ground_truth(const HostGroundTruthCall<bfloat16>&);
template GroundTruthResult<half> run_ground_truth(const HostGroundTruthCall<half>&);

}  // namespace seer::gpu_test
