"""Benchmark of the MoDA Triton kernels against torch SDPA (FlashAttention-2-class baseline).

One run on one GPU times forward and forward+backward of: SDPA's best backend (flash and cuDNN tried,
faster reported; K/V pre-expanded to Hq heads outside the timed region), our fused Triton kernel in
sequence-only, MoDA and depth-only modes, and the hybrid schedule (moda_kernels/moda/hybrid.py: sequence part
by cuDNN, or flash with --flash, depth part by Triton, merged by LSE) in sequence-only and MoDA modes, on the
paper's configurations (arXiv 2603.15619 Table 2 and Table 7). Each row also reports issue 11's bound: SDPA's
f+b time plus 1.15x the depth stream's memory floor (K/V depth read in the forward, read again and their
gradients written in the backward: 6 x B*T*L*Hk*d elements) at the copy bandwidth measured in the same run.
Results are printed and written (Markdown + JSON, with device and versions) after every row, so a
run cut short keeps what it measured.

    python experiments/bench/bench_moda.py --rows table7,table2,sweep-g,sweep-l --out results/moda_h100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from moda_kernels import dispatch  # noqa: E402
from moda_kernels.moda import moda_attn, naive_moda_attn  # noqa: E402

# Rows up to this T are also timed replayed from a CUDA graph (no host launch overhead).
GRAPH_MAX_T = 4096

# (name, B, T, G, Hk, d, L); Hq = G * Hk.
ROWS = {
    "quick": [("quick-T4K", 1, 4096, 8, 8, 64, 64)],
    "table7": [("t7-T1K", 1, 1024, 8, 8, 64, 64)],
    "table2": [(f"t2-T{t // 1024}K", 1, t, 8, 8, 64, 64) for t in (4096, 8192, 16384, 32768, 65536)],
    # Paper: G=2 -> Hq=16 (Hk=8), G=32 -> Hq=256 (Hk=8) at T=16K.
    "sweep-g": [(f"g{g}-T16K", 1, 16384, g, 8, 64, 64) for g in (2, 32)],
    "sweep-l": [(f"l{depth}-T16K", 1, 16384, 8, 8, 64, depth) for depth in (128, 256)],
}


def time_ms(fn, rep_ms: float) -> float:
    """Median of CUDA-event timings (triton.testing.do_bench: one warm-up call, which also autotunes, then
    back-to-back calls with the L2 cache flushed between them). Launch overhead shows only where the host
    is slower than the GPU work it queues (small T); ``graph_ms`` removes it."""
    fn()  # compile and autotune outside the timing
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    rep_ms = max(rep_ms, 5 * start.elapsed_time(end))  # at least ~5 timed calls of a slow case
    return triton.testing.do_bench(fn, warmup=min(rep_ms / 4, 100), rep=rep_ms, return_mode="median")


def graph_ms(fn, rep_ms: float) -> float:
    """Median time of ``fn`` replayed from a CUDA graph: GPU time without host launch overhead."""
    return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")


def attn_flops(B, T, Hq, d, L, seq: bool, depth: bool) -> float:
    """Forward FLOPs of the unmasked score and P@V products (causal: T(T+1)/2 pairs per head)."""
    pairs = (T * (T + 1) / 2 if seq else 0) + (T * L if depth else 0)
    return 4.0 * B * Hq * d * pairs


def seq_impl(impl):
    """Run moda_attn with the given sequence implementation (fused / cudnn / flash; None = its own choice)."""
    return mock.patch.dict(os.environ, {dispatch.SEQ_IMPL_ENV: impl} if impl else {})


def copy_bandwidth() -> float:
    """Device copy bandwidth (bytes/s, read + write) of a 2 GiB tensor copy, median of do_bench."""
    x = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def fwd_bwd(fn, inputs, do):
    def run():
        for t in inputs:
            t.grad = None
        fn().backward(do)

    return run


def bench_row(name, B, T, G, Hk, d, L, dtype, budget_ms, compare_schedules, flash=False, bandwidth=None):
    Hq = G * Hk
    dev = "cuda"
    q = torch.randn(B, T, Hq, d, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(B, T, Hk, d, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(B, T, Hk, d, device=dev, dtype=dtype, requires_grad=True)
    kd = torch.randn(B, T, L, Hk, d, device=dev, dtype=dtype, requires_grad=True)
    vd = torch.randn(B, T, L, Hk, d, device=dev, dtype=dtype, requires_grad=True)
    do = torch.randn(B, T, Hq, d, device=dev, dtype=dtype)
    row = dict(name=name, B=B, T=T, G=G, Hq=Hq, Hk=Hk, d=d, L=L)

    # SDPA baseline on [B, H, T, d] with K/V expanded to Hq heads (expansion not timed).
    qs = q.detach().transpose(1, 2).contiguous().requires_grad_()
    ks = k.detach().repeat_interleave(G, dim=2).transpose(1, 2).contiguous().requires_grad_()
    vs = v.detach().repeat_interleave(G, dim=2).transpose(1, 2).contiguous().requires_grad_()
    dos = do.transpose(1, 2).contiguous()
    best = {}
    for backend in (torch.nn.attention.SDPBackend.FLASH_ATTENTION, torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        try:
            with torch.nn.attention.sdpa_kernel([backend]):
                f = lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)  # noqa: E731
                tf = time_ms(lambda: f(), budget_ms)
                tfb = time_ms(fwd_bwd(f, (qs, ks, vs), dos), budget_ms)
        except RuntimeError as err:  # backend not available for this shape/build
            row[f"sdpa_{backend.name.lower()}_error"] = str(err).splitlines()[0][:120]
            continue
        row[f"sdpa_{backend.name.lower()}_fwd_ms"], row[f"sdpa_{backend.name.lower()}_fwdbwd_ms"] = tf, tfb
        if not best or tfb < best["fb"]:
            best = dict(fwd=tf, fb=tfb, backend=backend.name.lower())
    qs = ks = vs = dos = None  # free the expanded copies before timing our kernel
    if best:
        row.update(sdpa_fwd_ms=best["fwd"], sdpa_fwdbwd_ms=best["fb"], sdpa_backend=best["backend"])

    # mode -> (inputs, call, sequence implementation); seq / moda / depth are the fused Triton kernel.
    hyb = "flash" if flash else "cudnn"
    modes = {
        "seq": ((q, k, v), lambda: moda_attn(q, k, v), "fused"),
        "moda": ((q, k, v, kd, vd), lambda: moda_attn(q, k, v, kd, vd), "fused"),
        "depth": ((q, kd, vd), lambda: moda_attn(q, None, None, kd, vd), "fused"),
        "hseq": ((q, k, v), lambda: moda_attn(q, k, v), hyb),
        "hmoda": ((q, k, v, kd, vd), lambda: moda_attn(q, k, v, kd, vd), hyb),
    }
    row["hybrid_impl"] = hyb
    if compare_schedules:
        # MoDA with the other forward depth schedule than the one moda_attn picks at this T (fused vs split).
        modes["moda_alt"] = modes["moda"]
    split_min_t = dispatch.SPLIT_MIN_T
    for mode, (ins, f, impl) in modes.items():
        if mode == "moda_alt":
            dispatch.SPLIT_MIN_T = 1 << 30 if T >= split_min_t else 0
            row["moda_alt_schedule"] = "fused" if T >= split_min_t else "split"
        try:
            with seq_impl(impl):
                row[f"{mode}_fwd_ms"] = time_ms(lambda: f(), budget_ms)
                row[f"{mode}_fwdbwd_ms"] = time_ms(fwd_bwd(f, ins, do), budget_ms)
                if T <= GRAPH_MAX_T and mode in ("seq", "moda", "hmoda"):
                    row[f"{mode}_fwdbwd_graph_ms"] = graph_ms(fwd_bwd(f, ins, do), budget_ms)
        except Exception as err:  # keep the other modes' numbers if one mode fails to compile or run
            row[f"{mode}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            print(row[f"{mode}_error"], flush=True)
            continue
        finally:
            dispatch.SPLIT_MIN_T = split_min_t
        flops = 3.5 * attn_flops(B, T, Hq, d, L, mode != "depth", mode not in ("seq", "hseq"))  # bwd ~ 2.5x fwd
        row[f"{mode}_fwdbwd_tflops"] = flops / row[f"{mode}_fwdbwd_ms"] * 1e-9
    if "moda_fwdbwd_ms" in row and "seq_fwdbwd_ms" in row:
        row["moda_over_seq"] = row["moda_fwdbwd_ms"] / row["seq_fwdbwd_ms"]
        row["moda_over_seq_fwd"] = row["moda_fwd_ms"] / row["seq_fwd_ms"]
    if best and "seq_fwdbwd_ms" in row:
        row["seq_over_sdpa"] = row["seq_fwdbwd_ms"] / row["sdpa_fwdbwd_ms"]
        row["seq_over_sdpa_fwd"] = row["seq_fwd_ms"] / row["sdpa_fwd_ms"]
        row["sdpa_fwdbwd_tflops"] = 3.5 * attn_flops(B, T, Hq, d, L, True, False) / best["fb"] * 1e-9
    if best and bandwidth:
        floor_ms = 6 * B * T * L * Hk * d * q.element_size() / bandwidth * 1e3
        row["depth_floor_ms"] = floor_ms
        row["bound_ms"] = best["fb"] + 1.15 * floor_ms
        for mode in ("moda", "hmoda"):
            if f"{mode}_fwdbwd_ms" in row:
                row[f"{mode}_over_sdpa"] = row[f"{mode}_fwdbwd_ms"] / best["fb"]
                row[f"{mode}_over_bound"] = row[f"{mode}_fwdbwd_ms"] / row["bound_ms"]
        if "hseq_fwdbwd_ms" in row:
            row["hseq_over_sdpa"] = row["hseq_fwdbwd_ms"] / best["fb"]
    if T <= 1024:  # the paper's Table 7 also reports the naive PyTorch implementation
        f = lambda: naive_moda_attn(q, k, v, kd, vd)  # noqa: E731
        row["naive_fwdbwd_ms"] = time_ms(fwd_bwd(f, (q, k, v, kd, vd), do), 20)
        # Sanity check of what was timed: relative error of output and grads vs the fp32 reference.
        ins = (q, k, v, kd, vd)
        ref_in = [t.detach().float().requires_grad_() for t in ins]
        ref = naive_moda_attn(*ref_in)
        g_ref = torch.autograd.grad(ref, ref_in, do.float())
        for impl in ("fused", hyb):
            with seq_impl(impl):
                got = moda_attn(*ins)
                g = torch.autograd.grad(got, ins, do)
            row[f"rel_err_{impl}"] = {n: ((a.float() - b).norm() / b.norm()).item()
                                      for n, a, b in zip(("o", "dq", "dk", "dv", "dkd", "dvd"), (got,) + g, (ref,) + g_ref)}
    return row


COLS = [
    ("name", "case", "{}"), ("T", "T", "{}"), ("G", "G", "{}"), ("Hq", "Hq", "{}"), ("L", "L", "{}"),
    ("sdpa_backend", "SDPA", "{}"), ("sdpa_fwd_ms", "SDPA fwd", "{:.3f}"), ("sdpa_fwdbwd_ms", "SDPA f+b", "{:.3f}"),
    ("seq_fwd_ms", "seq fwd", "{:.3f}"), ("seq_fwdbwd_ms", "seq f+b", "{:.3f}"),
    ("moda_fwd_ms", "MoDA fwd", "{:.3f}"), ("moda_fwdbwd_ms", "MoDA f+b", "{:.3f}"),
    ("depth_fwd_ms", "depth fwd", "{:.3f}"), ("depth_fwdbwd_ms", "depth f+b", "{:.3f}"),
    ("sdpa_fwdbwd_tflops", "SDPA TF/s", "{:.0f}"), ("seq_fwdbwd_tflops", "seq TF/s", "{:.0f}"),
    ("moda_fwdbwd_tflops", "MoDA TF/s", "{:.0f}"),
    ("seq_over_sdpa", "seq/SDPA f+b", "{:.3f}"), ("moda_over_seq", "MoDA/seq f+b", "{:.3f}"),
    ("moda_over_seq_fwd", "MoDA/seq fwd", "{:.3f}"), ("moda_alt_schedule", "alt sched", "{}"),
    ("moda_alt_fwd_ms", "alt fwd", "{:.3f}"), ("moda_alt_fwdbwd_ms", "alt f+b", "{:.3f}"),
    ("hseq_fwdbwd_ms", "hyb seq f+b", "{:.3f}"), ("hmoda_fwd_ms", "hyb MoDA fwd", "{:.3f}"),
    ("hmoda_fwdbwd_ms", "hyb MoDA f+b", "{:.3f}"), ("depth_floor_ms", "depth floor", "{:.3f}"),
    ("bound_ms", "bound", "{:.3f}"), ("moda_over_sdpa", "MoDA/SDPA", "{:.3f}"), ("hmoda_over_sdpa", "hyb/SDPA", "{:.3f}"),
    ("hmoda_over_bound", "hyb/bound", "{:.3f}"),
    ("seq_fwdbwd_graph_ms", "seq f+b graph", "{:.3f}"), ("moda_fwdbwd_graph_ms", "MoDA f+b graph", "{:.3f}"),
    ("hmoda_fwdbwd_graph_ms", "hyb MoDA f+b graph", "{:.3f}"),
    ("naive_fwdbwd_ms", "naive f+b", "{:.1f}"),
]


def markdown(rows, meta) -> str:
    lines = [f"# MoDA kernel benchmark ({meta['device']})", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [f"- MoDA uses the fused depth schedule below T = {dispatch.SPLIT_MIN_T} and the split one from "
              "there on; 'alt' is the other."]
    lines += ["- times in ms (median of triton.testing.do_bench: back-to-back calls, L2 flushed between them),",
              "  B=1, d=64, causal; f+b = forward + backward; 'graph' = replayed from a CUDA graph (GPU time",
              "  without host launch overhead);",
              "  TF/s counts unmasked attention FLOPs (fwd 4*Hq*d*pairs, bwd 2.5x fwd);",
              "  'hyb' = the hybrid schedule (sequence part by the aten op in hybrid_impl, depth part by Triton);",
              "  depth floor = 6*B*T*L*Hk*d elements at the measured copy bandwidth; bound = SDPA f+b + 1.15 x floor.",
              ""]
    lines.append("| " + " | ".join(h for _, h, _ in COLS) + " |")
    lines.append("|" + "---|" * len(COLS))
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "-" for k, _, fmt in COLS) + " |")
    return "\n".join(lines) + "\n"


def tuned_configs() -> dict:
    """The config each autotuned kernel picked, per autotune key (T and L buckets, G, d, mode, dtypes)."""
    from moda_kernels.moda import triton_bwd, triton_fwd

    kernels = {"fwd": triton_fwd._moda_fwd_kernel, "dkdv": triton_bwd._moda_bwd_dkdv_kernel,
               "dq": triton_bwd._moda_bwd_dq_kernel}
    return {name: {str(key): str(cfg) for key, cfg in kern.cache.items()} for name, kern in kernels.items()}


def profile(spec, dtype, path: Path) -> None:
    """Per-kernel GPU time of a few MoDA and sequence-only fwd+bwd calls (torch.profiler), for the notes."""
    name, B, T, G, Hk, d, L = spec
    q = torch.randn(B, T, G * Hk, d, device="cuda", dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, T, Hk, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    kd, vd = (torch.randn(B, T, L, Hk, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    do = torch.randn_like(q)
    with open(path, "a") as fh:
        for label, ins, impl in (("moda", (q, k, v, kd, vd), "fused"), ("seq", (q, k, v), "fused"),
                                 ("hybrid moda", (q, k, v, kd, vd), None)):
            run = fwd_bwd(lambda: moda_attn(*ins), ins, do)  # noqa: B023 - called inside this iteration
            with seq_impl(impl):
                run()
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                        torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        run()
                    torch.cuda.synchronize()
            fh.write(f"## {name} {label} fwd+bwd x5\n")
            fh.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
            fh.write("\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="table7,table2", help=f"comma list of {sorted(ROWS)}")
    parser.add_argument("--out", default="experiments/bench/results/moda", help="output path without extension")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--budget-ms", type=float, default=400.0, help="timed milliseconds per measurement")
    parser.add_argument("--compare-schedules", action="store_true",
                        help="also time MoDA with the depth schedule (fused/split) moda_attn does not pick")
    parser.add_argument("--flash", action="store_true", help="hybrid columns with aten's flash instead of cuDNN")
    parser.add_argument("--profile", action="store_true",
                        help="also write per-kernel GPU times (torch.profiler) of each row to <out>.profile.txt")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_moda.py needs a CUDA GPU")
    for group in args.rows.split(","):
        if group not in ROWS:
            raise SystemExit(f"unknown row group {group!r}; choose from {sorted(ROWS)}")
    meta = dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), python=platform.python_version(),
        dtype=args.dtype, date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    meta["copy_bandwidth_TBps"] = round(copy_bandwidth() / 1e12, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for group in args.rows.split(","):
        for spec in ROWS[group]:
            t0 = time.time()
            row = bench_row(*spec, dtype=getattr(torch, args.dtype), budget_ms=args.budget_ms,
                            compare_schedules=args.compare_schedules, flash=args.flash,
                            bandwidth=meta["copy_bandwidth_TBps"] * 1e12)
            row["wall_s"] = time.time() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows, tuned=tuned_configs()), indent=1))
            out.with_suffix(".md").write_text(markdown(rows, meta))
            if args.profile:
                profile(spec, getattr(torch, args.dtype), out.with_suffix(".profile.txt"))
            torch.cuda.empty_cache()
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
