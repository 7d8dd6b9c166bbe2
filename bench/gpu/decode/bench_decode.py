#!/usr/bin/env python3
"""Sparse decode benchmark: seer (dense and block-sparse) vs PyTorch SDPA dense decode.

One new token per sequence, 32 query heads, 8 KV heads, D=128, bf16; batch 1 and 16; context 32k and
128k (every sequence full). seer reads a contiguous cache [B, S, 8, 128]; SDPA gets q [B, 32, 1, 128]
and its preferred contiguous K/V [B, 8, S, 128] with enable_gqa=True, through each backend that accepts
the call (the fastest one is the baseline). seer's sparse rows keep random 64-token blocks per
(sequence, KV head), the first and last always, the rest with the probability that makes the expected
kept fraction the target density.

Every method is timed in this one process in four ways, the same four for seer and SDPA (medians):
  flush: triton.testing.do_bench (CUDA events around each call; a 256 MB write before each call flushes
         the L2, which leaves it full of dirty lines: a call that reads N bytes also writes back up to
         min(N, L2) bytes of them);
  clean: the same write, then a 128 MB read before the start event, so the L2 holds only clean lines
         of an unrelated buffer and the call pays for its own reads alone;
  graph: a CUDA graph of back-to-back calls, each on another copy of the cache (enough copies that no
         call finds its K/V in the L2), replayed and timed with events around the replay; time per call.
         This is a decode loop's view: launch gaps of a captured graph, no flush traffic (FlashInfer's
         bench_gpu_time_with_cudagraph with cold_l2_cache does the same).
  kernel: the GPU's own kernel timestamps (CUPTI, through torch.profiler), each call after the flush write
         of do_bench: from the call's first kernel start to its last kernel end, without the events'
         timing floor (FlashInfer's preferred bench_gpu_time_with_cupti likewise flushes between calls).
Kept-bytes bandwidth = K and V bytes of the kept tokens (plus q and out, negligible) / time. Two probes
show the fixed costs: "null" (one 1-element kernel, the timing floor of each method) and seer-sparse at
density 0 (only the first and last block of each row). Prints a table last; JSON and Markdown under --out.
"""
import argparse
import contextlib
import ctypes
import datetime
import json
import math
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import triton
import triton.testing

BLOCK = 64
Q_HEADS, KV_HEADS, DIM = 32, 8, 128
ROTATION_BYTES = 256 << 20  # bytes a graph's calls read before one copy of the cache comes round again
COPY_BUDGET = 8 << 30       # device memory for the rotating copies of one configuration
CALLS_PER_GRAPH = 40
METHODS = ("ms", "clean_ms", "graph_ms", "kernel_ms")  # flush (do_bench), clean, graph, kernel (CUPTI)


def load_library(path):
    library = ctypes.CDLL(path)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    decode = library.seer_bench_decode_bf16
    decode.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, ptr, ptr, i64, ptr, i64, i64,
                       i64, i64, i64, i64, i64, i64, ptr, ctypes.c_char_p, i64]
    decode.restype = ctypes.c_int
    workspace = library.seer_bench_decode_workspace_bf16
    workspace.argtypes = [i64, i64, i64, i64, i64, i64, i64, i64, ctypes.c_int, i64, ctypes.c_char_p, i64]
    workspace.restype = i64
    capacity = library.seer_bench_decode_cluster_capacity_bf16
    capacity.argtypes = [i64, i64, i64, i64, ctypes.c_char_p, i64]
    capacity.restype = i64
    paged = getattr(library, "seer_bench_decode_paged_bf16", None)  # absent from older builds
    if paged is not None:
        paged.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, ptr, ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, i64,
                          ptr, i64, ptr, ctypes.c_char_p, i64]
        paged.restype = ctypes.c_int
    return decode, workspace, capacity, paged


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


