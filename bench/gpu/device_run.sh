#!/usr/bin/env bash
# One call on the GPU machine: configure + build the CUDA tests and the benchmark library, run the
# tests, the tests under compute-sanitizer (memcheck, racecheck), and the benchmark.
#   bench/gpu/device_run.sh [build] [test] [sanitize] [bench] [ptxas] [example]   (default: the first four)
# `example` builds and runs examples/gpu/prefill_pipeline_cuda on the model in .carry/model (the
# gutenberg-byte-llama-8k checkpoint) and the book in .carry/text.
# Expects Eigen and doctest (headers + CMake package files) under .carry/prefix when the machine has
# none installed. Logs go to $OUT (or ./device-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
status=0
BUILD=build-device
TESTS=$BUILD/tests/gpu/seer_cuda_tests                   # automatic kernel choice: warpgroup kernel on Hopper
MMA_SYNC_TESTS=$BUILD/tests/gpu/seer_cuda_mma_sync_tests  # the same suite, mma.sync kernel forced

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

if has build; then
  start=$SECONDS
  if ! cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.carry/prefix" \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_BUILD_EXAMPLES=OFF \
      >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; exit 1
  fi
  if ! cmake --build $BUILD --target seer_cuda_tests seer_cuda_mma_sync_tests seer_bench_prefill_capi -j16 >>"$OUT/build.log" 2>&1; then
    grep -E -B2 -A6 'error|warning' "$OUT/build.log" | head -120; exit 1
  fi
  echo "build: ok in $((SECONDS - start)) s"
fi

if has sass; then
  # Where local-memory spills sit relative to the tensor-core loop of the head-dim-128 bf16 kernel.
  cuobjdump -sass -fun '_ZN4seer3gpu24warpgroup_prefill_kernelINS_8bfloat16ELi128EEEvNS0_13PrefillParamsIT_EE' \
    $BUILD/bench/gpu/libseer_bench_prefill_capi.so >"$OUT/sass_bf16_128.txt" 2>&1
  echo "sass lines: $(wc -l <"$OUT/sass_bf16_128.txt"), HMMA $(grep -c HMMA "$OUT/sass_bf16_128.txt"),"\
    "LDL $(grep -c LDL "$OUT/sass_bf16_128.txt"), STL $(grep -c STL "$OUT/sass_bf16_128.txt"),"\
    "LDSM $(grep -c LDSM "$OUT/sass_bf16_128.txt"), LDGSTS $(grep -c LDGSTS "$OUT/sass_bf16_128.txt"),"\
    "HGMMA $(grep -c HGMMA "$OUT/sass_bf16_128.txt"), MUFU $(grep -c MUFU "$OUT/sass_bf16_128.txt"), BAR $(grep -c 'BAR' "$OUT/sass_bf16_128.txt")"
fi

if has test; then
  start=$SECONDS
  timeout 300 $TESTS >"$OUT/tests.log" 2>&1; rc=$?
  tail -5 "$OUT/tests.log"; echo "tests: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && { grep -E -A12 'ERROR|FAILED|error' "$OUT/tests.log" | head -80; status=1; }
  grep -i 'skipped' "$OUT/tests.log" | grep -v 'test cases' | head -5
  timeout 300 $MMA_SYNC_TESTS >"$OUT/tests_mma_sync.log" 2>&1; rc=$?
  tail -3 "$OUT/tests_mma_sync.log"; echo "tests (mma.sync kernel forced): rc=$rc"
  [ $rc -ne 0 ] && { grep -E -A12 'ERROR|FAILED|error' "$OUT/tests_mma_sync.log" | head -60; status=1; }
  # The 64-bit offset case once more, alone, with its timing (it must not have been skipped).
  timeout 120 $TESTS -tc='*1M tokens*' -d -s 2>&1 | grep -E -i 'skipped|1M|passed|failed' | tail -4
fi

if has sanitize; then
  for tool in memcheck racecheck; do
    start=$SECONDS
    # The 1M-token case allocates 32 GiB and launches 524k CTAs: too slow under the sanitizer.
    timeout 400 compute-sanitizer --tool $tool --error-exitcode 9 $TESTS -tce='*1M tokens*' \
      >"$OUT/sanitizer_$tool.log" 2>&1; rc=$?
    tail -4 "$OUT/sanitizer_$tool.log"; echo "compute-sanitizer $tool: rc=$rc in $((SECONDS - start)) s"
    [ $rc -ne 0 ] && { grep -E -m 30 'Error|error|Invalid|Race|FAILED' "$OUT/sanitizer_$tool.log"; status=1; }
  done
fi

if has bench; then
  PYTHONUNBUFFERED=1 timeout 500 python3 bench/gpu/bench_prefill.py --library $BUILD/bench/gpu/libseer_bench_prefill_capi.so ${BENCH_ARGS:-} \
    --out "$OUT" 2>&1 | tee "$OUT/bench.log" || status=1
fi
if has example; then
  start=$SECONDS
  if cmake -S . -B $BUILD -DSEER_BUILD_EXAMPLES=ON "-DCMAKE_CXX_FLAGS=-mavx2 -mfma" >>"$OUT/build.log" 2>&1 &&
      cmake --build $BUILD --target seer_example_prefill_pipeline_cuda -j16 >>"$OUT/build.log" 2>&1; then
    timeout 300 $BUILD/examples/gpu/prefill_pipeline_cuda --model .carry/model --text .carry/text/10004.txt \
      --gates bench/gate_quality/learned_gates.safetensors --tokens 8192 2>&1 | tee "$OUT/example.log" || status=1
    echo "example: $((SECONDS - start)) s"
  else
    grep -E -B2 -A6 'error' "$OUT/build.log" | head -60; status=1
  fi
fi
if has profile; then
  timeout 300 ncu -k regex:block_sparse_prefill --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
    python3 bench/gpu/profile_prefill.py $BUILD/bench/gpu/libseer_bench_prefill_capi.so >"$OUT/ncu.log" 2>&1
  echo "ncu: rc=$?"
  grep -E 'Throughput|Busy|Pipe|Stall|Occupancy|Warp Cycles|Hit Rate|Bandwidth|Duration|Issued|Eligible' "$OUT/ncu.log" | head -90
fi
exit $status
