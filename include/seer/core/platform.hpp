// Compiler portability for code that is shared between host and device.
//
// Everything under include/seer is plain C++17 and compiles without any GPU headers. Functions that
// the CUDA and HIP kernels also call (block geometry, selection predicates) are marked
// SEER_HOST_DEVICE; for a host compiler the marker expands to nothing.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SEER_HOST_DEVICE __host__ __device__
#else
#define SEER_HOST_DEVICE
#endif
