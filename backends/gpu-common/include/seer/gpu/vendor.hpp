// The vendor layer: the only place where seer's device code names a GPU vendor's API.
//
// Kernels in seer/gpu/ are written once against these typed wrappers. This file has a CUDA branch
// and a HIP branch (vendor_hip.hpp: hipStream_t, wave64 on CDNA, mask-free shuffles); kernels are
// written once against both. No #define aliases of vendor functions: an alias silently drops the lane
// mask of a shuffle or hides a 64-wide wavefront, a typed wrapper makes both visible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"

#if defined(__HIPCC__)
// AMD GPUs: the HIP branch lives in its own file; everything below this block is the CUDA branch.
#include "seer/gpu/vendor_hip.hpp"
#else  // CUDA branch, to the end of the file

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#else
#error "seer/gpu/vendor.hpp needs a GPU compiler: a .cu translation unit compiled by nvcc, or one compiled as HIP"
#endif

namespace seer::gpu::vendor {

// ---- Runtime --------------------------------------------------------------------------------------

using stream_t = cudaStream_t;
using error_t = cudaError_t;

inline constexpr const char* name = "CUDA";

// An error code for tests of the error path.
inline constexpr error_t invalid_value_error = cudaErrorInvalidValue;

inline bool succeeded(error_t error) { return error == cudaSuccess; }
inline const char* error_string(error_t error) { return cudaGetErrorString(error); }

// Every runtime call goes through here: a failure becomes a BackendError naming the call, never a
// silently ignored return code.
inline void check(error_t error, const char* what) {
  if (!succeeded(error)) throw BackendError(std::string("seer: ") + what + " failed: " + error_string(error));
}

// Launch errors (bad configuration, too much shared memory) are reported by the runtime only
// through the last-error slot; read it right after each launch.
inline void check_last_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Device memory, for host-side helpers that own buffers (DeviceBlockSet). Allocation and upload are
// synchronous and belong outside hot calls; release never throws (it runs in destructors).
inline void* device_allocate(std::size_t bytes, const char* what) {
  void* pointer = nullptr;
  check(cudaMalloc(&pointer, bytes), what);
  return pointer;
}
inline void device_release(void* pointer) noexcept {
  if (pointer != nullptr) static_cast<void>(cudaFree(pointer));
}
inline void copy_to_device(void* destination, const void* source, std::size_t bytes, const char* what) {
  check(cudaMemcpy(destination, source, bytes, cudaMemcpyHostToDevice), what);
}

// Host utilities for programs around the library (tests, benchmarks, examples): copies back to the
// host, byte fills, streams, and CUDA-graph capture. The library's own calls never use them inside a
// hot path.
inline void copy_to_host(void* destination, const void* source, std::size_t bytes, const char* what) {
  check(cudaMemcpy(destination, source, bytes, cudaMemcpyDeviceToHost), what);
}
// `rows` rows of `row_bytes` each, with the given pitches (bytes between row starts).
inline void copy_rows_to_host(void* destination, std::size_t destination_pitch, const void* source,
                              std::size_t source_pitch, std::size_t row_bytes, std::size_t rows, const char* what) {
  check(cudaMemcpy2D(destination, destination_pitch, source, source_pitch, row_bytes, rows, cudaMemcpyDeviceToHost),
        what);
}
inline void fill_device_bytes(void* destination, int byte, std::size_t bytes, const char* what) {
  check(cudaMemset(destination, byte, bytes), what);
}
inline int device_count() {
  int count = 0;
  return succeeded(cudaGetDeviceCount(&count)) ? count : 0;
}
inline std::size_t free_device_bytes() {
  std::size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  return free_bytes;
}
inline stream_t create_stream() {
  stream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return stream;
}
inline void destroy_stream(stream_t stream) noexcept { static_cast<void>(cudaStreamDestroy(stream)); }
inline void synchronize(stream_t stream, const char* what) { check(cudaStreamSynchronize(stream), what); }

// Captures everything `enqueue(stream)` puts on `stream` into one graph, then replays the graph
// `replays` times and waits for it: the check that a call is graph-capturable (no synchronisation,
// no allocation, nothing that breaks capture) and that replaying it gives the same result.
template <class Enqueue>
void capture_and_replay(stream_t stream, int replays, Enqueue&& enqueue) {
  cudaGraph_t graph = nullptr;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  try {
    enqueue(stream);
  } catch (...) {
    static_cast<void>(cudaStreamEndCapture(stream, &graph));
    if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
    throw;
  }
  check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t executable = nullptr;
  const error_t instantiated = cudaGraphInstantiate(&executable, graph, 0);
  static_cast<void>(cudaGraphDestroy(graph));
  check(instantiated, "cudaGraphInstantiate");
  error_t launched = cudaSuccess;
  for (int replay = 0; replay < replays && succeeded(launched); ++replay)
    launched = cudaGraphLaunch(executable, stream);
  const error_t finished = cudaStreamSynchronize(stream);
  static_cast<void>(cudaGraphExecDestroy(executable));
  check(launched, "cudaGraphLaunch");
  check(finished, "cudaStreamSynchronize (graph replay)");
}

template <class Kernel>
void set_max_dynamic_shared_bytes(Kernel* kernel, int bytes) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

// ---- Programmatic dependent launch ------------------------------------------------------------------
// launch_after_prior_grid starts a kernel of a chain (the gate's kernels: each reads what the one before it
// wrote). On compute capability 9.0 and newer it is launched with programmatic stream serialization, so that
// its launch overlaps the end of the kernel before it in the stream (in a CUDA graph too); such a kernel
// calls wait_for_prior_grid() before it touches memory, which returns once every prior kernel has finished
// and its writes are visible. On older devices: a plain launch, and the wait is a no-op.
inline bool device_has_dependent_launch() {
  int device = 0, major = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  return major >= 9;
}
template <class... Params, class... Args>
void launch_after_prior_grid(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block,
                             std::size_t shared_bytes, stream_t stream, const Args&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = device_has_dependent_launch() ? 1 : 0;
  check(cudaLaunchKernelEx(&config, kernel, args...), what);
}

// ---- Warp-level primitives --------------------------------------------------------------------------

// A compile-time constant: the HIP branch (vendor_hip.hpp) makes it 64 on CDNA. Host code that needs the width
// of a particular device must ask the device, not this constant.
inline constexpr int warp_size = 32;
using lane_mask_t = std::uint32_t;
inline constexpr lane_mask_t all_lanes = 0xffffffffu;

__device__ inline float shuffle_xor(float value, int lane_offset) {
  return __shfl_xor_sync(all_lanes, value, lane_offset, warp_size);
}

__device__ inline void sync_warp() { __syncwarp(all_lanes); }

// True when `predicate` holds in every lane of the warp (a warp-uniform answer for branching).
__device__ inline bool warp_all(bool predicate) { return __all_sync(all_lanes, predicate) != 0; }

// Used by the width-parameterised algorithms (seer/gpu/warp_algorithms.hpp, seer/gpu/warp_exchange.hpp).
__device__ inline int shuffle_xor(int value, int lane_offset) {
  return __shfl_xor_sync(all_lanes, value, lane_offset, warp_size);
}
__device__ inline float broadcast(float value, int source_lane) {
  return __shfl_sync(all_lanes, value, source_lane, warp_size);
}
__device__ inline int broadcast(int value, int source_lane) {
  return __shfl_sync(all_lanes, value, source_lane, warp_size);
}
__device__ inline lane_mask_t ballot(bool predicate) { return __ballot_sync(all_lanes, predicate); }

// Warp-wide integer reductions: one REDUX instruction each on sm_80 and newer.
__device__ inline int warp_sum_int(int value) { return __reduce_add_sync(all_lanes, value); }
__device__ inline unsigned warp_max_uint(unsigned value) { return __reduce_max_sync(all_lanes, value); }
__device__ inline unsigned warp_min_uint(unsigned value) { return __reduce_min_sync(all_lanes, value); }

__device__ inline int lane_index() { return static_cast<int>(threadIdx.x) % warp_size; }
__device__ inline int warp_index() { return static_cast<int>(threadIdx.x) / warp_size; }

// 2^x with the special-function unit: exp2(-inf) is +0, which the online softmax relies on.
__device__ inline float fast_exp2(float x) {
  float result;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(x));
  return result;
}

