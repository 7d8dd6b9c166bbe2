#!/usr/bin/env python3
"""Block-sparse prefill benchmark: seer vs PyTorch SDPA (FlashAttention-2 and cuDNN backends).

B=1, H=32, D=128, bf16, causal; 8k and 32k tokens; densities 1.0/0.5/0.2/0.1 of the causally visible
64x64 blocks, chosen at random per (head, query block) with the diagonal block always kept. Every
method is timed in this one process with triton.testing.do_bench (CUDA events, warm-up, median, L2
flushed between runs) on the same random normal inputs. Prints a table last and writes JSON and a
Markdown table under --out.
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import triton.testing

BLOCK = 64


def load_library(path):
    library = ctypes.CDLL(path)
    function = library.seer_bench_prefill_bf16
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    function.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, ptr, ptr, ptr, i64, i64,
                         ctypes.c_int, ptr, ctypes.c_char_p, i64]
    function.restype = ctypes.c_int
    return function


def random_blocks(heads, blocks, density, generator):
    """Causal block mask with the diagonal kept; off-diagonal blocks kept with the probability that
    makes the expected kept fraction of visible blocks equal `density`."""
    visible = blocks * (blocks + 1) // 2
    off_diagonal = visible - blocks
    p = 0.0 if off_diagonal == 0 else min(1.0, max(0.0, (density * visible - blocks) / off_diagonal))
    lower = torch.ones(blocks, blocks, dtype=torch.bool, device="cuda").tril(-1)
    mask = (torch.rand(heads, blocks, blocks, device="cuda", generator=generator) < p) & lower
    mask |= torch.eye(blocks, dtype=torch.bool, device="cuda")
    counts = mask.sum(dim=2).flatten()
    row_offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device="cuda")
    row_offsets[1:] = torch.cumsum(counts, 0)
    key_blocks = mask.nonzero()[:, 2].to(torch.int32).contiguous()  # row-major: rows (h, m) in order
    query_block_offsets = torch.tensor([0, blocks], dtype=torch.int32, device="cuda")
    kept = int(counts.sum())
    # Actual work: full blocks 64*64 pairs, diagonal blocks 64*65/2.
    actual_pairs = (kept - heads * blocks) * BLOCK * BLOCK + heads * blocks * BLOCK * (BLOCK + 1) // 2
    return row_offsets, key_blocks, query_block_offsets, kept / (heads * visible), actual_pairs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", required=True)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--densities", default="1.0,0.5,0.2,0.1")
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()

    seer = load_library(args.library)
    error = ctypes.create_string_buffer(1024)
    batch, heads, dim = 1, 32, args.head_dim
    generator = torch.Generator(device="cuda")
    generator.manual_seed(int.from_bytes(os.urandom(4), "little"))
    device = torch.cuda.get_device_name()
    results = []

    # seer::cuda::PrefillKernel: 0 automatic (the warpgroup kernel on Hopper), 2 the mma.sync kernel.
    def seer_call(q, k, v, out, lse, blocks, kernel=0):
        row_offsets, key_blocks, query_block_offsets = blocks if blocks is not None else (None, None, None)
        status = seer(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                      lse.data_ptr() if lse is not None else None, batch, q.shape[1], heads, heads, dim, 1,
                      row_offsets.data_ptr() if blocks is not None else None,
                      key_blocks.data_ptr() if blocks is not None else None,
                      query_block_offsets.data_ptr() if blocks is not None else None, heads, BLOCK, kernel,
                      torch.cuda.current_stream().cuda_stream, error, len(error))
        if status != 0:
            raise RuntimeError(error.value.decode())

    for seq in [int(s) for s in args.lengths.split(",")]:
        q = torch.randn(batch, seq, heads, dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn_like(q)
        v = torch.randn_like(q)
        out = torch.empty_like(q)
        lse = torch.empty(heads, batch * seq, device="cuda", dtype=torch.float32)
        # SDPA's preferred layout [B, H, S, D], contiguous.
        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        dense_pairs = seq * (seq + 1) // 2
        effective_flops = 4.0 * batch * heads * dim * dense_pairs

        timings = {}
        for name, backend in (("fa2", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            with sdpa_kernel(backend):
                reference = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
                timings[name] = triton.testing.do_bench(
                    lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), warmup=100, rep=500,
                    return_mode="median")
            if name == "fa2":
                fa2_output = reference.transpose(1, 2)

        # Sanity: seer dense against FlashAttention-2 on the same inputs.
        seer_call(q, k, v, out, lse, None)
        torch.cuda.synchronize()
        dense_difference = (out.float() - fa2_output.float()).abs().max().item()
        seer_call(q, k, v, out, lse, None, kernel=2)
        torch.cuda.synchronize()
        mma_sync_difference = (out.float() - fa2_output.float()).abs().max().item()

        seer_dense_ms = None
        for density in [float(d) for d in args.densities.split(",")]:
            row_offsets, key_blocks, query_block_offsets, actual_density, actual_pairs = random_blocks(
                heads, seq // BLOCK, density, generator)
            blocks = (row_offsets, key_blocks, query_block_offsets)
            seer_ms = triton.testing.do_bench(lambda: seer_call(q, k, v, out, lse, blocks), warmup=100, rep=500,
                                              return_mode="median")
            mma_sync_ms = triton.testing.do_bench(lambda: seer_call(q, k, v, out, lse, blocks, kernel=2), warmup=100,
                                                  rep=500, return_mode="median")
            if density == 1.0:
                seer_dense_ms = seer_ms
            actual_flops = 4.0 * batch * dim * actual_pairs  # actual_pairs already sums over heads
            row = {
                "seq": seq, "density_target": density, "density": actual_density, "seer_ms": seer_ms,
                "fa2_ms": timings["fa2"], "cudnn_ms": timings["cudnn"],
                "speedup_vs_fa2": timings["fa2"] / seer_ms, "speedup_vs_cudnn": timings["cudnn"] / seer_ms,
                "effective_tflops": effective_flops / seer_ms / 1e9, "actual_tflops": actual_flops / seer_ms / 1e9,
                "fa2_tflops": effective_flops / timings["fa2"] / 1e9,
                "cudnn_tflops": effective_flops / timings["cudnn"] / 1e9,
                "time_over_dense": seer_ms / seer_dense_ms if seer_dense_ms else None,
                "dense_max_abs_difference_vs_fa2": dense_difference,
                "mma_sync_ms": mma_sync_ms, "mma_sync_speedup_vs_fa2": timings["fa2"] / mma_sync_ms,
                "mma_sync_dense_max_abs_difference_vs_fa2": mma_sync_difference,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        del q, k, v, out, lse, qt, kt, vt, reference, fa2_output
        torch.cuda.empty_cache()

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Measured {stamp} on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"triton {triton.__version__}, cuDNN {torch.backends.cudnn.version()}); command: "
              f"`bench/gpu/device_run.sh bench` (python3 bench/gpu/bench_prefill.py). B=1, H=32, D={dim}, bf16, "
              f"causal, 64x64 blocks; times are do_bench medians.")
    lines = [header, "",
             "| tokens | density (actual) | seer ms | FA2 ms | cuDNN ms | speedup vs FA2 | vs cuDNN | "
             "effective TFLOP/s | actual TFLOP/s | time / seer dense | time / FA2 | target d+0.05 | "
             "mma.sync kernel ms | its speedup vs FA2 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['seq']} | {r['density_target']:.1f} ({r['density']:.3f}) | {r['seer_ms']:.3f} | {r['fa2_ms']:.3f} | "
            f"{r['cudnn_ms']:.3f} | {r['speedup_vs_fa2']:.2f}x | {r['speedup_vs_cudnn']:.2f}x | "
            f"{r['effective_tflops']:.0f} | {r['actual_tflops']:.0f} | {r['time_over_dense']:.3f} | "
            f"{r['seer_ms'] / r['fa2_ms']:.3f} | "
            f"{r['density_target'] + 0.05:.2f} | {r['mma_sync_ms']:.3f} | {r['mma_sync_speedup_vs_fa2']:.2f}x |")
    table = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_prefill.json"), "w") as f:
        json.dump({"device": device, "python": platform.python_version(), "results": results}, f, indent=1)
    with open(os.path.join(args.out, "bench_prefill.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)
    print("max |seer - FA2| dense: warpgroup/automatic",
          [round(r["dense_max_abs_difference_vs_fa2"], 4) for r in results if r["density_target"] == 1.0],
          "mma.sync", [round(r["mma_sync_dense_max_abs_difference_vs_fa2"], 4) for r in results
                       if r["density_target"] == 1.0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
