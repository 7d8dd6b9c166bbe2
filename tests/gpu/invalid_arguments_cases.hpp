// Host-side validation of a backend's block_sparse_attention and its runtime error reporting, written
// once for both backends: test_invalid_arguments.cu (CUDA) and tests/hip/test_invalid_arguments_hip.cpp
// include it after defining SEER_TEST_BACKEND (cuda or hip) and SEER_TEST_NAME (a test-name prefix).
//
// Validation needs no device memory, so these cases run everywhere, also in CI without a GPU: the
// data pointers are aligned stand-ins that the call rejects before anything is enqueued.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "seer/gpu/vendor.hpp"

namespace {

using namespace seer;

// Stand-in device addresses: never dereferenced, 16-byte aligned.
alignas(16) bfloat16 placeholder[64];

struct Arguments {
  SequenceBatch<const bfloat16> q, k, v;
  SequenceBatch<bfloat16> out;
  TensorView<float, 2> lse;
  AttentionOptions options;
  BlockSetView blocks;
  const BlockSetView* block_pointer = nullptr;

  Arguments() {
    // Padded [2, 128, 8, 128] queries, [2, 128, 2, 128] keys and values.
    q = padded_batch(TensorView<const bfloat16, 4>{placeholder, {2, 128, 8, 128}, {128 * 8 * 128, 8 * 128, 128, 1}},
                     "q");
    k = padded_batch(TensorView<const bfloat16, 4>{placeholder, {2, 128, 2, 128}, {128 * 2 * 128, 2 * 128, 128, 1}},
                     "k");
    v = k;
    out = padded_batch(TensorView<bfloat16, 4>{placeholder, {2, 128, 8, 128}, {128 * 8 * 128, 8 * 128, 128, 1}}, "out");
    static std::int64_t row_offsets[1] = {0};
    static std::int32_t key_blocks[1] = {0};
    static std::int32_t query_block_offsets[3] = {0, 2, 4};
    blocks = BlockSetView{row_offsets, key_blocks, query_block_offsets, 2, 8, 64};
  }

  void call() const {
    SEER_TEST_BACKEND::block_sparse_attention<bfloat16>(q, k, v, block_pointer, options, out, lse, nullptr);
  }
};

std::string rejected_argument(const Arguments& arguments) {
  try {
    arguments.call();
  } catch (const InvalidArgument& error) {
    return error.argument();
  } catch (const BackendError& error) {
    return std::string("(backend error: ") + error.what() + ")";
  }
  return "(accepted)";
}

}  // namespace

TEST_CASE(SEER_TEST_NAME " validation: unsupported head dim, strides and alignment name the argument") {
  Arguments a;
  a.q.head_dim = a.k.head_dim = a.v.head_dim = a.out.head_dim = 96;
  CHECK(rejected_argument(a) == "q");

  Arguments b;
  b.q.dim_stride = 2;
  CHECK(rejected_argument(b) == "q");

  Arguments c;
  c.k.token_stride += 4;  // not a multiple of 8 elements
  c.v = c.k;
  CHECK(rejected_argument(c) == "k");

  Arguments d;
  d.v.data = placeholder + 1;  // 2-byte aligned
  CHECK(rejected_argument(d) == "v");
}

TEST_CASE(SEER_TEST_NAME " validation: GQA divisibility, LSE shape and softmax scale") {
  Arguments a;
  a.k.heads = a.v.heads = 3;  // 8 % 3 != 0
  CHECK(rejected_argument(a) == "k");

  Arguments b;
  float lse_placeholder[1];
  b.lse = TensorView<float, 2>{lse_placeholder, {4, 256}, {256, 1}};  // 4 rows for 8 query heads
  CHECK(rejected_argument(b) == "lse");

  Arguments c;
  c.options.softmax_scale = std::nan("");
  CHECK(rejected_argument(c) == "options.softmax_scale");
}

TEST_CASE(SEER_TEST_NAME " validation: BlockSet block size, heads and batch") {
  Arguments a;
  a.blocks.block_size = 32;
  a.block_pointer = &a.blocks;
  CHECK(rejected_argument(a) == "blocks");

  Arguments b;
  b.blocks.heads = 4;  // neither the 8 query heads nor the 2 KV heads
  b.block_pointer = &b.blocks;
  CHECK(rejected_argument(b) == "blocks");

  Arguments c;
  c.blocks.batch = 3;
  c.block_pointer = &c.blocks;
  CHECK(rejected_argument(c) == "blocks");
}

TEST_CASE(SEER_TEST_NAME ": runtime failures surface as BackendError with the runtime's message") {
  if (gpu::vendor::device_count() == 0) {
    // Without a usable driver, a valid call fails at its first runtime call: reported, not swallowed.
    Arguments a;
    CHECK_THROWS_AS(a.call(), BackendError);
    return;
  }
  try {
    gpu::vendor::check(gpu::vendor::invalid_value_error, "runtimeExample");
    FAIL("check did not throw");
  } catch (const BackendError& error) {
    const std::string message = error.what();
    CHECK(message.find("runtimeExample") != std::string::npos);
    CHECK(message.find(gpu::vendor::error_string(gpu::vendor::invalid_value_error)) != std::string::npos);
  }
}
