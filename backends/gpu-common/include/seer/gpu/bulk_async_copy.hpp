// Bulk asynchronous copies from global to shared memory (Hopper's copy engine, cp.async.bulk) and the
// shared-memory transaction barriers (mbarrier) that say when they landed. NVIDIA only (nvcc); the
// instructions exist from sm_90 on: device code for older architectures traps, and the host must not
// launch a kernel that uses them there (seer::cuda::sparse_decode checks the build and the device).
//
// Why: a 16-byte cp.async moves one chunk per thread and per instruction, and a CTA that has to keep many
// K/V bytes in flight on its own (one CTA per multiprocessor at batch 1) is held back by the per-thread
// work and the number of copies the multiprocessor tracks. One bulk copy moves a whole cache row (128
// or 256 bytes) and completes on a barrier by byte count, with no per-chunk bookkeeping in the threads.
#pragma once

#include <cstdint>

#include "seer/gpu/vendor.hpp"

#if !defined(__HIPCC__)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SEER_BULK_ASYNC_COPY_AVAILABLE 1
#else
#define SEER_BULK_ASYNC_COPY_AVAILABLE 0
#endif

namespace seer::gpu::bulk {

// Initialises a barrier in shared memory that completes a phase when `arrivals` threads have arrived
// and every byte they announced has landed. One thread initialises; a block barrier must follow
// before any other thread uses it.
__device__ inline void init_barrier(std::uint64_t* barrier, std::uint32_t arrivals) {
#if SEER_BULK_ASYNC_COPY_AVAILABLE
  asm volatile(
      "mbarrier.init.shared::cta.b64 [%0], %1;\n"
      "fence.mbarrier_init.release.cluster;\n" ::"r"(vendor::shared_address(barrier)),
      "r"(arrivals)
      : "memory");
#else
  (void)barrier;
  (void)arrivals;
  __trap();
#endif
}

// Retires a barrier before its memory could serve another purpose.
__device__ inline void invalidate_barrier(std::uint64_t* barrier) {
#if SEER_BULK_ASYNC_COPY_AVAILABLE
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(vendor::shared_address(barrier)) : "memory");
#else
  (void)barrier;
  __trap();
#endif
}

// Orders this thread's earlier shared-memory accesses (ordinary loads and stores) before its later
// bulk copies into the same bytes: the copy engine is a different memory proxy.
__device__ inline void order_shared_before_bulk_copies() {
#if SEER_BULK_ASYNC_COPY_AVAILABLE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}

// Arrives on `barrier` announcing `bytes` bytes, then copies them from global `source` to shared
// `destination` (both 16-byte aligned, bytes a multiple of 16); the copy counts its bytes down on the
// same barrier. The .shared::cluster destination is this CTA's own shared memory (every launch is a
// cluster of one CTA at least).
__device__ inline void arrive_and_copy(void* destination, const void* source, std::uint32_t bytes,
                                       std::uint64_t* barrier) {
#if SEER_BULK_ASYNC_COPY_AVAILABLE
  const std::uint32_t barrier_address = vendor::shared_address(barrier);
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%2], [%3], %1, [%0];\n" ::"r"(
          barrier_address),
      "r"(bytes), "r"(vendor::shared_address(destination)), "l"(source)
      : "memory");
#else
  (void)destination;
  (void)source;
  (void)bytes;
  (void)barrier;
  __trap();
#endif
}

// Arrives on `barrier` without announcing bytes (a thread with nothing to copy this phase).
__device__ inline void arrive(std::uint64_t* barrier) {
#if SEER_BULK_ASYNC_COPY_AVAILABLE
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(vendor::shared_address(barrier)) : "memory");
#else
  (void)barrier;
  __trap();
#endif
}

// Waits until the phase of `barrier` with parity `parity` (0 for its first phase, 1 for the second,
// ...) has completed; the bytes copied in that phase are then visible to this thread.
__device__ inline void wait_barrier(std::uint64_t* barrier, std::uint32_t parity) {
#if SEER_BULK_ASYNC_COPY_AVAILABLE
  const std::uint32_t address = vendor::shared_address(barrier);
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred complete;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n"
        "selp.u32 %0, 1, 0, complete;\n"
        "}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  } while (done == 0);
#else
  (void)barrier;
  (void)parity;
  __trap();
#endif
}

}  // namespace seer::gpu::bulk

#endif  // !__HIPCC__
