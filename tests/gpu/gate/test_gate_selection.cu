// GPU gate features and block selection (seer::cuda::gate_features, select_blocks) against seer's CPU
// code: LearnedGate::score (float64) for the features, and the CPU TopK / Threshold / Nucleus policies on
// the GPU's own features for the BlockSet, with the margins of gate_test_support.hpp. Fresh random
// inputs and weights every run (the seed is printed on failure); device outputs are poisoned before
// each call. Without a GPU the device cases return early with a message; the host-side rules
// (forced counts, TopK row sizes, the Nucleus take) are checked everywhere.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gate_test_support.hpp"
#include "seer/cuda/gate_selection.hpp"
#include "seer/selection/select_blocks.hpp"

namespace {

using namespace seer;
using gate_test::GateCase;

template <class T>
class GateFixture {
 public:
  GateFixture(const GateCase& c, std::uint64_t seed, const gpu::DeviceLimits& limits)
      : case_(c),
        limits_(limits),
        random_(seed),
        gate_(gate_test::random_gate(c, random_)),
        q_(gate_test::make_sequences<T>(c.q_lengths, c.q_heads, c.head_dim, c.packed, random_)),
        k_(gate_test::make_sequences<T>(c.k_lengths, c.kv_heads, c.head_dim, c.packed, random_)),
        device_q_(q_),
        device_k_(k_),
        device_gate_(gate_),
        plan_(device_gate_, q_.host.batch, q_.host.max_length, k_.host.max_length, limits),
        sequences_(sequence_geometries(q_.host, k_.host, 64, c.causal)) {}

  // Features on the GPU vs LearnedGate::score; keeps the GPU's features for the selections. Where the plan
  // projects with Hopper's warpgroup kernel, the mma.sync projection is checked too.
  void check_features() {
    const LearnedGateScores cpu = gate_.score(q_.host, k_.host, case_.causal);
    features_ = checked_features(plan_, cpu);
    if (plan_.warpgroup_projection()) {
      gpu::DeviceLimits mma_sync = limits_;
      mma_sync.warpgroup_projection = false;
      const cuda::GateSelectionPlan plan(device_gate_, q_.host.batch, q_.host.max_length, k_.host.max_length, mma_sync);
      CHECK_FALSE(plan.warpgroup_projection());
      checked_features(plan, cpu);
    }
    scores_ = gate_test::scores_from_features(features_, sequences_);
  }

  // Selection on the GPU from the features check_features computed (uploaded again: a fresh workspace).
  template <class Policy>
  gate_test::HostBlockSet check_selection(const Policy& policy, const ForcedBlocks& forced, std::int64_t capacity = -1,
                                          bool expect_overflow = false) {
    const std::int64_t bound = cuda::selected_blocks_bound(sequences_, case_.q_heads, policy, forced);
    cuda::GateSelectionStorage storage(plan_, capacity < 0 ? bound : capacity);
    const gpu::GateFeatures features = upload_features(storage.workspace());
    const auto& buffers = storage.buffers();
    gate_test::fill_bytes(buffers.row_offsets, 0xff, static_cast<std::size_t>(buffers.row_offset_entries) * 8);
    gate_test::fill_bytes(buffers.key_blocks, 0xff,
                          static_cast<std::size_t>(std::max<std::int64_t>(1, buffers.key_block_capacity)) * 4);
    gate_test::fill_bytes(buffers.query_block_offsets, 0xff,
                          static_cast<std::size_t>(buffers.query_block_offset_entries) * 4);
    gate_test::fill_bytes(buffers.overflow, 0xff, 4);
    const auto sequences = cuda::gate_sequences(device_q_.view, device_k_.view, 64, case_.causal);
    const BlockSetView view =
        cuda::select_blocks(plan_, features, sequences, policy, forced, buffers, storage.workspace(), nullptr);
    gate_test::synchronize();
    CHECK(view.row_offsets == buffers.row_offsets);
    const auto gpu = gate_test::download_block_set(buffers, q_.host.batch, case_.q_heads);
    if (expect_overflow) {
      CHECK(gpu.overflow == 1);
      return gpu;
    }
    CHECK(gpu.overflow == 0);
    if (capacity < 0 && std::is_same_v<Policy, TopK>) CHECK(gpu.row_offsets.back() == bound);
    const auto comparison = gate_test::compare_selection(scores_, policy, forced, gpu);
    INFO(comparison.first_failure);
    MESSAGE(describe(case_), ": ", comparison.rows, " rows, ", comparison.identical, " identical, ",
            comparison.within_margin, " within the rounding margin");
    CHECK(comparison.malformed == 0);
    CHECK(comparison.outside_margin == 0);
    CHECK(comparison.within_margin * 100 <= comparison.rows);  // near-ties are rare on random inputs
    // The per-row CPU steps of the comparison are select_blocks' own (checked here on the same scores).
    const BlockSet library = select_blocks(scores_, policy, forced);
    std::vector<double> logits;
    std::vector<std::uint8_t> flags;
    std::int64_t agree = 0, rows = 0;
    for (std::int64_t b = 0; b < scores_.batch(); ++b)
      for (std::int64_t h = 0; h < case_.q_heads; ++h)
        for (std::int64_t m = 0; m < sequences_[b].query_blocks(); ++m, ++rows) {
          const auto row = gate_test::detail::cpu_row(scores_, policy, forced, b, h, m, logits, flags);
          const std::int64_t index = library.row_index(b, h, m);
          agree += std::vector<std::int32_t>(library.row_begin(index), library.row_end(index)) == row ? 1 : 0;
        }
    CHECK(agree == rows);
    return gpu;
  }

