// Host-only interface to seer::cuda's distillation step, for the doctest suite compiled by the host
// compiler (the CPU reference uses Eigen, which stays out of .cu files). The runner uploads the
// inputs, poisons the workspace and the loss (NaN), runs the call, and copies the results back.
#pragma once

#include <cstdint>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/training/adam_w.hpp"

namespace seer::gpu_test {

struct HostDistillationCall {
  const LearnedGate* gate = nullptr;
  BlockGeometry geometry;
  double loss_scale = 10.0;
  std::int64_t skipped_row_divisor = 4;
  std::vector<float> query_pools, key_pools, target;  // the layouts of cuda::DistillationInputs
  float weight = 1.0f;
  std::vector<float> k_gradient, q_gradient;  // initial values (the call adds to them)
};

struct DistillationResult {
  float loss = 0.0f;
  std::vector<float> k_gradient, q_gradient;
};

DistillationResult run_distillation(const HostDistillationCall& call);

// `gradients.size()` AdamW steps (step t = 1, 2, ...) at the given learning rates; returns the parameters.
std::vector<float> run_adam_w(std::vector<float> parameters, const std::vector<std::vector<float>>& gradients,
                              const std::vector<double>& learning_rates, const training::AdamWOptions& options);

}  // namespace seer::gpu_test
