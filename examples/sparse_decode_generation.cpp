// Sparse decoding (SeerAttention-R) in an engine, end to end, against dense decoding.
//
// The engine (llama_engine.hpp) keeps a KV cache and appends one token per decode step. Each layer's
// attention step is, for the sparse model:
//   1. KCompressionCache::update   compresses every key block the step completed (once per 64 tokens),
//   2. select_decode_blocks        scores the cached blocks with the distilled DecodeGate and keeps the
//                                  top budget/64 of them plus the first and the newest block, one list
//                                  per KV head shared by its query heads,
//   3. seer::cpu::decode_attention reads only the kept blocks.
// The dense model runs the same engine with every block read.
//
// Two measurements on a book the model never saw (a window from the second half of the book, the half
// the gates were not trained on):
//   - teacher forcing: both models read the same text; after a dense prompt, every position is a
//     decode step. Reported: how often the sparse model's most likely next byte equals the dense
//     model's (next-token agreement), the bits per byte of both, and the density (kept / cached blocks).
//   - free generation: both models continue the same prompt greedily; the two texts are printed with
//     the number of bytes they share before they first differ.
//
//   sparse_decode_generation [--model DIR] [--text FILE] [--gates FILE] [--prompt N] [--tokens N]
//                            [--budget TOKENS] [--threshold TAU] [--generate N] [--threads N]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "llama_engine.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/cpu/decode_attention.hpp"
#include "seer/decode/decode_selection.hpp"
#include "seer/decode/k_compression_cache.hpp"
#include "seer/training/decode_gate_file.hpp"
#include "text_windows.hpp"

namespace {

struct Options {
  std::string model, text, gates;
  std::int64_t prompt = 0, tokens = 0, budget = 0, generate = 0;
  double threshold = 0.0;  // > 0: DecodeThreshold instead of TokenBudget
  int threads = 0;
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(argc, argv,
                           "usage: sparse_decode_generation [--model DIR] [--text FILE] [--gates FILE] [--prompt N]\n"
                           "                                [--tokens N] [--budget TOKENS] [--threshold TAU]\n"
                           "                                [--generate N] [--threads N]");
  Options o;
  o.model = args.text("--model", "../shared/data/models/gutenberg-byte-llama-8k");
  o.text = args.text("--text", "../shared/data/text/10004.txt");
  o.gates = args.text("--gates", "bench/gate_quality/decode_gates.safetensors");
  o.prompt = args.integer("--prompt", 1024);
  o.tokens = args.integer("--tokens", 8192);
  o.budget = args.integer("--budget", 1024);
  o.threshold = args.real("--threshold", 0.0);
  o.generate = args.integer("--generate", 256);
  o.threads = static_cast<int>(args.integer("--threads", 0));
  args.finish();
  seer::require(o.prompt >= 1, "--prompt", "is ", o.prompt, ", expected >= 1");
  seer::require(o.tokens > o.prompt + 1, "--tokens", "is ", o.tokens, ", expected > --prompt + 1");
  seer::require(o.budget >= 0, "--budget", "is ", o.budget, ", expected >= 0");
  seer::require(o.generate >= 0, "--generate", "is ", o.generate, ", expected >= 0");
  return o;
}

// One decoding model: the engine's KV cache plus, when sparse, the gate state of every layer.
class Decoder {
 public:
  Decoder(const engine::LlamaModel& model, std::int64_t capacity, const std::vector<seer::DecodeGate>* gates,
          const Options& options)
      : model_(model), cache_(model.config(), capacity), gates_(gates), options_(options) {
    if (gates_ == nullptr) return;
    for (std::size_t l = 0; l < gates_->size(); ++l)
      compressed_.emplace_back(1, capacity / (*gates_)[l].block_size(), (*gates_)[l].num_kv_heads(),
                               (*gates_)[l].hidden_size());
  }

  // Appends tokens; returns their logits. A prompt (many tokens) is attended densely by the prefill
  // executor; steps of one token go through the decode path.
  engine::RowMatrix extend(const std::vector<std::int32_t>& tokens) {
    return model_.extend(cache_, tokens, [&](const engine::CachedLayerAttention& call) { attend(call); });
  }

