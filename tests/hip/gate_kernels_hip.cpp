// The GPU gate and block selection compiled as HIP (seer::hip::gate_features / select_blocks): the same
// kernels as the CUDA backend, through the vendor layer, for gfx90a / gfx942 / gfx1100. On an AMD GPU
// the cases compare with the CPU gate and policies like the CUDA suite (gate_test_support.hpp); without
// one they skip. The CUDA suite (tests/gpu/gate) runs these kernels' logic on an NVIDIA GPU.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gate/gate_test_support.hpp"
#include "seer/hip/gate_selection.hpp"

namespace {

using namespace seer;

template <class Policy>
void check_hip_selection(const Policy& policy, const ForcedBlocks& forced, std::int64_t shared_logit_bytes) {
  const std::uint64_t seed = std::random_device{}();
  INFO("seed ", seed);
  std::mt19937_64 random(seed);
  gate_test::GateCase c;
  c.q_lengths = {300, 1, 129};
  c.k_lengths = {300, 70, 500};
  c.packed = true;
  c.q_heads = 4;
  c.kv_heads = 2;
  const LearnedGate gate = gate_test::random_gate(c, random);
  const auto q = gate_test::make_sequences<bfloat16>(c.q_lengths, c.q_heads, c.head_dim, true, random);
  const auto k = gate_test::make_sequences<bfloat16>(c.k_lengths, c.kv_heads, c.head_dim, true, random);
  const gate_test::DeviceSequences<bfloat16> device_q(q), device_k(k);
  hip::DeviceLearnedGate device_gate(gate);
  hip::DeviceLimits limits = hip::device_limits();
  limits.logit_shared_bytes = shared_logit_bytes;
  const hip::GateSelectionPlan plan(device_gate, q.host.batch, q.host.max_length, k.host.max_length, limits);
  const auto sequences = sequence_geometries(q.host, k.host, 64, true);
  hip::GateSelectionStorage storage(plan, hip::selected_blocks_bound(sequences, c.q_heads, policy, forced));
  gate_test::fill_bytes(storage.workspace().data, 0xff, static_cast<std::size_t>(storage.workspace().bytes));
  hip::gate_and_select<bfloat16>(device_gate, plan, device_q.view, device_k.view, true, policy, forced,
                                 storage.buffers(), storage.workspace(), nullptr);
  gate_test::synchronize();
  const auto features = gate_test::download_features(plan.features(storage.workspace()), q.host.batch);
  const auto errors = gate_test::compare_features(features, gate.score(q.host, k.host, true));
  CHECK(errors.non_finite == 0);
  CHECK(errors.query <= 1e-4);
  CHECK(errors.key <= 1e-4);
  const auto blocks = gate_test::download_block_set(storage.buffers(), q.host.batch, c.q_heads);
  CHECK(blocks.overflow == 0);
  const auto comparison =
      gate_test::compare_selection(gate_test::scores_from_features(features, sequences), policy, forced, blocks);
  INFO(comparison.first_failure);
  CHECK(comparison.malformed == 0);
  CHECK(comparison.outside_margin == 0);
}

}  // namespace

TEST_CASE("hip gate: features and TopK / Threshold / Nucleus selection match the CPU gate and policies") {
  if (!gate_test::have_device()) {
    MESSAGE("no AMD GPU: HIP gate test skipped");
    return;
  }
  ForcedBlocks sinks;
  sinks.sink_blocks = 1;
  for (std::int64_t shared_bytes : {std::int64_t{16 * 1024}, std::int64_t{64}}) {  // shared logits, workspace slices
    check_hip_selection(TopK::target_density(0.2), ForcedBlocks{}, shared_bytes);
    check_hip_selection(Threshold{5e-3}, sinks, shared_bytes);
    check_hip_selection(Nucleus{0.9, 1, std::numeric_limits<std::int64_t>::max()}, ForcedBlocks{}, shared_bytes);
  }
}
