// The CUDA runner of the shared GPU suite (tests/gpu/test_block_sparse_attention.cpp): seer::cuda's
// block_sparse_attention, through the backend-neutral implementation.
#include "seer/cuda/block_sparse_attention.hpp"
#include "seer/cuda/device_block_set.hpp"

#define SEER_TEST_BACKEND cuda
#include "device_attention_runner_impl.hpp"
