"""On CPU: what moda-lab's residual does per training step beyond the minimal GPT (minimal_gpt.py, issue 29).

    python experiments/bench/residual_vs_minimal.py [--norm post] [--inductor] [--host-step]

Both models at one tiny shape, bf16 autocast, compiled whole (fullgraph). The residual runs its GPU attention
path: the triton backend's one custom op (moda_lab::depth_attn, depth.py) with the hybrid schedule, the CPU
flash op standing in for cuDNN (MODA_SEQ_IMPL=cpu; TRITON_INTERPRET=1 lets the kernel's checks take CPU
tensors). Prints

1. the aten ops of the forward and backward graphs AOTAutograd hands the compiler, where the counts differ, and
   the tensors each forward saves for the backward;
2. with --inductor, the fused kernels and extern calls Inductor generates for each graph (about 30 s);
3. the host time of one attention call, forward and backward, through the residual's custom op and through the
   aten op alone, at a shape where the arithmetic is negligible: the Python that runs per layer on top of the
   kernel (best of 5 x 2000 calls; the machine is shared, so expect a few microseconds of noise);
4. with --host-step, the compiled forward + backward of 24 layers at T=8 (the host's work, the arithmetic
   negligible) for the residual, the residual on the sdpa backend (no custom op) and the minimal GPT, timed in
   interleaved blocks so that the shared machine's load hits all three alike (about 3 minutes of compiling).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MODA_SEQ_IMPL", "cpu")

import torch  # noqa: E402
from functorch.compile import make_boxed_func  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._inductor.utils import run_and_get_code  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.bench.minimal_gpt import MinimalConfig, MinimalGPT  # noqa: E402
from moda_lab.model import GPT, ModelConfig  # noqa: E402

aten = torch.ops.aten


def models(norm: str, n_layers: int = 2, T: int = 64, B: int = 2, sdpa_residual: bool = False):
    """({name: model}, x, y) at width 192, 6 query / 2 KV heads; the residual on the triton backend (and, with
    sdpa_residual, once more on the sdpa backend)."""
    cfg = ModelConfig(vocab_size=128, n_layers=n_layers, d_model=192, n_heads=6, n_kv_heads=2, ffn_hidden=256,
                      max_seq_len=T, norm=norm, attn_backend="triton")
    torch.manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1))
    ms = {"residual": GPT(cfg)}
    if sdpa_residual:
        ms["residual, sdpa backend"] = GPT(dataclasses.replace(cfg, attn_backend="sdpa"))
    ms["minimal"] = MinimalGPT(MinimalConfig.like(cfg))
    return ms, data[:, :-1], data[:, 1:]


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, y)
    loss.backward()


def aot_graphs(model, x, y) -> dict[str, torch.fx.GraphModule]:
    """The forward and backward graphs of one compiled step, as AOTAutograd hands them to a compiler."""
    graphs = {}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm
            return make_boxed_func(gm.forward)

        return compiler

    torch._dynamo.reset()
    model.compile(backend=aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")), fullgraph=True)
    train_step(model, x, y)
    return graphs


def op_counts(gm: torch.fx.GraphModule) -> collections.Counter:
    return collections.Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


def saved_for_backward(gm: torch.fx.GraphModule) -> int:
    """Outputs of the forward graph beyond the loss: what it saves for the backward."""
    return len(gm.graph.find_nodes(op="output")[0].args[0]) - 1


def report_graphs(norm: str) -> None:
    ms, x, y = models(norm)
    graphs = {name: aot_graphs(m, x, y) for name, m in ms.items()}
    for kind in ("forward", "backward"):
        counts = {name: op_counts(g[kind]) for name, g in graphs.items()}
        r, m = counts["residual"], counts["minimal"]
        print(f"{kind} graph: residual {sum(r.values())} aten ops, minimal {sum(m.values())}; where they differ:")
        for op in sorted(set(r) | set(m)):
            if r[op] != m[op]:
                print(f"  {op:64s} residual {r[op]:3d}  minimal {m[op]:3d}")
    saved = {name: saved_for_backward(g["forward"]) for name, g in graphs.items()}
    print(f"tensors saved for the backward: residual {saved['residual']}, minimal {saved['minimal']}\n")


def report_inductor(norm: str) -> None:
    ms, x, y = models(norm)
    for name, model in ms.items():
        torch._dynamo.reset()
        model.compile(fullgraph=True)
        _, codes = run_and_get_code(train_step, model, x, y)
        for kind, code in zip(("forward", "backward"), codes):
            kernels = re.findall(r"^\s+(cpp_fused_\w+)\(", code, re.M)
            externs = collections.Counter(re.findall(r"(extern_kernels\.\w+|torch\.ops\.\w+\.\w+\.\w+)\(", code))
            print(f"inductor {name} {kind}: {len(kernels)} fused kernel calls; extern calls {dict(externs)}")
    print()


def best_us(fn, calls: int = 2000) -> float:
    for _ in range(200):
        fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return min(runs)


def report_host() -> None:
    torch.set_num_threads(1)
    B, T, Hq, Hk, d = 1, 8, 6, 2, 64
    q = torch.randn(B, T, Hq, d, dtype=torch.bfloat16)
    k, v = torch.randn(B, T, 2, Hk, d, dtype=torch.bfloat16).unbind(2)  # views of one projection, as the model's
    do = torch.randn_like(q)
    o, lse = torch.ops.moda_lab.depth_attn(q, k, v, None, None, 0, None, True, True)
    qt, kt, vt, dot = (t.transpose(1, 2) for t in (q, k, v, do))
    ot, lse_nat = aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, 0.0, True)
    calls = {
        "forward: residual (moda_lab::depth_attn)": lambda: torch.ops.moda_lab.depth_attn(
            q, k, v, None, None, 0, None, True, True),
        "forward: the aten op alone (the minimal GPT's call)": lambda: aten._scaled_dot_product_flash_attention_for_cpu(
            qt, kt, vt, 0.0, True),
        "backward: residual (moda_lab::depth_attn_bwd)": lambda: torch.ops.moda_lab.depth_attn_bwd(
            do, q, k, v, None, None, o, lse, 0, True, True),
        "backward: the aten op alone": lambda: aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dot, qt, kt, vt, ot, lse_nat, 0.0, True),
    }
    print(f"host time of one attention call, q [{B}, {T}, {Hq}, {d}] bf16, {Hk} KV heads (us):")
    for name, fn in calls.items():
        print(f"  {name:56s} {best_us(fn):7.1f}")


def report_host_step(norm: str, blocks: int = 15, steps: int = 20) -> None:
    torch.set_num_threads(1)
    ms, x, y = models(norm, n_layers=24, T=8, B=1, sdpa_residual=True)
    for model in ms.values():
        model.compile(fullgraph=True)
        for _ in range(steps):
            train_step(model, x, y)
            model.zero_grad(set_to_none=True)
    times = {name: [] for name in ms}
    for _ in range(blocks):
        for name, model in ms.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(model, x, y)
                model.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    print(f"\ncompiled forward + backward, 24 layers, T=8, B=1 (ms; best and median of {blocks} blocks):")
    for name, ts in times.items():
        print(f"  {name:24s} {min(ts):6.2f} {sorted(ts)[len(ts) // 2]:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--norm", default="post", choices=["pre", "post"])
    ap.add_argument("--inductor", action="store_true", help="also count Inductor's generated kernels (~30 s)")
    ap.add_argument("--host-step", action="store_true", help="also time whole compiled steps at 24 layers (~3 min)")
    args = ap.parse_args()
    report_graphs(args.norm)
    if args.inductor:
        report_inductor(args.norm)
    report_host()
    if args.host_step:
        report_host_step(args.norm)


if __name__ == "__main__":
    main()