  double density() const { return available_ == 0 ? 0.0 : static_cast<double>(kept_) / available_; }

 private:
  void attend(const engine::CachedLayerAttention& call) {
    const seer::TensorView<float, 2> no_lse{};
    const auto l = static_cast<std::size_t>(call.layer);
    if (gates_ != nullptr) compressed_[l].update(call.cache_before_rope, (*gates_)[l], nullptr, options_.threads);
    if (call.q.max_length > 1) {  // the prompt: dense prefill over the cache's first tokens
      const auto& kv = call.cache;
      const seer::TensorView<const float, 4> keys{
          kv.keys, {1, kv.length(0), kv.heads, kv.head_dim}, {kv.page_stride, kv.token_stride, kv.head_stride, 1}};
      auto values = keys;
      values.data = kv.values;
      seer::cpu::block_sparse_attention(call.q, seer::padded_batch(keys, "k"), seer::padded_batch(values, "v"), nullptr,
                                        seer::AttentionOptions{}, call.out, no_lse, options_.threads);
      return;
    }
    if (gates_ == nullptr) {
      seer::cpu::decode_attention(call.q, call.cache, nullptr, seer::AttentionOptions{}, call.out, no_lse,
                                  options_.threads);
      return;
    }
    const auto& gate = (*gates_)[l];
    const seer::DecodeBlockList blocks =
        options_.threshold > 0.0
            ? seer::select_decode_blocks(gate, compressed_[l], call.q_before_rope, call.cache,
                                         seer::DecodeThreshold{options_.threshold}, options_.threads)
            : seer::select_decode_blocks(gate, compressed_[l], call.q_before_rope, call.cache,
                                         seer::TokenBudget{options_.budget}, options_.threads);
    for (const auto count : blocks.counts()) kept_ += count;
    available_ += gate.num_kv_heads() * ((call.cache.length(0) + gate.block_size() - 1) / gate.block_size());
    const seer::DecodeBlockListView view = blocks.view();
    seer::cpu::decode_attention(call.q, call.cache, &view, seer::AttentionOptions{}, call.out, no_lse,
                                options_.threads);
  }