// ---- 16-bit element types ---------------------------------------------------------------------------

// The device type that matches a seer storage type bit for bit, and packing of two floats into the
// 32-bit register pair that matrix instructions take. The primary template is a trap: only the
// types the tensor cores read are valid.
template <class T>
struct element_traits {
  static_assert(sizeof(T) == 0, "seer GPU kernels take seer::bfloat16 or seer::half elements");
};

template <>
struct element_traits<seer::bfloat16> {
  using device_type = __nv_bfloat16;
  static constexpr std::uint32_t kNegativeInfinityPair = 0xff80ff80u, kPositiveInfinityPair = 0x7f807f80u;
  __device__ static std::uint32_t pack(float low, float high) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const std::uint32_t*>(&pair);
  }
  // Lane-wise maximum / minimum of two packed pairs (one instruction each; a NaN loses to a number).
  __device__ static std::uint32_t max_pair(std::uint32_t a, std::uint32_t b) {
    const __nv_bfloat162 r =
        __hmax2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const std::uint32_t*>(&r);
  }
  __device__ static std::uint32_t min_pair(std::uint32_t a, std::uint32_t b) {
    const __nv_bfloat162 r =
        __hmin2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const std::uint32_t*>(&r);
  }
};

template <>
struct element_traits<seer::half> {
  using device_type = __half;
  static constexpr std::uint32_t kNegativeInfinityPair = 0xfc00fc00u, kPositiveInfinityPair = 0x7c007c00u;
  __device__ static std::uint32_t pack(float low, float high) {
    const __half2 pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<const std::uint32_t*>(&pair);
  }
  __device__ static std::uint32_t max_pair(std::uint32_t a, std::uint32_t b) {
    const __half2 r = __hmax2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
    return *reinterpret_cast<const std::uint32_t*>(&r);
  }
  __device__ static std::uint32_t min_pair(std::uint32_t a, std::uint32_t b) {
    const __half2 r = __hmin2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
    return *reinterpret_cast<const std::uint32_t*>(&r);
  }
};

