#!/usr/bin/env bash
# seer's test command: everything CI checks, in one script.
#
#   tests/run_all.sh              all stages
#   tests/run_all.sh gcc format   only the named stages
#
# Stages (each builds in its own directory under build/ci-*, with -Wall -Wextra -Werror, then runs ctest):
#   gcc       g++, C++17, Release; CUDA backend and GPU tests when nvcc exists (they skip without a GPU);
#             examples and benchmarks built; includes the package test (find_package/add_subdirectory/FetchContent)
#   clang     clang++, C++20, Release, tests only, CUDA off
#   sanitize  g++, C++17, -O1 -g, AddressSanitizer + UndefinedBehaviorSanitizer, tests only, CUDA off
#   format    clang-format --dry-run --Werror over include/ backends/ tests/ examples/ bench/
#   fuzz      clang++ (19 if present) with libFuzzer + ASan + UBSan: builds tests/fuzz (one target per file
#             parser) and runs each for SEER_FUZZ_SECONDS (default 20) from its seed corpus; any crash fails
#   hip       clang-19 + Debian's ROCm 5.2 headers: compiles the HIP backend and the HIP tests for gfx90a, gfx942
#             and gfx1100 (tests/hip, stand-in device libraries for the two targets ROCm 5.2 lacks), checks that
#             every object holds an amdgcn code object for its target, links the gfx90a test executable and
#             runs it (it skips its device cases without an AMD GPU)
#
# Missing tools and libraries are installed with apt-get first. Environment: SEER_JOBS (parallel jobs,
# default nproc), SEER_CI_CLEAN=1 (delete the build directories first).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
script="$repo_root/tests/run_all.sh"

