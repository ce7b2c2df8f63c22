"""Dynamic Hyper-Connections' weights, two ways, compiled, forward + backward, in the same run (issue 30).

    python experiments/bench/bench_hc_weights.py --out experiments/bench/results/hc_weights_h100.md

The dynamic weights of one sublayer (hyper_connections.py, ``_HyperConnection.forward``) from the copies
H [B, T, n, D]: H_bar = RMSNorm(H), z = tanh(H_bar W) with W [D, n + 2]. ``matmul``: H_bar W as a matmul (the
model's form), which materialises H_bar for a GEMM of n + 2 output columns. ``reductions``: the n + 2 columns as
row reductions over D, which Inductor may fuse with the norm into one pass over H. ``kernel``: the norm and
H_bar W as the Triton op the model runs on a GPU (``norm_proj``, moda_kernels/normproj, one read of H each way,
z in fp32); ``kernel_tf32``: the same with its dots on tf32 inputs. Each form is compiled alone
(torch.compile, default mode) and timed over the 48 sublayers of a 24-layer step (CUDA events), with the
sublayer input read_copies(pre, H) in the same graph, as in the model. Prints a Markdown table; writes it and a
JSON copy.

The copies are fp32 and the weights' parameters fp32 under bf16 autocast by default, as in the model (the stream
starts from the fp32 embeddings and every combine adds into it in fp32); ``--stream-dtype bfloat16`` times a bf16
stream, the dtype of the first run (2026-12-07), for comparison.
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
from moda_lab.model.mixers.hyper_connections import normed_projection, read_copies  # noqa: E402


def weights_matmul(x, g, w, eps):
    return torch.tanh(normed_projection(x, g, w, eps, kernel=False))


def weights_reductions(x, g, w, eps):
    h = F.rms_norm(x, x.shape[-1:], g.to(x.dtype), eps)
    return torch.tanh(torch.stack([(h * w[:, c].to(h.dtype)).sum(-1) for c in range(w.shape[1])], dim=-1))


def weights_kernel(x, g, w, eps):
    return torch.tanh(normed_projection(x, g, w, eps, kernel=True))


def weights_kernel_tf32(x, g, w, eps):
    return torch.tanh(normed_projection(x, g, w, eps, kernel=True, tf32=True))


FORMS = {"matmul": weights_matmul, "reductions": weights_reductions, "kernel": weights_kernel,
         "kernel_tf32": weights_kernel_tf32}


def sublayer(form):
    def f(x, g, w, pre_static, eps: float = 1e-6):
        z = form(x, g, w, eps)
        pre = 0.01 * z[..., 1] + pre_static
        return read_copies(pre.to(x.dtype), x), z

    return f


def time_form(name: str, x, g, w, pre, sublayers: int, reps: int) -> dict:
    fn = torch.compile(sublayer(FORMS[name]))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def one():
        with torch.autocast("cuda", torch.bfloat16):
            h, z = fn(x, g, w, pre)
        (h.float().square().mean() + z.float().mean()).backward()

    for _ in range(3):
        one()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps * sublayers):
        one()
    end.record()
    torch.cuda.synchronize()
    return {"form": name, "ms_per_step": round(start.elapsed_time(end) / reps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--n", type=int, default=4, help="copies (mHC's layout: --n 1 --width 1536 --columns 24)")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--columns", type=int, default=None, help="projection columns (default n + 2, HC's)")
    ap.add_argument("--sublayers", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stream-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the copies' dtype (the model's stream is fp32)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/bench/results/hc_weights.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_hc_weights.py needs a CUDA GPU")
    T = 1024
    dtype = getattr(torch, args.stream_dtype)
    x = torch.randn(args.tokens // T, T, args.n, args.width, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.ones(args.width, device="cuda", requires_grad=True)
    w = (0.02 * torch.randn(args.width, args.columns or args.n + 2, device="cuda")).requires_grad_()
    pre = torch.full((args.n,), 1.0 / args.n, device="cuda")
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(),
           "shape": list(x.shape), "columns": w.shape[1], "stream_dtype": args.stream_dtype, "autocast": "bfloat16",
           "sublayers": args.sublayers}
    rows = [time_form(name, x, g, w, pre, args.sublayers, args.reps) for name in FORMS]
    base = rows[0]["ms_per_step"]
    for r in rows:
        r["vs_matmul"] = round(r["ms_per_step"] / base, 3)
    save_rows(args.out, "Dynamic HC weights: matmul, row reductions, Triton kernel (forward + backward, 48 sublayers)",
              env, ["form", "ms a step", "vs matmul"],
              lambda r: [r["form"], str(r["ms_per_step"]), f"{r['vs_matmul']:.3f}x"], rows)


if __name__ == "__main__":
    main()
