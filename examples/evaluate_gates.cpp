// Evaluates gates on a real model: bits per byte of the model with every layer's attention replaced
// by seer (gate -> select_blocks -> cpu::block_sparse_attention, the sparse output continuing the
// model), against dense attention, and per layer the share of the dense attention mass that each
// gate's kept blocks capture.
//
// Gates: LearnedGate (a gate file from distill_gates), MeanPoolGate, OracleGate. Policies: TopK at
// target densities, Threshold and Nucleus at settings calibrated on a window of the TRAINING half of
// the first book to land near the same densities (the measured densities are reported). Selection
// uses the library defaults: ForcedBlocks{} keeps the diagonal block of every row, nothing else.
//
// Windows: --windows-per-book windows of --tokens bytes from the SECOND half of each book (the
// gates were distilled on the first halves). bits per byte = mean over all next-byte predictions of
// a window, then the mean over windows.
//
// Captured mass (on the dense model's attention): for query block m of head h,
// A[m, n] = mean over the rows i of block m of sum_{j in key block n} P_i[j]; a BlockSet captures
// mean over (h, m) of sum_{kept n} A[m, n]. Its blocks are selected from the dense run's q and k.
//
// Writes results.md (tables), results.csv and bpb_vs_density.svg to --out-dir.
//
//   evaluate_gates [--model DIR] [--gates FILE] [--text-dir DIR] [--books a.txt,b.txt]
//                  [--windows-per-book N] [--tokens N] [--densities 0.5,0.3] [--threads N] [--out-dir DIR]
//                  [--plot-only]   (redraw the SVG from out-dir/results.csv)
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "llama_engine.hpp"
#include "seer/cpu/block_sparse_attention.hpp"
#include "seer/gate/learned_gate.hpp"
#include "seer/gate/mean_pool_gate.hpp"
#include "seer/gate/oracle_gate.hpp"
#include "seer/selection/nucleus.hpp"
#include "seer/selection/select_blocks.hpp"
#include "seer/selection/threshold.hpp"
#include "seer/selection/top_k.hpp"
#include "seer/training/gate_file.hpp"
#include "text_windows.hpp"

namespace {

struct Options {
  std::string model = "../shared/data/models/gutenberg-byte-llama-8k";
  std::string gates = "bench/gate_quality/learned_gates.safetensors";
  std::string text_dir = "../shared/data/text";
  std::string books = "10004.txt,10146.txt,10387.txt,10509.txt,11327.txt";
  std::int64_t windows_per_book = 1;
  std::int64_t tokens = 8192;
  std::string densities = "0.5,0.3,0.2,0.1";
  int threads = 0;
  std::string out_dir = "bench/gate_quality";
  bool plot_only = false;  // redraw bpb_vs_density.svg from out_dir/results.csv
};

Options parse_options(int argc, char** argv) {
  engine::CommandLine args(
      argc, argv,
      "usage: evaluate_gates [--model DIR] [--gates FILE] [--text-dir DIR] [--books a.txt,b.txt]\n"
      "                      [--windows-per-book N] [--tokens N] [--densities 0.5,0.3,...] [--threads N]\n"
      "                      [--out-dir DIR] [--plot-only]");
  Options o;
  o.model = args.text("--model", o.model);
  o.gates = args.text("--gates", o.gates);
  o.text_dir = args.text("--text-dir", o.text_dir);
  o.books = args.text("--books", o.books);
  o.windows_per_book = args.integer("--windows-per-book", o.windows_per_book);
  o.tokens = args.integer("--tokens", o.tokens);
  o.densities = args.text("--densities", o.densities);
  o.threads = static_cast<int>(args.integer("--threads", o.threads));
  o.out_dir = args.text("--out-dir", o.out_dir);
  o.plot_only = args.flag("--plot-only");
  args.finish();
  seer::require(o.windows_per_book >= 1, "--windows-per-book", "is ", o.windows_per_book, ", expected >= 1");
  seer::require(o.tokens >= 64, "--tokens", "is ", o.tokens, ", expected >= 64");
  return o;
}

enum class GateKind { learned, mean_pool, oracle };
enum class PolicyKind { dense, top_k, threshold, nucleus };

const char* gate_name(GateKind gate) {
  switch (gate) {
    case GateKind::learned:
      return "LearnedGate";
    case GateKind::mean_pool:
      return "MeanPoolGate";
    case GateKind::oracle:
      return "OracleGate";
  }
  return "?";
}

const char* policy_name(PolicyKind policy) {
  switch (policy) {
    case PolicyKind::dense:
      return "dense";
    case PolicyKind::top_k:
      return "TopK";
    case PolicyKind::threshold:
      return "Threshold";
    case PolicyKind::nucleus:
      return "Nucleus";
  }
  return "?";
}

// One evaluated configuration and what was measured for it.
struct Setting {
  GateKind gate = GateKind::learned;
  PolicyKind policy = PolicyKind::dense;
  double parameter = 1.0;                               // TopK density, Threshold tau, Nucleus p
  double target_density = 1.0;                          // the density it stands for
  std::vector<double> bits;                             // per window
  std::int64_t kept = 0, visible = 0;                   // seer run, all layers and windows
  std::vector<double> captured_sum;                     // per layer, over windows (dense run)
  std::vector<std::int64_t> layer_kept, layer_visible;  // per layer, dense-run selection

