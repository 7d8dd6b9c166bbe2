// The AMD ground-truth forward compiled by nvcc (portable tile path, 32-lane layout), for the runner.
#include "ground_truth_runner.hpp"
#include "seer/gpu/ground_truth_kernel_amd.hpp"
#include "seer/gpu/prefill_arguments.hpp"
#include "seer/gpu/vendor.hpp"

namespace seer::gpu_test {

template <class T>
void run_amd_ground_truth_forward(const gpu::GroundTruthParams<T>& params, std::int64_t batch) {
  gpu::dispatch_prefill_head_dim(params.attention.q.head_dim, [&](auto head_dim) {
    constexpr int kHeadDim = decltype(head_dim)::value;
    using Traits = gpu::AmdPrefillTraits<T, kHeadDim>;
    auto* kernel = &gpu::ground_truth_forward_kernel_amd<T, kHeadDim>;
    gpu::vendor::set_max_dynamic_shared_bytes(kernel, Traits::kSharedBytes);
    const dim3 grid(static_cast<unsigned>(params.attention.max_query_tiles),
                    static_cast<unsigned>(params.attention.q.heads), static_cast<unsigned>(batch));
    kernel<<<grid, Traits::kWarps * gpu::vendor::warp_size, Traits::kSharedBytes>>>(params);
    gpu::vendor::check_last_launch("ground_truth_forward_kernel_amd launch");
  });
}

template void run_amd_ground_truth_forward(const gpu::GroundTruthParams<bfloat16>&, std::int64_t);
template void run_amd_ground_truth_forward(const gpu::GroundTruthParams<half>&, std::int64_t);

}  // namespace seer::gpu_test
