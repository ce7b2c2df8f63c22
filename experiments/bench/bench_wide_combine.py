"""The wide stream's combine, compiled ops against the Triton op, forward + backward, in the same run (issue 30).

    python experiments/bench/bench_wide_combine.py --out experiments/bench/results/wide_combine_h100.md

One sublayer's combine in Hyper-Connections and mHC (hyper_connections.py, ``WideStreamMixer.combine``): the new
copies norm(res H + post y) from the copies H [B, T, n, D] (fp32), the sublayer output y [B, T, D] (bf16, as
under autocast) and per-token weights res [B, T, n, n], post [B, T, n] (fp32, dynamic HC's and mHC's).
``compiled``: the model's broadcast multiply-adds and the placement's RMSNorm, torch.compile'd (what runs without
the op); ``kernel``: the ``wide_combine`` op (moda_kernels/widecombine). Both with the norm (post-norm) and
without (pre-norm), timed over the 48 sublayers of a 24-layer step (CUDA events). ``floor`` is the bytes the
op must move (forward: read H and y, write the new copies; backward: read d out, H and y, write d H and d y)
at the copy bandwidth measured in the same run (a clone of H, read + write). Prints a Markdown table; writes it
and a JSON copy.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from experiments.bench.report import save_rows  # noqa: E402
from moda_lab.model.mixers.hyper_connections import mix_and_add  # noqa: E402
from moda_lab.model.mixers.wide_combine import wide_combine  # noqa: E402


def combine_compiled(x, y, res, post, weight, eps: float):
    out = mix_and_add(x, y, res, post, 1.0)
    return out if weight is None else F.rms_norm(out, out.shape[-1:], weight, eps)


def combine_kernel(x, y, res, post, weight, eps: float):
    return wide_combine(x, y, res, post, weight, 1.0, eps)[0]


FORMS = {"compiled": combine_compiled, "kernel": combine_kernel}


def cuda_ms(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--sublayers", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/bench/results/wide_combine.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_wide_combine.py needs a CUDA GPU")
    T, n, D = 1024, args.n, args.width
    B = args.tokens // T
    x = torch.randn(B, T, n, D, device="cuda", requires_grad=True)
    y = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    res = (torch.eye(n, device="cuda") + 0.1 * torch.randn(B, T, n, n, device="cuda")).requires_grad_()
    post = torch.ones(B, T, n, device="cuda", requires_grad=True)
    weight = torch.ones(D, device="cuda", requires_grad=True)
    dout = torch.randn_like(x)
    copy_ms = cuda_ms(lambda: x.detach().clone(), 20)
    bw = 2 * x.numel() * 4 / copy_ms / 1e9  # TB/s (bytes / ms / 1e9)
    stream, out_bytes = x.numel() * 4, y.numel() * 2
    floor_ms = args.sublayers * ((2 * stream + out_bytes) + (3 * stream + 2 * out_bytes)) / bw / 1e9
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(),
           "copies": list(x.shape), "output": [B, T, D], "sublayers": args.sublayers,
           "copy_TBps": round(bw, 3), "floor_ms_per_step": round(floor_ms, 2)}
    rows = []
    for norm in (True, False):
        for name, form in FORMS.items():
            fn = torch.compile(form)
            w = weight if norm else None

            def step(fn=fn, w=w):
                out = fn(x, y, res, post, w, 1e-6)
                torch.autograd.backward(out, dout)

            ms = cuda_ms(step, args.reps * args.sublayers) * args.sublayers
            rows.append({"norm": "post" if norm else "pre", "form": name, "ms_per_step": round(ms, 2),
                         "vs_floor": round(ms / floor_ms, 2)})
    save_rows(args.out, "The wide stream's combine: compiled ops vs the Triton op (forward + backward, 48 sublayers)",
              env, ["norm", "form", "ms a step", "vs floor"],
              lambda r: [r["norm"], r["form"], str(r["ms_per_step"]), f"{r['vs_floor']:.2f}x"], rows)


if __name__ == "__main__":
    main()