  const std::vector<BlockGeometry>& sequences() const { return sequences_; }

 private:
  gate_test::HostFeatures checked_features(const cuda::GateSelectionPlan& plan, const LearnedGateScores& cpu) {
    cuda::GateSelectionStorage storage(plan, 1);
    gate_test::fill_bytes(storage.workspace().data, 0xff, static_cast<std::size_t>(storage.workspace().bytes));
    const auto features = cuda::gate_features<T>(device_gate_, plan, device_q_.view, device_k_.view, case_.causal,
                                                 storage.workspace(), nullptr);
    gate_test::synchronize();
    gate_test::HostFeatures downloaded = gate_test::download_features(features, q_.host.batch);
    const auto errors = gate_test::compare_features(downloaded, cpu);
    MESSAGE(describe(case_), ": warpgroup projection ", plan.warpgroup_projection(),
            ", relative feature errors: query ", errors.query, ", key ", errors.key);
    CHECK(errors.non_finite == 0);
    CHECK(errors.query <= 1e-4);
    CHECK(errors.key <= 1e-4);
    return downloaded;
  }

  gpu::GateFeatures upload_features(const gpu::GateWorkspace& workspace) {
    const gpu::GateFeatures features = plan_.features(workspace);
    gpu::vendor::copy_to_device(features.query, features_.query.data(), features_.query.size() * sizeof(float),
                                "feature upload");
    gpu::vendor::copy_to_device(features.key, features_.key.data(), features_.key.size() * sizeof(float),
                                "feature upload");
    return features;
  }

  GateCase case_;
  gpu::DeviceLimits limits_;
  std::mt19937_64 random_;
  LearnedGate gate_;
  gate_test::Sequences<T> q_, k_;
  gate_test::DeviceSequences<T> device_q_, device_k_;
  cuda::DeviceLearnedGate device_gate_;
  cuda::GateSelectionPlan plan_;
  std::vector<BlockGeometry> sequences_;
  gate_test::HostFeatures features_;
  BlockFeatureScores scores_;
};

std::uint64_t fresh_seed() { return std::random_device{}(); }

template <class T>
void check_all_policies(const GateCase& c, const gpu::DeviceLimits& limits) {
  const std::uint64_t seed = fresh_seed();
  INFO(describe(c), ", seed ", seed);
  GateFixture<T> fixture(c, seed, limits);
  fixture.check_features();
  const ForcedBlocks defaults;
  ForcedBlocks sinks_and_dense;
  sinks_and_dense.sink_blocks = 1;
  sinks_and_dense.dense_last_rows = 2;
  ForcedBlocks nothing;
  nothing.keep_diagonal = false;
  fixture.check_selection(TopK::target_density(0.1), defaults);
  fixture.check_selection(TopK::target_density(0.3), sinks_and_dense);
  fixture.check_selection(TopK::blocks(3), nothing);
  fixture.check_selection(Threshold{2e-3}, defaults);
  fixture.check_selection(Threshold{0.05}, sinks_and_dense);
  fixture.check_selection(Threshold{0.0}, nothing);
  fixture.check_selection(Nucleus{0.9, 1, std::numeric_limits<std::int64_t>::max()}, defaults);
  fixture.check_selection(Nucleus{0.5, 3, 6}, sinks_and_dense);
  fixture.check_selection(Nucleus{0.99, 0, std::numeric_limits<std::int64_t>::max()}, nothing);
}

GateCase padded_case(std::int32_t length, std::int64_t heads, std::int64_t kv_heads) {
  GateCase c;
  c.q_lengths = c.k_lengths = {length};
  c.q_heads = heads;
  c.kv_heads = kv_heads;
  return c;
}

}  // namespace

