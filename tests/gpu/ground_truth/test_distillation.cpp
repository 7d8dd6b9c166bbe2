// seer::cuda::distillation_loss_and_gradient and adam_w_step against the double-precision CPU
// implementations (seer/training/distillation_loss.hpp, adam_w.hpp) on random gates and inputs.
//
// Tolerances. The GPU runs in fp32: features are sums of <= a few hundred products, logits dot
// products of dg terms, the softmax and the KL in expf/logf, gradients sums over <= a few hundred blocks,
// so each value carries a relative error of ~1e-6 (a few hundred fp32 roundings of 6e-8). The bounds,
// 1e-4 relative for the loss and 1e-4 of the largest gradient entry per entry, leave ~100x room; a
// wrong mask, row, scale or rotation moves values by O(1). AdamW: the CPU keeps double moments and
// rounds each update to float, the GPU computes in fp32: the parameters agree to a few float ulps.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "distillation_runner.hpp"
#include "ground_truth_runner.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/training/adam_w.hpp"
#include "seer/training/distillation_loss.hpp"

namespace {

struct Shape {
  std::int64_t length, q_heads, kv_heads, dim, block;
  std::string gate_type;
  bool force_double;
};

std::vector<double> normal_values(std::size_t count, std::mt19937& random, double spread) {
  std::normal_distribution<double> normal(0.0, spread);
  std::vector<double> values(count);
  for (auto& value : values) value = normal(random);
  return values;
}

std::vector<float> to_floats(const std::vector<double>& values) { return {values.begin(), values.end()}; }

void check_distillation(const Shape& s, std::int64_t divisor, float weight, unsigned seed) {
  if (!seer::gpu_test::have_ground_truth_gpu()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  std::mt19937 random(seed);
  seer::LearnedGateConfig config;
  config.gate_type = s.gate_type;
  config.block_size = s.block;
  config.hidden_size = s.dim;
  config.force_double = s.force_double;
  config.rope.head_dim = s.dim;
  config.rope.theta = 500.0;
  config.rope.scaling.type = "yarn";  // attention factor != 1: the rotation's transpose is exercised
  config.rope.scaling.factor = 4.0;
  config.rope.scaling.original_max_position_embeddings = 64;
  const seer::GateType type = seer::GateType::parse(s.gate_type);
  const bool double_linear = type.query_pools.size() > 1 || s.force_double;
  const std::int64_t key_heads = double_linear ? s.kv_heads : s.q_heads;
  std::vector<float> q_weights;
  const auto k_weights = to_floats(normal_values(
      static_cast<std::size_t>(key_heads * static_cast<std::int64_t>(type.key_pools.size()) * s.dim * s.dim), random,
      0.3));
  if (double_linear)
    q_weights = to_floats(normal_values(
        static_cast<std::size_t>(s.q_heads * static_cast<std::int64_t>(type.query_pools.size()) * s.dim * s.dim),
        random, 0.3));
  const seer::LearnedGate gate(config, s.q_heads, s.kv_heads, s.dim, k_weights, q_weights);

  auto make = [&](std::int64_t heads, double spread) {
    return normal_values(s.length * heads * s.dim, random, spread);
  };
  const auto q_before = make(s.q_heads, 1.0), k_before = make(s.kv_heads, 1.0);
  const auto q_after = make(s.q_heads, 1.5), k_after = make(s.kv_heads, 1.5);  // peaky targets
  auto view = [&](const std::vector<double>& v, std::int64_t heads) {
    return seer::padded_batch(seer::TensorView<const double, 4>::contiguous(v.data(), {1, s.length, heads, s.dim}),
                              "x");
  };
  auto examples = seer::training::make_distillation_examples(
      gate, view(q_before, s.q_heads), view(k_before, s.kv_heads), view(q_after, s.q_heads), view(k_after, s.kv_heads));
  REQUIRE(examples.size() == 1);
  const auto& example = examples.front();

  seer::training::DistillationOptions options;
  options.skipped_row_divisor = divisor;
  auto cpu_gradient = seer::training::GateGradient::zeros_like(gate);
  const double cpu_loss = seer::training::distillation_loss(gate, example, options, &cpu_gradient, weight, 2);

  seer::gpu_test::HostDistillationCall call;
  call.gate = &gate;
  call.geometry = example.inputs.geometry;
  call.loss_scale = options.loss_scale;
  call.skipped_row_divisor = divisor;
  call.query_pools = to_floats(example.inputs.query_pools);
  call.key_pools = to_floats(example.inputs.key_pools);
  std::int64_t query_blocks = 0, key_blocks = 0;
  call.target = example.target.dense(query_blocks, key_blocks);
  call.weight = weight;
  call.k_gradient = to_floats(normal_values(gate.k_projection().size(), random, 1e-3));  // accumulated onto
  call.q_gradient = to_floats(normal_values(gate.q_projection().size(), random, 1e-3));
  const auto result = seer::gpu_test::run_distillation(call);

  INFO("loss: GPU ", result.loss, ", CPU ", cpu_loss);
  CHECK(cpu_loss > 0.0);
  CHECK(std::abs(result.loss - cpu_loss) <= 1e-4 * std::abs(cpu_loss));
  auto compare = [](const std::vector<float>& initial, const std::vector<double>& cpu, const std::vector<float>& gpu,
                    const char* name) {
    REQUIRE(gpu.size() == cpu.size());
    double largest = 0.0, worst = 0.0;
    for (double value : cpu) largest = std::max(largest, std::abs(value));
    for (std::size_t i = 0; i < cpu.size(); ++i)
      worst = std::max(worst, std::abs(static_cast<double>(gpu[i]) - (static_cast<double>(initial[i]) + cpu[i])));
    MESSAGE(std::string(name), ": ", cpu.size(), " values, largest |gradient| ", largest, ", worst error ", worst);
    CHECK(largest > 0.0);
    CHECK(worst <= 1e-4 * largest);
  };
  compare(call.k_gradient, cpu_gradient.k_projection, result.k_gradient, "k projection");
  if (double_linear) compare(call.q_gradient, cpu_gradient.q_projection, result.q_gradient, "q projection");
}

}  // namespace

TEST_CASE("gpu distillation: loss and gradient match the CPU (single-linear layout, GQA 4/2)") {
  check_distillation({64, 4, 2, 8, 4, "Qavg_Kmaxminavg", false}, 4, 1.0f, 1);
  check_distillation({203, 4, 2, 16, 16, "Qavg_Kmaxminavg", false}, 4, 0.5f, 2);  // partial last block
}

TEST_CASE("gpu distillation: double-linear layout (force_double and Qmaxavg), no skipped rows") {
  check_distillation({64, 4, 2, 8, 4, "Qavg_Kmaxminavg", true}, 0, 1.0f, 3);
  check_distillation({150, 6, 2, 32, 16, "Qmaxavg_Kmaxmin", false}, 4, 0.25f, 4);
}

TEST_CASE("gpu distillation: realistic gate shape (block 64, dg 128, Qavg_Kmaxminavg, 8 query heads)") {
  check_distillation({1000, 8, 2, 128, 64, "Qavg_Kmaxminavg", false}, 4, 1.0f, 5);
}

TEST_CASE("gpu AdamW: steps match training::AdamW") {
  if (!seer::gpu_test::have_ground_truth_gpu()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  std::mt19937 random(9);
  constexpr std::size_t kCount = 3000;
  const auto initial = to_floats(normal_values(kCount, random, 0.02));
  std::vector<std::vector<float>> gradients;
  std::vector<double> learning_rates;
  const seer::training::CosineSchedule schedule{1e-3, 2, 8};
  for (std::int64_t step = 0; step < 6; ++step) {
    gradients.push_back(to_floats(normal_values(kCount, random, step % 2 == 0 ? 1e-2 : 3.0)));
    learning_rates.push_back(schedule.at(step == 0 ? 1 : step));  // step 0's rate is 0: start at 1
  }
  for (double decay : {0.0, 0.1}) {
    seer::training::AdamWOptions options;
    options.weight_decay = decay;
    seer::training::AdamW cpu(static_cast<std::int64_t>(kCount), options);
    std::vector<float> expected = initial;
    for (std::size_t step = 0; step < gradients.size(); ++step) {
      const std::vector<double> gradient(gradients[step].begin(), gradients[step].end());
      cpu.step(expected.data(), gradient.data(), learning_rates[step]);
    }
    const auto actual = seer::gpu_test::run_adam_w(initial, gradients, learning_rates, options);
    REQUIRE(actual.size() == expected.size());
    std::size_t failures = 0, moved = 0;
    for (std::size_t i = 0; i < kCount; ++i) {
      moved += expected[i] != initial[i] ? 1 : 0;
      if (!(std::abs(actual[i] - expected[i]) <= 4e-6 * std::abs(expected[i]) + 1e-7)) ++failures;
    }
    CHECK(moved == kCount);
    CHECK(failures == 0);
  }
}
