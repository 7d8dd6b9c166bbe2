// Benchmark of the fast CPU executor: dense attention against block-sparse attention at several
// densities, in one run on the same inputs and thread count.
//
//   cpu_attention [--length S] [--heads Hq] [--kv-heads Hkv] [--dim D] [--block B] [--threads T]
//                 [--repeats R] [--seed N] [--densities 1,0.5,0.2,0.1]
//
// Defaults: S = 8192, Hq = Hkv = 32, D = 128, B = 64, float32 inputs, causal, all hardware threads,
// best of R = 2 runs. Kept blocks are random per row (uniform random logits, TopK at the target
// density, the diagonal always kept), selected with select_blocks. The target at density d is
// time(d) <= time(dense) * (d + 0.05); the exit status is 1 when any density misses it.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seer/core/attention_problem.hpp"
#include "seer/core/block_set.hpp"
#include "seer/core/parallel_for.hpp"
#include "seer/core/sequence_batch.hpp"
#include "seer/core/tensor_view.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/selection/forced_blocks.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/top_k.hpp"

namespace {

struct Settings {
  std::int64_t length = 8192;
  std::int64_t heads = 32;
  std::int64_t kv_heads = -1;  // -1: same as heads
  std::int64_t dim = 128;
  std::int64_t block = 64;
  int threads = 0;
  int repeats = 2;
  unsigned seed = 1;
  std::vector<double> densities{1.0, 0.5, 0.2, 0.1};
};

Settings parse(int argc, char** argv) {
  Settings settings;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "missing value after %s\n", flag.c_str());
      std::exit(2);
    }
    const char* text = argv[++i];
    const long long value = std::atoll(text);
    if (flag == "--densities") {
      settings.densities.clear();
      std::stringstream list(text);
      for (std::string item; std::getline(list, item, ',');) {
        const double density = std::atof(item.c_str());
        if (!(density > 0.0 && density <= 1.0)) {
          std::fprintf(stderr, "--densities: '%s' is not in (0, 1]\n", item.c_str());
          std::exit(2);
        }
        settings.densities.push_back(density);
      }
    } else if (flag == "--length") {
      settings.length = value;
    } else if (flag == "--heads") {
      settings.heads = value;
    } else if (flag == "--kv-heads") {
      settings.kv_heads = value;
    } else if (flag == "--dim") {
      settings.dim = value;
    } else if (flag == "--block") {
      settings.block = value;
    } else if (flag == "--threads") {
      settings.threads = static_cast<int>(value);
    } else if (flag == "--repeats") {
      settings.repeats = static_cast<int>(value);
    } else if (flag == "--seed") {
      settings.seed = static_cast<unsigned>(value);
    } else {
      std::fprintf(stderr, "unknown option %s (see the comment at the top of bench/cpu_attention.cpp)\n", flag.c_str());
      std::exit(2);
    }
  }
  if (settings.kv_heads < 0) settings.kv_heads = settings.heads;
  return settings;
}

// Uniform random logits, reproducible per row whatever thread scores it.
struct RandomScores {
  std::vector<seer::BlockGeometry> geometry;
  std::int64_t head_count = 0;
  unsigned seed = 0;

  std::int64_t heads() const { return head_count; }
  const std::vector<seer::BlockGeometry>& sequences() const { return geometry; }
  void score_row(std::int64_t b, std::int64_t h, std::int64_t m, double* logits) const {
    std::seed_seq row_seed{seed, static_cast<unsigned>(b), static_cast<unsigned>(h), static_cast<unsigned>(m)};
    std::mt19937 rng(row_seed);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (std::int64_t n = 0; n < geometry[b].visible_key_blocks(m); ++n) logits[n] = uniform(rng);
  }
};

std::string load_average() {
  std::ifstream file("/proc/loadavg");
  std::string one, five, fifteen;
  file >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

}  // namespace

