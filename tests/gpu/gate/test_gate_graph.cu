// The whole GPU pipeline gate -> select -> seer::cuda::block_sparse_attention captured in one CUDA graph
// and replayed, against the same calls made directly; and the host-side validation of the gate calls
// (invalid arguments name the argument). Skips without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gate_test_support.hpp"
#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/gate_selection.hpp"

namespace {

using namespace seer;
using gate_test::GateCase;
using gpu::vendor::check;

class Stream {
 public:
  Stream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { static_cast<void>(cudaStreamDestroy(stream_)); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

std::string rejected_argument(const std::function<void()>& call) {
  try {
    call();
  } catch (const InvalidArgument& error) {
    return error.argument();
  } catch (const BackendError& error) {
    return std::string("(backend error: ") + error.what() + ")";
  }
  return "(accepted)";
}

template <class Policy>
void check_graph_pipeline(const Policy& policy) {
  const std::uint64_t seed = std::random_device{}();
  INFO("seed ", seed);
  std::mt19937_64 random(seed);
  GateCase c;
  c.q_lengths = c.k_lengths = {3000};
  c.q_heads = 4;
  c.kv_heads = 2;
  const LearnedGate gate = gate_test::random_gate(c, random);
  const auto q = gate_test::make_sequences<bfloat16>(c.q_lengths, c.q_heads, 128, false, random);
  const auto k = gate_test::make_sequences<bfloat16>(c.k_lengths, c.kv_heads, 128, false, random);
  const auto v = gate_test::make_sequences<bfloat16>(c.k_lengths, c.kv_heads, 128, false, random);
  const gate_test::DeviceSequences<bfloat16> device_q(q), device_k(k), device_v(v);
  const std::int64_t out_elements = static_cast<std::int64_t>(q.data.size());
  gate_test::DeviceArray<bfloat16> direct_out(out_elements), graph_out(out_elements);
  auto out_view = [&](bfloat16* data) {
    SequenceBatch<bfloat16> out;
    out.data = data;
    out.batch = 1;
    out.heads = c.q_heads;
    out.head_dim = 128;
    out.max_length = 3000;
    out.batch_stride = 3000 * c.q_heads * 128;
    out.token_stride = c.q_heads * 128;
    out.head_stride = 128;
    return out;
  };

  cuda::DeviceLearnedGate device_gate(gate);
  const auto plan = cuda::gate_selection_plan(device_gate, 1, 3000, 3000);
  const auto sequences = sequence_geometries(q.host, k.host, 64, true);
  const std::int64_t bound = cuda::selected_blocks_bound(sequences, c.q_heads, policy, ForcedBlocks{});
  cuda::GateSelectionStorage direct_storage(plan, bound), graph_storage(plan, bound);
  Stream stream;
  AttentionOptions options;

  // Direct calls.
  direct_out.poison();
  BlockSetView blocks =
      cuda::gate_and_select<bfloat16>(device_gate, plan, device_q.view, device_k.view, true, policy, ForcedBlocks{},
                                      direct_storage.buffers(), direct_storage.workspace(), stream.get());
  cuda::block_sparse_attention<bfloat16>(device_q.view, device_k.view, device_v.view, &blocks, options,
                                         out_view(direct_out.get()), {}, stream.get());
  check(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");

  // The same pipeline, captured once and replayed twice.
  graph_out.poison();
  gate_test::fill_bytes(graph_storage.buffers().row_offsets, 0xff,
                        static_cast<std::size_t>(graph_storage.buffers().row_offset_entries) * 8);
  gate_test::fill_bytes(graph_storage.buffers().key_blocks, 0xff, static_cast<std::size_t>(bound) * 4);
  cudaGraph_t graph = nullptr;
  check(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  try {
    BlockSetView captured =
        cuda::gate_and_select<bfloat16>(device_gate, plan, device_q.view, device_k.view, true, policy, ForcedBlocks{},
                                        graph_storage.buffers(), graph_storage.workspace(), stream.get());
    cuda::block_sparse_attention<bfloat16>(device_q.view, device_k.view, device_v.view, &captured, options,
                                           out_view(graph_out.get()), {}, stream.get());
  } catch (...) {
    static_cast<void>(cudaStreamEndCapture(stream.get(), &graph));
    if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
    throw;
  }
  check(cudaStreamEndCapture(stream.get(), &graph), "cudaStreamEndCapture");
  cudaGraphExec_t executable = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&executable, graph, 0);
  static_cast<void>(cudaGraphDestroy(graph));
  check(instantiated, "cudaGraphInstantiate");
  cudaError_t launched = cudaGraphLaunch(executable, stream.get());
  if (launched == cudaSuccess) launched = cudaGraphLaunch(executable, stream.get());
  const cudaError_t finished = cudaStreamSynchronize(stream.get());
  static_cast<void>(cudaGraphExecDestroy(executable));
  check(launched, "cudaGraphLaunch");
  check(finished, "cudaStreamSynchronize (graph)");

  const auto direct_blocks = gate_test::download_block_set(direct_storage.buffers(), 1, c.q_heads);
  const auto graph_blocks = gate_test::download_block_set(graph_storage.buffers(), 1, c.q_heads);
  CHECK(direct_blocks.overflow == 0);
  CHECK(graph_blocks.row_offsets == direct_blocks.row_offsets);
  CHECK(graph_blocks.key_blocks == direct_blocks.key_blocks);
  CHECK(graph_blocks.query_block_offsets == direct_blocks.query_block_offsets);

  // The direct BlockSet is the CPU policy's on the GPU features (margins as elsewhere).
  const auto features = gate_test::download_features(plan.features(direct_storage.workspace()), 1);
  const auto comparison = gate_test::compare_selection(gate_test::scores_from_features(features, sequences), policy,
                                                       ForcedBlocks{}, direct_blocks);
  INFO(comparison.first_failure);
  CHECK(comparison.malformed == 0);
  CHECK(comparison.outside_margin == 0);

  const auto direct = direct_out.download();
  const auto replayed = graph_out.download();
  std::int64_t different = 0, non_finite = 0;
  for (std::size_t i = 0; i < direct.size(); ++i) {
    different += direct[i].bits != replayed[i].bits ? 1 : 0;
    non_finite += std::isfinite(to_float(direct[i])) ? 0 : 1;
  }
  CHECK(non_finite == 0);
  CHECK(different == 0);
}

}  // namespace

TEST_CASE("gpu gate: gate -> TopK select -> block_sparse_attention in one CUDA graph equals the direct calls") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  check_graph_pipeline(TopK::target_density(0.2));
}

TEST_CASE("gpu gate: gate -> Threshold / Nucleus select (count, scan, write) -> attention in one CUDA graph") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped");
    return;
  }
  check_graph_pipeline(Threshold{5e-3});
  check_graph_pipeline(Nucleus{0.8, 1, 40});
}

