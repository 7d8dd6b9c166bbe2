// Gate distillation: the KL loss against an independent computation from LearnedGate::score, its
// analytic gradient against central finite differences (both weight layouts, GQA 1 and 2, YaRN RoPE
// with an attention factor, a partial last block), AdamW and the schedule by hand, a few AdamW steps
// lowering the loss, the gate file round trip, and argument checks.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/io/model_config.hpp"
#include "seer/training/adam_w.hpp"
#include "seer/training/distillation_loss.hpp"
#include "seer/training/gate_file.hpp"

namespace {

using seer::training::DistillationExample;
using seer::training::DistillationOptions;
using seer::training::GateGradient;

struct RandomProblem {
  std::int64_t length, q_heads, kv_heads, dim;
  std::vector<double> q_before, k_before, q_after, k_after;  // [1, length, heads, dim]

  RandomProblem(std::int64_t length_, std::int64_t q_heads_, std::int64_t kv_heads_, std::int64_t dim_, unsigned seed)
      : length(length_), q_heads(q_heads_), kv_heads(kv_heads_), dim(dim_) {
    std::mt19937 random(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto fill = [&](std::vector<double>& v, std::int64_t heads, double spread) {
      v.resize(static_cast<std::size_t>(length * heads * dim));
      for (auto& x : v) x = spread * normal(random);
    };
    fill(q_before, q_heads, 1.0);
    fill(k_before, kv_heads, 1.0);
    fill(q_after, q_heads, 1.5);  // peaky enough that targets are far from uniform
    fill(k_after, kv_heads, 1.5);
  }
  seer::SequenceBatch<const double> view(const std::vector<double>& v, std::int64_t heads) const {
    return seer::padded_batch(seer::TensorView<const double, 4>::contiguous(v.data(), {1, length, heads, dim}), "x");
  }
};

seer::LearnedGateConfig small_config(const std::string& type, std::int64_t dim, bool force_double) {
  seer::LearnedGateConfig config;
  config.gate_type = type;
  config.block_size = 4;
  config.hidden_size = dim;
  config.force_double = force_double;
  config.rope.head_dim = dim;
  config.rope.theta = 500.0;
  config.rope.scaling.type = "yarn";  // attention factor != 1 exercises the transpose of the rotation
  config.rope.scaling.factor = 4.0;
  config.rope.scaling.original_max_position_embeddings = 64;
  return config;
}

std::vector<float> random_weights(std::size_t count, unsigned seed, double spread) {
  std::mt19937 random(seed);
  std::normal_distribution<double> normal(0.0, spread);
  std::vector<float> w(count);
  for (auto& x : w) x = static_cast<float>(normal(random));
  return w;
}

seer::LearnedGate make_gate(const seer::LearnedGateConfig& config, const RandomProblem& p, unsigned seed) {
  const seer::GateType type = seer::GateType::parse(config.gate_type);
  const bool double_linear = type.query_pools.size() > 1 || config.force_double;
  const std::int64_t key_heads = double_linear ? p.kv_heads : p.q_heads;
  auto k = random_weights(static_cast<std::size_t>(key_heads * type.key_pools.size() * p.dim * p.dim), seed, 0.3);
  std::vector<float> q;
  if (double_linear)
    q = random_weights(static_cast<std::size_t>(p.q_heads * type.query_pools.size() * p.dim * p.dim), seed + 1, 0.3);
  return seer::LearnedGate(config, p.q_heads, p.kv_heads, p.dim, k, q);
}

DistillationExample make_example(const seer::LearnedGate& gate, const RandomProblem& p) {
  auto examples =
      seer::training::make_distillation_examples(gate, p.view(p.q_before, p.q_heads), p.view(p.k_before, p.kv_heads),
                                                 p.view(p.q_after, p.q_heads), p.view(p.k_after, p.kv_heads));
  REQUIRE(examples.size() == 1);
  return std::move(examples.front());
}

// The loss computed from the gate's own scoring (LearnedGate::score + score_row) and the target,
// with the original's normalisation: scale * sum KL / (Hq * rows * nb).
double independent_loss(const seer::LearnedGate& gate, const RandomProblem& p, const DistillationExample& example,
                        double scale, std::int64_t divisor) {
  const auto scores = gate.score(p.view(p.q_before, p.q_heads), p.view(p.k_before, p.kv_heads));
  const seer::BlockGeometry& g = scores.sequences()[0];
  const std::int64_t first = divisor > 0 ? g.query_blocks() / divisor : 0;
  double total = 0.0;
  std::vector<double> logits(static_cast<std::size_t>(g.key_blocks()));
  for (std::int64_t h = 0; h < p.q_heads; ++h)
    for (std::int64_t m = first; m < g.query_blocks(); ++m) {
      const std::int64_t visible = g.visible_key_blocks(m);
      scores.score_row(0, h, m, logits.data());
      double z = 0.0;
      for (std::int64_t n = 0; n < visible; ++n) z += std::exp(logits[n]);
      const double* t = example.target.row(0, h, m);
      for (std::int64_t n = 0; n < visible; ++n)
        if (t[n] > 0) total += t[n] * std::log(t[n] / (std::exp(logits[n]) / z));
    }
  return scale * total / static_cast<double>(p.q_heads * (g.query_blocks() - first) * g.key_blocks());
}

// Central differences of the loss in each weight, against the analytic gradient.
void check_gradient(seer::LearnedGate gate, const DistillationExample& example, const DistillationOptions& options) {
  GateGradient gradient = GateGradient::zeros_like(gate);
  const double weight = 0.75;  // the gradient must scale with the example weight too
  const double loss = seer::training::distillation_loss(gate, example, options, &gradient, weight, 2);
  CHECK(loss > 0.0);
  CHECK(loss == doctest::Approx(weight * seer::training::distillation_loss(gate, example, options)).epsilon(1e-12));
  auto check_weights = [&](float* weights, const std::vector<double>& analytic, const char* name) {
    REQUIRE(!analytic.empty());
    double largest = 0.0;
    for (std::size_t i = 0; i < analytic.size(); ++i) {
      const float original = weights[i];
      const float plus = original + 1e-3f, minus = original - 1e-3f;
      weights[i] = plus;
      const double loss_plus = seer::training::distillation_loss(gate, example, options, nullptr, weight);
      weights[i] = minus;
      const double loss_minus = seer::training::distillation_loss(gate, example, options, nullptr, weight);
      weights[i] = original;
      // The true step between the two float weights, so float rounding of w +- h costs nothing.
      const double numeric = (loss_plus - loss_minus) / (static_cast<double>(plus) - static_cast<double>(minus));
      largest = std::max(largest, std::fabs(analytic[i]));
      INFO(name << "[" << i << "]: analytic " << analytic[i] << ", numeric " << numeric);
      CHECK(std::fabs(numeric - analytic[i]) <= 1e-7 + 2e-4 * std::fabs(analytic[i]));
    }
    CHECK(largest > 1e-4);  // the gradient is not trivially zero
  };
  check_weights(gate.k_projection_data(), gradient.k_projection, "k_projection");
  if (gate.has_q_projection()) check_weights(gate.q_projection_data(), gradient.q_projection, "q_projection");
}

}  // namespace

TEST_CASE("distillation loss: equals KL(target || softmax of the gate's own scores), first quarter dropped") {
  for (const std::int64_t kv_heads : {2, 1}) {
    const RandomProblem p(37, 2, kv_heads, 8, 11u + static_cast<unsigned>(kv_heads));  // 10 blocks, partial last
    for (const bool force_double : {false, true}) {
      const auto gate = make_gate(small_config("Qavg_Kmaxminavg", 8, force_double), p, 5);
      const auto example = make_example(gate, p);
      for (const std::int64_t divisor : {4, 0}) {
        DistillationOptions options;
        options.skipped_row_divisor = divisor;
        const double loss = seer::training::distillation_loss(gate, example, options);
        CHECK(loss > 0.0);
        CHECK(loss == doctest::Approx(independent_loss(gate, p, example, 10.0, divisor)).epsilon(1e-10));
      }
    }
  }
}

TEST_CASE("distillation loss: analytic gradient matches finite differences (both layouts, GQA 1 and 2)") {
  for (const std::int64_t kv_heads : {2, 1}) {  // Hq = 2: group 1 and group 2
    const RandomProblem p(37, 2, kv_heads, 8, 21u + static_cast<unsigned>(kv_heads));
    SUBCASE("single linear (released layout)") {
      const auto gate = make_gate(small_config("Qavg_Kmaxminavg", 8, false), p, 7);
      CHECK(!gate.has_q_projection());
      check_gradient(gate, make_example(gate, p), DistillationOptions{});
    }
    SUBCASE("double linear (two query pools)") {
      const auto gate = make_gate(small_config("Qmaxavg_Kmaxminavg", 8, false), p, 9);
      CHECK(gate.has_q_projection());
      check_gradient(gate, make_example(gate, p), DistillationOptions{});
    }
    SUBCASE("double linear (forced), no skipped rows") {
      const auto gate = make_gate(small_config("Qavg_Kmax", 8, true), p, 13);
      DistillationOptions options;
      options.skipped_row_divisor = 0;
      options.loss_scale = 3.0;
      check_gradient(gate, make_example(gate, p), options);
    }
  }
}

TEST_CASE("distillation loss: a target equal to the gate's own softmax gives loss 0 and gradient 0") {
  const RandomProblem p(24, 2, 1, 8, 3u);
  const auto gate = make_gate(small_config("Qavg_Kmaxminavg", 8, false), p, 17);
  auto example = make_example(gate, p);
  const auto scores = gate.score(p.view(p.q_before, p.q_heads), p.view(p.k_before, p.kv_heads));
  const seer::BlockGeometry& g = scores.sequences()[0];
  std::vector<double> logits(static_cast<std::size_t>(g.key_blocks()));
  for (std::int64_t h = 0; h < 2; ++h)
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
      scores.score_row(0, h, m, logits.data());
      double z = 0.0;
      for (std::int64_t n = 0; n < g.visible_key_blocks(m); ++n) z += std::exp(logits[n]);
      double* row = example.target.rows.row(example.target.row_index(0, h, m));
      for (std::int64_t n = 0; n < g.visible_key_blocks(m); ++n) row[n] = std::exp(logits[n]) / z;
    }
  GateGradient gradient = GateGradient::zeros_like(gate);
  CHECK(std::fabs(seer::training::distillation_loss(gate, example, {}, &gradient)) < 1e-12);
  for (double value : gradient.k_projection) CHECK(std::fabs(value) < 1e-12);
}

