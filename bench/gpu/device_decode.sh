#!/usr/bin/env bash
# One call on the GPU machine for sparse decoding (issue 7): configure, build only the decode targets
# (seer_cuda_decode_tests, seer_cuda_decode_gate_tests, seer_bench_decode_capi), run both test suites,
# the benchmark, a kernel profile (ncu, clocks left alone) and the tests under compute-sanitizer
# (memcheck, racecheck). Logs under $OUT; a short summary last.
#   bench/gpu/device_decode.sh [prebuilt|build] [test] [bench] [profile] [sanitize] [sanitize-gate] [sanitize-cases] [sass]
#   (prebuilt: the decode tests, the decode gate tests and the bench library built here beforehand, carried in
#   .carry/decode-build)
#   (sanitize-cases: every test case of both suites in its own process under memcheck and under racecheck, plus
#   both plain suites, SANITIZE_JOBS at a time within SANITIZE_SECONDS; counts summed at the end)
#   (sass: the SASS of the deep D128 one-row-block kernel of the bench library and of each library in SASS_LIBRARIES,
#   with its branches listed, in $OUT/sass.tgz)
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
  if [ -f .carry/decode-build/seer_cuda_decode_gate_tests ]; then
    mkdir -p "$(dirname "$GATE_TESTS")" && cp .carry/decode-build/seer_cuda_decode_gate_tests "$GATE_TESTS"
  fi
  echo "prebuilt: decode tests, decode gate tests and bench library from .carry/decode-build"
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
  PYTHONUNBUFFERED=1 timeout "${BENCH_SECONDS:-240}" python3 bench/gpu/decode/bench_decode.py --library $LIBRARY \
    --out "$OUT" ${BENCH_ARGS:-} \
    >"$OUT/bench_decode.log" 2>&1 || { status=1; tail -30 "$OUT/bench_decode.log"; }
  echo "bench: $((SECONDS - start)) s"
fi

sanitize_cases() {  # every case of both suites in its own process, under memcheck and racecheck, in parallel
  local start=$SECONDS jobs=$OUT/sanitize_jobs.txt dir=$OUT/sanitize binary tool name index=0
  mkdir -p "$dir"; : >"$jobs"
  for tool in racecheck memcheck; do
    for binary in $TESTS $GATE_TESTS; do
      [ -x "$binary" ] || continue
      # doctest filters split at commas and take wildcards: each comma of a name becomes '?'
      "$binary" -ltc --no-colors 2>/dev/null | grep -v -E '^\[doctest\]|^====|^$' | while IFS= read -r name; do
        printf '%s\t%s\t%s\n' "$tool" "$binary" "${name//,/?}"
      done >>"$jobs"
    done
  done
  for binary in $TESTS $GATE_TESTS; do [ -x "$binary" ] && printf 'plain\t%s\t*\n' "$binary" >>"$jobs"; done
  echo "sanitize-cases: $(wc -l <"$jobs") jobs, ${SANITIZE_JOBS:-16} at a time"
  run_job() {  # tool binary filter index
    local log="$dir/$1_$(basename "$2")_$4.log"
    if [ "$1" = plain ]; then
      timeout "${SANITIZE_SECONDS:-100}" "$2" -tc="$3" >"$log" 2>&1
    else
      timeout "${SANITIZE_SECONDS:-100}" compute-sanitizer --tool "$1" --error-exitcode 9 "$2" -tc="$3" >"$log" 2>&1
    fi
    echo "rc=$?" >>"$log"
  }
  export -f run_job; export dir
  awk -F'\t' '{ print $1 "\t" $2 "\t" $3 "\t" NR }' "$jobs" |
    xargs -P "${SANITIZE_JOBS:-16}" -d '\n' -n 1 \
      bash -c 'IFS=$(printf "\t") read -r t b f i <<<"$0"; run_job "$t" "$b" "$f" "$i"'
  python3 - "$dir" <<'PY'
import glob, os, re, sys
summary = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.log"))):
    text = open(path, errors="replace").read()
    tool, suite = os.path.basename(path).split("_", 1)
    suite = suite.rsplit("_", 1)[0]
    s = summary.setdefault((tool, suite), {"jobs": 0, "rc0": 0, "cases": 0, "passed": 0, "asserts": 0, "errors": 0,
                                           "hazards": 0, "host_only": 0, "unfinished": []})
    s["jobs"] += 1
    rc = re.search(r"^rc=(\d+)", text, re.M)
    if rc and rc.group(1) == "0":
        s["rc0"] += 1
    else:
        s["unfinished"].append(os.path.basename(path) + " " + (rc.group(0) if rc else "no rc"))
    m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed", text)
    if m:
        s["cases"] += int(m.group(1)); s["passed"] += int(m.group(2))
    m = re.search(r"assertions:\s*(\d+) \|\s*(\d+) passed", text)
    if m:
        s["asserts"] += int(m.group(2))
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    if m:
        s["errors"] += int(m.group(1))
    m = re.search(r"RACECHECK SUMMARY: (\d+) hazard", text)
    if m:
        s["hazards"] += int(m.group(1))
    if tool != "plain" and not re.search(r"(ERROR|RACECHECK) SUMMARY", text):
        if "terminated before first instrumented API call" in text and rc and re.search(r"Status: SUCCESS", text):
            s["host_only"] += 1  # a case with no CUDA call: nothing to instrument, the case passed
            s["rc0"] += 1
            s["unfinished"].remove(os.path.basename(path) + " " + rc.group(0))
        else:
            s["unfinished"].append(os.path.basename(path) + " no sanitizer summary")
for (tool, suite), s in sorted(summary.items()):
    print(f"{tool} {suite}: {s['jobs']} jobs, {s['rc0']} passed ({s['host_only']} host-only: no CUDA call); test "
          f"cases {s['passed']}/{s['cases']} passed, "
          f"{s['asserts']} assertions passed; errors {s['errors']}, hazards {s['hazards']}"
          + (f"; NOT FINISHED OR FAILED: {s['unfinished']}" if s["unfinished"] else ""))
PY
  tar -czf "$OUT/sanitize_logs.tgz" -C "$OUT" sanitize sanitize_jobs.txt && rm -rf "$dir" "$jobs"
  echo "sanitize-cases: $((SECONDS - start)) s"
}
has sanitize-cases && sanitize_cases | tee "$OUT/sanitize_summary.txt"

