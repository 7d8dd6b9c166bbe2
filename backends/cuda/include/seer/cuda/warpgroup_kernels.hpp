// Whether seer's Hopper warpgroup (wgmma) kernels can run: they exist only in sm_90a device code, which the
// build says through SEER_CUDA_WARPGROUP_KERNELS (seer's CMake target defines it when
// CMAKE_CUDA_ARCHITECTURES lists 90a), and only a compute-capability-9 GPU runs that code. The prefill's
// kernel choice (block_sparse_attention.hpp) and the gate's projection (gate_selection.hpp) both ask here.
#pragma once

#include <cuda_runtime.h>

#include "seer/gpu/vendor.hpp"

namespace seer::cuda {

#if defined(SEER_CUDA_WARPGROUP_KERNELS) && SEER_CUDA_WARPGROUP_KERNELS
inline constexpr bool kWarpgroupKernelsBuilt = true;
#else
inline constexpr bool kWarpgroupKernelsBuilt = false;
#endif

// The current device runs the warpgroup kernels of this build (host-side, no synchronisation).
inline bool warpgroup_kernels_available() {
  if (!kWarpgroupKernelsBuilt) return false;
  int device = 0, major = 0;
  gpu::vendor::check(cudaGetDevice(&device), "cudaGetDevice");
  gpu::vendor::check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                     "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
  return major == 9;
}

}  // namespace seer::cuda