  std::string label() const {
    if (policy == PolicyKind::dense) return "dense attention";
    char text[96];
    const char* what = policy == PolicyKind::top_k ? "density" : policy == PolicyKind::threshold ? "tau" : "p";
    std::snprintf(text, sizeof(text), "%s + %s (%s %.4g)", gate_name(gate), policy_name(policy), what, parameter);
    return text;
  }
  double mean_bits() const {
    double total = 0.0;
    for (double b : bits) total += b;
    return bits.empty() ? 0.0 : total / static_cast<double>(bits.size());
  }
  double density() const { return visible ? static_cast<double>(kept) / static_cast<double>(visible) : 1.0; }
};

// Every row of a gate's scores computed once, so many policies can select from them cheaply.
class CachedScores {
 public:
  template <class Scores>
  explicit CachedScores(const Scores& scores, int threads) : heads_(scores.heads()), sequences_(scores.sequences()) {
    offsets_.push_back(0);
    for (const auto& g : sequences_)
      for (std::int64_t h = 0; h < heads_; ++h)
        for (std::int64_t m = 0; m < g.query_blocks(); ++m)
          offsets_.push_back(offsets_.back() + g.visible_key_blocks(m));
    logits_.resize(static_cast<std::size_t>(offsets_.back()));
    const auto per_sequence = [&](std::int64_t b) { return heads_ * sequences_[b].query_blocks(); };
    std::int64_t rows = 0;
    for (std::size_t b = 0; b < sequences_.size(); ++b) rows += per_sequence(static_cast<std::int64_t>(b));
    seer::parallel_for(rows, threads, [&](std::int64_t row) {
      std::int64_t b = 0, first = 0;
      while (row >= first + per_sequence(b)) first += per_sequence(b++);
      const std::int64_t local = row - first, m_count = sequences_[b].query_blocks();
      scores.score_row(b, local / m_count, local % m_count, logits_.data() + offsets_[row]);
    });
  }
  std::int64_t heads() const { return heads_; }
  const std::vector<seer::BlockGeometry>& sequences() const { return sequences_; }
  void score_row(std::int64_t b, std::int64_t h, std::int64_t m, double* logits) const {
    std::int64_t row = 0;
    for (std::int64_t s = 0; s < b; ++s) row += heads_ * sequences_[s].query_blocks();
    row += h * sequences_[b].query_blocks() + m;
    std::copy(logits_.begin() + offsets_[row], logits_.begin() + offsets_[row + 1], logits);
  }

