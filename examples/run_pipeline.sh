#!/usr/bin/env bash
# seer's main job: gate -> selection -> block-sparse attention on a real model, end to end.
#
#   examples/run_pipeline.sh [extra prefill_pipeline flags, e.g. --density 0.2 --tokens 4096]
#
# Installs missing build tools (apt-get), builds the examples in build/pipeline (Release, tuned for
# this CPU), and runs examples/prefill_pipeline.cpp on gutenberg-byte-llama-8k over the start of a
# held-out book, then examples/sparse_decode_generation.cpp (sparse decoding against dense decoding).
# When an NVIDIA GPU and nvcc are present, the CUDA pipeline runs as well.
# Environment: SEER_MODEL (checkpoint directory), SEER_TEXT (text file), SEER_JOBS (build jobs).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# shellcheck source=../cmake/install_dependencies.sh
source "$repo_root/cmake/install_dependencies.sh"
install_missing_packages cmake g++ ninja-build libeigen3-dev

model="${SEER_MODEL:-$repo_root/../shared/data/models/gutenberg-byte-llama-8k}"
text="${SEER_TEXT:-$repo_root/../shared/data/text/10004.txt}"
if [[ ! -f "$model/config.json" ]]; then
  echo "run_pipeline.sh: no model at $model (set SEER_MODEL to a Llama checkpoint directory)" >&2
  exit 1
fi

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
fi
if [[ -d /usr/local/cuda/bin ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
cuda=OFF
if ((gpu)) && command -v nvcc >/dev/null 2>&1; then
  cuda=ON
fi

cmake -S . -B build/pipeline "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS=-march=native" \
  -DSEER_BUILD_TESTS=OFF -DSEER_BUILD_BENCH=OFF -DSEER_BUILD_EXAMPLES=ON -DSEER_ENABLE_CUDA=$cuda >/dev/null
cmake --build build/pipeline -j "${SEER_JOBS:-$(nproc 2>/dev/null || echo 2)}"

echo
build/pipeline/examples/prefill_pipeline --model "$model" --text "$text" --tokens 8192 \
  --gates bench/gate_quality/learned_gates.safetensors "$@"
echo
# Sparse decoding (SeerAttention-R): the engine decodes 3072 bytes of the book's held-out half one byte at a
# time with the distilled decode gates, next to dense decoding (2-3 minutes on two cores).
build/pipeline/examples/sparse_decode_generation --model "$model" --text "$text" --tokens 4096 --prompt 1024 \
  --budget 512 --generate 160 --gates bench/gate_quality/decode_gates.safetensors
if [[ "$cuda" == "ON" && -x build/pipeline/examples/gpu/prefill_pipeline_cuda ]]; then
  echo
  build/pipeline/examples/gpu/prefill_pipeline_cuda --model "$model" --text "$text" --tokens 8192 "$@"
fi
