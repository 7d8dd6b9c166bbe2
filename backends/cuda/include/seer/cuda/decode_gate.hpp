// seer::cuda decode gate: K-compression update and decode block selection (SeerAttention-R) on an
// NVIDIA GPU, with no host synchronisation (graph-capturable). Written once against the vendor layer in
// seer/gpu/decode_gate_kernels.hpp (read its comment for the API, the design and the numerics); this
// header re-exports it.
//
//   seer::cuda::DeviceDecodeGate gate(decode_gate);                      // upload once
//   seer::cuda::DeviceKCompressionCache compressed(batch, max_blocks, gate);
//   seer::cuda::compress_key_blocks<seer::bfloat16>(gate, kv_cache, compressed.view(), stream);  // every step
//   seer::DecodeBlockListView blocks = seer::cuda::select_decode_blocks<seer::bfloat16>(
//       gate, compressed.view(), q_before_rope, lengths, max_length, policy, output, workspace, bytes, stream);
//   seer::cuda::sparse_decode<seer::bfloat16>(q, kv_cache, &blocks, options, out, lse, ...);
#pragma once

#include "seer/gpu/decode_gate_kernels.hpp"

namespace seer::cuda {

using gpu::compress_key_blocks;
using gpu::decode_selection_workspace_bytes;
using gpu::DeviceCompressedKeys;
using gpu::DeviceDecodeBlockListBuffers;
using gpu::DeviceDecodeGate;
using gpu::DeviceKCompressionCache;
using gpu::reset_compressed_blocks;
using gpu::select_decode_blocks;

}  // namespace seer::cuda