TEST_CASE("AdamW: one step by hand, weight decay, bias correction; cosine schedule with warmup") {
  seer::training::AdamWOptions options;
  options.weight_decay = 0.1;
  seer::training::AdamW optimizer(2, options);
  std::vector<float> w{1.0f, -2.0f};
  const std::vector<double> g{0.5, -0.25};
  optimizer.step(w.data(), g.data(), 0.01);
  // Step 1: m_hat = g, v_hat = g^2, update = g / (|g| + eps) = sign(g).
  CHECK(w[0] == doctest::Approx(1.0 * (1 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8)).epsilon(1e-6));
  CHECK(w[1] == doctest::Approx(-2.0 * (1 - 0.001) + 0.01 * 0.25 / (0.25 + 1e-8)).epsilon(1e-6));
  // Step 2 with a different gradient, against the formulas written out.
  const std::vector<double> g2{-1.0, 0.5};
  const double before0 = w[0];
  optimizer.step(w.data(), g2.data(), 0.02);
  const double m = 0.9 * 0.1 * 0.5 + 0.1 * -1.0, v = 0.999 * 0.001 * 0.25 + 0.001 * 1.0;
  const double expected = before0 * (1 - 0.002) - 0.02 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.999 * 0.999)) + 1e-8);
  CHECK(w[0] == doctest::Approx(expected).epsilon(1e-6));
  CHECK(optimizer.steps() == 2);

  const seer::training::CosineSchedule schedule{1e-3, 20, 120};
  CHECK(schedule.at(0) == 0.0);
  CHECK(schedule.at(10) == doctest::Approx(5e-4));
  CHECK(schedule.at(20) == doctest::Approx(1e-3));
  CHECK(schedule.at(70) == doctest::Approx(5e-4));
  CHECK(schedule.at(120) == doctest::Approx(0.0));
  CHECK_THROWS_AS(schedule.at(-1), seer::InvalidArgument);
  CHECK_THROWS_AS((seer::training::CosineSchedule{1e-3, 20, 20}.at(0)), seer::InvalidArgument);
  const std::vector<double> bad{std::nan(""), 0.0};
  CHECK_THROWS_AS(optimizer.step(w.data(), bad.data(), 0.01), seer::InvalidArgument);
  CHECK_THROWS_AS(seer::training::AdamW(2, seer::training::AdamWOptions{1.0}), seer::InvalidArgument);
}

