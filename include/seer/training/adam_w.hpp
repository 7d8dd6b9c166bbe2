// AdamW (decoupled weight decay, Loshchilov & Hutter) and the cosine-with-warmup learning-rate
// schedule, as the SeerAttention distillation uses them (§5.1: adamw_torch, lr 1e-3, weight decay 0,
// cosine, 20 warmup steps).
//
// One step t = 1, 2, ... on parameters w with gradient g (PyTorch's AdamW order of operations):
//   w <- w * (1 - lr * weight_decay)
//   m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2
//   w <- w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + epsilon)
// Moments are kept in double; the parameters are the gate's float weights, updated in place.
//
// The schedule is the one of transformers' cosine schedule with warmup, evaluated at the index of
// the optimizer step (0 for the first step, so the first update has learning rate 0, as there):
//   lr(s) = peak * s / warmup                                    for s < warmup
//   lr(s) = peak * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))   afterwards.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seer/core/error.hpp"

namespace seer::training {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;  // the original trains gates without weight decay
};

class AdamW {
 public:
  AdamW(std::int64_t parameters, AdamWOptions options = {})
      : options_(options),
        first_moment_(static_cast<std::size_t>(checked_size(parameters)), 0.0),
        second_moment_(first_moment_.size(), 0.0) {
    require(options.beta1 >= 0.0 && options.beta1 < 1.0, "options.beta1", "is ", options.beta1, ", expected in [0, 1)");
    require(options.beta2 >= 0.0 && options.beta2 < 1.0, "options.beta2", "is ", options.beta2, ", expected in [0, 1)");
    require(options.epsilon > 0.0, "options.epsilon", "is ", options.epsilon, ", expected > 0");
    require(options.weight_decay >= 0.0, "options.weight_decay", "is ", options.weight_decay, ", expected >= 0");
  }

  // One update of `parameters` (size() values) with `gradient` at this learning rate.
  void step(float* parameters, const double* gradient, double learning_rate) {
    require(parameters != nullptr || first_moment_.empty(), "parameters", "is null");
    require(gradient != nullptr || first_moment_.empty(), "gradient", "is null");
    require(std::isfinite(learning_rate) && learning_rate >= 0.0, "learning_rate", "is ", learning_rate,
            ", expected a finite value >= 0");
    ++steps_;
    const double correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
    const double correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
    const double decay = 1.0 - learning_rate * options_.weight_decay;
    for (std::size_t i = 0; i < first_moment_.size(); ++i) {
      const double g = gradient[i];
      require(std::isfinite(g), "gradient", "value ", i, " is ", g, ", expected finite");
      first_moment_[i] = options_.beta1 * first_moment_[i] + (1.0 - options_.beta1) * g;
      second_moment_[i] = options_.beta2 * second_moment_[i] + (1.0 - options_.beta2) * g * g;
      const double update =
          (first_moment_[i] / correction1) / (std::sqrt(second_moment_[i] / correction2) + options_.epsilon);
      parameters[i] = static_cast<float>(static_cast<double>(parameters[i]) * decay - learning_rate * update);
    }
  }

  std::int64_t size() const { return static_cast<std::int64_t>(first_moment_.size()); }
  std::int64_t steps() const { return steps_; }

 private:
  static std::int64_t checked_size(std::int64_t parameters) {
    require(parameters >= 0, "parameters", "is ", parameters, ", expected >= 0");
    return parameters;
  }

  AdamWOptions options_;
  std::vector<double> first_moment_, second_moment_;
  std::int64_t steps_ = 0;
};

struct CosineSchedule {
  double peak_learning_rate = 1e-3;
  std::int64_t warmup_steps = 20;
  std::int64_t total_steps = 500;

  // Learning rate of optimizer step `step` (0-based).
  double at(std::int64_t step) const {
    require(peak_learning_rate >= 0.0 && std::isfinite(peak_learning_rate), "peak_learning_rate", "is ",
            peak_learning_rate, ", expected a finite value >= 0");
    require(warmup_steps >= 0, "warmup_steps", "is ", warmup_steps, ", expected >= 0");
    require(total_steps > warmup_steps, "total_steps", "is ", total_steps, ", expected > warmup_steps (", warmup_steps,
            ")");
    require(step >= 0, "step", "is ", step, ", expected >= 0");
    if (step < warmup_steps) return peak_learning_rate * static_cast<double>(step) / static_cast<double>(warmup_steps);
    const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    const double kPi = 3.14159265358979323846;
    return peak_learning_rate * 0.5 * (1.0 + std::cos(kPi * std::min(progress, 1.0)));
  }
};

}  // namespace seer::training
