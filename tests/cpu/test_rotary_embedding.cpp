// RotaryEmbedding: inverse frequencies and attention factors of every scaling type, the rotation
// convention (rotate_half pairs (i, i + dim/2)), the relative-position property, and validation.
//
// Expected values of the scaled types were computed offline with plain python3 (math module only),
// writing each formula from its definition in the header comment (not from seer's code):
//   base(theta, dim)  = [theta ** (-(2*i)/dim) for i in range(dim//2)]
//   linear            = [f / factor for f in base]
//   dynamic           : L = max(L, orig); base(theta * (factor*L/orig - (factor-1)) ** (dim/(dim-2)), dim)
//   llama3            : w = 2*pi/f; f/factor if w > orig/lo; f if w < orig/hi;
//                       else s = (orig/w - lo)/(hi - lo); (1-s)*f/factor + s*f
//   yarn              : cd(r) = dim*log(orig/(r*2*pi))/(2*log(theta)); lo, hi = floor(cd(bf)), ceil(cd(bs))
//                       (unless truncate=False); clamp to [0, dim-1]; r_i = clip((i-lo)/(hi-lo), 0, 1);
//                       f/factor*r_i + f*(1-r_i); af = given, or g(factor, mscale)/g(factor, mscale_all_dim),
//                       or g(factor, 1), g(s, m) = 1 if s <= 1 else 0.1*m*log(s)+1
// and printed with repr().
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "seer/core/error.hpp"
#include "seer/gate/rotary_embedding.hpp"

namespace {

void check_frequencies(const seer::RotaryEmbedding& rope, const std::vector<double>& expected) {
  const auto& actual = rope.inverse_frequencies();
  REQUIRE(actual.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i);
    CHECK(actual[i] == doctest::Approx(expected[i]).epsilon(1e-12));
  }
}

seer::RopeConfig make_config(std::int64_t dim, double theta, const std::string& type) {
  seer::RopeConfig config;
  config.head_dim = dim;
  config.theta = theta;
  config.scaling.type = type;
  return config;
}

