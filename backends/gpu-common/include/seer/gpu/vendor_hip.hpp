// The HIP branch of the vendor layer (AMD GPUs). Include seer/gpu/vendor.hpp, not this file: it
// selects this branch when the translation unit is compiled as HIP.
//
// The functions mirror the CUDA branch one for one, with the differences spelled out where they
// arise: the wavefront is 64 lanes on CDNA (gfx9xx) and 32 on RDNA (gfx11xx, gfx12xx), lane masks
// are 64-bit, HIP's shuffles take no mask, and there is no asynchronous global -> shared copy.
#pragma once

#include <hip/hip_runtime.h>

#include <cstddef>

#include <cstddef>
#include <cstdint>
#include <string>

#include "seer/core/error.hpp"
#include "seer/core/numeric_types.hpp"
#include "seer/gpu/warp_algorithms.hpp"

namespace seer::gpu::vendor {

// ---- Runtime --------------------------------------------------------------------------------------

using stream_t = hipStream_t;
using error_t = hipError_t;

inline constexpr const char* name = "HIP";

// An error code for tests of the error path.
inline constexpr error_t invalid_value_error = hipErrorInvalidValue;

inline bool succeeded(error_t error) { return error == hipSuccess; }
inline const char* error_string(error_t error) { return hipGetErrorString(error); }

// Every runtime call goes through here: a failure becomes a BackendError naming the call. (HIP marks
// its API [[nodiscard]], so an unchecked call is also a compiler warning.)
inline void check(error_t error, const char* what) {
  if (!succeeded(error)) throw BackendError(std::string("seer: ") + what + " failed: " + error_string(error));
}

inline void check_last_launch(const char* kernel) { check(hipGetLastError(), kernel); }

// Device memory, for host-side helpers that own buffers (DeviceBlockSet). Allocation and upload are
// synchronous and belong outside hot calls; release never throws (it runs in destructors).
inline void* device_allocate(std::size_t bytes, const char* what) {
  void* pointer = nullptr;
  check(hipMalloc(&pointer, bytes), what);
  return pointer;
}
inline void device_release(void* pointer) noexcept {
  if (pointer != nullptr) static_cast<void>(hipFree(pointer));
}
inline void copy_to_device(void* destination, const void* source, std::size_t bytes, const char* what) {
  check(hipMemcpy(destination, source, bytes, hipMemcpyHostToDevice), what);
}

// Host utilities for programs around the library (tests, benchmarks, examples): copies back to the
// host, byte fills, streams, and CUDA-graph capture. The library's own calls never use them inside a
// hot path.
inline void copy_to_host(void* destination, const void* source, std::size_t bytes, const char* what) {
  check(hipMemcpy(destination, source, bytes, hipMemcpyDeviceToHost), what);
}
// `rows` rows of `row_bytes` each, with the given pitches (bytes between row starts).
inline void copy_rows_to_host(void* destination, std::size_t destination_pitch, const void* source,
                              std::size_t source_pitch, std::size_t row_bytes, std::size_t rows, const char* what) {
  check(hipMemcpy2D(destination, destination_pitch, source, source_pitch, row_bytes, rows, hipMemcpyDeviceToHost),
        what);
}
inline void fill_device_bytes(void* destination, int byte, std::size_t bytes, const char* what) {
  check(hipMemset(destination, byte, bytes), what);
}
inline int device_count() {
  int count = 0;
  return succeeded(hipGetDeviceCount(&count)) ? count : 0;
}
inline std::size_t free_device_bytes() {
  std::size_t free_bytes = 0, total_bytes = 0;
  check(hipMemGetInfo(&free_bytes, &total_bytes), "hipMemGetInfo");
  return free_bytes;
}
inline stream_t create_stream() {
  stream_t stream = nullptr;
  check(hipStreamCreateWithFlags(&stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
  return stream;
}
inline void destroy_stream(stream_t stream) noexcept { static_cast<void>(hipStreamDestroy(stream)); }
inline void synchronize(stream_t stream, const char* what) { check(hipStreamSynchronize(stream), what); }

// Captures everything `enqueue(stream)` puts on `stream` into one graph, then replays the graph
// `replays` times and waits for it: the check that a call is graph-capturable (no synchronisation,
// no allocation, nothing that breaks capture) and that replaying it gives the same result.
template <class Enqueue>
void capture_and_replay(stream_t stream, int replays, Enqueue&& enqueue) {
  hipGraph_t graph = nullptr;
  check(hipStreamBeginCapture(stream, hipStreamCaptureModeGlobal), "hipStreamBeginCapture");
  try {
    enqueue(stream);
  } catch (...) {
    static_cast<void>(hipStreamEndCapture(stream, &graph));
    if (graph != nullptr) static_cast<void>(hipGraphDestroy(graph));
    throw;
  }
  check(hipStreamEndCapture(stream, &graph), "hipStreamEndCapture");
  hipGraphExec_t executable = nullptr;
  // HIP 5.2 takes the CUDA 11 signature: error node, log buffer and its size.
  const error_t instantiated = hipGraphInstantiate(&executable, graph, nullptr, nullptr, 0);
  static_cast<void>(hipGraphDestroy(graph));
  check(instantiated, "hipGraphInstantiate");
  error_t launched = hipSuccess;
  for (int replay = 0; replay < replays && succeeded(launched); ++replay) launched = hipGraphLaunch(executable, stream);
  const error_t finished = hipStreamSynchronize(stream);
  static_cast<void>(hipGraphExecDestroy(executable));
  check(launched, "hipGraphLaunch");
  check(finished, "hipStreamSynchronize (graph replay)");
}

template <class Kernel>
void set_max_dynamic_shared_bytes(Kernel* kernel, int bytes) {
  check(hipFuncSetAttribute(reinterpret_cast<const void*>(kernel), hipFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "hipFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

// CUDA's programmatic dependent launch has no HIP counterpart: a plain launch, and the wait is a no-op.
template <class... Params, class... Args>
void launch_after_prior_grid(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block,
                             std::size_t shared_bytes, stream_t stream, const Args&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
  check_last_launch(what);
}
__device__ inline void wait_for_prior_grid() {}
__device__ inline void allow_dependent_launch() {}

// ---- Warp-level primitives --------------------------------------------------------------------------

// The wavefront width of the target being compiled: 64 on CDNA, 32 on RDNA. Only the device pass
// knows it; clang's host pass of a HIP TU sees one value for all targets (64), so host code must
// never size a launch from it: seer's HIP launches are given in threads, and a kernel derives its
// warp count from this constant on the device.
#if defined(__HIP_DEVICE_COMPILE__)
inline constexpr int warp_size = __AMDGCN_WAVEFRONT_SIZE;
#else
inline constexpr int warp_size = 64;  // placeholder for the host pass (device-only code reads it)
#endif
using lane_mask_t = warp::LaneMask<warp_size>;
inline constexpr lane_mask_t all_lanes = warp::all_lanes_mask<warp_size>();

// HIP's shuffles have no lane mask: every lane of the wavefront takes part, which is what every seer
// kernel does. `width` (a power of two up to warp_size) splits the wavefront into independent groups.
__device__ inline float shuffle_xor(float value, int lane_offset) { return __shfl_xor(value, lane_offset, warp_size); }
__device__ inline int shuffle_xor(int value, int lane_offset) { return __shfl_xor(value, lane_offset, warp_size); }
__device__ inline float broadcast(float value, int source_lane) { return __shfl(value, source_lane, warp_size); }
__device__ inline int broadcast(int value, int source_lane) { return __shfl(value, source_lane, warp_size); }

// Bit l set when lane l's predicate holds; 64 bits on a 64-lane wavefront.
__device__ inline lane_mask_t ballot(bool predicate) { return static_cast<lane_mask_t>(__ballot(predicate)); }

// Warp-wide integer reductions (a butterfly of shuffles; CUDA has single instructions for these).
__device__ inline int warp_sum_int(int value) {
  for (int offset = warp_size / 2; offset > 0; offset /= 2) value += __shfl_xor(value, offset, warp_size);
  return value;
}
__device__ inline unsigned warp_max_uint(unsigned value) {
  for (int offset = warp_size / 2; offset > 0; offset /= 2) {
    const unsigned other = static_cast<unsigned>(__shfl_xor(static_cast<int>(value), offset, warp_size));
    value = other > value ? other : value;
  }
  return value;
}
__device__ inline unsigned warp_min_uint(unsigned value) {
  for (int offset = warp_size / 2; offset > 0; offset /= 2) {
    const unsigned other = static_cast<unsigned>(__shfl_xor(static_cast<int>(value), offset, warp_size));
    value = other < value ? other : value;
  }
  return value;
}

// A wavefront executes in lock step; what a warp synchronisation must still provide is ordering of
// its shared-memory accesses, hence the fences around the wave barrier.
__device__ inline void sync_warp() {
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");
  __builtin_amdgcn_wave_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");
}

__device__ inline bool warp_all(bool predicate) { return ballot(predicate) == all_lanes; }

__device__ inline int lane_index() { return static_cast<int>(threadIdx.x) % warp_size; }
__device__ inline int warp_index() { return static_cast<int>(threadIdx.x) / warp_size; }

// 2^x in the transcendental unit (v_exp_f32): exp2(-inf) is +0, which the online softmax relies on.
__device__ inline float fast_exp2(float x) { return __builtin_amdgcn_exp2f(x); }

// ---- 16-bit element types ---------------------------------------------------------------------------

namespace detail {
// float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
__device__ inline std::uint32_t bfloat16_bits(float value) {
  const std::uint32_t bits = __float_as_uint(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}
__device__ inline std::uint32_t half_bits(float value) {
  return __builtin_bit_cast(std::uint16_t, static_cast<_Float16>(value));
}
// Lane-wise maximum (Greater = true) or minimum of two packed 16-bit pairs, `to_float` widening one lane's
// bits: each lane keeps one input's bits (exact), and a NaN loses to a number.
template <bool Greater, class ToFloat>
__device__ inline std::uint32_t extreme_pair(std::uint32_t a, std::uint32_t b, ToFloat to_float) {
  std::uint32_t result = 0;
  for (int shift = 0; shift < 32; shift += 16) {
    const std::uint32_t a_bits = (a >> shift) & 0xffffu, b_bits = (b >> shift) & 0xffffu;
    const float x = to_float(a_bits), y = to_float(b_bits);
    const bool take_b = x != x || (Greater ? y > x : y < x);
    result |= (take_b ? b_bits : a_bits) << shift;
  }
  return result;
}
__device__ inline float bfloat16_value(std::uint32_t bits) { return __uint_as_float(bits << 16); }
__device__ inline float half_value(std::uint32_t bits) {
  return static_cast<float>(__builtin_bit_cast(_Float16, static_cast<std::uint16_t>(bits)));
}
}  // namespace detail

template <class T>
struct element_traits {
  static_assert(sizeof(T) == 0, "seer GPU kernels take seer::bfloat16 or seer::half elements");
};

template <>
struct element_traits<seer::bfloat16> {
  using device_type = seer::bfloat16;  // the storage type is already the device layout (2 bytes)
  static constexpr std::uint32_t kNegativeInfinityPair = 0xff80ff80u, kPositiveInfinityPair = 0x7f807f80u;
  __device__ static std::uint32_t pack(float low, float high) {
    return detail::bfloat16_bits(low) | (detail::bfloat16_bits(high) << 16);
  }
  __device__ static std::uint32_t max_pair(std::uint32_t a, std::uint32_t b) {
    return detail::extreme_pair<true>(a, b, detail::bfloat16_value);
  }
  __device__ static std::uint32_t min_pair(std::uint32_t a, std::uint32_t b) {
    return detail::extreme_pair<false>(a, b, detail::bfloat16_value);
  }
};

template <>
struct element_traits<seer::half> {
  using device_type = _Float16;
  static constexpr std::uint32_t kNegativeInfinityPair = 0xfc00fc00u, kPositiveInfinityPair = 0x7c007c00u;
  __device__ static std::uint32_t pack(float low, float high) {
    return detail::half_bits(low) | (detail::half_bits(high) << 16);
  }
  __device__ static std::uint32_t max_pair(std::uint32_t a, std::uint32_t b) {
    return detail::extreme_pair<true>(a, b, detail::half_value);
  }
  __device__ static std::uint32_t min_pair(std::uint32_t a, std::uint32_t b) {
    return detail::extreme_pair<false>(a, b, detail::half_value);
  }
};

static_assert(sizeof(_Float16) == sizeof(seer::half) && sizeof(seer::bfloat16) == 2,
              "seer's 16-bit storage types must match the device types bit for bit");

// ---- Global -> shared copies -------------------------------------------------------------------------

// CDNA2/3 and RDNA3 have no asynchronous global -> shared copy that HIP exposes portably: the copy is
// a plain 16-byte load and store, and the commit/wait calls are empty (the __syncthreads that
// follows every wait in seer's kernels still orders the stores for the other threads).
__device__ inline void copy_async_16_bytes(void* shared_destination, const void* global_source, bool valid) {
  const uint4 data = valid ? *static_cast<const uint4*>(global_source) : make_uint4(0u, 0u, 0u, 0u);
  *static_cast<uint4*>(shared_destination) = data;
}

__device__ inline void copy_async_16_bytes(void* shared_destination, const void* global_source) {
  *static_cast<uint4*>(shared_destination) = *static_cast<const uint4*>(global_source);
}

__device__ inline void commit_async_copies() {}

template <int Pending>
__device__ inline void wait_async_copies() {}

}  // namespace seer::gpu::vendor
