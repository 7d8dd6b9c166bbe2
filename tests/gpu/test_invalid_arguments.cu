// seer::cuda::block_sparse_attention: host-side validation and CUDA error reporting.
#include "seer/cuda/block_sparse_attention.hpp"

#define SEER_TEST_BACKEND cuda
#define SEER_TEST_NAME "gpu prefill"
#include "invalid_arguments_cases.hpp"
