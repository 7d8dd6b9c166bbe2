// A tiny C entry point for the benchmark script (Python + ctypes), not part of seer's API: it lets
// one Python process time seer and PyTorch's SDPA backends on the same tensors with the same method.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>

#include "seer/cuda/block_sparse_attention.hpp"

namespace {

void copy_message(const char* text, char* buffer, std::int64_t capacity) {
  if (buffer == nullptr || capacity <= 0) return;
  const std::size_t length = std::min<std::size_t>(std::strlen(text), static_cast<std::size_t>(capacity - 1));
  std::memcpy(buffer, text, length);
  buffer[length] = '\0';
}

}  // namespace

// q, out: [batch, seq, q_heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]; bf16, contiguous,
// device memory. row_offsets == nullptr selects the dense path. kernel: 0 automatic, 1 warpgroup,
// 2 mma.sync (seer::cuda::PrefillKernel). Returns 0, or 1 with a message.
extern "C" int seer_bench_prefill_bf16(const void* q, const void* k, const void* v, void* out, float* lse,
                                       std::int64_t batch, std::int64_t seq, std::int64_t q_heads,
                                       std::int64_t kv_heads, std::int64_t head_dim, int causal,
                                       const std::int64_t* row_offsets, const std::int32_t* key_blocks,
                                       const std::int32_t* query_block_offsets, std::int64_t block_heads,
                                       std::int64_t block_size, int kernel, void* stream, char* error,
                                       std::int64_t error_capacity) {
  try {
    using seer::bfloat16;
    const auto q_view = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(q),
                                                                        {batch, seq, q_heads, head_dim});
    const auto k_view = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(k),
                                                                        {batch, seq, kv_heads, head_dim});
    const auto v_view = seer::TensorView<const bfloat16, 4>::contiguous(static_cast<const bfloat16*>(v),
                                                                        {batch, seq, kv_heads, head_dim});
    const auto out_view =
        seer::TensorView<bfloat16, 4>::contiguous(static_cast<bfloat16*>(out), {batch, seq, q_heads, head_dim});
    seer::TensorView<float, 2> lse_view;
    if (lse != nullptr) lse_view = seer::TensorView<float, 2>::contiguous(lse, {q_heads, batch * seq});
    seer::BlockSetView blocks{row_offsets, key_blocks, query_block_offsets, batch, block_heads, block_size};
    seer::AttentionOptions options;
    options.causal = causal != 0;
    seer::cuda::block_sparse_attention<bfloat16>(
        seer::padded_batch(q_view, "q"), seer::padded_batch(k_view, "k"), seer::padded_batch(v_view, "v"),
        row_offsets != nullptr ? &blocks : nullptr, options, seer::padded_batch(out_view, "out"), lse_view,
        static_cast<cudaStream_t>(stream), static_cast<seer::cuda::PrefillKernel>(kernel));
    return 0;
  } catch (const std::exception& e) {
    copy_message(e.what(), error, error_capacity);
    return 1;
  }
}