TEST_CASE("distillation: a few AdamW steps lower the loss (released layout, GQA 2)") {
  const RandomProblem p(64, 4, 2, 8, 31u);
  auto gate = make_gate(small_config("Qavg_Kmaxminavg", 8, false), p, 19);
  const auto example = make_example(gate, p);
  seer::training::AdamW optimizer(static_cast<std::int64_t>(gate.k_projection().size()));
  const seer::training::CosineSchedule schedule{2e-2, 2, 30};
  GateGradient gradient = GateGradient::zeros_like(gate);
  const double initial = seer::training::distillation_loss(gate, example);
  double loss = initial;
  for (std::int64_t step = 0; step < 30; ++step) {
    gradient.set_zero();
    loss = seer::training::distillation_loss(gate, example, {}, &gradient);
    optimizer.step(gate.k_projection_data(), gradient.k_projection.data(), schedule.at(step));
  }
  const double final_loss = seer::training::distillation_loss(gate, example);
  INFO("initial " << initial << ", final " << final_loss);
  CHECK(final_loss < 0.8 * initial);
  CHECK(loss >= final_loss * 0.99);
}

TEST_CASE("distillation: argument checks") {
  const RandomProblem p(24, 2, 1, 8, 41u);
  const auto gate = make_gate(small_config("Qavg_Kmaxminavg", 8, false), p, 23);
  auto example = make_example(gate, p);
  DistillationOptions bad;
  bad.skipped_row_divisor = -1;
  CHECK_THROWS_AS(seer::training::distillation_loss(gate, example, bad), seer::InvalidArgument);
  GateGradient wrong{std::vector<double>(3, 0.0), {}};
  CHECK_THROWS_AS(seer::training::distillation_loss(gate, example, {}, &wrong), seer::InvalidArgument);
  const RandomProblem other(40, 2, 1, 8, 43u);
  auto mismatched = example;
  mismatched.target = make_example(gate, other).target;
  CHECK_THROWS_AS(seer::training::distillation_loss(gate, mismatched, {}), seer::InvalidArgument);
  const RandomProblem wrong_heads(24, 4, 1, 8, 47u);
  CHECK_THROWS_AS(make_example(gate, wrong_heads), seer::InvalidArgument);
}

