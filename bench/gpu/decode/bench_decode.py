#!/usr/bin/env python3
"""Sparse decode benchmark: seer (dense and block-sparse) vs PyTorch SDPA dense decode.

One new token per sequence, 32 query heads, 8 KV heads, D=128, bf16; batch 1 and 16; context 32k and
128k (every sequence full). seer reads a contiguous cache [B, S, 8, 128]; SDPA gets q [B, 32, 1, 128]
and its preferred contiguous K/V [B, 8, S, 128] with enable_gqa=True, through each backend that accepts
the call (the fastest one is the baseline). seer's sparse rows keep random 64-token blocks per
(sequence, KV head), the first and last always, the rest with the probability that makes the expected
kept fraction the target density.

Every method is timed in this one process in two ways, both with CUDA events around each call, warm-up
and the median: (1) triton.testing.do_bench, which flushes the L2 cache with a 256 MB write before every
timed call, so no call reads the previous one's K/V from L2 -- but the L2 is then full of dirty lines,
and a timed call that reads N bytes also pays for writing back up to N bytes of them (at most the 50 MB
of the L2); (2) "clean cold L2": the same write, then a 128 MB read before the start event, so the L2
holds only clean lines of an unrelated buffer and the timed call pays for its own reads alone. Kept-bytes bandwidth = K and V bytes of the kept tokens (plus q and
out, negligible) / time. Prints a table last and writes JSON and Markdown under --out.
"""
import argparse
import ctypes
import datetime
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import triton
import triton.testing

BLOCK = 64
Q_HEADS, KV_HEADS, DIM = 32, 8, 128


def load_library(path):
    library = ctypes.CDLL(path)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    decode = library.seer_bench_decode_bf16
    decode.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, ptr, ptr, i64, ptr, i64, i64,
                       ptr, ctypes.c_char_p, i64]
    decode.restype = ctypes.c_int
    workspace = library.seer_bench_decode_workspace_bf16
    workspace.argtypes = [i64, i64, i64, i64, i64, i64, i64, i64, ctypes.c_int, i64, ctypes.c_char_p, i64]
    workspace.restype = i64
    return decode, workspace


