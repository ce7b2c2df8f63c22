"""The Muon step of the Table 6 rows: torch.optim.Muon against GroupedMuon (moda_lab/train/muon.py), same run.

    python experiments/bench/bench_muon.py --out experiments/bench/results/muon_step_h100.md

For each variant, the optimizer that build_optimizer makes for trainer.optimizer=muon at the Table 6 shape (its
hidden matrices; the AdamW half is left out, it is the same either way), on random gradients: the GPU time of a
step (CUDA events), the host time to issue it (wall clock until step() returns, before the synchronize), and
the kernels a step launches (torch.profiler). Prints a Markdown table; writes it and a JSON copy.
Runs on CPU too (--device cpu: host time only, no kernel count), for a dry run of the script.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from experiments.bench.report import save_table  # noqa: E402
from moda_lab.model import GPT, ModelConfig  # noqa: E402
from moda_lab.train.muon import GroupedMuon  # noqa: E402
from moda_lab.train.optim import _roles  # noqa: E402
from variants import VARIANTS  # noqa: E402

OPTIMIZERS = {"torch.optim.Muon": torch.optim.Muon, "GroupedMuon": GroupedMuon}
KW = {"lr": 3e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True, "adjust_lr_fn": "match_rms_adamw"}


def hidden_matrices(variant: str, layers: int, device: str) -> list[torch.nn.Parameter]:
    cfg = ModelConfig(vocab_size=50304, n_layers=layers, d_model=384, n_heads=6, n_kv_heads=2, ffn_hidden=1536,
                      max_seq_len=1024, mixer=VARIANTS[variant], norm="post")
    model = GPT(cfg)
    _, hidden = _roles(model)
    params = [p for p in model.to(device).parameters() if id(p) in hidden]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def time_step(opt: torch.optim.Optimizer, device: str, steps: int) -> tuple[float, float]:
    """(GPU ms a step, host ms a step): mean over ``steps`` after three warm-up steps."""
    cuda = device == "cuda"
    for _ in range(3):
        opt.step()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    host = 0.0
    t_all = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        host += time.perf_counter() - t0
    if cuda:
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps, 1e3 * host / steps
    return 1e3 * (time.perf_counter() - t_all) / steps, 1e3 * host / steps


def kernels_per_step(opt: torch.optim.Optimizer) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="residual,moda_depth_kv,moda")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/bench/results/muon_step.md")
    args = ap.parse_args()
    env = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "layers": args.layers,
           "width": 384, "ffn_hidden": 1536, "optimizer": KW}
    rows = []
    for variant in args.variants.split(","):
        params = hidden_matrices(variant, args.layers, args.device)
        shapes = sorted({tuple(p.shape) for p in params})
        base = None
        for name, cls in OPTIMIZERS.items():
            opt = cls(params, **KW)
            gpu_ms, host_ms = time_step(opt, args.device, args.steps)
            base = base or gpu_ms
            row = {"variant": variant, "optimizer": name, "matrices": len(params), "shapes": len(shapes),
                   "step_ms": round(gpu_ms, 3), "host_ms": round(host_ms, 3), "vs_torch": round(gpu_ms / base, 3),
                   "kernels": kernels_per_step(opt) if args.device == "cuda" else None}
            rows.append(row)
            print(row, flush=True)
        del params
    head = "| variant | optimizer | matrices | shapes | step ms | host ms | vs torch | kernels |"
    lines = ["# Muon step at the Table 6 shape", "", json.dumps(env), "", head, "|---" * 8 + "|"]
    lines += [f"| {r['variant']} | {r['optimizer']} | {r['matrices']} | {r['shapes']} | {r['step_ms']} | "
              f"{r['host_ms']} | {r['vs_torch']:.3f}x | {r['kernels']} |" for r in rows]
    save_table(args.out, "\n".join(lines) + "\n", env, rows)


if __name__ == "__main__":
    main()