TEST_CASE("gate file: round trip of every layer's weights and metadata, mismatched model rejected") {
  const RandomProblem p(16, 4, 2, 8, 51u);
  std::vector<seer::LearnedGate> gates;
  gates.push_back(make_gate(small_config("Qavg_Kmaxminavg", 8, false), p, 61));
  gates.push_back(make_gate(small_config("Qavg_Kmaxminavg", 8, false), p, 62));
  const std::string path = (std::filesystem::temp_directory_path() / "seer_test_gate_file.safetensors").string();
  seer::training::write_gate_file(path, gates, {{"note", "test"}});
  seer::io::ModelConfig model;
  model.num_layers = 2;
  model.num_q_heads = 4;
  model.num_kv_heads = 2;
  model.head_dim = 8;
  model.rope = gates[0].config().rope;
  const auto file = seer::training::read_gate_file(path, model);
  REQUIRE(file.gates.size() == 2);
  CHECK(file.metadata.at("note") == "test");
  CHECK(file.metadata.at("gate_type") == "Qavg_Kmaxminavg");
  for (std::size_t l = 0; l < 2; ++l) {
    CHECK(file.gates[l].k_projection() == gates[l].k_projection());
    CHECK(file.gates[l].config().block_size == 4);
  }
  model.num_layers = 3;
  CHECK_THROWS_AS(seer::training::read_gate_file(path, model), seer::FormatError);
  std::remove(path.c_str());
  CHECK_THROWS_AS(seer::training::write_gate_file(path, {}), seer::InvalidArgument);
}