int main(int argc, char** argv) {
  const Settings s = parse(argc, argv);
  const int threads = s.threads > 0 ? s.threads : seer::default_thread_count();
  std::printf(
      "cpu_attention: B=1, S=%lld, Hq=%lld, Hkv=%lld, D=%lld, block %lld, float32, causal, %d threads, best of %d\n",
      static_cast<long long>(s.length), static_cast<long long>(s.heads), static_cast<long long>(s.kv_heads),
      static_cast<long long>(s.dim), static_cast<long long>(s.block), threads, s.repeats);
  std::printf("load average before: %s\n", load_average().c_str());

  std::mt19937 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random_tensor = [&](std::int64_t heads) {
    std::vector<float> values(static_cast<std::size_t>(s.length * heads * s.dim));
    for (auto& x : values) x = normal(rng);
    return values;
  };
  std::vector<float> q_values = random_tensor(s.heads), k_values = random_tensor(s.kv_heads),
                     v_values = random_tensor(s.kv_heads);
  std::vector<float> out_values(q_values.size()), reference_out(q_values.size());
  std::vector<float> lse_values(static_cast<std::size_t>(s.heads * s.length));
  using View4 = seer::TensorView<const float, 4>;
  const auto q = seer::padded_batch(View4::contiguous(q_values.data(), {1, s.length, s.heads, s.dim}), "q");
  const auto k = seer::padded_batch(View4::contiguous(k_values.data(), {1, s.length, s.kv_heads, s.dim}), "k");
  const auto v = seer::padded_batch(View4::contiguous(v_values.data(), {1, s.length, s.kv_heads, s.dim}), "v");
  auto output_view = [&](std::vector<float>& storage) {
    return seer::padded_batch(seer::TensorView<float, 4>::contiguous(storage.data(), {1, s.length, s.heads, s.dim}),
                              "out");
  };
  const auto lse = seer::TensorView<float, 2>::contiguous(lse_values.data(), {s.heads, s.length});
  const seer::AttentionOptions options;

  auto best_time_ms = [&](const seer::BlockSet* blocks, std::vector<float>& out) {
    double best = 1e300;
    for (int r = 0; r < s.repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      seer::cpu::block_sparse_attention(q, k, v, blocks, options, output_view(out), lse, threads);
      const std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
      best = std::min(best, elapsed.count());
    }
    return best;
  };

  const double dense_ms = best_time_ms(nullptr, reference_out);
  // Multiply-adds of Q K^T and P V over the causal triangle, 2 flops each.
  const double flops = 4.0 * static_cast<double>(s.dim) * static_cast<double>(s.heads) *
                       (static_cast<double>(s.length) * static_cast<double>(s.length + 1) / 2.0);
  std::printf("dense: %.1f ms (%.1f GFLOP/s over the causal triangle)\n\n", dense_ms, flops / dense_ms * 1e-6);

  std::printf("| density (requested) | density (actual) |       ms | ratio to dense | target (d + 0.05) | result |\n");
  std::printf("|---------------------|------------------|----------|----------------|-------------------|--------|\n");
  std::printf("| dense (no BlockSet) |            1.000 | %8.1f |          1.000 |                 - |      - |\n",
              dense_ms);
  bool all_pass = true;
  const std::vector<seer::BlockGeometry> sequences{seer::BlockGeometry{s.length, s.length, s.block, true}};
  for (const double density : s.densities) {
    const RandomScores scores{sequences, s.heads, s.seed + 17};
    const seer::BlockSet blocks = seer::select_blocks(scores, seer::TopK::target_density(density), {}, threads);
    const double ms = best_time_ms(&blocks, out_values);
    const double ratio = ms / dense_ms;
    const double target = density + 0.05;
    const bool pass = ratio <= target;
    all_pass = all_pass && pass;
    std::printf("| %19.2f | %16.3f | %8.1f | %14.3f | %17.2f | %6s |\n", density, blocks.density(), ms, ratio, target,
                pass ? "pass" : "FAIL");
    if (density == 1.0) {
      // Every visible block kept: the same result as dense attention (checks the bench measures real work).
      double worst = 0.0;
      for (std::size_t i = 0; i < out_values.size(); ++i)
        worst = std::max(worst, static_cast<double>(std::abs(out_values[i] - reference_out[i])));
      if (worst > 1e-5) {
        std::printf("density 1.0 differs from dense by %g\n", worst);
        all_pass = false;
      }
    }
  }
  std::printf("\nload average after: %s\n", load_average().c_str());
  std::printf("%s\n", all_pass ? "all densities meet the target" : "some density misses the target");
  return all_pass ? 0 : 1;
}