 private:
  std::int64_t heads_;
  std::vector<seer::BlockGeometry> sequences_;
  std::vector<std::int64_t> offsets_;
  std::vector<double> logits_;
};

seer::BlockSet select(const CachedScores& scores, const Setting& s, int threads) {
  switch (s.policy) {
    case PolicyKind::top_k:
      return seer::select_blocks(scores, seer::TopK::target_density(s.parameter), {}, threads);
    case PolicyKind::threshold:
      return seer::select_blocks(scores, seer::Threshold{s.parameter}, {}, threads);
    case PolicyKind::nucleus:
      return seer::select_blocks(scores, seer::Nucleus{s.parameter}, {}, threads);
    case PolicyKind::dense:
      break;
  }
  return seer::all_visible_blocks(scores.heads(), scores.sequences());
}

CachedScores gate_scores(GateKind gate, const seer::LearnedGate& learned, const engine::LayerAttention& call,
                         int threads) {
  switch (gate) {
    case GateKind::learned:
      return CachedScores(learned.score(call.q_before_rope, call.k_before_rope, true, threads), threads);
    case GateKind::mean_pool:
      return CachedScores(seer::MeanPoolGate{64}.score(call.q, call.k, true, threads), threads);
    case GateKind::oracle:
      break;
  }
  return CachedScores(seer::OracleGate{}.score(call.q, call.k, seer::AttentionOptions{}, 64), threads);
}

// A[h][m * key_blocks + n]: dense attention mass of query block m on key block n, averaged over the
// block's rows (float: these are shares of a probability, not a reference result).
std::vector<std::vector<float>> block_attention_mass(const engine::LayerAttention& call, int threads) {
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t length = call.q.length(0), heads = call.q.heads, dim = call.q.head_dim, block = 64;
  const std::int64_t blocks = seer::BlockGeometry::ceil_div(length, block), group = heads / call.k.heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<std::vector<float>> mass(static_cast<std::size_t>(heads),
                                       std::vector<float>(static_cast<std::size_t>(blocks * blocks), 0.0f));
  seer::parallel_for(heads * blocks, threads, [&](std::int64_t unit) {
    const std::int64_t h = unit / blocks, m = unit % blocks;
    const std::int64_t first = m * block, rows = std::min(block, length - first), keys = first + rows;
    Matrix q(rows, dim), k(keys, dim);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t d = 0; d < dim; ++d) q(r, d) = call.q.vector(0, first + r, h)[d];
    for (std::int64_t j = 0; j < keys; ++j)
      for (std::int64_t d = 0; d < dim; ++d) k(j, d) = call.k.vector(0, j, h / group)[d];
    Matrix p = (q * k.transpose()) * scale;
    float* out = mass[h].data() + m * blocks;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t visible = first + r + 1;
      auto row = p.row(r).head(visible);
      const float peak = row.maxCoeff();
      row = (row.array() - peak).exp().matrix();
      row /= row.sum();
      for (std::int64_t j = 0; j < visible; ++j) out[j / block] += row(j) / static_cast<float>(rows);
    }
  });
  return mass;
}

// The training loss of §5.1 (x 10, torch KLDivLoss mean, first quarter of rows dropped) of a gate's
// scores against the 2-D ground truth, given as the oracle's logits (log GT).
double kl_to_ground_truth(const CachedScores& gate, const CachedScores& oracle) {
  const seer::BlockGeometry& g = gate.sequences()[0];
  const std::int64_t first = g.query_blocks() / 4;
  std::vector<double> logits(static_cast<std::size_t>(g.key_blocks())), truth(logits.size());
  double total = 0.0;
  for (std::int64_t h = 0; h < gate.heads(); ++h)
    for (std::int64_t m = first; m < g.query_blocks(); ++m) {
      const std::int64_t visible = g.visible_key_blocks(m);
      gate.score_row(0, h, m, logits.data());
      oracle.score_row(0, h, m, truth.data());
      double peak = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (std::int64_t n = 0; n < visible; ++n) peak = std::max(peak, logits[n]);
      for (std::int64_t n = 0; n < visible; ++n) sum += std::exp(logits[n] - peak);
      const double log_normaliser = peak + std::log(sum);
      for (std::int64_t n = 0; n < visible; ++n)
        if (std::isfinite(truth[n])) total += std::exp(truth[n]) * (truth[n] - (logits[n] - log_normaliser));
    }
  return 10.0 * total / static_cast<double>(gate.heads() * (g.query_blocks() - first) * g.key_blocks());
}

std::int64_t visible_blocks(const seer::BlockSet& blocks) {
  std::int64_t visible = 0;
  for (const auto& g : blocks.sequences())
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) visible += g.visible_key_blocks(m);
  return visible * blocks.heads();
}

double captured_mass(const seer::BlockSet& blocks, const std::vector<std::vector<float>>& mass) {
  const seer::BlockGeometry& g = blocks.sequences()[0];
  const std::int64_t key_blocks = g.key_blocks();
  double total = 0.0;
  std::int64_t rows = 0;
  for (std::int64_t h = 0; h < blocks.heads(); ++h)
    for (std::int64_t m = 0; m < g.query_blocks(); ++m) {
      const std::int64_t row = blocks.row_index(0, h, m);
      for (const std::int32_t* n = blocks.row_begin(row); n != blocks.row_end(row); ++n)
        total += mass[h][m * key_blocks + *n];
      ++rows;
    }
  return total / static_cast<double>(rows);
}

// Density of a policy over every layer of one dense run, for calibration.
struct Calibration {
  std::vector<double> grid;
  std::vector<std::int64_t> kept;
  std::int64_t visible = 0;
};

std::vector<double> threshold_grid() {
  std::vector<double> grid;
  for (double tau = 1e-4; tau < 0.5; tau *= 1.12) grid.push_back(tau);
  return grid;
}
std::vector<double> nucleus_grid() {
  std::vector<double> grid;
  for (double missing = 0.95; missing > 1e-4; missing /= 1.12) grid.push_back(1.0 - missing);
  return grid;
}

