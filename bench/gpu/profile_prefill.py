#!/usr/bin/env python3
"""One dense and one 10%-dense seer prefill call (B=1, H=32, D=128, bf16, causal, 8k tokens), for
profiling under Nsight Compute: ncu -k regex:prefill_kernel python3 bench/gpu/profile_prefill.py LIB"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench_prefill  # noqa: E402

seer = bench_prefill.load_library(sys.argv[1])
seq, heads, dim = 8192, 32, 128
q = torch.randn(1, seq, heads, dim, device="cuda", dtype=torch.bfloat16)
k, v, out = torch.randn_like(q), torch.randn_like(q), torch.empty_like(q)
generator = torch.Generator(device="cuda")
generator.manual_seed(1)
for density in (1.0, 0.1):
    row_offsets, key_blocks, query_block_offsets, _, _ = bench_prefill.random_blocks(heads, seq // 64, density,
                                                                                     generator)
    status = seer(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), None, 1, seq, heads, heads, dim, 1,
                  row_offsets.data_ptr(), key_blocks.data_ptr(), query_block_offsets.data_ptr(), heads, 64, 0,
                  torch.cuda.current_stream().cuda_stream, None, 0)
    assert status == 0
torch.cuda.synchronize()