if has sass; then  # where the batch-1 kernel's code jumps: its branches with their targets and distances
  mkdir -p "$OUT/sass"
  for library in $LIBRARY ${SASS_LIBRARIES:-}; do
    name=$(basename "$library" .so)
    cuobjdump -sass -fun '_ZN4seer3gpu20sparse_decode_kernelINS_8bfloat16ELi128ELi1ELb1ELb0EEEvNS0_12DecodeParamsIT_EE' \
      "$library" >"$OUT/sass/$name.sass" 2>&1 || echo "sass: cuobjdump failed on $library"
    python3 - "$OUT/sass/$name.sass" <<'PY' | tee "$OUT/sass/$name.branches"
import re, sys
lines = [l for l in open(sys.argv[1]) if re.match(r"\s*/\*[0-9a-f]{4,}\*/", l)]
at = lambda l: int(re.match(r"\s*/\*([0-9a-f]+)\*/", l).group(1), 16)
print(sys.argv[1], "instructions", len(lines), "bytes", at(lines[-1]) + 16 if lines else 0)
for l in lines:
    m = re.search(r"\b(BRA|BRX|JMP|CALL\S*|RET\S*|EXIT|BAR\S*|LDGSTS\S*|LDGDEPBAR|DEPBAR\S*|WARPSYNC|BSSY|BSYNC)\b(.*?);", l)
    if m:
        target = re.search(r"0x([0-9a-f]+)", m.group(2))
        jump = f" -> {int(target.group(1), 16):#x} ({int(target.group(1), 16) - at(l):+d} B)" if target and m.group(1) == "BRA" else ""
        print(f"{at(l):#07x} {m.group(1)}{jump}")
PY
  done
  tar -czf "$OUT/sass.tgz" -C "$OUT" sass && rm -rf "$OUT/sass"
fi

if has profile; then  # ncu, clocks left alone (--clock-control none)
  start=$SECONDS
  # (1) DRAM bytes read and written by each decode launch after the flush write (caches as do_bench leaves
  # them: --cache-control none), for the automatic kernel and the PROFILE_VARIANTS (bench_decode.py --variants).
  timeout 60 ncu --clock-control none --cache-control none --kernel-name regex:sparse_decode \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \
    python3 bench/gpu/decode/bench_decode.py --library $LIBRARY --profile --batches ${PROFILE_BATCHES:-1,16} \
    --contexts 32768 --densities 0.1 --variants "${PROFILE_VARIANTS:-}" >"$OUT/ncu_dram.log" 2>&1 ||
    echo "ncu dram: rc=$?"
  grep -E "sparse_decode_kernel|gpu__time|dram__bytes|launch__grid" "$OUT/ncu_dram.log" |
    sed -E 's/void seer::gpu::sparse_decode_kernel<seer::bfloat16, /decode</' |
    sed -E 's/\(seer::gpu::DecodeParams<T1>\) //; s/, Context.*//' |
    head -80
  # (2) where a batch-1 CTA's warps wait: warp states and source-level stall samples of one automatic launch,
  # caches as a timed call finds them (--cache-control none: code and constants warm from the launches before,
  # the data L2 full of the flush's dirty lines; ncu's default invalidates every cache first).
  timeout 75 ncu --clock-control none --cache-control none --kernel-name regex:sparse_decode --launch-skip 2 \
    --launch-count 1 \
    --section WarpStateStats --section SourceCounters --section SchedulerStats --section MemoryWorkloadAnalysis \
    --section SpeedOfLight --import-source no -o "$OUT/ncu_batch1" \
    python3 bench/gpu/decode/bench_decode.py --library $LIBRARY --profile --batches 1 --contexts 32768 \
    --densities 0.1 >"$OUT/ncu_source.log" 2>&1 || echo "ncu source: rc=$?"
  if [ -f "$OUT/ncu_batch1.ncu-rep" ]; then
    ncu --import "$OUT/ncu_batch1.ncu-rep" --page details >"$OUT/ncu_batch1_details.txt" 2>&1
    ncu --import "$OUT/ncu_batch1.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu_batch1_sass.csv" 2>&1 ||
      echo "ncu source page: rc=$?"
    grep -E -i "stall|warp cycles|issued|eligible|active warps|throughput|hit rate|duration" \
      "$OUT/ncu_batch1_details.txt" | head -50
  fi
  echo "profile: $((SECONDS - start)) s"
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
