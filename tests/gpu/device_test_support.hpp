// Device-side helpers of the GPU tests, written once against the vendor layer so that the CUDA and
// the HIP test executables share them: owned buffers, a stream, a GPU-presence check and a
// device-side random fill.
#pragma once

#include <cstddef>
#include <cstdint>

#include "seer/core/numeric_types.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu_test {

// RAII device allocation (the library itself never allocates in its hot calls).
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::int64_t count)
      : data_(static_cast<T*>(gpu::vendor::device_allocate(bytes(count > 0 ? count : 1), "test buffer"))),
        count_(count) {}
  DeviceArray(const T* host, std::int64_t count) : DeviceArray(count) {
    if (count > 0) gpu::vendor::copy_to_device(data_, host, bytes(count), "upload (test buffer)");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { gpu::vendor::device_release(data_); }

  T* get() const { return data_; }
  std::int64_t size() const { return count_; }
  // All bytes 0xff: NaN for every floating-point type, so an unwritten output cannot pass a check.
  void poison() { gpu::vendor::fill_device_bytes(data_, 0xff, bytes(count_), "poison (test buffer)"); }
  void download(T* host, std::int64_t count) const {
    gpu::vendor::copy_to_host(host, data_, bytes(count), "download (test buffer)");
  }

 private:
  static std::size_t bytes(std::int64_t count) { return static_cast<std::size_t>(count) * sizeof(T); }
  T* data_ = nullptr;
  std::int64_t count_ = 0;
};

class Stream {
 public:
  Stream() : stream_(gpu::vendor::create_stream()) {}
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { gpu::vendor::destroy_stream(stream_); }
  gpu::vendor::stream_t get() const { return stream_; }
  void synchronize() const { gpu::vendor::synchronize(stream_, "stream synchronize"); }

 private:
  gpu::vendor::stream_t stream_ = nullptr;
};

inline bool device_present() { return gpu::vendor::device_count() > 0; }

// Deterministic pseudo-random bfloat16 values in [-2, 2), drawn on the device (inputs of the
// long-sequence cases are gigabytes, too large to draw on the host).
template <int = 0>
__global__ void fill_random_bfloat16(bfloat16* data, std::int64_t count, std::uint64_t seed) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    std::uint64_t x = static_cast<std::uint64_t>(i) + seed * 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    const float value = static_cast<float>(x >> 40) * (4.0f / 16777216.0f) - 2.0f;
    data[i] = bfloat16{static_cast<std::uint16_t>(gpu::vendor::element_traits<bfloat16>::pack(value, 0.0f) & 0xffffu)};
  }
}

inline void fill_random(DeviceArray<bfloat16>& array, std::uint64_t seed) {
  fill_random_bfloat16<><<<1024, 256>>>(array.get(), array.size(), seed);
  gpu::vendor::check_last_launch("fill_random_bfloat16");
}

}  // namespace seer::gpu_test
