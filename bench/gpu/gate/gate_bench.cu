// GPU gate + selection benchmark (issue 5 item 3): in one process, at B=1, H=32 (MHA), D=128, bf16,
// causal, with a random Qavg_Kmaxminavg gate, times with CUDA events (warm-up, then the median of the
// repetitions):
//   gate features from pre-RoPE q, k (pooling + projection + RoPE)     seer::cuda::gate_features
//   gate features from pre-pooled block features (projection + RoPE)  seer::cuda::gate_features_from_pooled
//   selection: TopK density 0.1, Threshold tau, Nucleus p              seer::cuda::select_blocks
//   block-sparse attention on the TopK 0.1 BlockSet                    seer::cuda::block_sparse_attention
// and prints the gate + TopK selection time as a percentage of the attention time (target: <= 5% at 32k),
// timed twice: enqueued from the host between CUDA events, and replayed from CUDA graphs (an engine's way).
//   seer_bench_gate [--lengths 32768,131072] [--repeats 20] [--out DIR]
// Inputs are drawn on the device (uniform in [-2, 2) plus a per-(head, component) offset, never zeros).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/gate_selection.hpp"

namespace {

using namespace seer;
using gpu::vendor::check;

std::int64_t blocks_of(std::int64_t tokens) { return (tokens + 63) / 64; }

__global__ void fill_random(__nv_bfloat16* data, std::int64_t count, std::int64_t period, std::uint64_t seed) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    auto hash = [](std::uint64_t x) {
      x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
      x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
      return x ^ (x >> 31);
    };
    const float noise = static_cast<float>(hash(static_cast<std::uint64_t>(i) + seed * 0x9e3779b97f4a7c15ull) >> 40) *
                            (4.0f / 16777216.0f) -
                        2.0f;
    const float offset =
        static_cast<float>(hash(static_cast<std::uint64_t>(i % period) + seed) >> 40) * (2.0f / 16777216.0f) - 1.0f;
    data[i] = __float2bfloat16(noise + offset);
  }
}

__global__ void fill_random_float(float* data, std::int64_t count, std::uint64_t seed) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    std::uint64_t x = static_cast<std::uint64_t>(i) + seed * 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    data[i] = static_cast<float>(x >> 40) * (4.0f / 16777216.0f) - 2.0f;
  }
}

