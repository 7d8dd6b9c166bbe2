// Host-side validation of seer::cuda::sparse_decode. Validation needs no device memory, so these
// cases run everywhere, also in CI without a GPU: the data pointers are aligned stand-ins that the call
// rejects before anything is enqueued (the split shape is given explicitly, so no device is queried).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "seer/cuda/sparse_decode.hpp"

namespace {

using namespace seer;

alignas(16) bfloat16 placeholder[64];
std::int32_t lengths_placeholder[4] = {100, 100, 100, 100};
std::int32_t blocks_placeholder[64];

struct Arguments {
  SequenceBatch<const bfloat16> q;
  SequenceBatch<bfloat16> out;
  KvCacheView<const bfloat16> cache;
  DecodeBlockListView blocks{blocks_placeholder, blocks_placeholder, 2, 2, 4, 64};
  const DecodeBlockListView* block_pointer = &blocks;
  AttentionOptions options;
  TensorView<float, 2> lse;
  void* workspace = nullptr;
  std::int64_t workspace_bytes = 0;
  gpu::DecodeLaunchShape shape;  // one split: no workspace needed

  Arguments() {
    // q, out: [2, 1, 8, 128]; cache [2, 256, 2, 128].
    q = padded_batch(TensorView<const bfloat16, 4>{placeholder, {2, 1, 8, 128}, {8 * 128, 8 * 128, 128, 1}}, "q");
    out = padded_batch(TensorView<bfloat16, 4>{placeholder, {2, 1, 8, 128}, {8 * 128, 8 * 128, 128, 1}}, "out");
    const TensorView<const bfloat16, 4> kv{placeholder, {2, 256, 2, 128}, {256 * 2 * 128, 2 * 128, 128, 1}};
    cache = contiguous_kv_cache(kv, kv, lengths_placeholder, 256);
  }