double closest(const Calibration& c, double target) {
  double best = c.grid.front(), best_distance = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < c.grid.size(); ++i) {
    const double density = static_cast<double>(c.kept[i]) / static_cast<double>(c.visible);
    if (std::fabs(density - target) < best_distance) {
      best_distance = std::fabs(density - target);
      best = c.grid[i];
    }
  }
  return best;
}

std::string format(const char* pattern, double value) {
  char text[64];
  std::snprintf(text, sizeof(text), pattern, value);
  return text;
}

// Two panels: every setting, and a zoom near dense attention where the TopK lines separate (lines
// are clipped to the panel). One line per (gate, policy), dense attention dashed.
void write_svg(const std::string& path, const std::vector<Setting>& settings, double dense_bits) {
  std::map<std::string, std::vector<std::pair<double, double>>> series;
  double high = dense_bits, low = dense_bits;
  for (const auto& s : settings) {
    if (s.policy == PolicyKind::dense) continue;
    const std::pair<double, double> point{s.density(), s.mean_bits()};
    if (s.policy == PolicyKind::top_k && s.parameter >= 1.0) {  // all blocks: the same for every gate
      for (const GateKind gate : {GateKind::learned, GateKind::mean_pool, GateKind::oracle})
        series[std::string(gate_name(gate)) + " + TopK"].push_back(point);
    } else {
      series[std::string(gate_name(s.gate)) + " + " + policy_name(s.policy)].push_back(point);
    }
    high = std::max(high, s.mean_bits());
    low = std::min(low, s.mean_bits());
  }
  const double panel_w = 380, panel_h = 360, top = 50, left = 70, gap = 90, legend_x = left + 2 * panel_w + gap + 20;
  const double width = legend_x + 230, height = top + panel_h + 60;
  const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::ofstream svg(path);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg << "<text x=\"" << left << "\" y=\"22\" font-size=\"14\">gutenberg-byte-llama-8k: bits per byte vs measured "
      << "density (second halves of the books, 8192-byte windows)</text>\n";
  auto panel = [&](int index, double y_low, double y_high, const char* title) {
    const double x0 = left + index * (panel_w + gap);
    auto x = [&](double density) { return x0 + density * panel_w; };
    auto y = [&](double bits) { return top + (y_high - bits) / (y_high - y_low) * panel_h; };
    svg << "<clipPath id=\"panel" << index << "\"><rect x=\"" << x0 << "\" y=\"" << top << "\" width=\"" << panel_w
        << "\" height=\"" << panel_h << "\"/></clipPath>\n";
    svg << "<text x=\"" << x0 << "\" y=\"" << top - 8 << "\">" << title << "</text>\n";
    svg << "<rect x=\"" << x0 << "\" y=\"" << top << "\" width=\"" << panel_w << "\" height=\"" << panel_h
        << "\" fill=\"none\" stroke=\"black\"/>\n";
    for (int i = 0; i <= 10; i += 2) {
      const double d = i / 10.0;
      svg << "<line x1=\"" << x(d) << "\" y1=\"" << top + panel_h << "\" x2=\"" << x(d) << "\" y2=\""
          << top + panel_h + 5 << "\" stroke=\"black\"/><text x=\"" << x(d) << "\" y=\"" << top + panel_h + 18
          << "\" text-anchor=\"middle\">" << format("%.1f", d) << "</text>\n";
    }
    for (int i = 0; i <= 6; ++i) {
      const double b = y_low + (y_high - y_low) * i / 6.0;
      svg << "<line x1=\"" << x0 - 5 << "\" y1=\"" << y(b) << "\" x2=\"" << x0 << "\" y2=\"" << y(b)
          << "\" stroke=\"black\"/><text x=\"" << x0 - 8 << "\" y=\"" << y(b) + 4 << "\" text-anchor=\"end\">"
          << format("%.3f", b) << "</text>\n";
    }
    svg << "<text x=\"" << x0 + panel_w / 2 << "\" y=\"" << top + panel_h + 38
        << "\" text-anchor=\"middle\">density (kept / causally visible blocks)</text>\n";
    svg << "<text x=\"" << x0 - 55 << "\" y=\"" << top + panel_h / 2
        << "\" text-anchor=\"middle\" transform=\"rotate(-90 " << x0 - 55 << " " << top + panel_h / 2
        << ")\">bits per byte</text>\n";
    svg << "<g clip-path=\"url(#panel" << index << ")\">\n";
    svg << "<line x1=\"" << x(0) << "\" y1=\"" << y(dense_bits) << "\" x2=\"" << x(1) << "\" y2=\"" << y(dense_bits)
        << "\" stroke=\"black\" stroke-dasharray=\"6,4\"/>\n";
    std::size_t color = 0;
    for (auto& [name, points] : series) {
      std::sort(points.begin(), points.end());
      const char* c = colors[color++ % 8];
      const bool dashed = name.find("TopK") == std::string::npos;
      svg << "<polyline fill=\"none\" stroke=\"" << c << "\" stroke-width=\"2\""
          << (dashed ? " stroke-dasharray=\"3,3\"" : "") << " points=\"";
      for (const auto& [d, b] : points) svg << x(d) << "," << y(b) << " ";
      svg << "\"/>\n";
      for (const auto& [d, b] : points)
        svg << "<circle cx=\"" << x(d) << "\" cy=\"" << y(b) << "\" r=\"3\" fill=\"" << c << "\"/>\n";
    }
    svg << "</g>\n";
  };
  const double pad = std::max(0.002, (high - low) * 0.05);
  panel(0, low - pad, high + pad, "all settings");
  panel(1, dense_bits - 0.002, dense_bits + 0.03, "zoom: within 0.03 bits of dense");
  double legend_y = top + 10;
  svg << "<line x1=\"" << legend_x << "\" y1=\"" << legend_y << "\" x2=\"" << legend_x + 30 << "\" y2=\"" << legend_y
      << "\" stroke=\"black\" stroke-dasharray=\"6,4\"/><text x=\"" << legend_x + 35 << "\" y=\"" << legend_y + 4
      << "\">dense attention</text>\n";
  std::size_t color = 0;
  for (const auto& entry : series) {
    const char* c = colors[color++ % 8];
    const bool dashed = entry.first.find("TopK") == std::string::npos;
    legend_y += 20;
    svg << "<line x1=\"" << legend_x << "\" y1=\"" << legend_y << "\" x2=\"" << legend_x + 30 << "\" y2=\"" << legend_y
        << "\" stroke=\"" << c << "\" stroke-width=\"2\"" << (dashed ? " stroke-dasharray=\"3,3\"" : "")
        << "/><text x=\"" << legend_x + 35 << "\" y=\"" << legend_y + 4 << "\">" << entry.first << "</text>\n";
  }
  svg << "</svg>\n";
}