template <class T>
struct Buffer {
  T* data = nullptr;
  std::int64_t count = 0;
  explicit Buffer(std::int64_t n) : count(n) {
    data = static_cast<T*>(gpu::vendor::device_allocate(
        static_cast<std::size_t>(std::max<std::int64_t>(n, 1)) * sizeof(T), "benchmark buffer"));
  }
  ~Buffer() { gpu::vendor::device_release(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// Median milliseconds of `repeats` timed runs after 3 warm-ups, each run bracketed by CUDA events.
double time_ms(const std::function<void()>& run, int repeats, cudaStream_t stream) {
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) run();
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    run();
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    times.push_back(ms);
  }
  static_cast<void>(cudaEventDestroy(start));
  static_cast<void>(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Median milliseconds per run of the work `run` enqueues, replayed from a CUDA graph as an engine replays its
// step: captured once, then `repeats` timings of kGraphRuns back-to-back launches each. The host's argument
// checks and kernel launches stay out of the time; the GPU's own gaps between kernels stay in.
double graph_time_ms(const std::function<void()>& run, int repeats, cudaStream_t stream) {
  constexpr int kGraphRuns = 10;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t instance = nullptr;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  run();
  check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  check(cudaGraphInstantiate(&instance, graph, 0), "cudaGraphInstantiate");
  const std::function<void()> replay = [&] {
    for (int i = 0; i < kGraphRuns; ++i) check(cudaGraphLaunch(instance, stream), "cudaGraphLaunch");
  };
  const double ms = time_ms(replay, repeats, stream) / kGraphRuns;
  static_cast<void>(cudaGraphExecDestroy(instance));
  static_cast<void>(cudaGraphDestroy(graph));
  return ms;
}

struct Row {
  std::int64_t tokens = 0;
  double gate = 0, gate_pooled = 0, topk = 0, threshold = 0, nucleus = 0, attention = 0, attention_mma_sync = 0;
  double rope_plain = 0, rope_pooled = 0, rope_plain_again = 0;  // RoPE pass over q and k, without / with pooling
  // CUDA-graph replay: gate (from q, k / from pre-pooled features) + TopK as one graph, and the attention.
  double graph_gate_topk = 0, graph_pooled_topk = 0, graph_attention = 0, graph_attention_mma_sync = 0;
  double graph_pooled_bf16_topk = 0;  // the same gate with bf16 weights
  // Event timing of the pre-pooled gate and the TopK selection called back to back (one timed run, as an
  // engine calls them), with fp32 and bf16 gate weights.
  double sequence_pooled_topk = 0, sequence_pooled_bf16_topk = 0;
  double best_graph_attention() const { return std::min(graph_attention, graph_attention_mma_sync); }
  double best_attention() const { return std::min(attention, attention_mma_sync); }
  // What fusing the pooling into the RoPE pass adds (against the faster of the two plain timings).
  double fused_pooling() const { return rope_pooled - std::min(rope_plain, rope_plain_again); }
  double topk_density = 0, threshold_density = 0, nucleus_density = 0;
  bool overflow = false;
};

std::int64_t kept_blocks(const gpu::DeviceBlockSetBuffers& buffers, std::int64_t rows, bool& overflow) {
  std::int64_t total = 0;
  std::int32_t flag = 0;
  check(cudaMemcpy(&total, buffers.row_offsets + rows, sizeof total, cudaMemcpyDeviceToHost), "cudaMemcpy");
  check(cudaMemcpy(&flag, buffers.overflow, sizeof flag, cudaMemcpyDeviceToHost), "cudaMemcpy");
  overflow = overflow || flag != 0;
  return total;
}

Row run_length(std::int64_t tokens, int repeats, const Threshold& threshold, const Nucleus& nucleus) {
  constexpr std::int64_t heads = 32, dim = 128, block = 64;
  Row row;
  row.tokens = tokens;
  std::mt19937_64 random(1234);
  LearnedGateConfig config;
  config.rope.head_dim = dim;
  config.rope.theta = 500000.0;
  std::vector<float> weights(static_cast<std::size_t>(heads * 3 * dim * dim));
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(3.0f * dim));
  for (auto& w : weights) w = normal(random);
  // The same gate with its weights rounded to bf16, as the released SeerAttention gates are stored: the
  // tensor-core projection then takes its two-product path.
  std::vector<float> bf16_weights = weights;
  for (auto& w : bf16_weights) w = round_to<bfloat16>(w);
  const LearnedGate gate(config, heads, heads, dim, std::move(weights));
  cuda::DeviceLearnedGate device_gate(gate);
  const cuda::DeviceLearnedGate device_gate_bf16(LearnedGate(config, heads, heads, dim, std::move(bf16_weights)));
  check(device_gate_bf16.projections_tf32_exact() && !device_gate.projections_tf32_exact() ? cudaSuccess
                                                                                           : cudaErrorInvalidValue,
        "bf16 gate weights take the two-product projection");

  const std::int64_t elements = tokens * heads * dim;
  Buffer<bfloat16> q(elements), k(elements), v(elements), out(elements);
  fill_random<<<1024, 256>>>(reinterpret_cast<__nv_bfloat16*>(q.data), elements, heads * dim, 1);
  fill_random<<<1024, 256>>>(reinterpret_cast<__nv_bfloat16*>(k.data), elements, heads * dim, 2);
  fill_random<<<1024, 256>>>(reinterpret_cast<__nv_bfloat16*>(v.data), elements, heads * dim, 3);
  check(cudaGetLastError(), "fill_random launch");
  const std::int64_t blocks_per_head = tokens / block;
  Buffer<float> pooled_query(heads * blocks_per_head * dim), pooled_key(heads * blocks_per_head * 3 * dim);
  fill_random_float<<<1024, 256>>>(pooled_query.data, pooled_query.count, 4);
  fill_random_float<<<1024, 256>>>(pooled_key.data, pooled_key.count, 5);
  check(cudaGetLastError(), "fill_random_float launch");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  auto batch_view = [&](bfloat16* data) {
    return padded_batch(TensorView<bfloat16, 4>::contiguous(data, {1, tokens, heads, dim}), "bench");
  };
  const SequenceBatch<const bfloat16> q_view = batch_view(q.data), k_view = batch_view(k.data),
                                      v_view = batch_view(v.data);
  const SequenceBatch<bfloat16> out_view = batch_view(out.data);
  const auto plan = cuda::gate_selection_plan(device_gate, 1, tokens, tokens);
  const std::vector<BlockGeometry> sequences{BlockGeometry{tokens, tokens, block, true}};
  const TopK topk = TopK::target_density(0.1);
  const ForcedBlocks forced;
  cuda::GateSelectionStorage topk_storage(plan, cuda::selected_blocks_bound(sequences, heads, topk, forced));
  // Threshold and Nucleus may keep up to the whole triangle.
  const std::int64_t triangle = cuda::selected_blocks_bound(sequences, heads, Threshold{0.0}, forced);
  cuda::GateSelectionStorage other_storage(plan, triangle);
  const auto gate_sequences = cuda::gate_sequences(q_view, k_view, block, true);
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  const auto& workspace = topk_storage.workspace();
  row.gate = time_ms([&] { cuda::gate_features<bfloat16>(device_gate, plan, q_view, k_view, true, workspace, stream); },
                     repeats, stream);
  row.gate_pooled = time_ms(
      [&] {
        cuda::gate_features_from_pooled(device_gate, plan, {pooled_query.data, pooled_key.data}, gate_sequences,
                                        workspace, stream);
      },
      repeats, stream);
  // Selections on the features of the real q, k (the pre-pooled ones are random noise).
  const auto features = cuda::gate_features<bfloat16>(device_gate, plan, q_view, k_view, true, workspace, stream);
  check(cudaMemcpyAsync(other_storage.workspace().data, workspace.data, static_cast<std::size_t>(workspace.bytes),
                        cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpyAsync (features)");
  const auto other_features = plan.features(other_storage.workspace());
  BlockSetView blocks{};
  row.topk = time_ms(
      [&] {
        blocks = cuda::select_blocks(plan, features, gate_sequences, topk, forced, topk_storage.buffers(), workspace,
                                     stream);
      },
      repeats, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  const double visible = static_cast<double>(triangle);
  const std::int64_t rows = heads * blocks_of(tokens);
  row.topk_density = static_cast<double>(kept_blocks(topk_storage.buffers(), rows, row.overflow)) / visible;
  row.threshold = time_ms(
      [&] {
        cuda::select_blocks(plan, other_features, gate_sequences, threshold, forced, other_storage.buffers(),
                            other_storage.workspace(), stream);
      },
      repeats, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  row.threshold_density = static_cast<double>(kept_blocks(other_storage.buffers(), rows, row.overflow)) / visible;
  row.nucleus = time_ms(
      [&] {
        cuda::select_blocks(plan, other_features, gate_sequences, nucleus, forced, other_storage.buffers(),
                            other_storage.workspace(), stream);
      },
      repeats, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  row.nucleus_density = static_cast<double>(kept_blocks(other_storage.buffers(), rows, row.overflow)) / visible;

  // Attention on the TopK BlockSet (selected once more, so that the buffers hold it).
  blocks = cuda::select_blocks(plan, features, gate_sequences, topk, forced, topk_storage.buffers(), workspace, stream);
  AttentionOptions options;
  row.attention = time_ms(
      [&] { cuda::block_sparse_attention<bfloat16>(q_view, k_view, v_view, &blocks, options, out_view, {}, stream); },
      std::max(5, repeats / 2), stream);
  // The mma.sync kernel too (the default picks the warpgroup kernel on Hopper where it is built): the
  // percentages use the faster of the two, the stricter denominator.
  row.attention_mma_sync = time_ms(
      [&] {
        cuda::block_sparse_attention<bfloat16>(q_view, k_view, v_view, &blocks, options, out_view, {}, stream,
                                               cuda::PrefillKernel::mma_sync);
      },
      std::max(5, repeats / 2), stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

  // The engine's RoPE pass over q and k (in place, on copies), without and with the gate's pooling fused
  // in: the difference is what pooling costs an engine that rotates q and k anyway.
  {
    Buffer<bfloat16> q_copy(elements), k_copy(elements);
    check(cudaMemcpy(q_copy.data, q.data, static_cast<std::size_t>(elements) * sizeof(bfloat16),
                     cudaMemcpyDeviceToDevice),
          "cudaMemcpy (q copy)");
    check(cudaMemcpy(k_copy.data, k.data, static_cast<std::size_t>(elements) * sizeof(bfloat16),
                     cudaMemcpyDeviceToDevice),
          "cudaMemcpy (k copy)");
    RopeConfig model_rope_config;
    model_rope_config.head_dim = dim;
    model_rope_config.theta = 500000.0;
    const cuda::DeviceRotaryEmbedding model_rope{RotaryEmbedding(model_rope_config)};
    const auto writable_view = [&](bfloat16* data) {
      return padded_batch(TensorView<bfloat16, 4>::contiguous(data, {1, tokens, heads, dim}), "bench");
    };
    const SequenceBatch<bfloat16> q_rope = writable_view(q_copy.data), k_rope = writable_view(k_copy.data);
    auto rope_pass = [&](bool pool) {
      cuda::rope_and_pool(model_rope, device_gate, plan, q_rope, gate_sequences, true,
                          pool ? pooled_query.data : nullptr, stream);
      cuda::rope_and_pool(model_rope, device_gate, plan, k_rope, gate_sequences, false,
                          pool ? pooled_key.data : nullptr, stream);
    };
    row.rope_plain = time_ms([&] { rope_pass(false); }, repeats, stream);
    row.rope_pooled = time_ms([&] { rope_pass(true); }, repeats, stream);
    row.rope_plain_again = time_ms([&] { rope_pass(false); }, repeats, stream);
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
  // The pre-pooled gate and the TopK selection back to back: timed as one run, then replayed from CUDA graphs
  // (selection into the TopK buffers, so that the attention reads the same BlockSet).
  // The pre-pooled gate (fp32 or bf16 weights) + TopK, as one enqueued sequence.
  const auto pooled_gate_topk = [&](const auto& gate) {
    return [&] {
      const auto features = cuda::gate_features_from_pooled(gate, plan, {pooled_query.data, pooled_key.data},
                                                            gate_sequences, workspace, stream);
      cuda::select_blocks(plan, features, gate_sequences, topk, forced, topk_storage.buffers(), workspace, stream);
    };
  };
  row.sequence_pooled_topk = time_ms(pooled_gate_topk(device_gate), repeats, stream);
  row.sequence_pooled_bf16_topk = time_ms(pooled_gate_topk(device_gate_bf16), repeats, stream);
  row.graph_pooled_topk = graph_time_ms(pooled_gate_topk(device_gate), repeats, stream);
  row.graph_pooled_bf16_topk = graph_time_ms(pooled_gate_topk(device_gate_bf16), repeats, stream);
  row.graph_gate_topk = graph_time_ms(
      [&] {
        const auto from_q_k = cuda::gate_features<bfloat16>(device_gate, plan, q_view, k_view, true, workspace, stream);
        blocks = cuda::select_blocks(plan, from_q_k, gate_sequences, topk, forced, topk_storage.buffers(), workspace,
                                     stream);
      },
      repeats, stream);
  row.graph_attention = graph_time_ms(
      [&] { cuda::block_sparse_attention<bfloat16>(q_view, k_view, v_view, &blocks, options, out_view, {}, stream); },
      std::max(5, repeats / 2), stream);
  row.graph_attention_mma_sync = graph_time_ms(
      [&] {
        cuda::block_sparse_attention<bfloat16>(q_view, k_view, v_view, &blocks, options, out_view, {}, stream,
                                               cuda::PrefillKernel::mma_sync);
      },
      std::max(5, repeats / 2), stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  static_cast<void>(cudaStreamDestroy(stream));
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::int64_t> lengths{32768, 131072};
  int repeats = 20;
  std::string out_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--lengths") {
      lengths.clear();
      std::stringstream stream(value);
      std::string item;
      while (std::getline(stream, item, ',')) lengths.push_back(std::stoll(item));
    } else if (key == "--repeats") {
      repeats = std::stoi(value);
    } else if (key == "--out") {
      out_dir = value;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", key.c_str());
      return 2;
    }
  }
  const Threshold threshold{2e-3};
  const Nucleus nucleus{0.9, 1, std::numeric_limits<std::int64_t>::max()};
  cudaDeviceProp properties{};
  try {
    check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
    std::vector<Row> rows;
    for (std::int64_t tokens : lengths) {
      rows.push_back(run_length(tokens, repeats, threshold, nucleus));
      const Row& r = rows.back();
      std::printf(
          "%lld tokens: gate %.4f ms, gate from pooled %.4f ms, TopK %.4f ms, Threshold %.4f ms, Nucleus %.4f ms, "
          "attention %.4f ms (default kernel), %.4f ms (mma.sync kernel)%s\n",
          static_cast<long long>(r.tokens), r.gate, r.gate_pooled, r.topk, r.threshold, r.nucleus, r.attention,
          r.attention_mma_sync, r.overflow ? " (OVERFLOW: a capacity was too small)" : "");
      std::fflush(stdout);
    }
    std::ostringstream table;
    const std::time_t now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    table << "GPU: " << properties.name << ", " << date
          << ", B=1, H=32 (MHA), D=128, bf16, causal, gate Qavg_Kmaxminavg, "
          << "median of " << repeats << " CUDA-event timings after 3 warm-ups\n\n";
    table << "| tokens | gate: pool+project+RoPE ms | gate from pre-pooled ms | TopK 0.1 select ms (density) | "
             "Threshold "
          << threshold.tau << " select ms (density) | Nucleus " << nucleus.p
          << " select ms (density) | attention on TopK 0.1 ms: default / mma.sync kernel | (gate + TopK) / faster "
             "attention | (pre-pooled gate + TopK) / faster attention | pre-pooled gate + TopK called back to back ms: "
             "fp32 / bf16 weights | the same / faster attention |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const Row& r : rows) {
      char line[512];
      std::snprintf(line, sizeof line,
                    "| %lld | %.3f | %.3f | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.3f / %.3f | %.1f%% | %.1f%% | "
                    "%.3f / %.3f "
                    "| %.1f%% / %.1f%% |\n",
                    static_cast<long long>(r.tokens), r.gate, r.gate_pooled, r.topk, r.topk_density, r.threshold,
                    r.threshold_density, r.nucleus, r.nucleus_density, r.attention, r.attention_mma_sync,
                    100.0 * (r.gate + r.topk) / r.best_attention(),
                    100.0 * (r.gate_pooled + r.topk) / r.best_attention(), r.sequence_pooled_topk,
                    r.sequence_pooled_bf16_topk, 100.0 * r.sequence_pooled_topk / r.best_attention(),
                    100.0 * r.sequence_pooled_bf16_topk / r.best_attention());
      table << line;
    }
    table << "\nFused pooling (an engine that applies RoPE to q and k anyway, seer::cuda::rope_and_pool): "
             "RoPE pass over q and k without pooling (twice) and with the gate's pooling fused in; "
             "(pre-pooled gate + TopK + fused pooling's extra time) / faster attention.\n\n"
             "| tokens | RoPE q+k ms (plain, plain again) | RoPE q+k with pooling ms | pooling's extra ms | "
             "(pre-pooled gate + TopK) / attention | (pre-pooled gate + TopK + extra) / attention | "
             "(gate with separate pooling + TopK) / attention |\n|---|---|---|---|---|---|---|\n";
    for (const Row& r : rows) {
      char line[512];
      std::snprintf(line, sizeof line, "| %lld | %.3f, %.3f | %.3f | %.3f | %.1f%% | %.1f%% | %.1f%% |\n",
                    static_cast<long long>(r.tokens), r.rope_plain, r.rope_plain_again, r.rope_pooled,
                    r.fused_pooling(), 100.0 * (r.gate_pooled + r.topk) / r.best_attention(),
                    100.0 * (r.gate_pooled + r.topk + r.fused_pooling()) / r.best_attention(),
                    100.0 * (r.gate + r.topk) / r.best_attention());
      table << line;
    }
    table << "\nCUDA-graph replay (what an engine that captures its step sees; the host's launches and argument "
             "checks are out of the time): gate + TopK 0.1 selection captured as one graph, the attention as another; "
             "median of "
          << repeats << " timings of 10 back-to-back replays.\n\n"
          << "| tokens | gate (pool + project + RoPE) + TopK ms | pre-pooled gate + TopK ms (fp32 / bf16 weights) | "
             "attention ms: default / mma.sync kernel | (gate + TopK) / faster attention | (pre-pooled gate + TopK) / "
             "faster attention: fp32 / bf16 weights | (pre-pooled gate + TopK + fused pooling's extra) / faster "
             "attention: fp32 / bf16 weights |\n|---|---|---|---|---|---|---|\n";
    for (const Row& r : rows) {
      char line[512];
      std::snprintf(line, sizeof line,
                    "| %lld | %.3f | %.3f / %.3f | %.3f / %.3f | %.1f%% | %.1f%% / %.1f%% | %.1f%% / %.1f%% |\n",
                    static_cast<long long>(r.tokens), r.graph_gate_topk, r.graph_pooled_topk, r.graph_pooled_bf16_topk,
                    r.graph_attention, r.graph_attention_mma_sync, 100.0 * r.graph_gate_topk / r.best_graph_attention(),
                    100.0 * r.graph_pooled_topk / r.best_graph_attention(),
                    100.0 * r.graph_pooled_bf16_topk / r.best_graph_attention(),
                    100.0 * (r.graph_pooled_topk + r.fused_pooling()) / r.best_graph_attention(),
                    100.0 * (r.graph_pooled_bf16_topk + r.fused_pooling()) / r.best_graph_attention());
      table << line;
    }
    std::printf("\n%s", table.str().c_str());
    if (!out_dir.empty()) std::ofstream(out_dir + "/gate_bench.md") << table.str();
    for (const Row& r : rows)
      if (r.overflow) return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "seer_bench_gate: %s\n", error.what());
    return 1;
  }
  return 0;
}