def random_blocks(batch, blocks, density, generator):
    """[B * Hkv, capacity] ascending kept blocks and counts; first and last block always kept."""
    rows = batch * KV_HEADS
    if density >= 1.0:
        keep = torch.ones(rows, blocks, dtype=torch.bool, device="cuda")
    else:
        p = max(0.0, min(1.0, (density * blocks - 2) / max(1, blocks - 2)))
        keep = torch.rand(rows, blocks, device="cuda", generator=generator) < p
        keep[:, 0] = True
        keep[:, -1] = True
    counts = keep.sum(dim=1).to(torch.int32)
    capacity = int(counts.max().item())
    # Kept indices first, in ascending order: sort by (not kept, index).
    order = torch.argsort((~keep).to(torch.int64) * blocks + torch.arange(blocks, device="cuda"), dim=1)
    key_blocks = order[:, :capacity].to(torch.int32).contiguous()
    return key_blocks, counts.contiguous(), capacity, int(counts.sum().item())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", required=True)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--contexts", default="32768,131072")
    parser.add_argument("--densities", default="1.0,0.1,0.05")
    parser.add_argument("--sweep-splits", default="8,16,32,64",
                        help="forced split bounds also timed at density 0.1 (diagnostics; the table reports the "
                             "automatic choice)")
    args = parser.parse_args()

    decode, workspace_query = load_library(args.library)
    error = ctypes.create_string_buffer(1024)
    generator = torch.Generator(device="cuda")
    generator.manual_seed(int.from_bytes(os.urandom(4), "little"))
    device = torch.cuda.get_device_name()
    results = []

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

    flush_buffer = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    evict_buffer = torch.ones(128 << 20, dtype=torch.uint8, device="cuda")

    def bench_clean(fn, iterations=100):
        for _ in range(5):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        for i in range(iterations):
            flush_buffer.zero_()
            evict_buffer.sum(dtype=torch.int32)  # the dirty lines of the flush are written back here
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        times = sorted(start.elapsed_time(end) for start, end in zip(starts, ends))
        return times[len(times) // 2]

    for batch in [int(b) for b in args.batches.split(",")]:
        for context in [int(s) for s in args.contexts.split(",")]:
            q = torch.randn(batch, 1, Q_HEADS, DIM, device="cuda", dtype=torch.bfloat16)
            keys = torch.randn(batch, context, KV_HEADS, DIM, device="cuda", dtype=torch.bfloat16)
            values = torch.randn_like(keys)
            lengths = torch.full((batch,), context, dtype=torch.int32, device="cuda")
            out = torch.empty_like(q)
            lse = torch.empty(Q_HEADS, batch, device="cuda", dtype=torch.float32)
            stream = torch.cuda.current_stream().cuda_stream
            dense_bytes = 2 * batch * context * KV_HEADS * DIM * 2 + 2 * q.numel() * 2

            def seer_call(blocks, workspace, forced_splits=0):
                key_blocks, counts, capacity = blocks if blocks is not None else (None, None, 0)
                status = decode(q.data_ptr(), keys.data_ptr(), values.data_ptr(), lengths.data_ptr(), out.data_ptr(),
                                lse.data_ptr(), batch, 1, Q_HEADS, KV_HEADS, DIM, context, context,
                                key_blocks.data_ptr() if blocks is not None else None,
                                counts.data_ptr() if blocks is not None else None, capacity,
                                workspace.data_ptr() if workspace is not None else None,
                                workspace.numel() if workspace is not None else 0, forced_splits, stream, error,
                                len(error))
                if status != 0:
                    raise RuntimeError(error.value.decode())

            def workspace_for(capacity, dense, forced_splits=0):
                size = workspace_query(batch, 1, Q_HEADS, KV_HEADS, DIM, context, context, capacity, 1 if dense else 0,
                                       forced_splits, error, len(error))
                if size < 0:
                    raise RuntimeError(error.value.decode())
                return torch.empty(max(size, 16), dtype=torch.uint8, device="cuda") if size > 0 else None

            # ---- SDPA dense decode: q [B, 32, 1, D], K/V [B, 8, S, D] contiguous, GQA ----
            q_sdpa = q.transpose(1, 2).contiguous()
            k_sdpa = keys.transpose(1, 2).contiguous()
            v_sdpa = values.transpose(1, 2).contiguous()
            sdpa_times, sdpa_errors, sdpa_clean = {}, {}, {}
            reference = None
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                                  ("cudnn", SDPBackend.CUDNN_ATTENTION), ("default", None)):
                call = lambda: F.scaled_dot_product_attention(q_sdpa, k_sdpa, v_sdpa, enable_gqa=True)
                try:
                    if backend is None:
                        result = call()
                        sdpa_times[name] = bench(call)
                        sdpa_clean[name] = bench_clean(call)
                    else:
                        with sdpa_kernel(backend):
                            result = call()
                            sdpa_times[name] = bench(call)
                            sdpa_clean[name] = bench_clean(call)
                    if reference is None:
                        reference = result.transpose(1, 2).float()
                except Exception as e:  # a backend that does not take this call
                    sdpa_errors[name] = str(e).splitlines()[0][:160]
            if not sdpa_times:
                raise RuntimeError(f"no SDPA backend ran: {sdpa_errors}")
            best_name = min(sdpa_times, key=sdpa_times.get)
            best_ms = sdpa_times[best_name]
            best_clean_ms = min(sdpa_clean.values())
            print(json.dumps({"batch": batch, "context": context, "sdpa_ms": sdpa_times, "sdpa_failed": sdpa_errors}),
                  flush=True)
            del k_sdpa, v_sdpa
            torch.cuda.empty_cache()

            def record(method, density_target, kept_blocks_total, ms, clean_ms, difference):
                kept_bytes = 2 * kept_blocks_total * BLOCK * DIM * 2 + 2 * q.numel() * 2
                row = {"batch": batch, "context": context, "method": method, "density_target": density_target,
                       "density": kept_blocks_total / (batch * KV_HEADS * (context // BLOCK)), "ms": ms,
                       "speedup_vs_sdpa": best_ms / ms, "sdpa_backend": best_name, "sdpa_ms": best_ms,
                       "kept_bytes": kept_bytes, "kept_tb_per_s": kept_bytes / ms / 1e9, "clean_ms": clean_ms,
                       "clean_speedup_vs_sdpa": best_clean_ms / clean_ms, "clean_kept_tb_per_s": kept_bytes / clean_ms / 1e9,
                       "max_abs_difference_vs_sdpa": difference}
                results.append(row)
                print(json.dumps(row), flush=True)

            for name, ms in sdpa_times.items():
                record(f"sdpa-{name}", 1.0, batch * KV_HEADS * (context // BLOCK), ms, sdpa_clean[name], 0.0)

            # ---- seer dense ----
            workspace = workspace_for(0, True)
            seer_call(None, workspace)
            torch.cuda.synchronize()
            difference = (out.float() - reference).abs().max().item()
            record("seer-dense", 1.0, batch * KV_HEADS * (context // BLOCK), bench(lambda: seer_call(None, workspace)),
                   bench_clean(lambda: seer_call(None, workspace)), difference)

            # ---- seer sparse ----
            for density in [float(d) for d in args.densities.split(",")]:
                key_blocks, counts, capacity, kept = random_blocks(batch, context // BLOCK, density, generator)
                blocks = (key_blocks, counts, capacity)
                workspace = workspace_for(capacity, False)
                seer_call(blocks, workspace)
                torch.cuda.synchronize()
                difference = (out.float() - reference).abs().max().item() if density >= 1.0 else None
                record("seer-sparse", density, kept, bench(lambda: seer_call(blocks, workspace)),
                       bench_clean(lambda: seer_call(blocks, workspace)), difference)
                if density == 0.1 and args.sweep_splits:
                    sweep = {}
                    for forced in [int(x) for x in args.sweep_splits.split(",")]:
                        forced_workspace = workspace_for(capacity, False, forced)
                        sweep[forced] = bench(lambda: seer_call(blocks, forced_workspace, forced))
                    print(json.dumps({"batch": batch, "context": context, "density": density,
                                      "forced_split_ms": sweep}), flush=True)
            del q, keys, values, out, lse, q_sdpa, reference
            torch.cuda.empty_cache()

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Measured {stamp} on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}, triton "
              f"{triton.__version__}); command: `bash bench/gpu/device_decode.sh` (python3 bench/gpu/decode/"
              f"bench_decode.py). One new token, Hq=32, Hkv=8, D=128, bf16, contiguous cache, every sequence full; "
              f"ms: do_bench medians (L2 flushed by a write before each call); clean-L2 ms: medians with the flush's "
              f"dirty lines written back before the start event. Speedups are over the fastest SDPA backend of "
              f"the same method.")
    lines = [header, "",
             "| batch | context | method | density (actual) | ms | speedup vs SDPA | kept-bytes TB/s | clean-L2 ms | "
             "speedup | TB/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['batch']} | {r['context'] // 1024}k | {r['method']} | {r['density_target']:.2f} "
                     f"({r['density']:.3f}) | {r['ms']:.4f} | {r['speedup_vs_sdpa']:.2f}x | "
                     f"{r['kept_tb_per_s']:.2f} | {r['clean_ms']:.4f} | {r['clean_speedup_vs_sdpa']:.2f}x | "
                     f"{r['clean_kept_tb_per_s']:.2f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "bench_decode.json"), "w") as f:
        json.dump({"device": device, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "bench_decode.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)


if __name__ == "__main__":
    main()
