// Rotary position embedding (RoPE) with the scaling variants of Hugging Face transformers.
//
// The SeerAttention prefill gate rotates its block features with the model's own RoPE (same theta,
// same rope_scaling), because the released gates were trained with the cos/sin tables that
// transformers' `modeling_rope_utils` produces. This header reproduces those tables in double
// precision. The formulas (facts cited from transformers' ROPE_INIT_FUNCTIONS, read in 2025/26;
// `dim` is the rotary dimension, i = 0 .. dim/2 - 1, base frequency f_i = theta^(-2i/dim)):
//
//   default  inv_i = f_i.
//   linear   inv_i = f_i / factor.
//   dynamic  (NTK) L = max(sequence_length, original_max_position_embeddings);
//            theta' = theta * (factor * L / original - (factor - 1))^(dim / (dim - 2)); inv_i = theta'^(-2i/dim).
//            transformers reads `original` from config.max_position_embeddings and evaluates L at
//            max(position_ids) + 1 of the call (statefully: a longer call raises the cached L); here
//            the caller passes L explicitly, so the result does not depend on call history.
//   llama3   wavelength w_i = 2*pi / f_i, long = original / low_freq_factor, short = original /
//            high_freq_factor: w_i > long -> f_i / factor; w_i < short -> f_i; otherwise the smooth
//            blend (1 - s) * f_i / factor + s * f_i with s = (original / w_i - low) / (high - low).
//   yarn     correction_dim(r) = dim * ln(original / (2*pi*r)) / (2 ln theta);
//            low = correction_dim(beta_fast), high = correction_dim(beta_slow), floored / ceiled when
//            `truncate` (the default), then clamped to [0, dim - 1]; if low == high, high += 0.001.
//            ramp_i = clamp((i - low) / (high - low), 0, 1); inv_i = f_i / factor * ramp_i + f_i * (1 - ramp_i).
//            Defaults beta_fast = 32, beta_slow = 1. Attention factor (multiplies cos AND sin):
//            the given `attention_factor`, else mscale(factor, mscale) / mscale(factor, mscale_all_dim)
//            when both mscale values are given (non-zero), else mscale(factor, 1), where
//            mscale(s, m) = 1 if s <= 1 else 0.1 * m * ln(s) + 1. The other types have attention factor 1.
//
// These are the current transformers formulas; some older releases differed for YaRN (they used
// max_position_embeddings in the correction range, or replaced `factor` by max_position_embeddings /
// original_max_position_embeddings). Pass the values the checkpoint was trained with.
//
// Rotation uses the non-interleaved "rotate_half" pairing of transformers and flash-attn
// (interleaved=False): component i pairs with i + dim/2, and
//   x_i' = (x_i cos(p inv_i) - x_{i+dim/2} sin(p inv_i)) * a,  x_{i+dim/2}' = (x_{i+dim/2} cos + x_i sin) * a.
// transformers evaluates inv_i, p * inv_i and cos/sin in float32; seer uses double (the float32
// rounding moves angles by up to ~1e-2 rad at positions near 1e5).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "seer/core/error.hpp"

namespace seer {

// The `rope_scaling` (or `rope_parameters`) entry of a model config. Fields unused by `type` are ignored.
struct RopeScaling {
  std::string type = "default";                       // "default", "linear", "dynamic", "llama3" or "yarn"
  double factor = 1.0;                                // linear, dynamic, llama3, yarn: context extension factor, >= 1
  std::int64_t original_max_position_embeddings = 0;  // dynamic, llama3, yarn: pre-training context length
  std::int64_t sequence_length = 0;        // dynamic: the length the NTK base is evaluated at (0 = not beyond original)
  double low_freq_factor = 1.0;            // llama3
  double high_freq_factor = 4.0;           // llama3
  double beta_fast = 32.0;                 // yarn
  double beta_slow = 1.0;                  // yarn
  double mscale = 0.0;                     // yarn: 0 = absent
  double mscale_all_dim = 0.0;             // yarn: 0 = absent
  std::optional<double> attention_factor;  // yarn: overrides the mscale-derived value
  bool truncate = true;                    // yarn: floor/ceil the correction range
};

struct RopeConfig {
  std::int64_t head_dim = 128;  // rotary dimension (the whole vector is rotated)
  double theta = 10000.0;       // rope_theta
  RopeScaling scaling;
};

class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const RopeConfig& config) : config_(config) {
    validate(config);
    const std::int64_t dim = config.head_dim;
    const std::int64_t half = dim / 2;
    const RopeScaling& s = config.scaling;
    inverse_frequencies_.resize(static_cast<std::size_t>(half));
    for (std::int64_t i = 0; i < half; ++i) inverse_frequencies_[i] = base_frequency(config.theta, i, dim);