// Settings back from a results.csv this program wrote (for --plot-only).
std::vector<Setting> read_results_csv(const std::string& path, double& dense_bits) {
  const std::string text = engine::read_text_file(path);
  std::vector<Setting> settings;
  std::size_t at = text.find('\n');
  while (at != std::string::npos && at + 1 < text.size()) {
    const std::size_t end = text.find('\n', at + 1);
    const auto fields = engine::split_list(text.substr(at + 1, end - at - 1));
    at = end;
    if (fields.size() != 6) throw seer::FormatError(path, "expected 6 comma-separated fields per line");
    Setting s;
    s.policy = fields[1] == "TopK"        ? PolicyKind::top_k
               : fields[1] == "Threshold" ? PolicyKind::threshold
               : fields[1] == "Nucleus"   ? PolicyKind::nucleus
                                          : PolicyKind::dense;
    s.gate = fields[0] == "MeanPoolGate" ? GateKind::mean_pool
             : fields[0] == "OracleGate" ? GateKind::oracle
                                         : GateKind::learned;
    s.parameter = std::atof(fields[2].c_str());
    s.target_density = std::atof(fields[3].c_str());
    s.visible = 1000000;
    s.kept = std::llround(std::atof(fields[4].c_str()) * 1e6);
    s.bits.push_back(std::atof(fields[5].c_str()));
    if (s.policy == PolicyKind::dense) dense_bits = s.bits.back();
    settings.push_back(s);
  }
  return settings;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    if (options.plot_only) {
      double dense_bits = 0.0;
      const auto settings = read_results_csv(options.out_dir + "/results.csv", dense_bits);
      write_svg(options.out_dir + "/bpb_vs_density.svg", settings, dense_bits);
      std::printf("wrote %s/bpb_vs_density.svg\n", options.out_dir.c_str());
      return 0;
    }
    engine::Stopwatch clock;
    const auto model = engine::LlamaModel::load(options.model);
    const auto& config = model.config();
    const auto gate_file = seer::training::read_gate_file(options.gates, config);
    const auto& gates = gate_file.gates;
    const auto books = engine::split_list(options.books);
    std::vector<double> densities;
    for (const auto& d : engine::split_list(options.densities)) densities.push_back(std::atof(d.c_str()));

    std::vector<engine::TextWindow> windows;
    for (const auto& book : books)
      for (auto& w : engine::book_windows(options.text_dir, book, engine::BookHalf::evaluation,
                                          options.windows_per_book, options.tokens))
        windows.push_back(std::move(w));
    const auto layers = static_cast<std::size_t>(config.num_layers);
    auto dense_attention = [&](const engine::LayerAttention& call) {
      seer::cpu::block_sparse_attention(call.q, call.k, call.v, nullptr, seer::AttentionOptions{}, call.out,
                                        seer::TensorView<float, 2>{}, options.threads);
    };

    // Calibration of Threshold tau and Nucleus p on a window of the TRAINING half of the first book.
    std::printf("evaluate_gates: calibrating Threshold / Nucleus on %s (training half)\n", books.front().c_str());
    std::fflush(stdout);
    const auto calibration_window =
        engine::book_windows(options.text_dir, books.front(), engine::BookHalf::training, 1, options.tokens).front();
    std::map<std::pair<GateKind, PolicyKind>, Calibration> calibrations;
    for (const GateKind gate : {GateKind::learned, GateKind::mean_pool})
      for (const PolicyKind policy : {PolicyKind::threshold, PolicyKind::nucleus}) {
        Calibration& c = calibrations[{gate, policy}];
        c.grid = policy == PolicyKind::threshold ? threshold_grid() : nucleus_grid();
        c.kept.assign(c.grid.size(), 0);
      }
    model.forward(engine::bytes_as_tokens(calibration_window.bytes), [&](const engine::LayerAttention& call) {
      dense_attention(call);
      for (const GateKind gate : {GateKind::learned, GateKind::mean_pool}) {
        const CachedScores scores = gate_scores(gate, gates[call.layer], call, options.threads);
        for (const PolicyKind policy : {PolicyKind::threshold, PolicyKind::nucleus}) {
          Calibration& c = calibrations[{gate, policy}];
          for (std::size_t i = 0; i < c.grid.size(); ++i) {
            Setting s;
            s.policy = policy;
            s.parameter = c.grid[i];
            const auto blocks = select(scores, s, options.threads);
            c.kept[i] += blocks.kept_blocks();
            if (i == 0) c.visible += visible_blocks(blocks);
          }
        }
      }
    });

    std::vector<Setting> settings;
    settings.push_back(Setting{});  // dense
    {
      Setting full;  // TopK at density 1.0 keeps every visible block whatever the gate: one run for all
      full.gate = GateKind::learned;
      full.policy = PolicyKind::top_k;
      full.parameter = 1.0;
      settings.push_back(full);
    }
    for (const double d : densities)
      for (const GateKind gate : {GateKind::learned, GateKind::mean_pool, GateKind::oracle}) {
        Setting s;
        s.gate = gate;
        s.policy = PolicyKind::top_k;
        s.parameter = s.target_density = d;
        settings.push_back(s);
      }
    for (const GateKind gate : {GateKind::learned, GateKind::mean_pool})
      for (const PolicyKind policy : {PolicyKind::threshold, PolicyKind::nucleus})
        for (const double d : densities) {
          Setting s;
          s.gate = gate;
          s.policy = policy;
          s.target_density = d;
          s.parameter = closest(calibrations[{gate, policy}], d);
          settings.push_back(s);
        }
    for (auto& s : settings) {
      s.captured_sum.assign(layers, 0.0);
      s.layer_kept.assign(layers, 0);
      s.layer_visible.assign(layers, 0);
    }
    std::printf("calibrated in %s; %zu settings x %zu windows of %lld bytes (second halves of %zu books)\n",
                engine::format_duration(clock.seconds()).c_str(), settings.size(), windows.size(),
                static_cast<long long>(options.tokens), books.size());
    std::fflush(stdout);

    std::map<GateKind, double> distillation_kl;
    const double runs_total = static_cast<double>(windows.size() * settings.size());
    double runs_done = 0.0;
    engine::Stopwatch evaluation;
    for (std::size_t w = 0; w < windows.size(); ++w) {
      const auto tokens = engine::bytes_as_tokens(windows[w].bytes);
      for (std::size_t si = 0; si < settings.size(); ++si) {
        Setting& s = settings[si];
        engine::Stopwatch run;
        const auto logits = model.forward(tokens, [&](const engine::LayerAttention& call) {
          if (s.policy == PolicyKind::dense) {
            // The dense run also measures the mass every setting's blocks capture on dense attention.
            dense_attention(call);
            const auto mass = block_attention_mass(call, options.threads);
            std::map<GateKind, CachedScores> scores;
            for (auto& other : settings) {
              if (other.policy == PolicyKind::dense) continue;
              if (!scores.count(other.gate))
                scores.emplace(other.gate, gate_scores(other.gate, gates[call.layer], call, options.threads));
              const auto blocks = select(scores.at(other.gate), other, options.threads);
              other.captured_sum[call.layer] += captured_mass(blocks, mass);
              other.layer_kept[call.layer] += blocks.kept_blocks();
              other.layer_visible[call.layer] += visible_blocks(blocks);
            }
            // The distillation objective on held-out text: the oracle's logits are log GT.
            for (const GateKind gate : {GateKind::learned, GateKind::mean_pool})
              distillation_kl[gate] += kl_to_ground_truth(scores.at(gate), scores.at(GateKind::oracle));
            return;
          }
          const CachedScores scores = gate_scores(s.gate, gates[call.layer], call, options.threads);
          const auto blocks = select(scores, s, options.threads);
          s.kept += blocks.kept_blocks();
          s.visible += visible_blocks(blocks);
          seer::cpu::block_sparse_attention(call.q, call.k, call.v, &blocks, seer::AttentionOptions{}, call.out,
                                            seer::TensorView<float, 2>{}, options.threads);
        });
        s.bits.push_back(engine::LlamaModel::bits_per_token(logits, tokens));
        runs_done += 1.0;
        const double elapsed = evaluation.seconds();
        std::printf("window %zu/%zu %s@%lld  run %3.0f/%.0f  %-48s  %.4f bpb  density %.3f  %.0f tokens/s  left %s\n",
                    w + 1, windows.size(), windows[w].book.c_str(), static_cast<long long>(windows[w].offset),
                    runs_done, runs_total, s.label().c_str(), s.bits.back(), s.density(),
                    static_cast<double>(tokens.size()) / run.seconds(),
                    engine::format_duration(elapsed / runs_done * (runs_total - runs_done)).c_str());
        std::fflush(stdout);
      }
    }

    // Tables.
    const double dense_bits = settings.front().mean_bits();
    const double window_count = static_cast<double>(windows.size());
    auto find = [&](GateKind gate, PolicyKind policy, double target) -> const Setting* {
      for (const auto& s : settings)
        if (s.gate == gate && s.policy == policy && std::fabs(s.target_density - target) < 1e-9) return &s;
      return nullptr;
    };
    std::string md;
    md += "Model gutenberg-byte-llama-8k, " + std::to_string(windows.size()) + " windows of " +
          std::to_string(options.tokens) + " bytes (" + std::to_string(options.windows_per_book) +
          " per book from the second half of " + options.books + "). Gates: " + options.gates + " (" +
          (gate_file.metadata.count("training_text") ? gate_file.metadata.at("training_text") : std::string("?")) +
          "). Selection: library defaults (diagonal block kept in every row). Density = kept / causally visible "
          "blocks, measured over all layers of the seer run.\n\n";
    // learned - mean-pool per window: mean, standard error of the mean, windows the learned gate wins.
    auto paired = [&](const Setting& learned, const Setting& mean_pool) {
      const std::size_t n = learned.bits.size();
      double mean = 0.0, spread = 0.0;
      int wins = 0;
      for (std::size_t w = 0; w < n; ++w) {
        mean += (learned.bits[w] - mean_pool.bits[w]) / static_cast<double>(n);
        wins += learned.bits[w] < mean_pool.bits[w] ? 1 : 0;
      }
      for (std::size_t w = 0; w < n; ++w) spread += std::pow(learned.bits[w] - mean_pool.bits[w] - mean, 2.0);
      const double error = n > 1 ? std::sqrt(spread / static_cast<double>(n - 1) / static_cast<double>(n)) : 0.0;
      return "**" + format("%+.4f", mean) + "** ± " + format("%.4f", error) + " (" + std::to_string(wins) + "/" +
             std::to_string(n) + ")";
    };
    md += "### Bits per byte, learned vs mean-pool at equal TopK density\n\n";
    md +=
        "learned - mean-pool: mean over windows ± its standard error (windows where the learned gate is "
        "better / windows). Negative = the learned gate is better.\n\n";
    md += "| density | LearnedGate | MeanPoolGate | OracleGate | learned - mean-pool | learned - dense |\n";
    md += "|---|---|---|---|---|---|\n";
    md += "| 1.0 (all blocks) | " + format("%.4f", settings[1].mean_bits()) + " | same | same | 0 | " +
          format("%+.4f", settings[1].mean_bits() - dense_bits) + " |\n";
    for (const double d : densities) {
      const Setting* l = find(GateKind::learned, PolicyKind::top_k, d);
      const Setting* m = find(GateKind::mean_pool, PolicyKind::top_k, d);
      const Setting* o = find(GateKind::oracle, PolicyKind::top_k, d);
      md += "| " + format("%.2f", d) + " (measured " + format("%.3f", l->density()) + ") | " +
            format("%.4f", l->mean_bits()) + " | " + format("%.4f", m->mean_bits()) + " | " +
            format("%.4f", o->mean_bits()) + " | " + paired(*l, *m) + " | " +
            format("%+.4f", l->mean_bits() - dense_bits) + " |\n";
    }
    md += "\nDense attention: **" + format("%.4f", dense_bits) + "** bits per byte.\n\n";
    md += "### Threshold and Nucleus: learned vs mean-pool at similar measured density\n\n";
    md += "tau and p calibrated per gate on a training-half window to reach the target density.\n\n";
    md += "| policy | target | LearnedGate (density) | MeanPoolGate (density) | learned - mean-pool |\n";
    md += "|---|---|---|---|---|\n";
    for (const PolicyKind policy : {PolicyKind::threshold, PolicyKind::nucleus})
      for (const double d : densities) {
        const Setting* l = find(GateKind::learned, policy, d);
        const Setting* m = find(GateKind::mean_pool, policy, d);
        md += std::string("| ") + policy_name(policy) + " | " + format("%.2f", d) + " | " +
              format("%.4f", l->mean_bits()) + " (" + format("%.3f", l->density()) + ") | " +
              format("%.4f", m->mean_bits()) + " (" + format("%.3f", m->density()) + ") | " + paired(*l, *m) + " |\n";
      }
    md +=
        "\nDistillation loss on these held-out windows (the training objective: KL to the 2-D ground truth x "
        "10, KLDivLoss mean, first quarter of rows dropped, summed over layers): LearnedGate " +
        format("%.4f", distillation_kl[GateKind::learned] / window_count) + ", MeanPoolGate " +
        format("%.4f", distillation_kl[GateKind::mean_pool] / window_count) + ".\n\n";
    md += "### Every setting\n\n| setting | target density | measured density | bits per byte | vs dense |\n";
    md += "|---|---|---|---|---|\n";
    for (const auto& s : settings)
      md += "| " + s.label() + " | " + format("%.2f", s.target_density) + " | " + format("%.3f", s.density()) + " | " +
            format("%.4f", s.mean_bits()) + " | " + format("%+.4f", s.mean_bits() - dense_bits) + " |\n";
    md += "\n### Dense attention mass captured by the kept blocks, per layer\n\n";
    md += "Blocks selected on the dense model's q and k; mass averaged over query-block rows and windows.\n\n";
    md += "| setting | density |";
    for (std::size_t l = 0; l < layers; ++l) md += " layer " + std::to_string(l) + " |";
    md += " mean |\n|---|---|";
    for (std::size_t l = 0; l <= layers; ++l) md += "---|";
    md += "\n";
    for (const auto& s : settings) {
      if (s.policy == PolicyKind::dense) continue;
      std::int64_t kept = 0, visible = 0;
      double mean = 0.0;
      for (std::size_t l = 0; l < layers; ++l) {
        kept += s.layer_kept[l];
        visible += s.layer_visible[l];
        mean += s.captured_sum[l] / window_count / static_cast<double>(layers);
      }
      md += "| " + s.label() + " | " + format("%.3f", static_cast<double>(kept) / static_cast<double>(visible)) + " |";
      for (std::size_t l = 0; l < layers; ++l) md += " " + format("%.3f", s.captured_sum[l] / window_count) + " |";
      md += " " + format("%.3f", mean) + " |\n";
    }
    md += "\nEvaluation time: " + engine::format_duration(clock.seconds()) + ".\n";
    std::ofstream(options.out_dir + "/results.md") << md;
    std::ofstream csv(options.out_dir + "/results.csv");
    csv.precision(8);
    csv << "gate,policy,parameter,target_density,measured_density,bits_per_byte\n";
    for (const auto& s : settings)
      csv << (s.policy == PolicyKind::dense ? "dense" : gate_name(s.gate)) << "," << policy_name(s.policy) << ","
          << s.parameter << "," << s.target_density << "," << s.density() << "," << s.mean_bits() << "\n";
    write_svg(options.out_dir + "/bpb_vs_density.svg", settings, dense_bits);
    std::printf("\n%s\nwrote %s/results.md, results.csv, bpb_vs_density.svg\n", md.c_str(), options.out_dir.c_str());
  } catch (const seer::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
