"""Training-step throughput of every depth-mixing variant on one GPU: tokens/s, MFU, overhead vs residual.

    python experiments/bench/bench_train.py --out experiments/bench/results/train_throughput_h100.md

One run measures all rows on the same device (the residual baseline of each shape is measured in the same
run), prints a Markdown table and writes it plus a JSON copy. A step = forward + backward + fused AdamW, bf16
autocast, the model's attention backend (triton on CUDA). MFU = tokens/s x analytic training FLOPs per token
(6N + attention + depth terms, GPT.flops_per_token) / device bf16 peak. With --compile the whole model is one
torch.compile graph (GPT.compile, as trainer=gpu trains); each row records dynamo's graph count, graph breaks
and the compile time (the first warm-up step). --compile-mode picks torch.compile's mode: reduce-overhead runs the
step as CUDA graphs (trainer.cudagraphs=true), max-autotune-no-cudagraphs autotunes Inductor's kernels without them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from torch._dynamo.utils import counters

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from experiments.bench.minimal_gpt import MinimalConfig, MinimalGPT  # noqa: E402
from moda_kernels import dispatch  # noqa: E402
from moda_lab.model import GPT, NORM_PLACEMENTS, MixerConfig, ModelConfig  # noqa: E402
from moda_lab.train.compile_cache import load_artifacts, write_artifacts  # noqa: E402
from moda_lab.train.perf import peak_flops  # noqa: E402
from variants import VARIANTS  # noqa: E402 - the variants the tests build (tests/variants.py)

# Every variant but MoDA with the extra attention K/V projection (Table 3's last row, not a Table 6 variant).
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "moda_full"]
# torch.compile's modes (--compile-mode); default is the call trainer=gpu makes, reduce-overhead trainer.cudagraphs=true.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
# The rows --variants may name: every variant, and "minimal_gpt", a plain decoder of the residual's architecture
# and shape (minimal_gpt.py, issue 29) that times the residual against the same model without moda-lab's plumbing;
# "minimal_gpt_no_qk_norm" is it without the residual's QK-norm (the minimal GPT as issue 29 describes it).
MINIMAL_GPTS = {"minimal_gpt": True, "minimal_gpt_no_qk_norm": False}  # row name -> QK-norm
BENCH_VARIANTS: dict[str, MixerConfig | str] = {**VARIANTS, **{name: name for name in MINIMAL_GPTS}}
# A row name may end in "@<switch>": the variant with a dispatch switch on for that row only, so a kernel that is
# off by default is timed in the model beside the default path of the same run (e.g.
# hyper_connections,hyper_connections@wide_combine).
ROW_SWITCHES = {"wide_combine": dispatch.WIDE_COMBINE_ENV}
# (width, query heads, kv heads, layers, T): Table-6-like shapes plus wider baselines for the MFU target.
SHAPES = {
    "table6": [(384, 6, 2, 24, 1024), (384, 6, 2, 24, 2048), (384, 6, 2, 24, 4096), (384, 6, 2, 48, 4096)],
    "wide": [(768, 12, 4, 24, 4096), (1024, 16, 4, 24, 4096)],
    "core": [(384, 6, 2, 24, 1024), (384, 6, 2, 24, 4096), (768, 12, 4, 24, 4096)],
    "quick": [(384, 6, 2, 24, 1024)],
    "long": [(384, 6, 2, 24, 4096), (768, 12, 4, 24, 4096)],
}


def parse_row(name: str) -> tuple[MixerConfig | str, str | None]:
    """(the row's variant, the env switch it turns on, or None) from a --variants entry; a ValueError names an
    unknown variant or switch."""
    base, _, switch = name.partition("@")
    if base not in BENCH_VARIANTS:
        raise ValueError(f"--variants: unknown variant {base!r}; allowed: {sorted(BENCH_VARIANTS)}")
    if switch and switch not in ROW_SWITCHES:
        raise ValueError(f"--variants: unknown switch {switch!r} in {name!r}; allowed: {sorted(ROW_SWITCHES)}")
    return BENCH_VARIANTS[base], ROW_SWITCHES.get(switch)


def switched_on(env_name: str | None):
    """The dispatch switch ``env_name`` set to 1 for a with-block (none for None), the environment restored after."""
    return contextlib.nullcontext() if env_name is None else mock.patch.dict(os.environ, {env_name: "1"})


def build_model(mixer: MixerConfig | str, cfg: ModelConfig) -> torch.nn.Module:
    """The model of a row: moda-lab's GPT with the variant's mixer, or the minimal GPT of cfg's shape."""
    if mixer in MINIMAL_GPTS:
        return MinimalGPT(dataclasses.replace(MinimalConfig.like(cfg), qk_norm=MINIMAL_GPTS[mixer]))
    return GPT(cfg)


def bench_one(mixer: MixerConfig | str, width, hq, hk, layers, T, tokens_per_step, steps, warmup, compile_model, norm,
              backend="auto", profile_to: Path | None = None, vocab=8192, ffn_hidden=None, compile_mode="default"):
    cfg = ModelConfig(
        vocab_size=vocab,
        ffn_hidden=ffn_hidden,
        n_layers=layers,
        d_model=width,
        n_heads=hq,
        n_kv_heads=hk,
        max_seq_len=T,
        mixer=mixer if isinstance(mixer, MixerConfig) else MixerConfig(),
        norm=norm,
        attn_backend=backend,
    )
    model = build_model(mixer, cfg).cuda()
    if compile_model:
        torch._dynamo.reset()
        counters.clear()
        model.compile(fullgraph=True, **({} if compile_mode == "default" else {"mode": compile_mode}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    B = max(1, tokens_per_step // T)
    data = torch.randint(0, vocab, (B, T + 1), device="cuda")
    x, y = data[:, :-1], data[:, 1:]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(steps):
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = sorted(times)[len(times) // 2]
    tok_s = B * T / (ms / 1e3)
    if profile_to is not None:
        write_profile(step, profile_to, f"{mixer} width={width} layers={layers} T={T} B={B} backend={backend}")
    fpt = model.flops_per_token(T)
    peak = peak_flops(torch.device("cuda"))
    row = {
        "width": width,
        "hq": hq,
        "hk": hk,
        "layers": layers,
        "T": T,
        "B": B,
        "norm": norm,
        "backend": model.backend,
        # The sequence part of the triton backend's attention: cudnn / flash (hybrid schedule) or fused.
        "seq_impl": str(dispatch.kernel_plan((1, T, hq, width // hq), torch.bfloat16, x.device, kv_heads=hk,
                                             has_seq=True, has_depth=mixer.name in ("moda", "depth_attn")))
        if model.backend == "triton" else None,
        "compiled": compile_model,
        "compile_mode": compile_mode if compile_model else None,
        "vocab": vocab,
        "ffn_hidden": cfg.ffn_dim,
        "params_M": model.num_params() / 1e6,
        "gflops_per_token": fpt / 1e9,
        "step_ms": ms,
        "tokens_per_s": tok_s,
        "mfu": tok_s * fpt / peak if peak else None,
        "mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "first_step_s": first_step_s,
    }
    if isinstance(model, MinimalGPT):  # the kernel torch's SDPA picks for this call (FLASH_ATTENTION, CUDNN_ATTENTION...)
        row["seq_impl"] = model.sdpa_kernel(B, torch.bfloat16, x.device)
    if compile_model:
        row["graphs"] = counters["stats"]["unique_graphs"]
        row["graph_breaks"] = sum(counters["graph_break"].values())
    return row


def load_compile_cache(path: Path) -> str:
    """Load a carried torch.compiler cache-artifacts file (FX graphs, AOT autograd and Triton kernels); returns
    what happened, for the table's header."""
    if not path.is_file():
        return "none"
    try:
        info = load_artifacts(path.read_bytes())
    except Exception as err:  # a damaged file: every row compiles cold
        return f"failed ({type(err).__name__}: {err})"[:200]
    if info is None or info.empty():
        return "failed (torch could not read it: damaged, or saved by another torch version)"
    return f"{path.stat().st_size} bytes"


def save_compile_cache(path: Path) -> int | None:
    """Write every compile artifact this process made or loaded; returns its size in bytes."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    write_artifacts(path, saved[0])
    return len(saved[0])


def write_profile(step, path: Path, title: str) -> None:
    """Append the top GPU kernels and the top host-side ops of two training steps (torch.profiler)."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    avg = prof.key_averages()
    with open(path, "a") as fh:
        fh.write(f"## {title} (2 steps)\n")
        fh.write(avg.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=70) + "\n")
        fh.write(avg.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70) + "\n\n")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="table6,wide", help=f"comma list of {sorted(SHAPES)}")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma list of {list(BENCH_VARIANTS)}, each optionally with @<switch> of "
                    f"{sorted(ROW_SWITCHES)} (that dispatch switch on for the row)")
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the whole model (GPT.compile)")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                    help="torch.compile's mode with --compile (reduce-overhead: CUDA graphs, as trainer.cudagraphs=true)")
    ap.add_argument("--norm", default="post", choices=list(NORM_PLACEMENTS))
    ap.add_argument("--backend", default="auto", help="attention backend: auto (triton on CUDA), triton, sdpa")
    ap.add_argument("--seq-impl", default=None, choices=dispatch.SEQ_IMPLS,
                    help="force the triton backend's sequence attention (default: its own rule, dispatch.kernel_plan)")
    ap.add_argument("--vocab", type=int, default=8192,
                    help="vocabulary size (experiment=table6_24l: 50304, with --ffn-hidden 1536)")
    ap.add_argument("--ffn-hidden", type=int, default=None, help="SwiGLU hidden size (default: the model's 8/3 x width)")
    ap.add_argument("--profile", action="store_true", help="write a torch.profiler summary per row to <out>.profile.txt")
    ap.add_argument("--out", default="experiments/bench/results/train_throughput.md")
    ap.add_argument("--compile-cache", type=Path, default=None,
                    help="a torch.compiler cache-artifacts file: loaded before the first row if it exists, written "
                    "after every row (the '1st step s' column then shows what a carried cache saves)")
    return ap


def main() -> None:
    ap = build_parser()
    args = ap.parse_args()
    if args.compile_mode != "default" and not args.compile:
        ap.error(f"--compile-mode {args.compile_mode} needs --compile (it is torch.compile's mode)")
    try:
        row_specs = {name: parse_row(name) for name in args.variants.split(",")}
    except ValueError as err:
        ap.error(str(err))
    if not torch.cuda.is_available():
        raise SystemExit("bench_train.py needs a CUDA GPU")
    if args.seq_impl:
        os.environ[dispatch.SEQ_IMPL_ENV] = args.seq_impl
    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "backend": args.backend,
        "seq_impl": args.seq_impl or "auto",
        "tokens_per_step": args.tokens_per_step,
        "vocab": args.vocab,
        "ffn_hidden": args.ffn_hidden,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if args.compile_cache is not None:
        env["compile_cache_loaded"] = load_compile_cache(args.compile_cache)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wide_variants = ["residual", "moda", *MINIMAL_GPTS]  # width >= 768 rows: the baseline MFU target and MoDA next to it
    for group in args.shapes.split(","):
        for shape in SHAPES[group]:
            shape_rows = []
            for name in args.variants.split(","):
                if shape[0] >= 768 and name.partition("@")[0] not in wide_variants:
                    continue
                mixer, switch = row_specs[name]
                try:
                    with switched_on(switch):
                        row = bench_one(
                            mixer, *shape, args.tokens_per_step, args.steps, args.warmup, args.compile, args.norm,
                            args.backend, out.with_suffix(".profile.txt") if args.profile else None, args.vocab,
                            args.ffn_hidden, args.compile_mode,
                        )
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row = {"width": shape[0], "layers": shape[3], "T": shape[4], "error": "OOM"}
                except Exception as err:  # a variant that fails to compile or run: the other rows still come
                    msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
                    row = {"width": shape[0], "layers": shape[3], "T": shape[4], "error": msg.replace("|", "/")}
                row["variant"] = name
                shape_rows.append(row)
                add_overheads(shape_rows)
                torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.compile_cache is not None and args.compile:
                    env["compile_cache_bytes"] = save_compile_cache(args.compile_cache)
                write(out, env, rows)
    print(table(env, rows))


def add_overheads(rows: list[dict]) -> None:
    """Set each measured row's step time over the residual's, rows of one shape, those before the residual too
    (--variants minimal_gpt,residual)."""
    base = next((r for r in rows if r["variant"] == "residual" and "step_ms" in r), None)
    for r in rows:
        if base and "step_ms" in r:
            r["overhead_vs_residual"] = r["step_ms"] / base["step_ms"] - 1


def table(env: dict, rows: list[dict]) -> str:
    head = (
        f"# Training-step throughput\n\n{json.dumps(env)}\n\n"
        "| variant | seq attn | width | layers | T | B | params M | GFLOP/tok | step ms | tokens/s | MFU | vs residual "
        "| mem GiB | 1st step s | graphs/breaks |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | | {r['width']} | {r['layers']} | {r['T']} | | | | {r['error']} | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        ovh = f"{100 * r['overhead_vs_residual']:+.1f}%" if "overhead_vs_residual" in r else ""
        lines.append(
            f"| {r['variant']} | {r.get('seq_impl') or r['backend']} | {r['width']} | {r['layers']} | {r['T']} | {r['B']} | {r['params_M']:.2f} | "
            f"{r['gflops_per_token']:.3f} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {ovh} | "
            f"{r['mem_GiB']:.1f} | {r.get('first_step_s', 0):.1f} | {r.get('graphs', '-')}/{r.get('graph_breaks', '-')} |"
        )
    ratios = [f"- residual / {r['variant']} step time at width {r['width']}, {r['layers']} layers, T={r['T']}: "
              f"{1 / (1 + r['overhead_vs_residual']):.3f}" for r in rows
              if r["variant"] in MINIMAL_GPTS and "overhead_vs_residual" in r]
    return head + "\n".join(lines) + "\n" + "".join(f"\n{line}" for line in ratios) + ("\n" if ratios else "")


def write(out: Path, env: dict, rows: list[dict]) -> None:
    out.write_text(table(env, rows))
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