TEST_CASE("gpu gate validation: invalid arguments name the argument") {
  if (!gate_test::have_device()) {
    MESSAGE("no usable CUDA device: GPU test skipped (DeviceLearnedGate needs device memory)");
    return;
  }
  std::mt19937_64 random(7);
  GateCase c;
  c.q_lengths = c.k_lengths = {256};
  c.q_heads = 4;
  c.kv_heads = 2;
  const LearnedGate gate = gate_test::random_gate(c, random);
  const auto q = gate_test::make_sequences<bfloat16>(c.q_lengths, c.q_heads, 128, false, random);
  const auto k = gate_test::make_sequences<bfloat16>(c.k_lengths, c.kv_heads, 128, false, random);
  const gate_test::DeviceSequences<bfloat16> device_q(q), device_k(k);
  cuda::DeviceLearnedGate device_gate(gate);
  const auto plan = cuda::gate_selection_plan(device_gate, 1, 256, 256);
  cuda::GateSelectionStorage storage(plan, 1000);
  const TopK policy = TopK::target_density(0.5);
  auto run = [&](SequenceBatch<const bfloat16> q_view, SequenceBatch<const bfloat16> k_view, const auto& chosen,
                 const ForcedBlocks& forced, cuda::DeviceBlockSetBuffers buffers, cuda::GateWorkspace workspace) {
    cuda::gate_and_select<bfloat16>(device_gate, plan, q_view, k_view, true, chosen, forced, buffers, workspace,
                                    nullptr);
  };
  const auto& buffers = storage.buffers();
  const auto& workspace = storage.workspace();
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, policy, {}, buffers, workspace); }) == "(accepted)");
  gate_test::synchronize();

  auto wrong_heads = device_q.view;
  wrong_heads.heads = 2;
  CHECK(rejected_argument([&] { run(wrong_heads, device_k.view, policy, {}, buffers, workspace); }) == "q_before_rope");
  auto misaligned = device_k.view;
  misaligned.data += 1;
  CHECK(rejected_argument([&] { run(device_q.view, misaligned, policy, {}, buffers, workspace); }) == "k_before_rope");
  auto longer = device_q.view;
  longer.max_length = 512;  // beyond the plan
  longer.batch_stride *= 2;
  CHECK(rejected_argument([&] { run(longer, device_k.view, policy, {}, buffers, workspace); }) == "sequences");
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, TopK::blocks(0), {}, buffers, workspace); }) ==
        "policy.count");
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, Threshold{1.5}, {}, buffers, workspace); }) ==
        "policy.tau");
  CHECK(rejected_argument([&] {
          run(device_q.view, device_k.view, Nucleus{0.0, 1, 4}, {}, buffers, workspace);
        }) == "policy.p");
  ForcedBlocks negative;
  negative.sink_blocks = -1;
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, policy, negative, buffers, workspace); }) ==
        "forced.sink_blocks");
  auto small_workspace = workspace;
  small_workspace.bytes = 16;
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, policy, {}, buffers, small_workspace); }) ==
        "workspace");
  auto no_offsets = buffers;
  no_offsets.row_offsets = nullptr;
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, policy, {}, no_offsets, workspace); }) == "output");
  auto short_offsets = buffers;
  short_offsets.row_offset_entries = 3;
  CHECK(rejected_argument([&] { run(device_q.view, device_k.view, policy, {}, short_offsets, workspace); }) ==
        "output");
  CHECK(rejected_argument([&] {
          cuda::gate_features_from_pooled(device_gate, plan, {nullptr, nullptr},
                                          cuda::gate_sequences(device_q.view, device_k.view, 64, true), workspace,
                                          nullptr);
        }) == "pooled");
  CHECK(rejected_argument([&] { cuda::gate_selection_plan(device_gate, -1, 256, 256); }) == "batch");
}
