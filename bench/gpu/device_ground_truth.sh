#!/usr/bin/env bash
# One call on the GPU machine for the ground-truth kernels (issue 5) and the distillation step (issue 6):
# configure like device_run.sh, build only seer_cuda_ground_truth_tests (ground truth, distillation
# loss/gradient, AdamW) and seer_bench_ground_truth, run the tests, the tests under compute-sanitizer
# (memcheck, racecheck), and the benchmark. Logs go to $OUT (or ./device-out); a
# short table comes last.
#   bench/gpu/device_ground_truth.sh [repetitions]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
BUILD=build-device-ground-truth-copy
TESTS=$BUILD/tests/gpu/ground_truth/seer_cuda_ground_truth_tests
BENCH=$BUILD/bench/gpu/ground_truth/seer_bench_ground_truth
status=0

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

start=$SECONDS
# Configure a copy of the tree without the other GPU suites (decode, gate): work in progress there must
# not stop this build. Eigen/doctest come from .carry/prefix of the original tree.
SOURCE=/tmp/seer-ground-truth-src
rm -rf $SOURCE && mkdir -p $SOURCE
tar --exclude=./.carry --exclude='./build*' --exclude=./.git -cf - . | tar -xf - -C $SOURCE
rm -rf $SOURCE/tests/gpu/decode $SOURCE/tests/gpu/gate $SOURCE/bench/gpu/decode $SOURCE/bench/gpu/gate
if ! cmake -S $SOURCE -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.carry/prefix" \
    -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_BUILD_EXAMPLES=OFF \
    >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; exit 1
fi
if ! cmake --build $BUILD --target seer_cuda_ground_truth_tests seer_bench_ground_truth -j16 >>"$OUT/build.log" 2>&1; then
  grep -E -B2 -A6 'error|warning' "$OUT/build.log" | head -120; exit 1
fi
echo "build: ok in $((SECONDS - start)) s"

start=$SECONDS
timeout 240 $TESTS -s >"$OUT/tests.log" 2>&1; rc=$?
grep -E -o '[0-9]+ target entries.*|[a-z] projection: .*|loss: GPU .*' "$OUT/tests.log" | sort | uniq | head -40
tail -4 "$OUT/tests.log"; echo "tests: rc=$rc in $((SECONDS - start)) s"
[ $rc -ne 0 ] && { grep -E -A12 'ERROR|FAILED|error' "$OUT/tests.log" | head -80; status=1; }
grep -i 'skipped' "$OUT/tests.log" | grep -v 'test cases' | head -5

for tool in memcheck racecheck; do
  start=$SECONDS
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 $TESTS >"$OUT/sanitizer_$tool.log" 2>&1; rc=$?
  tail -3 "$OUT/sanitizer_$tool.log"; echo "compute-sanitizer $tool: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && { grep -E -m 30 'Error|error|Invalid|Race|FAILED' "$OUT/sanitizer_$tool.log"; status=1; }
done

timeout 200 $BENCH "${1:-10}" 2>&1 | tee "$OUT/bench.log" || status=1
exit $status