  const engine::LlamaModel& model_;
  engine::KvCache cache_;
  const std::vector<seer::DecodeGate>* gates_;
  const Options& options_;
  std::vector<seer::KCompressionCache<float>> compressed_;
  std::int64_t kept_ = 0, available_ = 0;
};

std::int32_t most_likely(const engine::RowMatrix& logits, Eigen::Index row) {
  Eigen::Index best = 0;
  logits.row(row).maxCoeff(&best);
  return static_cast<std::int32_t>(best);
}

std::string printable(const std::vector<std::int32_t>& tokens) {
  std::string text;
  for (const auto t : tokens) text += (t == '\n' ? ' ' : (t >= 32 && t < 127 ? static_cast<char>(t) : '?'));
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    const auto model = engine::LlamaModel::load(options.model);
    const auto gate_file = seer::training::read_decode_gate_file(options.gates, model.config());
    seer::require(static_cast<std::int64_t>(gate_file.gates.size()) == model.config().num_layers, "--gates", "holds ",
                  gate_file.gates.size(), " layers, the model has ", model.config().num_layers);
    const std::string directory = options.text.substr(0, options.text.find_last_of('/'));
    const std::string book = options.text.substr(options.text.find_last_of('/') + 1);
    const auto window = engine::book_windows(directory, book, engine::BookHalf::evaluation, 1, options.tokens).front();
    const auto tokens = engine::bytes_as_tokens(window.bytes);
    std::printf("model %s, %ld layers; decode gates %s\n", options.model.c_str(),
                static_cast<long>(model.config().num_layers), options.gates.c_str());
    std::printf("text: %s bytes [%ld, %ld) (evaluation half); prompt %ld bytes, then %ld decode steps\n", book.c_str(),
                static_cast<long>(window.offset), static_cast<long>(window.offset + options.tokens),
                static_cast<long>(options.prompt), static_cast<long>(options.tokens - options.prompt));
    if (options.threshold > 0.0)
      std::printf("selection: DecodeThreshold tau = %g, plus the first and the newest block\n", options.threshold);
    else
      std::printf("selection: TokenBudget %ld tokens (%ld blocks), plus the first and the newest block\n",
                  static_cast<long>(options.budget), static_cast<long>(options.budget / 64));

    // Teacher forcing.
    Decoder dense(model, options.tokens, nullptr, options), sparse(model, options.tokens, &gate_file.gates, options);
    const std::vector<std::int32_t> prompt(tokens.begin(), tokens.begin() + options.prompt);
    engine::RowMatrix dense_logits = dense.extend(prompt), sparse_logits = sparse.extend(prompt);
    std::int64_t agree = 0, steps = 0;
    double dense_bits = 0.0, sparse_bits = 0.0;
    const engine::Stopwatch clock;
    for (std::int64_t t = options.prompt; t < options.tokens; ++t) {
      // Logits of position t - 1 predict token t.
      const Eigen::Index last = dense_logits.rows() - 1;
      agree += most_likely(dense_logits, last) == most_likely(sparse_logits, last);
      dense_bits += engine::LlamaModel::bits_of_token(dense_logits, last, tokens[t]);
      sparse_bits += engine::LlamaModel::bits_of_token(sparse_logits, last, tokens[t]);
      ++steps;
      if (t + 1 == options.tokens) break;
      dense_logits = dense.extend({tokens[t]});
      sparse_logits = sparse.extend({tokens[t]});
      const std::int64_t done = t + 1 - options.prompt, total = options.tokens - options.prompt;
      if (done % 512 == 0) {
        const double elapsed = clock.seconds();
        std::printf("  step %5ld/%ld  agreement %.2f%%  %.0f steps/s (both models)  elapsed %s  left %s\n",
                    static_cast<long>(done), static_cast<long>(total), 100.0 * agree / steps, done / elapsed,
                    engine::format_duration(elapsed).c_str(),
                    engine::format_duration(elapsed / done * (total - done)).c_str());
        std::fflush(stdout);
      }
    }
    std::printf("\nteacher forcing over %ld decode steps (%.1f s):\n", static_cast<long>(steps), clock.seconds());
    std::printf("  next-token agreement (sparse argmax == dense argmax): %.2f%%\n", 100.0 * agree / steps);
    std::printf("  bits per byte: dense %.4f, sparse %.4f (%+.4f)\n", dense_bits / steps, sparse_bits / steps,
                (sparse_bits - dense_bits) / steps);
    std::printf("  density (kept / cached blocks, all layers and steps): %.3f\n", sparse.density());

    // Free greedy generation from the prompt.
    if (options.generate > 0) {
      Decoder dense_writer(model, options.prompt + options.generate + 1, nullptr, options);
      Decoder sparse_writer(model, options.prompt + options.generate + 1, &gate_file.gates, options);
      std::vector<std::int32_t> dense_text, sparse_text;
      auto dense_next = most_likely(dense_writer.extend(prompt), options.prompt - 1);
      auto sparse_next = most_likely(sparse_writer.extend(prompt), options.prompt - 1);
      for (std::int64_t i = 0; i < options.generate; ++i) {
        dense_text.push_back(dense_next);
        sparse_text.push_back(sparse_next);
        if (i + 1 == options.generate) break;
        dense_next = most_likely(dense_writer.extend({dense_next}), 0);
        sparse_next = most_likely(sparse_writer.extend({sparse_next}), 0);
      }
      std::size_t shared = 0;
      while (shared < dense_text.size() && dense_text[shared] == sparse_text[shared]) ++shared;
      std::printf("\ngreedy generation, %ld bytes after the prompt (density %.3f):\n",
                  static_cast<long>(options.generate), sparse_writer.density());
      std::printf("  prompt ends: ...%s\n",
                  printable({prompt.end() - std::min<std::int64_t>(80, options.prompt), prompt.end()}).c_str());
      std::printf("  dense : %s\n", printable(dense_text).c_str());
      std::printf("  sparse: %s\n", printable(sparse_text).c_str());
      std::printf("  identical for the first %zu of %zu bytes\n", shared, dense_text.size());
    }
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "sparse_decode_generation: %s\n", error.what());
    return 1;
  }
}