TEST_CASE("gpu gate rules: closed-form forced counts, TopK row sizes and the Nucleus take equal the CPU policies") {
  std::mt19937_64 random(fresh_seed());
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t q_len = static_cast<std::int64_t>(random() % 700),
                       k_len = static_cast<std::int64_t>(random() % 700);
    const BlockGeometry g{q_len, k_len, 64, trial % 3 != 0};
    ForcedBlocks forced;
    forced.keep_diagonal = trial % 4 != 1;
    forced.sink_blocks = static_cast<std::int64_t>(random() % 4);
    forced.dense_last_rows = static_cast<std::int64_t>(random() % 3);
    const TopK policy = trial % 2 == 0 ? TopK::target_density(0.05 + 0.9 * (random() % 100) / 100.0)
                                       : TopK::blocks(1 + static_cast<std::int64_t>(random() % 5));
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
      const std::int64_t visible = g.visible_key_blocks(m);
      std::vector<double> logits(static_cast<std::size_t>(visible));
      std::vector<std::uint8_t> flags(static_cast<std::size_t>(visible));
      std::int64_t counted = 0;
      for (std::int64_t n = 0; n < visible; ++n) {
        logits[n] = static_cast<double>(random() % 1000);
        flags[n] = forced.is_forced(g, m, n) ? 1 : 0;
        counted += flags[n];
      }
      REQUIRE(gpu::forced_block_count(forced, g, m, visible) == counted);
      std::vector<std::int32_t> kept;
      SelectionScratch scratch;
      if (visible > 0 && !forced.row_is_dense(g, m)) {
        policy.select(g, RowCandidates{logits.data(), flags.data(), visible}, scratch, kept);
      } else if (visible > 0) {
        kept.resize(static_cast<std::size_t>(visible));
      }
      REQUIRE(gpu::top_k_row_size(policy, forced, g, m) == static_cast<std::int64_t>(kept.size()));
    }
  }
  // nucleus_take vs the policy's own loop over wants_more.
  for (int trial = 0; trial < 2000; ++trial) {
    Nucleus policy{0.5, static_cast<std::int64_t>(random() % 6), 0};
    policy.max_k = policy.min_k + static_cast<std::int64_t>(random() % 6);
    if (trial % 5 == 0) policy.max_k = std::numeric_limits<std::int64_t>::max();
    const std::int64_t forced = static_cast<std::int64_t>(random() % 5);
    const std::int64_t unforced = static_cast<std::int64_t>(random() % 9);
    const std::int64_t mass_count = static_cast<std::int64_t>(random() % (unforced + 1));
    // A mass that reaches p exactly when mass_count unforced blocks are taken.
    std::int64_t taken = 0, count = forced;
    auto mass = [&](std::int64_t t) { return t >= mass_count ? 1.0 : 0.0; };
    while (taken < unforced && policy.wants_more(mass(taken), count)) {
      ++taken;
      ++count;
    }
    REQUIRE(gpu::nucleus_take(policy, forced, mass_count, unforced) == taken);
  }
}

TEST_CASE("gpu gate: padded MHA, length not a multiple of 64 (bf16): features, TopK, Threshold, Nucleus") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  check_all_policies<bfloat16>(padded_case(1000, 4, 4), cuda::device_limits());
}

TEST_CASE("gpu gate: bf16 gate weights (the projection's two-product path), padded GQA 4/2") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  GateCase c = padded_case(900, 4, 2);
  c.bf16_weights = true;
  std::mt19937_64 random(fresh_seed());
  const cuda::DeviceLearnedGate exact(gate_test::random_gate(c, random));
  CHECK(exact.projections_tf32_exact());
  c.bf16_weights = false;
  const cuda::DeviceLearnedGate inexact(gate_test::random_gate(c, random));
  CHECK_FALSE(inexact.projections_tf32_exact());
  c.bf16_weights = true;
  check_all_policies<bfloat16>(c, cuda::device_limits());
}

