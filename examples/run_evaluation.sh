#!/usr/bin/env bash
# Learned gates on a real model, end to end on the CPU: bits per byte of gutenberg-byte-llama-8k with
# dense attention vs seer (LearnedGate, MeanPoolGate, OracleGate; TopK, Threshold, Nucleus), and the
# attention mass each gate's blocks capture per layer.
#
#   examples/run_evaluation.sh            # full evaluation with the committed gates (~25 min on 2 cores)
#   examples/run_evaluation.sh --quick    # one window of one book, two densities (~2-3 min)
#   examples/run_evaluation.sh --retrain  # distil the gates first (~10-15 min more), then evaluate
#
# Installs missing build tools (apt-get), builds the examples in build/evaluation (Release, tuned for
# this CPU) and runs examples/distill_gates.cpp and examples/evaluate_gates.cpp. Results go to
# bench/gate_quality/ (results.md, results.csv, bpb_vs_density.svg; a --quick run to
# build/evaluation/gate_quality_quick/), or to $SEER_OUT when set.
# Environment: SEER_MODEL (checkpoint directory), SEER_TEXT_DIR (books), SEER_JOBS (build jobs).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# shellcheck source=../cmake/install_dependencies.sh
source "$repo_root/cmake/install_dependencies.sh"
install_missing_packages cmake g++ ninja-build libeigen3-dev

quick=0
retrain=0
for argument in "$@"; do
  case "$argument" in
    --quick) quick=1 ;;
    --retrain) retrain=1 ;;
    *)
      echo "usage: examples/run_evaluation.sh [--quick] [--retrain]" >&2
      exit 2
      ;;
  esac
done

model="${SEER_MODEL:-$repo_root/../shared/data/models/gutenberg-byte-llama-8k}"
text_dir="${SEER_TEXT_DIR:-$repo_root/../shared/data/text}"
# A quick run writes to build/ so that it never overwrites the committed full results.
if ((quick)); then
  out="${SEER_OUT:-$repo_root/build/evaluation/gate_quality_quick}"
else
  out="${SEER_OUT:-$repo_root/bench/gate_quality}"
fi
gates="$repo_root/bench/gate_quality/learned_gates.safetensors"  # the committed gates
if ((retrain)); then
  gates="$out/learned_gates.safetensors"
fi
if [[ ! -f "$model/config.json" ]]; then
  echo "run_evaluation.sh: no model at $model (set SEER_MODEL to a Llama checkpoint directory)" >&2
  exit 1
fi
mkdir -p "$out"

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
cmake -S . -B build/evaluation "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS=-march=native" \
  -DSEER_BUILD_TESTS=OFF -DSEER_BUILD_BENCH=OFF -DSEER_BUILD_EXAMPLES=ON -DSEER_ENABLE_CUDA=OFF >/dev/null
cmake --build build/evaluation -j "${SEER_JOBS:-$(nproc 2>/dev/null || echo 2)}" --target seer_example_distill_gates \
  seer_example_evaluate_gates

if ((retrain)) || [[ ! -f "$gates" ]]; then
  echo
  if ((quick)); then
    build/evaluation/examples/distill_gates --model "$model" --text-dir "$text_dir" --windows-per-book 2 --steps 100 \
      --out "$gates"
  else
    build/evaluation/examples/distill_gates --model "$model" --text-dir "$text_dir" --out "$gates"
  fi
fi

echo
if ((quick)); then
  build/evaluation/examples/evaluate_gates --model "$model" --text-dir "$text_dir" --gates "$gates" \
    --books 10004.txt --windows-per-book 1 --densities 0.3,0.1 --out-dir "$out"
else
  build/evaluation/examples/evaluate_gates --model "$model" --text-dir "$text_dir" --gates "$gates" --out-dir "$out"
fi
