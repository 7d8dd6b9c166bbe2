// Decode-gate distillation: the KL loss against an independent computation from the reference gate
// formulas and the full-sequence 1-D ground truth, the analytic gradient of every trainable tensor
// against central finite differences (Qproj / Qavgproj / Qavg, RMSNorm on/off, RoPE with a YaRN
// attention factor, GQA 1 and 2), AdamW steps lowering the loss, the decode gate file and the released
// key names, and argument checks.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "decode_test_support.hpp"
#include "seer/core/attention_problem.hpp"
#include "seer/core/error.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/ground_truth.hpp"
#include "seer/gate/decode_gate.hpp"
#include "seer/io/decode_gate_weights.hpp"
#include "seer/io/model_config.hpp"
#include "seer/io/safetensors.hpp"
#include "seer/training/adam_w.hpp"
#include "seer/training/decode_distillation.hpp"
#include "seer/training/decode_gate_file.hpp"

namespace {

using seer::QueryHeadPooling;
using seer::training::DecodeDistillationOptions;
using seer::training::DecodeGateGradient;
using namespace seer_test;

struct DecodeProblem {
  std::int64_t length, q_heads, kv_heads, dim;
  std::vector<double> q_before, k_before, q_after, k_after;  // [1, length, heads, dim]

  DecodeProblem(std::int64_t length_, std::int64_t q_heads_, std::int64_t kv_heads_, std::int64_t dim_, unsigned seed)
      : length(length_), q_heads(q_heads_), kv_heads(kv_heads_), dim(dim_) {
    std::mt19937 random(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto fill = [&](std::vector<double>& v, std::int64_t heads, double spread) {
      v.resize(static_cast<std::size_t>(length * heads * dim));
      for (auto& x : v) x = spread * normal(random);
    };
    fill(q_before, q_heads, 1.0);
    fill(k_before, kv_heads, 1.0);
    fill(q_after, q_heads, 1.5);  // peaky targets
    fill(k_after, kv_heads, 1.5);
  }
  seer::SequenceBatch<const double> view(const std::vector<double>& v, std::int64_t heads) const {
    return seer::padded_batch(seer::TensorView<const double, 4>::contiguous(v.data(), {1, length, heads, dim}), "x");
  }
  seer::training::DecodeDistillationExample example(const seer::DecodeGate& gate,
                                                    const DecodeDistillationOptions& options) const {
    auto examples = seer::training::make_decode_distillation_examples(gate, view(q_before, q_heads),
                                                                      view(k_before, kv_heads), view(q_after, q_heads),
                                                                      view(k_after, kv_heads), options, {}, 1);
    return std::move(examples.front());
  }
};

seer::DecodeGateConfig yarn_config(QueryHeadPooling pooling, std::int64_t dim, bool norm, bool rope) {
  seer::DecodeGateConfig config = small_decode_config(pooling, dim, 4, norm, rope);
  config.rope.scaling.type = "yarn";  // attention factor != 1 exercises the transposed rotation
  config.rope.scaling.factor = 4.0;
  config.rope.scaling.original_max_position_embeddings = 16;
  return config;
}

}  // namespace

TEST_CASE("decode distillation: loss matches an independent computation") {
  const std::int64_t dim = 8, kv_heads = 2, length = 45, block = 4;
  for (QueryHeadPooling pooling :
       {QueryHeadPooling::projection, QueryHeadPooling::average_projection, QueryHeadPooling::average})
    for (std::int64_t group : {1, 2}) {
      CAPTURE(seer::query_head_pooling_name(pooling));
      CAPTURE(group);
      // Default RoPE so that the test's own rotation is the reference.
      const seer::DecodeGateConfig config = small_decode_config(pooling, dim, block, true, true);
      const seer::DecodeGate gate = random_decode_gate(config, kv_heads * group, kv_heads, dim, 101);
      const DecodeProblem p(length, kv_heads * group, kv_heads, dim, 103);
      const DecodeDistillationOptions options;  // ratio 0.5, scale 10
      const auto example = p.example(gate, options);
      CHECK(example.inputs.first_token == 22);
      const double loss = seer::training::decode_distillation_loss(gate, example, options);

      // The target over the whole sequence; rows t >= 22 are the trained ones.
      const auto truth = seer::cpu::one_dimensional_ground_truth(p.view(p.q_after, p.q_heads),
                                                                 p.view(p.k_after, kv_heads), {}, block, 1);
      double expected = 0.0;
      for (std::int64_t c = 0; c < kv_heads; ++c) {
        std::vector<std::vector<double>> keys;
        for (std::int64_t j = 0; j < length / block; ++j) {
          std::vector<std::vector<double>> tokens;
          for (std::int64_t t = j * block; t < (j + 1) * block; ++t) {
            const double* k = p.k_before.data() + (t * kv_heads + c) * dim;
            tokens.emplace_back(k, k + dim);
          }
          keys.push_back(reference_key(config, gate.weights(), tokens, c, j * block));
        }
        for (std::int64_t t = 22; t < length; ++t) {
          std::vector<std::vector<double>> heads;
          for (std::int64_t h = 0; h < p.q_heads; ++h) {
            const double* q = p.q_before.data() + (t * p.q_heads + h) * dim;
            heads.emplace_back(q, q + dim);
          }
          const auto query = reference_query(config, gate.weights(), heads, kv_heads, c, t);
          const std::int64_t count = t / block;
          REQUIRE(truth.row_size(0, c, t) == count);
          std::vector<double> logits(static_cast<std::size_t>(count));
          double normaliser = 0.0;
          for (std::int64_t j = 0; j < count; ++j) {
            double dot = 0.0;
            for (std::int64_t d = 0; d < dim; ++d) dot += query[d] * keys[j][d];
            logits[j] = dot / std::sqrt(static_cast<double>(dim));
            normaliser += std::exp(logits[j]);
          }
          for (std::int64_t j = 0; j < count; ++j) {
            const double target = truth.row(0, c, t)[j];
            if (target > 0.0) expected += target * (std::log(target) - (logits[j] - std::log(normaliser)));
          }
        }
      }
      expected *= 10.0 / static_cast<double>(kv_heads * (length - 22) * ((length + block - 1) / block));
      CHECK(loss > 0.0);
      CHECK(loss == doctest::Approx(expected).epsilon(1e-10));
    }
}

TEST_CASE("decode distillation: analytic gradient matches finite differences") {
  const std::int64_t dim = 8, kv_heads = 2;
  for (QueryHeadPooling pooling :
       {QueryHeadPooling::projection, QueryHeadPooling::average_projection, QueryHeadPooling::average})
    for (bool norm : {false, true})
      for (bool rope : {false, true})
        for (std::int64_t group : {1, 2}) {
          CAPTURE(seer::query_head_pooling_name(pooling));
          CAPTURE(norm);
          CAPTURE(rope);
          CAPTURE(group);
          const seer::DecodeGateConfig config = yarn_config(pooling, dim, norm, rope);
          seer::DecodeGate gate = random_decode_gate(config, kv_heads * group, kv_heads, dim, 111);
          const DecodeProblem p(30, kv_heads * group, kv_heads, dim, 113);  // partial last block
          DecodeDistillationOptions options;
          options.loss_slice_ratio = 0.25;
          const auto example = p.example(gate, options);
          auto gradient = DecodeGateGradient::zeros_like(gate);
          const double weight = 0.7;
          const double loss = seer::training::decode_distillation_loss(gate, example, options, &gradient, weight, 2);
          CHECK(loss ==
                doctest::Approx(seer::training::decode_distillation_loss(gate, example, options, nullptr, weight)));

          struct Tensor {
            const char* name;
            float* data;
            const std::vector<double>* analytic;
          };
          const std::vector<Tensor> tensors{{"q_projection", gate.q_projection_data(), &gradient.q_projection},
                                            {"k_projection", gate.k_projection_data(), &gradient.k_projection},
                                            {"q_norm", gate.q_norm_data(), &gradient.q_norm},
                                            {"k_norm", gate.k_norm_data(), &gradient.k_norm}};
          for (const auto& tensor : tensors) {
            CAPTURE(tensor.name);
            double largest = 0.0;
            for (double g : *tensor.analytic) largest = std::max(largest, std::abs(g));
            if (!tensor.analytic->empty()) CHECK(largest > 0.0);
            for (std::size_t i = 0; i < tensor.analytic->size(); ++i) {
              float& w = tensor.data[i];
              const float original = w;
              w = original + 1e-3f;
              const double up_delta = static_cast<double>(w) - original;
              const double up = seer::training::decode_distillation_loss(gate, example, options, nullptr, weight);
              w = original - 1e-3f;
              const double down_delta = original - static_cast<double>(w);
              const double down = seer::training::decode_distillation_loss(gate, example, options, nullptr, weight);
              w = original;
              const double numeric = (up - down) / (up_delta + down_delta);
              CHECK(std::abs(numeric - (*tensor.analytic)[i]) <= 2e-4 * largest + 1e-9);
            }
          }
        }
}

TEST_CASE("decode distillation: AdamW steps lower the loss") {
  const std::int64_t dim = 8, kv_heads = 2;
  const seer::DecodeGateConfig config = yarn_config(QueryHeadPooling::projection, dim, true, true);
  seer::DecodeGate gate = random_decode_gate(config, 4, kv_heads, dim, 121);
  const DecodeProblem p(64, 4, kv_heads, dim, 123);
  const DecodeDistillationOptions options;
  const auto example = p.example(gate, options);
  const double before = seer::training::decode_distillation_loss(gate, example, options);
  std::vector<seer::training::AdamW> optimizers;
  const auto& w = gate.weights();
  for (auto size : {w.q_projection.size(), w.k_projection.size(), w.q_norm.size(), w.k_norm.size()})
    optimizers.emplace_back(static_cast<std::int64_t>(size));
  auto gradient = DecodeGateGradient::zeros_like(gate);
  for (int step = 0; step < 30; ++step) {
    gradient.set_zero();
    seer::training::decode_distillation_loss(gate, example, options, &gradient);
    optimizers[0].step(gate.q_projection_data(), gradient.q_projection.data(), 1e-2);
    optimizers[1].step(gate.k_projection_data(), gradient.k_projection.data(), 1e-2);
    optimizers[2].step(gate.q_norm_data(), gradient.q_norm.data(), 1e-2);
    optimizers[3].step(gate.k_norm_data(), gradient.k_norm.data(), 1e-2);
  }
  const double after = seer::training::decode_distillation_loss(gate, example, options);
  CHECK(after < 0.8 * before);
}

TEST_CASE("decode gate file: round trip and released key names") {
  const std::int64_t dim = 8, kv_heads = 2;
  seer::io::ModelConfig model;
  model.num_layers = 2;
  model.num_q_heads = 4;
  model.num_kv_heads = kv_heads;
  model.head_dim = dim;
  model.rope.head_dim = dim;
  model.rope.theta = 500.0;
  const auto path = (std::filesystem::temp_directory_path() / "seer_test_decode_gates.safetensors").string();
  for (QueryHeadPooling pooling :
       {QueryHeadPooling::projection, QueryHeadPooling::average_projection, QueryHeadPooling::average})
    for (bool norm : {false, true}) {
      CAPTURE(seer::query_head_pooling_name(pooling));
      CAPTURE(norm);
      const seer::DecodeGateConfig config = small_decode_config(pooling, dim, 4, norm, true);
      std::vector<seer::DecodeGate> gates{random_decode_gate(config, 4, kv_heads, dim, 131),
                                          random_decode_gate(config, 4, kv_heads, dim, 132)};
      seer::training::write_decode_gate_file(path, gates, {{"steps", "7"}});
      const auto file = seer::training::read_decode_gate_file(path, model);
      CHECK(file.metadata.at("steps") == "7");
      REQUIRE(file.gates.size() == 2);
      for (std::size_t l = 0; l < 2; ++l) {
        const auto& a = gates[l].weights();
        const auto& b = file.gates[l].weights();
        CHECK(a.q_projection == b.q_projection);
        CHECK(a.k_projection == b.k_projection);
        CHECK(a.q_norm == b.q_norm);
        CHECK(a.k_norm == b.k_norm);
        CHECK(file.gates[l].config().query_head_pooling == pooling);
        CHECK(file.gates[l].config().use_qk_norm == norm);
        CHECK(file.gates[l].config().block_size == 4);
      }
      // The file holds exactly the original's key names.
      const auto raw = seer::io::SafetensorsFile::open(path);
      CHECK(raw.find("model.layers.1.self_attn.attn_gate.attngate_linear_k.weight") != nullptr);
      CHECK((raw.find("model.layers.0.self_attn.attn_gate.attngate_linear_q.weight") != nullptr) ==
            (pooling != QueryHeadPooling::average));
      CHECK((raw.find("model.layers.0.self_attn.attn_gate.attngate_qnorm.weight") != nullptr) == norm);
      // A released-style load through the config keys gives the same gates.
      seer::io::ModelConfig released = model;
      released.seer.q_head_pooling_type = seer::query_head_pooling_name(pooling);
      released.seer.use_qk_norm = norm;
      released.seer.gate_block_size = 4;
      released.seer.gate_hidden_size = dim;
      const auto loaded = seer::io::load_decode_gates(seer::io::GateWeightFile::open(path), released);
      CHECK(loaded[1].weights().k_projection == gates[1].weights().k_projection);
      if (norm) {
        // Norm weights present but the config says no norm: refused, not silently dropped.
        released.seer.use_qk_norm = false;
        CHECK_THROWS_AS(seer::io::load_decode_gates(seer::io::GateWeightFile::open(path), released), seer::FormatError);
      }
    }
  seer::io::ModelConfig other = model;
  other.num_kv_heads = 1;
  CHECK_THROWS_AS(seer::training::read_decode_gate_file(path, other), seer::FormatError);
  std::filesystem::remove(path);
}

TEST_CASE("decode distillation: invalid arguments name the argument") {
  const std::int64_t dim = 8;
  const seer::DecodeGateConfig config = small_decode_config(QueryHeadPooling::projection, dim, 4, true, true);
  const seer::DecodeGate gate = random_decode_gate(config, 4, 2, dim, 141);
  const seer::DecodeGate other = random_decode_gate(config, 2, 2, dim, 142);
  const DecodeProblem p(20, 4, 2, dim, 143);
  auto argument_of = [](auto&& call) {
    try {
      call();
    } catch (const seer::InvalidArgument& error) {
      return error.argument();
    }
    return std::string("no error");
  };
  DecodeDistillationOptions bad;
  bad.loss_slice_ratio = 1.0;
  CHECK(argument_of([&] { p.example(gate, bad); }) == "options.loss_slice_ratio");
  const auto example = p.example(gate, {});
  CHECK(argument_of([&] { seer::training::decode_distillation_loss(other, example); }) == "example");
  DecodeDistillationOptions shifted;
  shifted.loss_slice_ratio = 0.25;
  CHECK(argument_of([&] { seer::training::decode_distillation_loss(gate, example, shifted); }) == "example");
  auto wrong = DecodeGateGradient::zeros_like(other);
  CHECK(argument_of([&] { seer::training::decode_distillation_loss(gate, example, {}, &wrong); }) == "gradient");
  CHECK(argument_of([&] {
          seer::training::pool_decode_gate_inputs(gate, p.view(p.q_before, 4), p.view(p.q_before, 4), 0);
        }) == "k_before_rope");
  CHECK(argument_of([&] {
          seer::training::pool_decode_gate_inputs(gate, p.view(p.q_before, 4), p.view(p.k_before, 2), 1);
        }) == "b");
  CHECK(argument_of([&] { seer::training::write_decode_gate_file("unused", {}); }) == "gates");
}