TEST_CASE("gpu gate: packed varlen GQA 8/2, q chunks at the end of longer keys, llama3 RoPE (half)") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  GateCase c;
  c.q_lengths = {300, 1, 64, 129, 0};
  c.k_lengths = {300, 70, 64, 500, 33};
  c.packed = true;
  c.q_heads = 8;
  c.kv_heads = 2;
  c.rope.theta = 500000.0;
  c.rope.scaling.type = "llama3";
  c.rope.scaling.factor = 8.0;
  c.rope.scaling.original_max_position_embeddings = 256;
  check_all_policies<seer::half>(c, cuda::device_limits());
}

TEST_CASE("gpu gate: double-linear gate (Qmaxavg_Kmaxmin), D 64, non-causal, YaRN RoPE, GQA 4/2") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  GateCase c = padded_case(777, 4, 2);
  c.head_dim = 64;
  c.causal = false;
  c.gate_type = "Qmaxavg_Kmaxmin";
  c.rope.scaling.type = "yarn";
  c.rope.scaling.factor = 4.0;
  c.rope.scaling.original_max_position_embeddings = 512;
  check_all_policies<bfloat16>(c, cuda::device_limits());
}

TEST_CASE("gpu gate: logits in workspace slices (rows too long for shared memory), force_double gate") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  GateCase c;
  c.q_lengths = {1500, 2100};
  c.k_lengths = {2100, 2100};
  c.packed = true;
  c.q_heads = 2;
  c.kv_heads = 1;
  c.force_double = true;
  gpu::DeviceLimits limits = cuda::device_limits();
  limits.logit_shared_bytes = 64;  // no row fits: the per-CTA global slices
  check_all_policies<bfloat16>(c, limits);
}

TEST_CASE(
    "gpu gate: a too small key_blocks capacity sets the overflow flag and keeps rows readable (Threshold, TopK)") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  const std::uint64_t seed = fresh_seed();
  INFO("seed ", seed);
  const GateCase c = padded_case(2000, 2, 2);
  GateFixture<bfloat16> fixture(c, seed, cuda::device_limits());
  fixture.check_features();
  ForcedBlocks every_row_dense;  // every visible block of every row: rows 0, 1, 2, ...
  every_row_dense.dense_last_rows = 1 << 20;
  // Both ways rows are placed: a count pass and a scan (Threshold), and TopK's layout from the geometry.
  const auto check_cut_rows = [&](const auto& policy) {
    const std::int64_t bound = cuda::selected_blocks_bound(fixture.sequences(), c.q_heads, policy, every_row_dense);
    const std::int64_t capacity = bound / 3;
    const auto gpu = fixture.check_selection(policy, every_row_dense, capacity, true);
    std::int64_t bad = 0;
    for (std::size_t r = 0; r + 1 < gpu.row_offsets.size(); ++r) {
      if (gpu.row_offsets[r] > gpu.row_offsets[r + 1] || gpu.row_offsets[r + 1] > capacity) ++bad;
      for (std::int64_t i = gpu.row_offsets[r]; i < gpu.row_offsets[r + 1]; ++i)
        if (gpu.key_blocks[i] != i - gpu.row_offsets[r]) ++bad;  // prefixes of 0, 1, 2, ...
    }
    CHECK(bad == 0);
    CHECK(gpu.row_offsets.front() == 0);
    CHECK(gpu.row_offsets.back() == capacity);
  };
  check_cut_rows(Threshold{0.5});
  check_cut_rows(TopK::target_density(0.1));
}

TEST_CASE("gpu gate: 128k tokens x 2 heads, every row (TopK 0.1, Threshold, Nucleus)") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  const std::uint64_t seed = fresh_seed();
  const GateCase c = padded_case(131072, 2, 2);
  INFO(describe(c), ", seed ", seed);
  GateFixture<bfloat16> fixture(c, seed, cuda::device_limits());
  fixture.check_features();
  fixture.check_selection(TopK::target_density(0.1), ForcedBlocks{});
  fixture.check_selection(Threshold{1e-3}, ForcedBlocks{});
  fixture.check_selection(Nucleus{0.9, 1, 512}, ForcedBlocks{});
}

