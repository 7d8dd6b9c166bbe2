// seer::hip::block_sparse_attention: host-side validation and HIP error reporting.
#include "seer/hip/block_sparse_attention.hpp"

#define SEER_TEST_BACKEND hip
#define SEER_TEST_NAME "hip prefill"
#include "invalid_arguments_cases.hpp"
