#include "distillation_runner.hpp"

#include "seer/cuda/distillation.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu_test {

namespace {

using gpu::vendor::check;

class DeviceFloats {
 public:
  explicit DeviceFloats(std::size_t count) : count_(count) {
    check(cudaMalloc(reinterpret_cast<void**>(&data_), (count > 0 ? count : 1) * sizeof(float)), "cudaMalloc (test)");
    check(cudaMemset(data_, 0xff, (count > 0 ? count : 1) * sizeof(float)), "cudaMemset (poison)");
  }
  explicit DeviceFloats(const std::vector<float>& host) : DeviceFloats(host.size()) {
    if (!host.empty())
      check(cudaMemcpy(data_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy (up)");
  }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
  ~DeviceFloats() { static_cast<void>(cudaFree(data_)); }
  float* get() const { return data_; }
  std::vector<float> download() const {
    std::vector<float> host(count_);
    if (count_ > 0)
      check(cudaMemcpy(host.data(), data_, count_ * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy (down)");
    return host;
  }

 private:
  float* data_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace

DistillationResult run_distillation(const HostDistillationCall& call) {
  const LearnedGate& gate = *call.gate;
  const cuda::DistillationPlan plan(gate, call.geometry, call.loss_scale, call.skipped_row_divisor);
  DeviceFloats query_pools(call.query_pools), key_pools(call.key_pools), target(call.target);
  DeviceFloats k_projection(gate.k_projection()), q_projection(gate.q_projection());
  DeviceFloats k_gradient(call.k_gradient), q_gradient(call.q_gradient), loss(1);
  DeviceFloats workspace((plan.workspace_bytes() + sizeof(float) - 1) / sizeof(float));
  cuda::DistillationInputs inputs;
  inputs.query_pools = query_pools.get();
  inputs.key_pools = key_pools.get();
  inputs.target = target.get();
  inputs.k_projection = k_projection.get();
  inputs.q_projection = gate.has_q_projection() ? q_projection.get() : nullptr;
  cuda::distillation_loss_and_gradient(plan, inputs, call.weight, loss.get(), k_gradient.get(),
                                       gate.has_q_projection() ? q_gradient.get() : nullptr, workspace.get(),
                                       plan.workspace_bytes(), nullptr);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (distillation)");
  DistillationResult result;
  result.loss = loss.download()[0];
  result.k_gradient = k_gradient.download();
  result.q_gradient = q_gradient.download();
  return result;
}

std::vector<float> run_adam_w(std::vector<float> parameters, const std::vector<std::vector<float>>& gradients,
                              const std::vector<double>& learning_rates, const training::AdamWOptions& options) {
  DeviceFloats device_parameters(parameters), first(parameters.size()), second(parameters.size());
  check(cudaMemset(first.get(), 0, parameters.size() * sizeof(float)), "cudaMemset");
  check(cudaMemset(second.get(), 0, parameters.size() * sizeof(float)), "cudaMemset");
  for (std::size_t step = 0; step < gradients.size(); ++step) {
    DeviceFloats gradient(gradients[step]);
    cuda::adam_w_step(device_parameters.get(), gradient.get(), first.get(), second.get(),
                      static_cast<std::int64_t>(parameters.size()), learning_rates[step],
                      static_cast<std::int64_t>(step) + 1, options, nullptr);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (AdamW)");
  }
  return device_parameters.download();
}

}  // namespace seer::gpu_test