class Timer:
    def __init__(self):
        self.flush_buffer = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        self.evict_buffer = torch.ones(128 << 20, dtype=torch.uint8, device="cuda")

    def flush(self, fn):
        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

    def clean(self, fn, iterations=100):
        for _ in range(5):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        for i in range(iterations):
            self.flush_buffer.zero_()
            self.evict_buffer.sum(dtype=torch.int32)  # the dirty lines of the flush are written back here
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        times = sorted(start.elapsed_time(end) for start, end in zip(starts, ends))
        return times[len(times) // 2]

    def kernel(self, fn, iterations=40):
        """Median kernel span of a call (ms): CUPTI timestamps, each call after the flush write. The flush's own
        kernels separate the calls; NaN when the call launches a kernel of the same name."""
        def spans(action):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
                action()
                torch.cuda.synchronize()
            found = []
            for event in profile.profiler.kineto_results.events():
                if event.device_type() != torch.autograd.DeviceType.CUDA:
                    continue
                start = event.start_ns() if hasattr(event, "start_ns") else event.start_us() * 1000
                duration = event.duration_ns() if hasattr(event, "duration_ns") else event.duration_us() * 1000
                found.append((start, start + duration, event.name()))
            return sorted(found)

        if not hasattr(self, "flush_kernels"):
            self.flush_kernels = {name for _, _, name in spans(lambda: self.flush_buffer.zero_())}
        for _ in range(3):
            fn()
        torch.cuda.synchronize()

        def calls():
            for _ in range(iterations):
                self.flush_buffer.zero_()
                fn()

        groups = []
        for start, end, name in spans(calls):
            if name in self.flush_kernels:
                groups.append(None)
            elif groups:
                groups[-1] = (start, end) if groups[-1] is None else (groups[-1][0], max(groups[-1][1], end))
        if len(groups) != iterations or any(g is None for g in groups):
            return float("nan")
        times = sorted((end - start) / 1e6 for start, end in groups)
        return times[len(times) // 2]

    def all_methods(self, call, graph_calls):
        """The four methods on one call (ms): graph_calls are its versions on the rotating cache copies."""
        return {"ms": self.flush(call), "clean_ms": self.clean(call), "graph_ms": self.graph(graph_calls),
                "kernel_ms": self.kernel(call)}

    def graph(self, fns, replays=7):
        """fns: one callable per rotating copy; the graph cycles through them. ms per call."""
        calls = max(CALLS_PER_GRAPH, len(fns))
        for fn in fns:
            fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for fn in fns:  # warm-up on the capture stream (lazy initialisation stays out of the graph)
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            for i in range(calls):
                fns[i % len(fns)]()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.flush_buffer.zero_()
            self.evict_buffer.sum(dtype=torch.int32)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / calls)
        del graph
        return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", required=True)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--contexts", default="32768,131072")
    parser.add_argument("--densities", default="1.0,0.1,0.05,0",
                        help="0: only the first and last block of each row (a fixed-cost probe)")
    parser.add_argument("--sweep-splits", default="8,16,32,64",
                        help="forced split bounds also timed at density 0.1 (diagnostics; the table reports the "
                             "automatic choice)")
    parser.add_argument("--variants", default="",
                        help="kernel variants also timed at density 0.1, comma-separated "
                             "PIPELINE/ORDER/SPLITS[/OPTIONS] with PIPELINE auto|shallow|deep, ORDER auto|inter|contig "
                             "(interleaved or contiguous splits), SPLITS 0 (automatic) or a bound, OPTIONS '+'-joined: "
                             "hm (a head-major cache [B, Hkv, S, D], SDPA's layout, instead of the token-major "
                             "[B, S, Hkv, D]), normal / ef (K/V lines in the L2 with the normal / evict-first policy; "
                             "default: the library's choice), cl / ws (split rows merged in a thread-block cluster / "
                             "through the workspace; default: the library's choice), 1cta (one CTA per multiprocessor: a "
                             "shallow kernel launched with more shared memory than it uses), lean (the deep kernel's "
                             "lean version where it applies; a variant without it runs the general deep kernel, the automatic row the lean one); "
                             "a variant may name the configuration it is for: B@... (batch) or BxC@... (batch and "
                             "context, e.g. 1x32k@deep/contig/16)")
    parser.add_argument("--compare-libraries", default="",
                        help="other builds of the bench library (comma-separated paths), timed with the automatic "
                             "kernel at density 0.1 on the same data, in --compare-rounds rounds that alternate with "
                             "--library's (an A/B comparison of two versions of the code in one process)")
    parser.add_argument("--compare-rounds", type=int, default=2)
    parser.add_argument("--page-sizes", default="",
                        help="page sizes (tokens, comma-separated) of a paged cache also timed at density 0.1 with the "
                             "automatic kernel: the cache buffer viewed as a pool of pages, each sequence's pages "
                             "taken from a random permutation of the pool (as an allocator leaves them), e.g. 1 "
                             "(SGLang's token pages), 16 (vLLM's default), 64 (one K/V tile per page)")
    parser.add_argument("--page-order", default="shuffled", choices=["shuffled", "identity"],
                        help="pages of each sequence in the pool: a random permutation (default) or in order (the "
                             "contiguous buffer's own order: isolates the cost of scattered pages)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random kept blocks (default: random)")
    parser.add_argument("--sdpa-backends", default="flash,efficient,cudnn,default",
                        help="SDPA backends timed (the fastest is the baseline)")
    parser.add_argument("--skip-dense", action="store_true", help="no seer-dense row")
    parser.add_argument("--profile", action="store_true",
                        help="no timing: per sparse density, three seer calls of the automatic kernel and then of each "
                             "variant that applies, each after the flush write (for a profiler such as ncu)")
    args = parser.parse_args()

    decode, workspace_query, cluster_capacity, decode_paged = load_library(args.library)
    page_sizes = [int(x) for x in filter(None, args.page_sizes.split(","))]
    if page_sizes and decode_paged is None:
        raise RuntimeError(f"{args.library} has no paged entry point (seer_bench_decode_paged_bf16)")
    # ctypes loads each library with RTLD_LOCAL: every build keeps its own kernels and host code.
    compared = [(os.path.basename(path), load_library(path)[0])
                for path in filter(None, args.compare_libraries.split(","))]
    error = ctypes.create_string_buffer(1024)
    generator = torch.Generator(device="cuda")
    generator.manual_seed(args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little"))
    device = torch.cuda.get_device_name()
    timer = Timer()
    results = []

    # Clusters of the cluster-merge kernel (a forced option, "cl") the device runs at once (D 128, 16-row tiles):
    # a forced variant whose clusters do not all fit runs in waves (batch 1: 8 clusters of 16 deep CTAs).
    print(json.dumps({"probe": "cluster capacity", "deep x16": cluster_capacity(128, 1, 1, 16, error, len(error)),
                      "deep x8": cluster_capacity(128, 1, 1, 8, error, len(error)),
                      "shallow x7": cluster_capacity(128, 1, 0, 7, error, len(error)),
                      "shallow x16": cluster_capacity(128, 1, 0, 16, error, len(error))}), flush=True)

    tiny = torch.zeros(1, device="cuda")
    null = lambda: tiny.add_(1.0)
    null_times = {"ms": 0.0, "clean_ms": 0.0, "graph_ms": 0.0, "kernel_ms": 0.0}
    if not args.profile:
        null_times = timer.all_methods(null, [null])
        print(json.dumps({"probe": "null", **null_times}), flush=True)

    def parsed_variants(batch, context):
        """(name, (forced splits, pipeline, order, L2 policy, head major)) of the variants for this configuration."""
        pipelines, orders = {"auto": 0, "shallow": 1, "deep": 2}, {"auto": 0, "inter": 1, "contig": 2}
        chosen = []
        for variant in filter(None, args.variants.split(",")):
            if "@" in variant:
                selector, variant = variant.split("@")
                for_batch, _, for_context = selector.partition("x")
                if int(for_batch) != batch:
                    continue
                if for_context and int(for_context.replace("k", "")) * (
                        1024 if for_context.endswith("k") else 1) != context:
                    continue
            fields = variant.split("/")
            pipeline, order, forced = fields[:3]
            options = fields[3].split("+") if len(fields) > 3 else []
            policy = 2 if "normal" in options else (1 if "ef" in options else 0)
            cluster = 2 if "cl" in options else (1 if "ws" in options else 0)
            chosen.append((variant, (int(forced), pipelines[pipeline], orders[order], policy, "hm" in options,
                                     cluster + (4 if "1cta" in options else 0) + (8 if "lean" in options else 0))))
        return chosen

    variants_for = lambda batch, context: [v for _, v in parsed_variants(batch, context)]
    variant_names_for = lambda batch, context: [n for n, _ in parsed_variants(batch, context)]

    for batch in [int(b) for b in args.batches.split(",")]:
        for context in [int(s) for s in args.contexts.split(",")]:
            q = torch.randn(batch, 1, Q_HEADS, DIM, device="cuda", dtype=torch.bfloat16)
            keys = torch.randn(batch, context, KV_HEADS, DIM, device="cuda", dtype=torch.bfloat16)
            values = torch.randn_like(keys)
            lengths = torch.full((batch,), context, dtype=torch.int32, device="cuda")
            out = torch.empty_like(q)
            lse = torch.empty(Q_HEADS, batch, device="cuda", dtype=torch.float32)
            cache_bytes = 2 * keys.numel() * keys.element_size()
            copies = [(keys, values)]  # rotating copies of the cache for the graph method
            head_major_copies = []     # the same in the head-major layout [B, Hkv, S, D], made when a variant asks

            def copies_for(bytes_per_call, head_major=False):
                """Rotating cache copies for the graph method; bytes_per_call 0: only the first copy."""
                pool = head_major_copies if head_major else copies
                if head_major and not pool:
                    pool.append((keys.transpose(1, 2).contiguous(), values.transpose(1, 2).contiguous()))
                if bytes_per_call <= 0:
                    return pool[:1]
                wanted = max(2, math.ceil(ROTATION_BYTES / bytes_per_call))
                wanted = min(wanted, max(2, COPY_BUDGET // cache_bytes))
                while len(pool) < wanted:
                    pool.append((pool[0][0].clone(), pool[0][1].clone()))
                return pool[:wanted]

            def seer_call(blocks, workspace, forced_splits=0, cache=None, pipeline=0, order=0, policy=0,
                          head_major=False, cluster=0, function=None):
                """cluster: 0 automatic, 1 workspace merge, 2 cluster merge; plus 4: one CTA per multiprocessor; plus 8:
                the lean deep kernel where it applies.
                function: another library's decode entry point (default: --library's)."""
                k, v = cache if cache is not None else (copies_for(0, True)[0] if head_major else (keys, values))
                key_blocks, counts, capacity = blocks if blocks is not None else (None, None, 0)
                stream = torch.cuda.current_stream().cuda_stream
                status = (function or decode)(
                    q.data_ptr(), k.data_ptr(), v.data_ptr(), lengths.data_ptr(), out.data_ptr(), lse.data_ptr(), batch,
                    1, Q_HEADS, KV_HEADS, DIM, context, context, key_blocks.data_ptr() if blocks is not None else None,
                    counts.data_ptr() if blocks is not None else None, capacity,
                    workspace.data_ptr() if workspace is not None else None,
                    workspace.numel() if workspace is not None else 0, forced_splits, pipeline, order, policy,
                    cluster % 4, cluster // 4, 1 if head_major else 0, stream, error, len(error))
                if status != 0:
                    raise RuntimeError(error.value.decode())

            def seer_paged_call(blocks, workspace, table, page_size, cache=None):
                """The automatic kernel over the cache (or a rotating copy) viewed as a pool of pages of page_size
                tokens; table [batch, context / page_size] int32: each sequence's pages in the pool."""
                k, v = cache if cache is not None else (keys, values)
                key_blocks, counts, capacity = blocks
                status = decode_paged(
                    q.data_ptr(), k.data_ptr(), v.data_ptr(), lengths.data_ptr(), table.data_ptr(), page_size,
                    table.shape[1], out.data_ptr(), lse.data_ptr(), batch, 1, Q_HEADS, KV_HEADS, DIM, context,
                    key_blocks.data_ptr(), counts.data_ptr(), capacity,
                    workspace.data_ptr() if workspace is not None else None,
                    workspace.numel() if workspace is not None else 0, torch.cuda.current_stream().cuda_stream,
                    error, len(error))
                if status != 0:
                    raise RuntimeError(error.value.decode())

            def workspace_for(capacity, dense, forced_splits=0):
                size = workspace_query(batch, 1, Q_HEADS, KV_HEADS, DIM, context, context, capacity, 1 if dense else 0,
                                       forced_splits, error, len(error))
                if size < 0:
                    raise RuntimeError(error.value.decode())
                # Zero-filled: a workspace starts zeroed (its completion counters, when it has them).
                return torch.zeros(max(size, 16), dtype=torch.uint8, device="cuda") if size > 0 else None

            if args.profile:
                for density in [float(d) for d in args.densities.split(",")]:
                    key_blocks, counts, capacity, kept = random_blocks(batch, context // BLOCK, density, generator)
                    blocks = (key_blocks, counts, capacity)
                    for variant in [(0, 0, 0, 0, False, 0)] + variants_for(batch, context):
                        forced, pipeline, order, policy, head_major, cluster = variant
                        workspace = workspace_for(capacity, False, forced)
                        for _ in range(3):
                            timer.flush_buffer.zero_()  # the L2 as do_bench leaves it: full of dirty lines
                            seer_call(blocks, workspace, forced, None, pipeline, order, policy, head_major, cluster)
                torch.cuda.synchronize()
                continue

            # ---- SDPA dense decode: q [B, 32, 1, D], K/V [B, 8, S, D] contiguous, GQA ----
            q_sdpa = q.transpose(1, 2).contiguous()
            sdpa_caches = [(keys.transpose(1, 2).contiguous(), values.transpose(1, 2).contiguous())]
            sdpa_caches.append((sdpa_caches[0][0].clone(), sdpa_caches[0][1].clone()))  # a call reads > the L2
            sdpa, sdpa_errors = {}, {}
            reference = None
            wanted_backends = args.sdpa_backends.split(",")
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                                  ("cudnn", SDPBackend.CUDNN_ATTENTION), ("default", None)):
                if name not in wanted_backends:
                    continue
                calls = [lambda k=k, v=v: F.scaled_dot_product_attention(q_sdpa, k, v, enable_gqa=True)
                         for k, v in sdpa_caches]
                try:
                    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                        result = calls[0]()
                        times = {"ms": timer.flush(calls[0]), "clean_ms": timer.clean(calls[0]),
                                 "kernel_ms": timer.kernel(calls[0])}
                        try:
                            times["graph_ms"] = timer.graph(calls)
                        except Exception as e:  # noqa: BLE001 -- a backend that cannot be captured
                            times["graph_ms"] = float("nan")
                            sdpa_errors[name + "-graph"] = str(e).splitlines()[0][:160]
                    sdpa[name] = times
                    if reference is None:
                        reference = result.transpose(1, 2).float()
                except Exception as e:  # a backend that does not take this call
                    sdpa_errors[name] = str(e).splitlines()[0][:160]
            if not sdpa:
                raise RuntimeError(f"no SDPA backend ran: {sdpa_errors}")
            best = {m: min((t[m] for t in sdpa.values() if not math.isnan(t[m])), default=float("nan"))
                    for m in METHODS}
            best_name = min(sdpa, key=lambda n: sdpa[n]["ms"])
            print(json.dumps({"batch": batch, "context": context, "sdpa": sdpa, "sdpa_failed": sdpa_errors}),
                  flush=True)
            del sdpa_caches
            torch.cuda.empty_cache()

            def record(method, density_target, kept_blocks_total, times, difference, splits=None):
                kept_bytes = 2 * kept_blocks_total * BLOCK * DIM * 2 + 2 * q.numel() * 2
                row = {"batch": batch, "context": context, "method": method, "density_target": density_target,
                       "density": kept_blocks_total / (batch * KV_HEADS * (context // BLOCK)), "kept_bytes": kept_bytes,
                       "sdpa_backend": best_name, "max_abs_difference_vs_sdpa": difference, "splits": splits}
                for m, ms in times.items():
                    row[m] = ms
                    row[m.replace("ms", "speedup")] = best[m] / ms
                    row[m.replace("ms", "tb_per_s")] = kept_bytes / ms / 1e9
                results.append(row)
                print(json.dumps(row), flush=True)

            for name, times in sdpa.items():
                record(f"sdpa-{name}", 1.0, batch * KV_HEADS * (context // BLOCK), times, 0.0)

            def time_seer(blocks, workspace, bytes_per_call, forced_splits=0, pipeline=0, order=0, policy=0,
                          head_major=False, cluster=0):
                call = lambda: seer_call(blocks, workspace, forced_splits, None, pipeline, order, policy, head_major,
                                         cluster)
                graph_calls = [lambda c=c: seer_call(blocks, workspace, forced_splits, c, pipeline, order, policy,
                                                     head_major, cluster)
                               for c in copies_for(bytes_per_call, head_major)]
                return timer.all_methods(call, graph_calls)

            # ---- seer dense ----
            if not args.skip_dense:
                workspace = workspace_for(0, True)
                seer_call(None, workspace)
                torch.cuda.synchronize()
                difference = (out.float() - reference).abs().max().item()
                record("seer-dense", 1.0, batch * KV_HEADS * (context // BLOCK),
                       time_seer(None, workspace, cache_bytes), difference)

            # ---- seer sparse ----
            for density in [float(d) for d in args.densities.split(",")]:
                key_blocks, counts, capacity, kept = random_blocks(batch, context // BLOCK, density, generator)
                blocks = (key_blocks, counts, capacity)
                workspace = workspace_for(capacity, False)
                seer_call(blocks, workspace)
                torch.cuda.synchronize()
                difference = (out.float() - reference).abs().max().item() if density >= 1.0 else None
                kept_bytes = 2 * kept * BLOCK * DIM * 2
                record("seer-sparse", density, kept, time_seer(blocks, workspace, kept_bytes), difference)
                if density == 0.1 and page_sizes:
                    seer_call(blocks, workspace)
                    torch.cuda.synchronize()
                    contiguous_out = out.clone()  # the automatic call's output on this cache and these blocks
                    for page_size in page_sizes:
                        # The identity table reads what the contiguous call read: the same output, within rounding.
                        pages = context // page_size
                        identity = torch.arange(batch * pages, dtype=torch.int32, device="cuda").view(batch, pages)
                        seer_paged_call(blocks, workspace, identity, page_size)
                        torch.cuda.synchronize()
                        difference = (out.float() - contiguous_out.float()).abs().max().item()
                        if difference > 1e-2:
                            raise RuntimeError(f"paged cache (page size {page_size}): output differs from the "
                                               f"contiguous call by {difference}")
                        table = identity if args.page_order == "identity" else torch.randperm(
                            batch * pages, generator=generator, device="cuda").to(torch.int32).view(batch, pages)
                        call = lambda t=table, p=page_size: seer_paged_call(blocks, workspace, t, p)
                        graph_calls = [lambda c=c, t=table, p=page_size: seer_paged_call(blocks, workspace, t, p, c)
                                       for c in copies_for(kept_bytes)]
                        print(json.dumps({"batch": batch, "context": context, "page_size": page_size,
                                          "max_abs_difference_vs_contiguous": difference}), flush=True)
                        record(f"seer-sparse, pages of {page_size}" +
                               (" in order" if args.page_order == "identity" else ""),
                               density, kept, timer.all_methods(call, graph_calls), None)
                if density == 0.1 and compared:
                    main_out = out.clone()
                    for name, function in compared:
                        seer_call(blocks, workspace, function=function)
                        torch.cuda.synchronize()
                        print(json.dumps({"library": name, "max_abs_difference_vs_main": (
                            out.float() - main_out.float()).abs().max().item()}), flush=True)
                    for round_index in range(args.compare_rounds):
                        for name, function in [(os.path.basename(args.library), None)] + compared:
                            call = lambda f=function: seer_call(blocks, workspace, function=f)
                            graph_calls = [lambda c=c, f=function: seer_call(blocks, workspace, cache=c, function=f)
                                           for c in copies_for(kept_bytes)]
                            record(f"seer {name} r{round_index + 1}", density, kept,
                                   timer.all_methods(call, graph_calls), None)
                if density == 0.1 and args.sweep_splits:
                    sweep = {}
                    for forced in [int(x) for x in args.sweep_splits.split(",")]:
                        forced_workspace = workspace_for(capacity, False, forced)
                        sweep[forced] = time_seer(blocks, forced_workspace, kept_bytes, forced)
                    print(json.dumps({"batch": batch, "context": context, "density": density, "forced_splits": sweep}),
                          flush=True)
                if density == 0.1:
                    for name, (forced, pipeline, order, policy, head_major, cluster) in zip(
                            variant_names_for(batch, context), variants_for(batch, context)):
                        forced_workspace = workspace_for(capacity, False, forced)
                        if head_major or cluster % 4:  # the same bits as the token-major / workspace-merge call
                            seer_call(blocks, forced_workspace, forced, None, pipeline, order, policy, head_major,
                                      cluster)
                            torch.cuda.synchronize()
                            reference_out = out.clone()
                            seer_call(blocks, forced_workspace, forced, None, pipeline, order, policy, False,
                                      1 + cluster // 4 * 4)
                            torch.cuda.synchronize()
                            if not torch.equal(reference_out, out):
                                difference = (reference_out.float() - out.float()).abs().max().item()
                                if head_major:
                                    raise RuntimeError(f"variant {name}: output differs from the token-major call "
                                                       f"with the workspace merge (max {difference})")
                                print(json.dumps({"variant": name, "warning": "cluster merge output differs from "
                                                  "the workspace merge", "max_abs_difference": difference}),
                                      flush=True)
                        times = time_seer(blocks, forced_workspace, kept_bytes, forced, pipeline, order, policy,
                                          head_major, cluster)
                        record(f"seer {name}", density, kept, times, None, forced)
            del q, keys, values, out, lse, q_sdpa, reference, copies, head_major_copies
            torch.cuda.empty_cache()

    if args.profile:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Measured {stamp} on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}, triton "
              f"{triton.__version__}); command: `bash bench/gpu/device_decode.sh` (python3 bench/gpu/decode/"
              f"bench_decode.py). One new token, Hq=32, Hkv=8, D=128, bf16, contiguous cache, every sequence full. "
              f"Medians in us; flush: do_bench (L2 flushed by a write before each call); clean: the flush's dirty "
              f"lines written back before the start event; graph: per call in a replayed graph of back-to-back "
              f"calls on rotating cache copies; kernel: CUPTI kernel span of a call after the flush write. Speedups "
              f"are over the fastest SDPA backend under the same method. Null kernel (timing floor): flush "
              f"{null_times['ms'] * 1e3:.1f}, clean {null_times['clean_ms'] * 1e3:.1f}, graph "
              f"{null_times['graph_ms'] * 1e3:.1f}, kernel {null_times['kernel_ms'] * 1e3:.1f} us.")
    lines = [header, "",
             "| batch | context | method | density (actual) | flush us | x SDPA | TB/s | clean us | x SDPA | TB/s | "
             "graph us | x SDPA | TB/s | kernel us | x SDPA | TB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for m in METHODS:
            cells.append(f"{r[m] * 1e3:.1f} | {r[m.replace('ms', 'speedup')]:.2f}x | {r[m.replace('ms', 'tb_per_s')]:.2f}")
        lines.append(f"| {r['batch']} | {r['context'] // 1024}k | {r['method']} | {r['density_target']:.2f} "
                     f"({r['density']:.3f}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "bench_decode.json"), "w") as f:
        json.dump({"device": device, "null": null_times, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "bench_decode.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)


if __name__ == "__main__":
    main()