  void call() const {
    cuda::detail::sparse_decode_with_shape<bfloat16>(q, cache, block_pointer, options, out, lse, workspace,
                                                     workspace_bytes, shape, nullptr);
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

TEST_CASE("gpu decode validation: shapes, head dim, query tokens and GQA name the argument") {
  Arguments a;
  a.q.head_dim = a.out.head_dim = a.cache.head_dim = 96;
  CHECK(rejected_argument(a) == "q");

  Arguments b;
  b.q.max_length = b.out.max_length = 9;  // more than 8 new tokens
  CHECK(rejected_argument(b) == "q");

  Arguments c;
  c.cache.heads = 3;  // 8 % 3 != 0
  CHECK(rejected_argument(c) == "cache");

  Arguments d;
  d.cache.head_dim = 64;
  CHECK(rejected_argument(d) == "cache");

  Arguments e;
  e.out.heads = 4;
  CHECK(rejected_argument(e) == "out");

  Arguments f;
  f.cache.batch = 3;
  CHECK(rejected_argument(f) == "cache");
}

TEST_CASE("gpu decode validation: alignment, strides, LSE, scale, blocks and workspace") {
  Arguments a;
  a.cache.keys = placeholder + 1;
  CHECK(rejected_argument(a) == "cache");

  Arguments b;
  b.cache.token_stride += 4;
  CHECK(rejected_argument(b) == "cache");

  Arguments c;
  c.q.data = placeholder + 2;
  CHECK(rejected_argument(c) == "q");

  Arguments d;
  float lse_placeholder[1];
  d.lse = TensorView<float, 2>{lse_placeholder, {4, 2}, {2, 1}};  // 4 rows for 8 query heads
  CHECK(rejected_argument(d) == "lse");

  Arguments e;
  e.options.softmax_scale = std::nan("");
  CHECK(rejected_argument(e) == "options.softmax_scale");

  Arguments f;
  f.blocks.block_size = 32;
  CHECK(rejected_argument(f) == "blocks");

  Arguments g;
  g.blocks.kv_heads = 1;
  CHECK(rejected_argument(g) == "blocks");

  Arguments h;
  h.blocks.counts = nullptr;
  CHECK(rejected_argument(h) == "blocks");

  // A paged cache of more than 2^31 - 1 tokens per sequence (the paged kernels index tokens in 32 bits).
  Arguments paged;
  static std::int32_t page_table_placeholder[2] = {0, 1};
  paged.cache.page_table = page_table_placeholder;
  paged.cache.page_size = 64;
  paged.cache.pages_per_sequence = std::int64_t{1} << 25;  // 2^31 tokens
  CHECK(rejected_argument(paged) == "cache");
  paged.cache.pages_per_sequence = 4;  // 256 tokens: the cache passes, and a check after it rejects the blocks
  paged.blocks.block_size = 32;
  CHECK(rejected_argument(paged) == "blocks");

  Arguments i;
  i.shape.splits = 4;  // needs a workspace
  CHECK(rejected_argument(i) == "workspace");
  alignas(16) static float small_workspace[16];
  i.workspace = small_workspace;
  i.workspace_bytes = sizeof(small_workspace);
  CHECK(rejected_argument(i) == "workspace");
}

TEST_CASE("gpu decode: the workspace size follows the split bound") {
  CHECK(gpu::decode_workspace_bytes_for(2, 8, 1, 128, 1) == 0);
  // Partial outputs and log-sum-exps, then one completion counter per (sequence, query head) at most.
  CHECK(gpu::decode_workspace_bytes_for(2, 8, 3, 128, 5) == 2 * 3 * 8 * 5 * 129 * 4 + 2 * 8 * 4);
  CHECK(gpu::decode_workspace_counter_offset(2, 8, 3, 128, 5) == 2 * 3 * 8 * 5 * 129 * 4);
  // A row with few kept tiles takes one split whatever the bound; a long one is capped by it.
  CHECK(gpu::decode_effective_splits(0, 16) == 1);
  CHECK(gpu::decode_effective_splits(3, 16) == 2);
  CHECK(gpu::decode_effective_splits(1000, 16) == 16);
  // The bound fills the device without exceeding the useful splits.
  const auto small = gpu::decode_launch_shape(1, 32, 8, 1, 32768, nullptr, 264);
  CHECK(small.splits == 32);  // 8 rows x 32 splits: one wave of 16-tile CTAs
  DecodeBlockListView tenth_of_128k;
  tenth_of_128k.capacity = 206;
  const auto large = gpu::decode_launch_shape(16, 32, 8, 1, 131072, &tenth_of_128k, 264);
  CHECK(large.splits == 7);  // sparse: about three waves of 128 x 7 CTAs over 264 slots
  CHECK(!large.deep_pipeline);
  // With the deep-pipeline kernel (132 multiprocessors): batch 16 still takes the shallow one (fewer
  // than 4 splits per row would fit in a wave); batch 1 takes one wave of 16 splits x 8 KV heads.
  CHECK(!gpu::decode_launch_shape(16, 32, 8, 1, 131072, &tenth_of_128k, 264, 132).deep_pipeline);
  DecodeBlockListView tenth_of_32k;
  tenth_of_32k.capacity = 60;
  const auto batch_one = gpu::decode_launch_shape(1, 32, 8, 1, 32768, &tenth_of_32k, 264, 132);
  CHECK(batch_one.deep_pipeline);
  CHECK(batch_one.splits == 16);
  DecodeBlockListView few;
  few.capacity = 5;  // at most 3 useful splits (2 tiles each)
  CHECK(gpu::decode_launch_shape(1, 32, 8, 1, 32768, &few, 264, 132).splits == 3);
  CHECK(!gpu::decode_launch_shape(1, 32, 8, 1, 32768, nullptr, 264, 132).deep_pipeline);  // dense: shallow
  // A deep CTA holding 5 tiles in flight (head dim 128): at 32k the longest row's share (60 / 16) fits;
  // at 128k (206 / 16) it does not, and batch 1 takes one wave of shallow CTAs (264 / 8 = 33 splits).
  const auto fits = gpu::decode_launch_shape(1, 32, 8, 1, 32768, &tenth_of_32k, 264, 132, 5);
  CHECK(fits.deep_pipeline);
  CHECK(fits.splits == 16);
  const auto long_rows = gpu::decode_launch_shape(1, 32, 8, 1, 131072, &tenth_of_128k, 264, 132, 5);
  CHECK(!long_rows.deep_pipeline);
  CHECK(long_rows.splits == 33);
  // Sparse calls with the shallow kernel take contiguous split ranges; the deep kernel (its prologue
  // guesses the kept indices) and dense calls interleaved ones.
  CHECK(long_rows.contiguous_splits);
  CHECK(large.contiguous_splits);
  CHECK(!fits.contiguous_splits);
  CHECK(!small.contiguous_splits);
  const auto chunks = gpu::decode_launch_shape(1, 32, 2, 8, 4096, nullptr, 264);
  CHECK(chunks.heads_per_cta == 8);
  CHECK(chunks.head_chunks == 2);
}

TEST_CASE("gpu decode: where the lean deep kernel applies") {
  gpu::DecodeParams<bfloat16> params;
  const Arguments arguments;  // contiguous cache of 256 tokens (4 tiles), block capacity 4
  params.cache = arguments.cache;
  params.blocks = arguments.blocks;
  params.has_blocks = true;
  params.deep_pipeline = true;
  params.heads_per_cta = 4;
  params.max_query_tokens = 1;
  params.splits = 1;
  const std::int64_t tiles = cuda::detail::deep_pipeline_tiles<bfloat16>(128);
  CHECK(tiles == 5);
  CHECK(cuda::detail::deep_pipeline_tiles<bfloat16>(64) == 7);
  CHECK(gpu::decode_lean_kernel_applies(params, tiles));  // 4 tiles in one CTA
  CHECK(!gpu::decode_lean_kernel_applies(params, 3));     // ... more than a 4-stage prologue copies
  params.splits = 2;
  CHECK(gpu::decode_lean_kernel_applies(params, 2));
  params.blocks.capacity = 1000;  // the cache's 4 tiles still bound every row
  CHECK(gpu::decode_lean_kernel_applies(params, 2));
  params.has_blocks = false;  // dense: the cache's tiles
  CHECK(gpu::decode_lean_kernel_applies(params, 2));
  params.has_blocks = true;
  params.heads_per_cta = 8;  // 8 rows: still the lower half of the tile
  CHECK(gpu::decode_lean_kernel_applies(params, tiles));
  params.max_query_tokens = 2;  // 16 rows
  CHECK(!gpu::decode_lean_kernel_applies(params, tiles));
  params.max_query_tokens = 1;
  params.deep_pipeline = false;  // the shallow kernel has no lean version
  CHECK(!gpu::decode_lean_kernel_applies(params, tiles));
  params.deep_pipeline = true;
  params.cluster_merge = true;
  CHECK(!gpu::decode_lean_kernel_applies(params, tiles));
  params.cluster_merge = false;
  std::int32_t page_table[2] = {0, 1};
  params.cache.page_table = page_table;  // paged caches take the general kernel
  CHECK(!gpu::decode_lean_kernel_applies(params, tiles));
}
