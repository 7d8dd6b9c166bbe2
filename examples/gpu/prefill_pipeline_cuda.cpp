// The seer pipeline with attention on an NVIDIA GPU: the CPU example engine runs the model, and at
// every layer seer::cuda::block_sparse_attention computes dense attention and block-sparse attention
// over the blocks that the LearnedGate (when a gate file is given) and the MeanPoolGate select with
// TopK (gate scoring and selection run on the CPU here; the GPU gate is a separate issue).
// It prints, per layer, the GPU times, the density, and the errors of the GPU outputs against the
// CPU's fp32 dense attention.
//
//   prefill_pipeline_cuda [--model DIR] [--text FILE] [--gates FILE] [--tokens N] [--density D]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../command_line.hpp"
#include "../llama_engine.hpp"
#include "../text_windows.hpp"
#include "cuda_layer_attention.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gate/mean_pool_gate.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/top_k.hpp"
#include "seer/training/gate_file.hpp"

namespace {

struct Options {
  std::string model = "../shared/data/models/gutenberg-byte-llama-8k";
  std::string text = "../shared/data/text/10004.txt";
  std::string gates;
  std::int64_t tokens = 8192;
  double density = 0.3;
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(argc, argv,
                           "usage: prefill_pipeline_cuda [--model DIR] [--text FILE] [--gates FILE] [--tokens N] "
                           "[--density D]");
  Options o;
  o.model = args.text("--model", o.model);
  o.text = args.text("--text", o.text);
  o.gates = args.text("--gates", o.gates);
  o.tokens = args.integer("--tokens", o.tokens);
  o.density = args.real("--density", o.density);
  args.integer("--threads", 0);  // accepted for the CPU pipeline's flags (run_pipeline.sh passes both the same)
  args.finish();
  return o;
}

// Largest absolute difference and ||a - b|| / ||b||; NaN anywhere (an unwritten output) gives NaN.
std::pair<double, double> errors(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0.0, difference = 0.0, reference = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double delta = static_cast<double>(a[i]) - b[i];
    if (std::isnan(delta)) return {NAN, NAN};
    worst = std::max(worst, std::fabs(delta));
    difference += delta * delta;
    reference += static_cast<double>(b[i]) * b[i];
  }
  return {worst, std::sqrt(difference / reference)};
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  try {
    std::string why;
    const std::string device = example::cuda_device_name(why);
    if (device.empty()) {
      std::printf("prefill_pipeline_cuda: no usable CUDA device (%s); nothing to do\n", why.c_str());
      return 0;
    }
    const auto model = engine::LlamaModel::load(options.model);
    const auto& config = model.config();
    std::vector<seer::LearnedGate> learned;
    if (!options.gates.empty()) learned = seer::training::read_gate_file(options.gates, config).gates;
    std::string text = engine::read_text_file(options.text);
    if (static_cast<std::int64_t>(text.size()) > options.tokens) text.resize(static_cast<std::size_t>(options.tokens));
    const auto tokens = engine::bytes_as_tokens(text);
    std::printf(
        "seer CUDA prefill pipeline on %s: %lld tokens, %lld layers, %lld/%lld heads, head dim %lld, bf16; "
        "TopK target density %.2f\n\n",
        device.c_str(), static_cast<long long>(tokens.size()), static_cast<long long>(config.num_layers),
        static_cast<long long>(config.num_q_heads), static_cast<long long>(config.num_kv_heads),
        static_cast<long long>(config.head_dim), options.density);
    std::printf("%5s  %-9s  %7s  %8s  %8s  %8s  %12s  %12s\n", "layer", "gate", "density", "dense ms", "sparse ms",
                "speedup", "err vs dense", "dense vs CPU");

    example::CudaLayerAttention gpu;
    const auto policy = seer::TopK::target_density(options.density);
    const auto logits = model.forward(tokens, [&](const engine::LayerAttention& call) {
      // The model continues with the CPU's fp32 dense attention, the reference for both GPU paths.
      seer::cpu::block_sparse_attention(call.q, call.k, call.v, nullptr, seer::AttentionOptions{}, call.out,
                                        seer::TensorView<float, 2>{});
      const std::vector<float> cpu_dense(call.out.data,
                                         call.out.data + call.q.max_length * call.q.heads * call.q.head_dim);
      gpu.upload(call.q, call.k, call.v);
      const auto dense = gpu.run(nullptr, 20);
      const auto [dense_max, dense_relative] = errors(dense.out, cpu_dense);
      (void)dense_max;
      auto report = [&](const char* gate, const seer::BlockSet& blocks) {
        const auto sparse = gpu.run(&blocks, 20);
        const auto [sparse_max, sparse_relative] = errors(sparse.out, dense.out);
        (void)sparse_max;
        std::printf("%5lld  %-9s  %7.3f  %8.3f  %8.3f  %7.2fx  %12.2e  %12.2e\n", static_cast<long long>(call.layer),
                    gate, blocks.density(), dense.milliseconds, sparse.milliseconds,
                    dense.milliseconds / sparse.milliseconds, sparse_relative, dense_relative);
      };
      if (!learned.empty())
        report("learned",
               seer::select_blocks(learned[call.layer].score(call.q_before_rope, call.k_before_rope), policy));
      report("mean-pool", seer::select_blocks(seer::MeanPoolGate{64}.score(call.q, call.k), policy));
    });
    std::printf("\ndense model: %.3f bits per byte on this text\n", engine::LlamaModel::bits_per_token(logits, tokens));
    std::printf(
        "(err vs dense: relative L2 error of the sparse GPU output against the dense GPU output; dense vs CPU: "
        "the GPU's bf16 dense output against the CPU's fp32 dense attention)\n");
  } catch (const seer::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
