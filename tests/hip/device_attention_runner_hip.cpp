// The HIP runner of the shared GPU suite (tests/gpu/test_block_sparse_attention.cpp): the same cases
// run against seer::hip::block_sparse_attention on an AMD GPU. have_gpu() asks the HIP runtime, so
// without an AMD GPU every case skips.
#include "seer/hip/block_sparse_attention.hpp"
#include "seer/hip/device_block_set.hpp"

#define SEER_TEST_BACKEND hip
#include "device_attention_runner_impl.hpp"
