#!/usr/bin/env bash
# One call on the GPU machine for sparse decoding (issue 7): configure, build only the decode targets
# (seer_cuda_decode_tests, seer_cuda_decode_gate_tests, seer_bench_decode_capi), run both test suites,
# the benchmark, a kernel profile (ncu, clocks left alone) and the tests under compute-sanitizer
# (memcheck, racecheck). Logs under $OUT; a short summary last.
#   bench/gpu/device_decode.sh [prebuilt|build] [test] [bench] [profile] [sanitize] [sanitize-gate]
#   (prebuilt: the decode tests and bench library built here beforehand, carried in .carry/decode-build)
#   (default: build test bench sanitize sanitize-gate)
# Expects Eigen and doctest (headers + CMake package files) under .carry/prefix when the machine has
# none. A build folder carried from the development machine (build-decode) is reused when its binaries
# run here; otherwise the targets are rebuilt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench sanitize sanitize-gate)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
status=0
BUILD=build-decode
TESTS=$BUILD/tests/gpu/decode/seer_cuda_decode_tests
GATE_TESTS=$BUILD/tests/gpu/decode_gate/seer_cuda_decode_gate_tests
LIBRARY=$BUILD/bench/gpu/decode/libseer_bench_decode_capi.so

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
git log --oneline -1 2>/dev/null

if has prebuilt; then  # binaries built on the development machine (nvcc, sm_90a), carried in .carry/decode-build
  mkdir -p "$(dirname "$TESTS")" "$(dirname "$LIBRARY")"
  cp .carry/decode-build/seer_cuda_decode_tests "$TESTS" && cp .carry/decode-build/libseer_bench_decode_capi.so "$LIBRARY" ||
    { echo "prebuilt: missing binaries"; exit 1; }
  echo "prebuilt: decode tests and bench library from .carry/decode-build"
fi

if has build; then
  start=$SECONDS
  if [ -x "$TESTS" ] && [ -x "$GATE_TESTS" ] && [ -f "$LIBRARY" ] && "$TESTS" -ltc >/dev/null 2>&1 &&
      python3 -c "import ctypes,sys; ctypes.CDLL(sys.argv[1])" "$LIBRARY" 2>/dev/null; then
    echo "build: carried binaries run here, reused"
  else
    rm -rf $BUILD
    if ! cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.carry/prefix" \
        -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_BUILD_EXAMPLES=OFF \
        >"$OUT/build.log" 2>&1; then
      tail -40 "$OUT/build.log"; exit 1
    fi
    if ! cmake --build $BUILD --target seer_cuda_decode_tests seer_cuda_decode_gate_tests seer_bench_decode_capi \
        -j16 >>"$OUT/build.log" 2>&1; then
      grep -E -B2 -A6 'error|warning' "$OUT/build.log" | head -120; exit 1
    fi
    echo "build: ok in $((SECONDS - start)) s"
  fi
fi
# Registers, stack and spills of the decode kernels (the deep variant must not spill).
[ -f "$LIBRARY" ] && cuobjdump --dump-resource-usage "$LIBRARY" 2>/dev/null | grep -A1 "sparse_decode_kernel" |
  grep -o -E "sparse_decode_kernelI[^ ]*|REG:[0-9]+|STACK:[0-9]+|LOCAL:[0-9]+" | paste -d' ' - - - - |
  awk '{ print $2, $3, $4, substr($1, 1, 70) }' | sort -u | head -12

run_suite() {  # name binary seconds
  local start=$SECONDS rc
  timeout "$3" "$2" >"$OUT/$1.log" 2>&1; rc=$?
  tail -3 "$OUT/$1.log"; echo "$1: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && { grep -E -A14 'ERROR|FAILED|error' "$OUT/$1.log" | head -120; status=1; }
}

if has test; then
  [ -x "$GATE_TESTS" ] && run_suite decode_gate_tests $GATE_TESTS 120
  run_suite decode_tests $TESTS 120
fi

if has bench; then
  start=$SECONDS
  # BENCH_ARGS: extra options of bench_decode.py (variants, fewer SDPA backends, ...)
  PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu/decode/bench_decode.py --library $LIBRARY --out "$OUT" ${BENCH_ARGS:-} \
    >"$OUT/bench_decode.log" 2>&1 || { status=1; tail -30 "$OUT/bench_decode.log"; }
  echo "bench: $((SECONDS - start)) s"
fi

if has profile; then  # kernel durations at batch 1 / 32k; --clock-control none: the clocks stay as they are
  timeout 90 ncu --clock-control none --kernel-name regex:decode --launch-skip 4 --launch-count 8 \
    python3 bench/gpu/decode/bench_decode.py --library $LIBRARY --profile --batches 1 --contexts 32768 \
    --densities 0.1 >"$OUT/ncu.log" 2>&1 || echo "ncu: rc=$?"
  grep -E "decode|Duration|DRAM Throughput|Memory Throughput|Registers|Block Limit|Achieved Occupancy" "$OUT/ncu.log" | head -60
fi

sanitize() {  # name binary seconds
  local tool start rc
  for tool in memcheck racecheck; do
    start=$SECONDS
    timeout "$3" compute-sanitizer --tool $tool --error-exitcode 9 "$2" >"$OUT/$1_$tool.log" 2>&1; rc=$?
    tail -2 "$OUT/$1_$tool.log"; echo "compute-sanitizer $tool on $1: rc=$rc in $((SECONDS - start)) s"
    [ $rc -ne 0 ] && { grep -E -m 30 'Error|error|Invalid|Race|FAILED|hazard' "$OUT/$1_$tool.log"; status=1; }
  done
}
has sanitize-gate && sanitize sanitizer_decode_gate $GATE_TESTS 100
has sanitize && sanitize sanitizer_decode $TESTS 100

echo "== summary"
for f in "$OUT"/decode_gate_tests.log "$OUT"/decode_tests.log "$OUT"/sanitizer_*.log; do
  [ -f "$f" ] && echo "$(basename "$f"): $(grep -h -E "test cases|ERROR SUMMARY|RACECHECK SUMMARY" "$f" | tr '\n' ' ')"
done
[ -f "$OUT/bench_decode.md" ] && cat "$OUT/bench_decode.md"
exit $status