jobs="${SEER_JOBS:-$(nproc 2>/dev/null || echo 2)}"
if [[ -d /usr/local/cuda/bin ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

# ---- One stage, run in its own process so that `set -e` applies inside it ------------------------
configure_build_test() {
  local build_dir="$1"
  shift
  if [[ "${SEER_CI_CLEAN:-0}" == "1" ]]; then
    rm -rf "$build_dir"
  fi
  cmake -S "$repo_root" -B "$build_dir" "${generator[@]}" -DSEER_WARNINGS_AS_ERRORS=ON "$@"
  cmake --build "$build_dir" -j "$jobs"
  (cd "$build_dir" && ctest --output-on-failure --no-tests=error -j "$jobs")
}

# Prints the first clang++ that links a libFuzzer program (clang++-19 preferred), or nothing.
find_fuzz_compiler() {
  local candidate probe="build/ci-fuzz/probe"
  mkdir -p build/ci-fuzz
  for candidate in clang++-19 clang++; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
      "$candidate" -x c++ -fsanitize=fuzzer,address,undefined - -o "$probe" >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 0
}

run_fuzz_stage() {
  local compiler
  compiler="$(find_fuzz_compiler)"
  if [[ -z "$compiler" ]]; then
    # libFuzzer ships in Debian's compiler-rt package of each clang version.
    # shellcheck source=../cmake/install_dependencies.sh
    source "$repo_root/cmake/install_dependencies.sh"
    local version packages=()
    for candidate in clang++-19 clang++; do
      if command -v "$candidate" >/dev/null 2>&1; then
        version="$("$candidate" -dumpversion | cut -d. -f1)"
        packages+=("libclang-rt-${version}-dev")
      fi
    done
    ((${#packages[@]})) || packages=(clang libclang-rt-14-dev)
    install_missing_packages "${packages[@]}"
    compiler="$(find_fuzz_compiler)"
  fi
  if [[ -z "$compiler" ]]; then
    echo "fuzz: no clang++ with libFuzzer found" >&2
    return 1
  fi
  local build_dir=build/ci-fuzz seconds="${SEER_FUZZ_SECONDS:-20}"
  echo "== fuzz: $compiler, ${seconds}s per target"
  cmake -S "$repo_root" -B "$build_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER="$compiler" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_CXX_STANDARD=17 -DSEER_ENABLE_CUDA=OFF \
    -DSEER_BUILD_TESTS=ON -DSEER_BUILD_FUZZERS=ON -DSEER_BUILD_EXAMPLES=OFF -DSEER_BUILD_BENCH=OFF -DSEER_INSTALL=OFF
  cmake --build "$build_dir" --target seer_fuzzers -j "$jobs"
  local target failed_targets=()
  for target in json safetensors model_config zip pickle torch_checkpoint; do
    # The first corpus folder collects new inputs (kept in the build tree); the seeds are only read.
    local work="$build_dir/fuzz-work/$target"
    mkdir -p "$work/corpus" "$work/artifacts"
    echo "-- fuzz_$target"
    if ! "$build_dir/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" "tests/fuzz/corpus/$target" \
      >"$work/log.txt" 2>&1; then
      tail -n 60 "$work/log.txt"
      failed_targets+=("$target")
    fi
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$work/log.txt" | tail -n 2 || true
  done
  if ((${#failed_targets[@]})); then
    echo "fuzz: crashes in ${failed_targets[*]} (inputs under $build_dir/fuzz-work/*/artifacts/)" >&2
    return 1
  fi
}

run_hip_stage() {
  # shellcheck source=../cmake/install_dependencies.sh
  source "$repo_root/cmake/install_dependencies.sh"
  install_missing_packages clang-19 clang-tools-19 lld-19 libamdhip64-dev rocm-device-libs
  local build_dir=build/ci-hip
  if [[ "${SEER_CI_CLEAN:-0}" == "1" ]]; then
    rm -rf "$build_dir"
  fi
  cmake -S "$repo_root" -B "$build_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release \
    -DSEER_WARNINGS_AS_ERRORS=ON -DSEER_CXX_STANDARD=17 -DSEER_ENABLE_CUDA=OFF -DSEER_ENABLE_HIP=ON \
    -DSEER_HIP_ARCHITECTURES="gfx90a;gfx942;gfx1100" -DSEER_BUILD_TESTS=ON -DSEER_BUILD_EXAMPLES=OFF \
    -DSEER_BUILD_BENCH=OFF -DSEER_INSTALL=OFF
  # Only the HIP targets: the CPU suites are built and run by the other stages.
  cmake --build "$build_dir" --target seer_hip_check seer_hip_tests -j "$jobs"
  echo "== hip: code objects per object file"
  cat "$build_dir"/tests/hip/*.o.checked | sort | uniq -c
  (cd "$build_dir" && ctest --output-on-failure --no-tests=error -R '^seer_hip_tests$')
}

run_stage() {
  case "$1" in
    gcc)
      local cuda=()
      if [[ -x /usr/local/cuda/bin/nvcc ]]; then
        cuda=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
      fi
      configure_build_test build/ci-gcc -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release -DSEER_CXX_STANDARD=17 \
        -DSEER_ENABLE_CUDA=AUTO "${cuda[@]}" -DSEER_BUILD_TESTS=ON -DSEER_BUILD_EXAMPLES=ON -DSEER_BUILD_BENCH=ON
      ;;
    clang)
      configure_build_test build/ci-clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release \
        -DSEER_CXX_STANDARD=20 -DSEER_ENABLE_CUDA=OFF -DSEER_BUILD_TESTS=ON -DSEER_BUILD_EXAMPLES=OFF \
        -DSEER_BUILD_BENCH=OFF
      ;;
    sanitize)
      export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
      export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
      configure_build_test build/ci-sanitize -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Debug \
        "-DCMAKE_CXX_FLAGS_DEBUG=-g -O1" -DSEER_CXX_STANDARD=17 -DSEER_SANITIZE=ON -DSEER_ENABLE_CUDA=OFF \
        -DSEER_BUILD_TESTS=ON -DSEER_BUILD_EXAMPLES=OFF -DSEER_BUILD_BENCH=OFF
      ;;
    format)
      cmake -DSEER_SOURCE_DIR="$repo_root" -P "$repo_root/cmake/SeerCheckFormat.cmake"
      ;;
    fuzz)
      run_fuzz_stage
      ;;
    hip)
      run_hip_stage
      ;;
    *)
      echo "run_all.sh: unknown stage '$1' (stages: gcc clang sanitize format fuzz hip)" >&2
      return 2
      ;;
  esac
}

if [[ "${1:-}" == "--stage" ]]; then
  run_stage "$2"
  exit 0
fi

# ---- Dependencies ----------------------------------------------------------------------------------
# shellcheck source=../cmake/install_dependencies.sh
source "$repo_root/cmake/install_dependencies.sh"

start_all=$(date +%s)
install_missing_packages cmake g++ clang clang-format ninja-build libeigen3-dev doctest-dev

stages=("$@")
if ((${#stages[@]} == 0)); then
  stages=(gcc clang sanitize format fuzz hip)
fi

declare -a summary=()
failed=0
for stage in "${stages[@]}"; do
  echo
  echo "================ stage: $stage ================"
  stage_start=$(date +%s)
  if bash "$script" --stage "$stage"; then
    result="passed"
  else
    result="FAILED"
    failed=1
  fi
  summary+=("$(printf '  %-9s %-7s %4ds' "$stage" "$result" "$(($(date +%s) - stage_start))")")
done

echo
echo "================ summary ================"
printf '%s\n' "${summary[@]}"
cuda_state="off"
if [[ " ${stages[*]} " == *" gcc "* ]] && compgen -G "build/ci-gcc/CMakeFiles/*/CMakeCUDACompiler.cmake" >/dev/null; then
  cuda_state="on (GPU code compiled; GPU tests skip at run time when no GPU is present)"
fi
if [[ " ${stages[*]} " == *" gcc "* ]]; then
  echo "  CUDA in the gcc stage: $cuda_state"
fi
echo "  total $(($(date +%s) - start_all))s"
if ((failed)); then
  echo "run_all.sh: FAILED" >&2
  exit 1
fi
echo "run_all.sh: all stages passed"