    if (s.type == "linear") {
      for (auto& f : inverse_frequencies_) f /= s.factor;
    } else if (s.type == "dynamic") {
      const double original = static_cast<double>(s.original_max_position_embeddings);
      const double length = static_cast<double>(std::max(s.sequence_length, s.original_max_position_embeddings));
      const double stretched_theta = config.theta * std::pow(s.factor * length / original - (s.factor - 1.0),
                                                             static_cast<double>(dim) / static_cast<double>(dim - 2));
      for (std::int64_t i = 0; i < half; ++i) inverse_frequencies_[i] = base_frequency(stretched_theta, i, dim);
    } else if (s.type == "llama3") {
      const double original = static_cast<double>(s.original_max_position_embeddings);
      const double long_wavelength = original / s.low_freq_factor;
      const double short_wavelength = original / s.high_freq_factor;
      for (auto& f : inverse_frequencies_) {
        const double wavelength = kTwoPi / f;
        if (wavelength > long_wavelength) {
          f /= s.factor;
        } else if (!(wavelength < short_wavelength)) {
          const double smooth = (original / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
    } else if (s.type == "yarn") {
      apply_yarn(config);
    }
  }

  std::int64_t dim() const { return config_.head_dim; }
  const RopeConfig& config() const { return config_; }

  // inv_i for i in [0, dim/2): the angle of pair i at position p is p * inv_i.
  const std::vector<double>& inverse_frequencies() const { return inverse_frequencies_; }

  // Multiplier of cos and sin (YaRN's attention scaling; 1 for the other types).
  double attention_factor() const { return attention_factor_; }

  // Rotates vector[0, dim) in place to position `position` (negative positions rotate backwards).
  void apply(double* vector, std::int64_t position) const {
    const std::size_t half = inverse_frequencies_.size();
    const double p = static_cast<double>(position);
    for (std::size_t i = 0; i < half; ++i) {
      const double angle = p * inverse_frequencies_[i];
      const double c = std::cos(angle) * attention_factor_, s = std::sin(angle) * attention_factor_;
      const double first = vector[i], second = vector[i + half];
      vector[i] = first * c - second * s;
      vector[i + half] = second * c + first * s;
    }
  }

  static void validate(const RopeConfig& config) {
    const RopeScaling& s = config.scaling;
    require(config.head_dim > 0 && config.head_dim % 2 == 0, "rope.head_dim", "is ", config.head_dim,
            ", expected a positive even rotary dimension");
    require(std::isfinite(config.theta) && config.theta > 0.0, "rope.theta", "is ", config.theta,
            ", expected a finite value > 0");
    const bool known =
        s.type == "default" || s.type == "linear" || s.type == "dynamic" || s.type == "llama3" || s.type == "yarn";
    require(known, "rope.scaling.type", "'", s.type,
            "' is not a supported RoPE scaling type (default, linear, dynamic, llama3, yarn)");
    if (s.type == "default") return;
    require(std::isfinite(s.factor) && s.factor >= 1.0, "rope.scaling.factor", "is ", s.factor, ", expected >= 1 for ",
            s.type, " scaling");
    if (s.type == "linear") return;
    require(s.original_max_position_embeddings > 0, "rope.scaling.original_max_position_embeddings", "is ",
            s.original_max_position_embeddings, ", expected > 0 for ", s.type, " scaling");
    if (s.type == "dynamic") {
      require(config.head_dim > 2, "rope.head_dim",
              "is 2; dynamic NTK scaling raises to dim / (dim - 2) and needs >= 4");
      require(s.sequence_length >= 0, "rope.scaling.sequence_length", "is ", s.sequence_length, ", expected >= 0");
    } else if (s.type == "llama3") {
      require(std::isfinite(s.low_freq_factor) && s.low_freq_factor > 0.0, "rope.scaling.low_freq_factor", "is ",
              s.low_freq_factor, ", expected > 0");
      require(std::isfinite(s.high_freq_factor) && s.high_freq_factor > s.low_freq_factor,
              "rope.scaling.high_freq_factor", "is ", s.high_freq_factor, ", expected > low_freq_factor (",
              s.low_freq_factor, ")");
    } else {  // yarn
      require(config.theta != 1.0, "rope.theta", "is 1; YaRN's correction range divides by ln(theta)");
      require(std::isfinite(s.beta_fast) && s.beta_fast > 0.0, "rope.scaling.beta_fast", "is ", s.beta_fast,
              ", expected > 0");
      require(std::isfinite(s.beta_slow) && s.beta_slow > 0.0, "rope.scaling.beta_slow", "is ", s.beta_slow,
              ", expected > 0");
      require(std::isfinite(s.mscale) && s.mscale >= 0.0, "rope.scaling.mscale", "is ", s.mscale,
              ", expected >= 0 (0 = absent)");
      require(std::isfinite(s.mscale_all_dim) && s.mscale_all_dim >= 0.0, "rope.scaling.mscale_all_dim", "is ",
              s.mscale_all_dim, ", expected >= 0 (0 = absent)");
      if (s.attention_factor)
        require(std::isfinite(*s.attention_factor) && *s.attention_factor > 0.0, "rope.scaling.attention_factor", "is ",
                *s.attention_factor, ", expected a finite value > 0");
    }
  }

 private:
  static constexpr double kTwoPi = 6.283185307179586476925286766559;

  static double base_frequency(double theta, std::int64_t i, std::int64_t dim) {
    return 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  }

  // YaRN's temperature term: 1 up to factor 1, then logarithmic in the factor.
  static double yarn_mscale(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
  }

  void apply_yarn(const RopeConfig& config) {
    const RopeScaling& s = config.scaling;
    const double dim = static_cast<double>(config.head_dim);
    const double original = static_cast<double>(s.original_max_position_embeddings);
    // The dimension at which a frequency completes `rotations` turns over the original context.
    auto correction_dim = [&](double rotations) {
      return dim * std::log(original / (rotations * kTwoPi)) / (2.0 * std::log(config.theta));
    };
    double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1.0);
    if (low == high) high += 0.001;  // keeps the ramp finite
    for (std::size_t i = 0; i < inverse_frequencies_.size(); ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double f = inverse_frequencies_[i];
      inverse_frequencies_[i] = f / s.factor * ramp + f * (1.0 - ramp);
    }
    if (s.attention_factor) {
      attention_factor_ = *s.attention_factor;
    } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
      attention_factor_ = yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim);
    } else {
      attention_factor_ = yarn_mscale(s.factor, 1.0);
    }
  }

  RopeConfig config_;
  std::vector<double> inverse_frequencies_;
  double attention_factor_ = 1.0;
};

}  // namespace seer
