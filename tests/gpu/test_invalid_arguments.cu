// seer::cuda::block_sparse_attention: host-side validation and CUDA error reporting.
#include "seer/cuda/block_sparse_attention.hpp"

#define SEER_TEST_BACKEND cuda
#define SEER_TEST_NAME "gpu prefill"
#include "invalid_arguments_cases.hpp"

// The kernel choice is CUDA-only: forcing the warpgroup kernel where it does not exist (head dim 256
// here, on any device) names the argument instead of launching a kernel that is not there.
TEST_CASE("gpu prefill validation: forcing the warpgroup kernel for head dim 256 names the kernel argument") {
  alignas(16) static bfloat16 stand_in[64];
  const auto view = TensorView<const bfloat16, 4>{stand_in, {1, 64, 2, 256}, {64 * 2 * 256, 2 * 256, 256, 1}};
  const auto out_view = TensorView<bfloat16, 4>{stand_in, {1, 64, 2, 256}, {64 * 2 * 256, 2 * 256, 256, 1}};
  std::string argument = "(accepted)";
  try {
    cuda::block_sparse_attention<bfloat16>(padded_batch(view, "q"), padded_batch(view, "k"), padded_batch(view, "v"),
                                           nullptr, AttentionOptions{}, padded_batch(out_view, "out"),
                                           TensorView<float, 2>{}, nullptr, cuda::PrefillKernel::warpgroup);
  } catch (const InvalidArgument& error) {
    argument = error.argument();
  }
  CHECK(argument == "kernel");
}