TEST_CASE("gpu gate: 1M tokens from pre-pooled features, TopK 0.1 (rows of 16384 candidates)") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  const std::uint64_t seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 random(seed);
  GateCase c = padded_case(1 << 20, 1, 1);
  c.rope.theta = 500000.0;
  const LearnedGate gate = gate_test::random_gate(c, random);
  cuda::DeviceLearnedGate device_gate(gate);
  const std::int64_t blocks = (1 << 20) / 64;
  const std::int64_t key_width = gate.key_input_width();
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> pooled_query(static_cast<std::size_t>(blocks * 128)),
      pooled_key(static_cast<std::size_t>(blocks * key_width));
  for (auto& x : pooled_query) x = normal(random);
  for (auto& x : pooled_key) x = normal(random);
  gate_test::DeviceArray<float> device_query(pooled_query), device_key(pooled_key);

  {
    const cuda::GateSelectionPlan plan = cuda::gate_selection_plan(device_gate, 1, 1 << 20, 1 << 20);
    CHECK_FALSE(plan.logits_in_shared_memory());  // 16384 candidates per row: the workspace slices
    const std::vector<BlockGeometry> sequences{BlockGeometry{1 << 20, 1 << 20, 64, true}};
    const TopK policy = TopK::target_density(0.1);
    const std::int64_t bound = cuda::selected_blocks_bound(sequences, 1, policy, ForcedBlocks{});
    cuda::GateSelectionStorage storage(plan, bound);
    gate_test::fill_bytes(storage.buffers().key_blocks, 0xff, static_cast<std::size_t>(bound) * 4);
    gpu::GateSequences device_sequences;
    device_sequences.batch = 1;
    device_sequences.q_max_length = device_sequences.k_max_length = 1 << 20;
    const auto features = cuda::gate_features_from_pooled(device_gate, plan, {device_query.get(), device_key.get()},
                                                          device_sequences, storage.workspace(), nullptr);
    cuda::select_blocks(plan, features, device_sequences, policy, ForcedBlocks{}, storage.buffers(),
                        storage.workspace(), nullptr);
    gate_test::synchronize();
    const auto host_features = gate_test::download_features(features, 1);
    const auto gpu = gate_test::download_block_set(storage.buffers(), 1, 1);
    CHECK(gpu.overflow == 0);
    CHECK(gpu.row_offsets.back() == bound);

    // Features of sampled blocks vs the CPU projection and RoPE of the same pooled features (float64).
    std::vector<std::int64_t> sample_blocks{0, 1, 63, 4097, blocks - 2, blocks - 1};
    for (int i = 0; i < 10; ++i) sample_blocks.push_back(static_cast<std::int64_t>(random() % blocks));
    double worst = 0.0;
    for (std::int64_t n : sample_blocks) {
      std::vector<double> key(128, 0.0), query(128);
      for (std::int64_t i = 0; i < key_width; ++i)
        for (std::int64_t o = 0; o < 128; ++o)
          key[o] += static_cast<double>(pooled_key[n * key_width + i]) * gate.k_projection()[i * 128 + o];
      for (std::int64_t d = 0; d < 128; ++d) query[d] = pooled_query[n * 128 + d];
      gate.rotary_embedding().apply(key.data(), n * 64);
      gate.rotary_embedding().apply(query.data(), n * 64);
      for (std::int64_t d = 0; d < 128; ++d) {
        worst = std::max(worst, std::abs(key[d] - host_features.key[n * 128 + d]) / (1.0 + std::abs(key[d])));
        worst = std::max(worst, std::abs(query[d] - host_features.query[n * 128 + d]) / (1.0 + std::abs(query[d])));
      }
    }
    INFO("worst relative feature error ", worst);
    CHECK(worst <= 1e-4);

    // Sampled rows (the first, the last, random ones) vs the CPU policy on the GPU's features.
    const BlockFeatureScores scores = gate_test::scores_from_features(host_features, sequences);
    std::vector<std::array<std::int64_t, 3>> rows;
    for (std::int64_t m : {std::int64_t{0}, std::int64_t{1}, std::int64_t{100}, blocks - 1, blocks - 2})
      rows.push_back({0, 0, m});
    for (int i = 0; i < 27; ++i) rows.push_back({0, 0, static_cast<std::int64_t>(random() % blocks)});
    const auto comparison = gate_test::compare_selection(scores, policy, ForcedBlocks{}, gpu, rows);
    INFO(comparison.first_failure);
    MESSAGE("1M tokens: ", comparison.rows, " sampled rows, ", comparison.identical, " identical, ",
            comparison.within_margin, " within the rounding margin");
    CHECK(comparison.malformed == 0);
    CHECK(comparison.outside_margin == 0);
  }
}
