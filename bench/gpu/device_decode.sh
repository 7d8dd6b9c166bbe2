#!/usr/bin/env bash
# One call on the GPU machine for the sparse decode kernel (issue 7): configure, build only the decode
# targets (seer_cuda_decode_tests, seer_bench_decode_capi), run the decode tests, the benchmark, then
# the tests under compute-sanitizer (memcheck, racecheck). Logs under $OUT; a short table last.
#   bench/gpu/device_decode.sh [build] [test] [bench] [sanitize]   (default: all four)
# Expects Eigen and doctest (headers + CMake package files) under .carry/prefix when the machine has
# none. A build folder carried from the development machine (build-decode) is reused when its binaries
# run here; otherwise the targets are rebuilt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench sanitize)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
status=0
BUILD=build-decode
TESTS=$BUILD/tests/gpu/decode/seer_cuda_decode_tests
LIBRARY=$BUILD/bench/gpu/decode/libseer_bench_decode_capi.so

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

if has build; then
  start=$SECONDS
  if [ -x "$TESTS" ] && [ -f "$LIBRARY" ] && "$TESTS" -ltc >/dev/null 2>&1 &&
      python3 -c "import ctypes,sys; ctypes.CDLL(sys.argv[1])" "$LIBRARY" 2>/dev/null; then
    echo "build: carried binaries run here, reused"
  else
    rm -rf $BUILD
    if ! cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.carry/prefix" \
        -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_BUILD_EXAMPLES=OFF \
        >"$OUT/build.log" 2>&1; then
      tail -40 "$OUT/build.log"; exit 1
    fi
    if ! cmake --build $BUILD --target seer_cuda_decode_tests seer_bench_decode_capi -j16 >>"$OUT/build.log" 2>&1; then
      grep -E -B2 -A6 'error|warning' "$OUT/build.log" | head -120; exit 1
    fi
    echo "build: ok in $((SECONDS - start)) s"
  fi
fi

if has test; then
  start=$SECONDS
  timeout 120 $TESTS >"$OUT/decode_tests.log" 2>&1; rc=$?
  tail -4 "$OUT/decode_tests.log"; echo "decode tests: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && { grep -E -A14 'ERROR|FAILED|error' "$OUT/decode_tests.log" | head -100; status=1; }
fi

if has bench; then
  PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu/decode/bench_decode.py --library $LIBRARY --out "$OUT" \
    >"$OUT/bench_decode.log" 2>&1 || { status=1; tail -30 "$OUT/bench_decode.log"; }
  [ -f "$OUT/bench_decode.md" ] && cat "$OUT/bench_decode.md"
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    start=$SECONDS
    timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 $TESTS >"$OUT/decode_sanitizer_$tool.log" 2>&1; rc=$?
    tail -3 "$OUT/decode_sanitizer_$tool.log"; echo "compute-sanitizer $tool: rc=$rc in $((SECONDS - start)) s"
    [ $rc -ne 0 ] && { grep -E -m 30 'Error|error|Invalid|Race|FAILED|hazard' "$OUT/decode_sanitizer_$tool.log"; status=1; }
  done
fi

echo "== summary"; grep -h "test cases" "$OUT"/decode_tests.log "$OUT"/decode_sanitizer_*.log 2>/dev/null; grep -h "ERROR SUMMARY" "$OUT"/decode_sanitizer_*.log 2>/dev/null
[ -f "$OUT/bench_decode.md" ] && cat "$OUT/bench_decode.md"
exit $status
