// The training loop that distill_gates (prefill gates) and distill_decode_gates (decode gates) share,
// with the flags they share: batches of windows drawn from a fresh shuffle on every pass, a cosine learning rate, the
// validation loss on held-out windows, a progress line (step, loss, validation, learning rate, tokens/s, elapsed, time
// left), and the training settings recorded in the gate file's metadata.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "seer/core/error.hpp"
#include "seer/training/adam_w.hpp"
#include "text_windows.hpp"

namespace engine {

// The flags both trainers take, with the defaults they share; each trainer sets its own windows per book,
// steps, batch and output file before reading the command line.
struct DistillationOptions {
  std::string model = "../shared/data/models/gutenberg-byte-llama-8k";
  std::string text_dir = "../shared/data/text";
  std::string books = "10004.txt,10146.txt,10387.txt,10509.txt,11327.txt";
  std::int64_t windows_per_book = 1;
  std::int64_t tokens = 8192;
  std::int64_t steps = 1;
  std::int64_t batch = 1;
  double learning_rate = 1e-3;
  std::int64_t warmup = 20;
  unsigned seed = 1234;
  int threads = 0;
  std::string out;
};

// Reads the shared flags into `options` (their current values are the defaults).
inline void read_distillation_flags(CommandLine& args, DistillationOptions& options) {
  options.model = args.text("--model", options.model);
  options.text_dir = args.text("--text-dir", options.text_dir);
  options.books = args.text("--books", options.books);
  options.windows_per_book = args.integer("--windows-per-book", options.windows_per_book);
  options.tokens = args.integer("--tokens", options.tokens);
  options.steps = args.integer("--steps", options.steps);
  options.batch = args.integer("--batch", options.batch);
  options.learning_rate = args.real("--learning-rate", options.learning_rate);
  options.warmup = args.integer("--warmup", options.warmup);
  options.seed = static_cast<unsigned>(args.integer("--seed", options.seed));
  options.threads = static_cast<int>(args.integer("--threads", options.threads));
  options.out = args.text("--out", options.out);
}

// The checks of the shared flags; windows shorter than `min_tokens` are rejected.
inline void check_distillation_options(const DistillationOptions& options, std::int64_t min_tokens) {
  seer::require(options.windows_per_book >= 1, "--windows-per-book", "is ", options.windows_per_book,
                ", expected >= 1");
  seer::require(options.tokens >= min_tokens, "--tokens", "is ", options.tokens, ", expected >= ", min_tokens);
  seer::require(options.steps > options.warmup, "--steps", "is ", options.steps, ", expected more than --warmup (",
                options.warmup, ")");
  seer::require(options.batch >= 1, "--batch", "is ", options.batch, ", expected >= 1");
}

struct DistillationRun {
  std::int64_t steps = 0;
  std::int64_t batch = 0;  // windows per step
  double learning_rate = 0.0;
  std::int64_t warmup = 0;
  unsigned seed = 0;
  std::size_t training_windows = 0;        // windows [0, training_windows) train, the rest validate
  std::size_t windows = 0;                 // all windows
  double trained_tokens_per_window = 0.0;  // for the tokens/s figure
};

// The run the shared flags describe, over `windows` windows of which the first `training_windows` train.
inline DistillationRun distillation_run(const DistillationOptions& options, std::size_t training_windows,
                                        std::size_t windows, double trained_tokens_per_window) {
  DistillationRun run;
  run.steps = options.steps;
  run.batch = options.batch;
  run.learning_rate = options.learning_rate;
  run.warmup = options.warmup;
  run.seed = options.seed;
  run.training_windows = training_windows;
  run.windows = windows;
  run.trained_tokens_per_window = trained_tokens_per_window;
  return run;
}

struct DistillationResult {
  double initial_validation = 0.0, final_validation = 0.0, seconds = 0.0;
};

// window_loss(w, with_gradient, weight) returns window w's loss summed over layers and, when asked,
// adds weight x its gradient; zero_gradients() clears them; update(learning_rate) applies AdamW.
template <class WindowLoss, class ZeroGradients, class Update>
DistillationResult run_distillation(const DistillationRun& run, const WindowLoss& window_loss,
                                    const ZeroGradients& zero_gradients, const Update& update) {
  auto validation_loss = [&]() {
    double loss = 0.0;
    for (std::size_t w = run.training_windows; w < run.windows; ++w) loss += window_loss(w, false, 1.0);
    return run.windows > run.training_windows ? loss / static_cast<double>(run.windows - run.training_windows) : 0.0;
  };
  DistillationResult result;
  result.initial_validation = validation_loss();
  std::printf("\ntraining %lld steps, batch %lld windows, lr %.1e cosine, warmup %lld; validation loss %.4f\n",
              static_cast<long long>(run.steps), static_cast<long long>(run.batch), run.learning_rate,
              static_cast<long long>(run.warmup), result.initial_validation);
  const seer::training::CosineSchedule schedule{run.learning_rate, run.warmup, run.steps};
  std::mt19937_64 random(run.seed + 1);
  std::vector<std::size_t> order;
  std::size_t cursor = 0;
  Stopwatch clock;
  double recent_loss = 0.0;
  std::int64_t recent_steps = 0;
  const std::int64_t report_every = std::max<std::int64_t>(1, std::min<std::int64_t>(10, run.steps / 20));
  for (std::int64_t step = 0; step < run.steps; ++step) {
    zero_gradients();
    double loss = 0.0;
    for (std::int64_t i = 0; i < run.batch; ++i) {
      if (cursor == order.size()) {  // a fresh shuffle every pass over the training windows
        order.resize(run.training_windows);
        for (std::size_t w = 0; w < run.training_windows; ++w) order[w] = w;
        std::shuffle(order.begin(), order.end(), random);
        cursor = 0;
      }
      loss += window_loss(order[cursor++], true, 1.0 / static_cast<double>(run.batch));
    }
    const double learning_rate = schedule.at(step);
    update(learning_rate);
    recent_loss += loss;
    ++recent_steps;
    if ((step + 1) % report_every == 0 || step + 1 == run.steps) {
      const double elapsed = clock.seconds();
      const double rate = static_cast<double>((step + 1) * run.batch) * run.trained_tokens_per_window / elapsed;
      std::printf(
          "step %4lld/%lld  loss %.4f  validation %.4f  lr %.2e  %.0f tokens/s  elapsed %s  left %s\n",
          static_cast<long long>(step + 1), static_cast<long long>(run.steps),
          recent_loss / static_cast<double>(recent_steps), validation_loss(), learning_rate, rate,
          format_duration(elapsed).c_str(),
          format_duration(elapsed / static_cast<double>(step + 1) * static_cast<double>(run.steps - step - 1)).c_str());
      std::fflush(stdout);
      recent_loss = 0.0;
      recent_steps = 0;
    }
  }
  result.final_validation = validation_loss();
  result.seconds = clock.seconds();
  return result;
}

// The metadata every distilled gate file carries about its training.
inline std::map<std::string, std::string> distillation_metadata(const DistillationRun& run,
                                                                const DistillationResult& result,
                                                                const std::string& model, const std::string& books,
                                                                std::int64_t window_tokens) {
  char text[64];
  std::map<std::string, std::string> metadata;
  metadata["model"] = "gutenberg-byte-llama-8k (" + model + ")";
  metadata["training_text"] = "first half of " + books + ", " + std::to_string(run.training_windows) + " windows of " +
                              std::to_string(window_tokens) + " bytes";
  metadata["training_steps"] = std::to_string(run.steps);
  metadata["training_batch"] = std::to_string(run.batch);
  std::snprintf(text, sizeof(text), "%.3g", run.learning_rate);
  metadata["learning_rate"] = text;
  metadata["schedule"] = "cosine, warmup " + std::to_string(run.warmup) + ", AdamW weight decay 0";
  std::snprintf(text, sizeof(text), "%.4f -> %.4f", result.initial_validation, result.final_validation);
  metadata["validation_loss"] = text;
  return metadata;
}

}  // namespace engine