std::string invalid_argument_of(const seer::RopeConfig& config) {
  try {
    seer::RotaryEmbedding rope(config);
  } catch (const seer::InvalidArgument& error) {
    CHECK(std::string(error.what()).find(error.argument()) != std::string::npos);
    return error.argument();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("rope: default frequencies and rotation by hand") {
  // dim 4, theta 10000: inv = {10000^0, 10000^(-2/4)} = {1, 0.01}.
  seer::RotaryEmbedding rope(make_config(4, 10000.0, "default"));
  check_frequencies(rope, {1.0, 0.01});
  CHECK(rope.attention_factor() == 1.0);

  // Position 1: pair (0, 2) turns by 1 rad, pair (1, 3) by 0.01 rad.
  double v[4] = {1.0, 2.0, 3.0, 4.0};
  rope.apply(v, 1);
  CHECK(v[0] == doctest::Approx(1.0 * std::cos(1.0) - 3.0 * std::sin(1.0)));
  CHECK(v[2] == doctest::Approx(3.0 * std::cos(1.0) + 1.0 * std::sin(1.0)));
  CHECK(v[1] == doctest::Approx(2.0 * std::cos(0.01) - 4.0 * std::sin(0.01)));
  CHECK(v[3] == doctest::Approx(4.0 * std::cos(0.01) + 2.0 * std::sin(0.01)));
  // Numerically: cos 1 = 0.5403023058681398, sin 1 = 0.8414709848078965.
  CHECK(v[0] == doctest::Approx(0.5403023058681398 - 3.0 * 0.8414709848078965));

  // dim 2, theta 100: the single pair turns by exactly the position (in radians).
  seer::RotaryEmbedding flat(make_config(2, 100.0, "default"));
  check_frequencies(flat, {1.0});
  double w[2] = {1.0, 0.0};
  flat.apply(w, 3);
  CHECK(w[0] == doctest::Approx(std::cos(3.0)));
  CHECK(w[1] == doctest::Approx(std::sin(3.0)));

  // Position 0 is the identity; a negative position undoes a positive one.
  double u[4] = {0.5, -1.5, 2.5, 0.25};
  rope.apply(u, 0);
  CHECK(u[0] == 0.5);
  CHECK(u[3] == 0.25);
  rope.apply(u, 37);
  rope.apply(u, -37);
  CHECK(u[0] == doctest::Approx(0.5));
  CHECK(u[1] == doctest::Approx(-1.5));
  CHECK(u[2] == doctest::Approx(2.5));
  CHECK(u[3] == doctest::Approx(0.25));
}

TEST_CASE("rope: default frequencies at dim 8") {
  // theta 10000, dim 8: 10000^(-i/4) = 1, 0.1, 0.01, 0.001.
  check_frequencies(seer::RotaryEmbedding(make_config(8, 10000.0, "default")), {1.0, 0.1, 0.01, 0.001});
}

TEST_CASE("rope: linear scaling") {
  auto config = make_config(8, 10000.0, "linear");
  config.scaling.factor = 4.0;
  seer::RotaryEmbedding rope(config);
  check_frequencies(rope, {0.25, 0.025, 0.0025, 0.00025});
  CHECK(rope.attention_factor() == 1.0);
}

TEST_CASE("rope: dynamic NTK scaling") {
  auto config = make_config(8, 10000.0, "dynamic");
  config.scaling.factor = 2.0;
  config.scaling.original_max_position_embeddings = 1024;
  config.scaling.sequence_length = 4096;
  // python: dynamic(10000, 8, 2, 1024, 4096)
  check_frequencies(seer::RotaryEmbedding(config),
                    {1.0, 0.052275795857471025, 0.0027327588325319844, 0.00014285714285714287});
  // Not beyond the original length: the base is unchanged (python: dynamic(10000, 8, 2, 1024, 100)).
  config.scaling.sequence_length = 100;
  check_frequencies(seer::RotaryEmbedding(config), {1.0, 0.1, 0.01, 0.001});
  config.scaling.sequence_length = 0;
  check_frequencies(seer::RotaryEmbedding(config), {1.0, 0.1, 0.01, 0.001});
}

TEST_CASE("rope: llama3 scaling covers the kept, smoothed and divided bands") {
  auto config = make_config(16, 500000.0, "llama3");
  config.scaling.factor = 8.0;
  config.scaling.low_freq_factor = 1.0;
  config.scaling.high_freq_factor = 4.0;
  config.scaling.original_max_position_embeddings = 8192;
  seer::RotaryEmbedding rope(config);
  // python: llama3(500000, 16, 8, 1, 4, 8192). Wavelengths 2*pi*500000^(i/8): i <= 3 below 2048 (kept),
  // i = 4 (4457) between 2048 and 8192 (smoothed), i >= 5 above 8192 (divided by 8).
  check_frequencies(rope, {1.0, 0.19392274474868576, 0.03760603093086393, 0.007292664737217109, 0.0005248461609929547,
                           3.428102195952591e-05, 6.647869871181235e-06, 1.2891731721515574e-06});
  CHECK(rope.attention_factor() == 1.0);
}

TEST_CASE("rope: yarn scaling and attention factor") {
  auto config = make_config(16, 10000.0, "yarn");
  config.scaling.factor = 4.0;
  config.scaling.original_max_position_embeddings = 2048;
  SUBCASE("defaults (beta 32/1, truncate, af = 0.1 ln 4 + 1)") {
    // python: yarn(10000, 16, 4, 2048) -> correction range (2, 6)
    seer::RotaryEmbedding rope(config);
    check_frequencies(rope, {1.0, 0.31622776601683794, 0.1, 0.02569350598886808, 0.00625, 0.001383496476323666, 0.00025,
                             7.905694150420948e-05});
    CHECK(rope.attention_factor() == doctest::Approx(1.138629436111989).epsilon(1e-14));
  }
  SUBCASE("truncate = false") {
    // python: yarn(10000, 16, 4, 2048, truncate=False) -> range (2.016..., 5.026...)
    config.scaling.truncate = false;
    seer::RotaryEmbedding rope(config);
    check_frequencies(rope, {1.0, 0.31622776601683794, 0.1, 0.023870192321736323, 0.005056971521129435,
                             0.000811290381701431, 0.00025, 7.905694150420948e-05});
    CHECK(rope.attention_factor() == doctest::Approx(1.138629436111989).epsilon(1e-14));
  }
  SUBCASE("mscale / mscale_all_dim (DeepSeek style)") {
    // python: yarn(10000, 16, 40, 4096, mscale=0.707, mscale_all=1.0)
    config.scaling.factor = 40.0;
    config.scaling.original_max_position_embeddings = 4096;
    config.scaling.mscale = 0.707;
    config.scaling.mscale_all_dim = 1.0;
    seer::RotaryEmbedding rope(config);
    check_frequencies(rope, {1.0, 0.31622776601683794, 0.1, 0.023914724805023366, 0.005125, 0.000849862121170252,
                             2.5e-05, 7.905694150420949e-06});
    CHECK(rope.attention_factor() == doctest::Approx(0.9210423553163399).epsilon(1e-14));
  }
  SUBCASE("explicit attention factor and betas") {
    // python: yarn(10000, 16, 4, 2048, bf=8, bs=2, af=1.5) -> range (3, 5)
    config.scaling.beta_fast = 8.0;
    config.scaling.beta_slow = 2.0;
    config.scaling.attention_factor = 1.5;
    seer::RotaryEmbedding rope(config);
    check_frequencies(rope, {1.0, 0.31622776601683794, 0.1, 0.03162277660168379, 0.00625, 0.0007905694150420948,
                             0.00025, 7.905694150420948e-05});
    CHECK(rope.attention_factor() == 1.5);
    // cos and sin are both scaled: the norm grows by the factor.
    double v[16];
    double before = 0.0, after = 0.0;
    for (int i = 0; i < 16; ++i) {
      v[i] = 0.1 * (i + 1);
      before += v[i] * v[i];
    }
    rope.apply(v, 12345);
    for (double x : v) after += x * x;
    CHECK(std::sqrt(after) == doctest::Approx(1.5 * std::sqrt(before)));
  }
  SUBCASE("factor 1: no interpolation and attention factor 1") {
    config.scaling.factor = 1.0;
    seer::RotaryEmbedding rope(config);
    check_frequencies(rope, {1.0, 0.31622776601683794, 0.1, 0.03162277660168379, 0.01, 0.0031622776601683794, 0.001,
                             0.00031622776601683794});
    CHECK(rope.attention_factor() == 1.0);
  }
}

TEST_CASE("rope: scores depend only on the relative position") {
  std::mt19937 rng(20260101);
  std::normal_distribution<double> normal;
  std::vector<seer::RopeConfig> configs;
  configs.push_back(make_config(16, 10000.0, "default"));
  configs.push_back(make_config(16, 10000.0, "linear"));
  configs.back().scaling.factor = 3.0;
  configs.push_back(make_config(16, 500000.0, "llama3"));
  configs.back().scaling.factor = 8.0;
  configs.back().scaling.original_max_position_embeddings = 8192;
  configs.push_back(make_config(16, 10000.0, "yarn"));
  configs.back().scaling.factor = 4.0;
  configs.back().scaling.original_max_position_embeddings = 2048;
  configs.push_back(make_config(16, 10000.0, "dynamic"));
  configs.back().scaling.factor = 2.0;
  configs.back().scaling.original_max_position_embeddings = 1024;
  configs.back().scaling.sequence_length = 5000;
  for (const auto& config : configs) {
    CAPTURE(config.scaling.type);
    seer::RotaryEmbedding rope(config);
    std::vector<double> q(16), k(16);
    for (auto& x : q) x = normal(rng);
    for (auto& x : k) x = normal(rng);
    auto rotated_dot = [&](std::int64_t query_position, std::int64_t key_position) {
      std::vector<double> a = q, b = k;
      rope.apply(a.data(), query_position);
      rope.apply(b.data(), key_position);
      double dot = 0.0;
      for (int i = 0; i < 16; ++i) dot += a[i] * b[i];
      return dot;
    };
    const double reference = rotated_dot(200, 136);
    CHECK(rotated_dot(64, 0) == doctest::Approx(reference).epsilon(1e-9));
    CHECK(rotated_dot(4160, 4096) == doctest::Approx(reference).epsilon(1e-9));
    // A different offset gives a different score (the rotation is not trivial).
    CHECK(std::abs(rotated_dot(65, 0) - reference) > 1e-6);
  }
}

TEST_CASE("rope: invalid configurations name the argument") {
  CHECK(invalid_argument_of(make_config(0, 10000.0, "default")) == "rope.head_dim");
  CHECK(invalid_argument_of(make_config(7, 10000.0, "default")) == "rope.head_dim");
  CHECK(invalid_argument_of(make_config(8, 0.0, "default")) == "rope.theta");
  CHECK(invalid_argument_of(make_config(8, -5.0, "default")) == "rope.theta");
  CHECK(invalid_argument_of(make_config(8, NAN, "default")) == "rope.theta");
  CHECK(invalid_argument_of(make_config(8, 10000.0, "ntk")) == "rope.scaling.type");
  CHECK(invalid_argument_of(make_config(8, 10000.0, "")) == "rope.scaling.type");

  auto linear = make_config(8, 10000.0, "linear");
  linear.scaling.factor = 0.5;
  CHECK(invalid_argument_of(linear) == "rope.scaling.factor");

  auto dynamic = make_config(8, 10000.0, "dynamic");
  dynamic.scaling.factor = 2.0;
  CHECK(invalid_argument_of(dynamic) == "rope.scaling.original_max_position_embeddings");
  dynamic.scaling.original_max_position_embeddings = 1024;
  dynamic.scaling.sequence_length = -1;
  CHECK(invalid_argument_of(dynamic) == "rope.scaling.sequence_length");
  dynamic.scaling.sequence_length = 0;
  dynamic.head_dim = 2;
  CHECK(invalid_argument_of(dynamic) == "rope.head_dim");

  auto llama3 = make_config(8, 10000.0, "llama3");
  llama3.scaling.factor = 8.0;
  llama3.scaling.original_max_position_embeddings = 8192;
  llama3.scaling.high_freq_factor = 1.0;  // equal to low_freq_factor: the smooth blend would divide by 0
  CHECK(invalid_argument_of(llama3) == "rope.scaling.high_freq_factor");
  llama3.scaling.high_freq_factor = 4.0;
  llama3.scaling.low_freq_factor = 0.0;
  CHECK(invalid_argument_of(llama3) == "rope.scaling.low_freq_factor");
  llama3.scaling.low_freq_factor = 1.0;
  llama3.scaling.factor = 0.9;
  CHECK(invalid_argument_of(llama3) == "rope.scaling.factor");

  auto yarn = make_config(8, 10000.0, "yarn");
  yarn.scaling.factor = 4.0;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.original_max_position_embeddings");
  yarn.scaling.original_max_position_embeddings = 2048;
  yarn.scaling.beta_fast = 0.0;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.beta_fast");
  yarn.scaling.beta_fast = 32.0;
  yarn.scaling.beta_slow = -1.0;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.beta_slow");
  yarn.scaling.beta_slow = 1.0;
  yarn.scaling.mscale = -1.0;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.mscale");
  yarn.scaling.mscale = 1.0;
  yarn.scaling.mscale_all_dim = -1.0;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.mscale_all_dim");
  yarn.scaling.mscale_all_dim = 0.0;
  yarn.scaling.attention_factor = 0.0;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.attention_factor");
  yarn.scaling.attention_factor.reset();
  yarn.theta = 1.0;
  CHECK(invalid_argument_of(yarn) == "rope.theta");
  yarn.theta = 10000.0;
  yarn.scaling.factor = 0.5;
  CHECK(invalid_argument_of(yarn) == "rope.scaling.factor");
  yarn.scaling.factor = 4.0;
  CHECK(invalid_argument_of(yarn) == "<no error>");
}
