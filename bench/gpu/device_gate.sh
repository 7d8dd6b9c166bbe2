#!/usr/bin/env bash
# One call on the GPU machine for the gate + selection work (issue 5): configure, build ONLY
# seer_cuda_gate_tests and seer_bench_gate, run the tests, the tests under compute-sanitizer memcheck
# (without the 1M- and 128k-token cases, too slow under the tool), then the benchmark.
#   bench/gpu/device_gate.sh [build] [test] [sanitize] [bench] [profile]   (default: all five)
# `profile` lists the duration of each gate kernel (ncu, clocks not locked) at 32k tokens.
# Expects Eigen and doctest (headers + CMake package files) under .carry/prefix when the machine has
# none installed. Logs go to $OUT (or ./device-out); a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench profile)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
status=0
BUILD=build-gate
TESTS=$BUILD/tests/gpu/gate/seer_cuda_gate_tests
BENCH=$BUILD/bench/gpu/gate/seer_bench_gate

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

if has build; then
  start=$SECONDS
  built=0
  # CMake first; if the configure or the build of the whole tree fails (other work in progress in the
  # same checkout), compile the two programs directly with nvcc and the same flags.
  if cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.carry/prefix" \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_BUILD_EXAMPLES=OFF \
      >"$OUT/gate_build.log" 2>&1 &&
    cmake --build $BUILD --target seer_cuda_gate_tests seer_bench_gate -j16 >>"$OUT/gate_build.log" 2>&1; then
    built=1
  else
    grep -E -B2 -A6 'error|warning|Error' "$OUT/gate_build.log" | head -40
    echo "cmake build failed; compiling directly with nvcc"
    mkdir -p "$(dirname $TESTS)" "$(dirname $BENCH)"
    flags=(-std=c++17 -arch=sm_90a -O3 -Iinclude -Ibackends/gpu-common/include -Ibackends/cuda/include
      -I.carry/prefix/include -DSEER_CUDA_WARPGROUP_KERNELS=1 -Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror)
    nvcc "${flags[@]}" -Itests/gpu/gate tests/gpu/gate/test_gate_selection.cu tests/gpu/gate/test_gate_graph.cu \
      tests/gpu/gate/test_rope_and_pool.cu \
      tests/doctest_main.cpp -o $TESTS >>"$OUT/gate_build.log" 2>&1 &
    tests_pid=$!
    nvcc "${flags[@]}" bench/gpu/gate/gate_bench.cu -o $BENCH >>"$OUT/gate_build.log" 2>&1 &
    bench_pid=$!
    wait $tests_pid && wait $bench_pid && built=1
  fi
  [ $built -eq 1 ] || { grep -E -B2 -A6 'error' "$OUT/gate_build.log" | head -120; exit 1; }
  echo "build: ok in $((SECONDS - start)) s"
fi

if has test; then
  start=$SECONDS
  timeout 420 $TESTS -d >"$OUT/gate_tests.log" 2>&1; rc=$?
  grep -E 'identical|skipped|feature errors' "$OUT/gate_tests.log" | sed -e 's/^.*MESSAGE: //' | head -90
  grep -E '^[0-9.]+ s: ' "$OUT/gate_tests.log" | head -20
  tail -4 "$OUT/gate_tests.log"; echo "tests: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && { grep -E -B4 -A14 'ERROR|FAILED|error' "$OUT/gate_tests.log" | head -150; status=1; }
fi

if has sanitize; then
  start=$SECONDS
  timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 $TESTS -tce='*1M tokens*,*128k tokens*' \
    >"$OUT/gate_sanitizer_memcheck.log" 2>&1; rc=$?
  tail -4 "$OUT/gate_sanitizer_memcheck.log"; echo "compute-sanitizer memcheck: rc=$rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && { grep -E -m 30 'Error|error|Invalid|FAILED' "$OUT/gate_sanitizer_memcheck.log"; status=1; }
fi

if has bench; then
  timeout 300 $BENCH --out "$OUT" 2>&1 | tee "$OUT/gate_bench.log" || status=1
fi
if has profile; then
  # One run of gate_features, gate_features_from_pooled and the TopK selection (after 3 warm-ups each):
  # 4 x 3 + 4 x 2 + 4 x 5 kernel launches.
  timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum \
    -k regex:'pool_blocks|project_features|rotate_rows|block_selection|scan_|block_layout|rope_table' --launch-count 40 \
    $BENCH --lengths 32768 --repeats 1 >"$OUT/gate_ncu.log" 2>&1
  echo "ncu: rc=$?"
  grep -E 'seer::gpu::[a-z_]+_kernel|gpu__time_duration' "$OUT/gate_ncu.log" \
    | sed -E 's/.*seer::gpu::([a-z_]+_kernel).*/\1/; s/.*gpu__time_duration.sum +//' | paste - - | tail -40
  # The RoPE pass over q and k without (8 launches: 3 warm-ups + 1 run, q and k) and with pooling (8 more).
  timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes.sum -k regex:'rope_and_pool' \
    --launch-count 16 $BENCH --lengths 32768 --repeats 1 >"$OUT/gate_ncu_rope.log" 2>&1
  echo "ncu (rope_and_pool): rc=$?"
  grep -E 'rope_and_pool_kernel|gpu__time_duration|dram__bytes' "$OUT/gate_ncu_rope.log" |
    sed -E 's/.*rope_and_pool_kernel<[^,]*, (true|false)>.*/pool=\1/; s/ +/ /g' | paste - - - | tail -16
  # Where the TopK selection kernel and the key projection spend their time: the full ncu set on one
  # launch of each (the TopK selection's third warm-up, the first key projection), per-instruction
  # stall samples of the selection kernel, and the SASS of both.
  timeout 240 ncu --clock-control none --set full --import-source no -k regex:'block_selection' --launch-skip 2 \
    --launch-count 1 -o "$OUT/gate_selection" -f $BENCH --lengths 32768 --repeats 1 >"$OUT/gate_ncu_full.log" 2>&1
  echo "ncu full (selection): rc=$?"
  timeout 120 ncu --clock-control none --set full -k regex:'project_features' --launch-count 1 \
    -o "$OUT/gate_projection" -f $BENCH --lengths 32768 --repeats 1 >>"$OUT/gate_ncu_full.log" 2>&1
  echo "ncu full (projection): rc=$?"
  for report in gate_selection gate_projection; do
    [ -f "$OUT/$report.ncu-rep" ] || continue
    ncu -i "$OUT/$report.ncu-rep" --page details >"$OUT/${report}_details.log" 2>&1
    grep -E 'Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Bank|Wavefronts|Executed Ipc|Issue Slots|No Eligible|Stall' \
      "$OUT/${report}_details.log" | sed -E 's/ +/ /g' | head -40
  done
  [ -f "$OUT/gate_selection.ncu-rep" ] &&
    ncu -i "$OUT/gate_selection.ncu-rep" --page source --csv --print-source sass >"$OUT/gate_selection_sass.csv" 2>&1
  cuobjdump -sass $BENCH 2>/dev/null | awk '/Function :/{keep = /block_selection_kernelINS_4TopK|project_features_kernelILi128/} keep' \
    >"$OUT/gate_kernels.sass"
fi
# At most 8 files come back from the device machine: everything in one archive, the table beside it.
(cd "$OUT" && tar czf gate_logs.tgz --exclude=gate_logs.tgz --exclude=gate_bench.md -- * 2>/dev/null &&
  find . -maxdepth 1 -type f ! -name gate_logs.tgz ! -name gate_bench.md -delete)
exit $status