static_assert(sizeof(__nv_bfloat16) == sizeof(seer::bfloat16) && sizeof(__half) == sizeof(seer::half),
              "seer's 16-bit storage types must match the device types bit for bit");

// ---- Asynchronous global -> shared copies ------------------------------------------------------------

__device__ inline std::uint32_t shared_address(const void* pointer) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(pointer));
}

// Copies 16 bytes, or writes 16 zero bytes when `valid` is false (rows past a sequence's end must be
// zeros: a NaN there would survive a multiplication by a zero probability).
__device__ inline void copy_async_16_bytes(void* shared_destination, const void* global_source, bool valid) {
  const int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared_destination)),
               "l"(global_source), "r"(source_bytes));
}

// Unconditional form for tiles known to lie entirely inside the sequence.
__device__ inline void copy_async_16_bytes(void* shared_destination, const void* global_source) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(shared_destination)),
               "l"(global_source));
}

__device__ inline void commit_async_copies() { asm volatile("cp.async.commit_group;\n" ::); }

// See launch_after_prior_grid.
__device__ inline void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next kernel of the stream, if launched by launch_after_prior_grid, start its launch now (its CTAs
// take free multiprocessors and wait in wait_for_prior_grid) instead of when this grid has finished.
__device__ inline void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Waits until at most `Pending` committed groups are still in flight.
template <int Pending>
__device__ inline void wait_async_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

}  // namespace seer::gpu::vendor

#endif  // CUDA branch
