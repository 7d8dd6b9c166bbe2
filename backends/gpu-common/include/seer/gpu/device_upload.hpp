// upload_to_device: a host vector copied into a new device allocation, for the host-side holders that
// own device buffers (DeviceBlockSet, DeviceLearnedGate, DeviceDecodeGate). Synchronous; belongs
// outside hot calls. An empty vector still gets a valid one-element allocation, so holders never keep
// a null pointer for a present-but-empty tensor; a failed copy releases the allocation before throwing.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "seer/gpu/vendor.hpp"

namespace seer::gpu {

template <class Value>
Value* upload_to_device(const std::vector<Value>& host, const char* what) {
  const std::size_t bytes = std::max<std::size_t>(1, host.size()) * sizeof(Value);
  auto* device =
      static_cast<Value*>(vendor::device_allocate(bytes, (std::string("device allocation (") + what + ")").c_str()));
  try {
    if (!host.empty())
      vendor::copy_to_device(device, host.data(), host.size() * sizeof(Value), (std::string(what) + " upload").c_str());
  } catch (...) {
    vendor::device_release(device);
    throw;
  }
  return device;
}

}  // namespace seer::gpu
