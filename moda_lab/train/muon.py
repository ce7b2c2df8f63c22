"""torch.optim.Muon's update with the Newton-Schulz iterations batched over the matrices of one shape.

torch.optim.Muon orthogonalises one matrix at a time: ~34 kernels a matrix (momentum, norm, 5 x 3 GEMMs, the
update), 4,056 a step for the 120 matrices of the Table 6 residual, 4,815 for MoDA + FFN KV's 143. The matrices of a
model come in a handful of shapes (four at the Table 6 shape), so ``GroupedMuon`` stacks each shape's updates and
runs the same iterations as batched GEMMs, and the momentum as foreach ops: ~20 launches a shape, plus the decay
and the update, two a matrix.

The algorithm is torch's, step for step (tests/cpu/test_muon.py checks it against torch.optim.Muon): nesterov
momentum, the quintic Newton-Schulz iteration in bf16 on the wide orientation, decoupled weight decay, the
shape-dependent lr adjustment. Only the GEMMs' batching differs, so results agree to bf16 rounding. The state
(``momentum_buffer`` per parameter) and the param groups are torch.optim.Muon's: checkpoints load either way.

What ``trainer.optimizer=muon`` builds (moda_lab/train/optim.py). experiments/bench/bench_muon.py times both in one
run (H100, 2026-12-07, experiments/bench/results/muon_step_h100.md): torch.optim.Muon 43.2 ms a step (4,056
kernels) for the Table 6 residual's 120 matrices and 71.3 ms (4,815) for MoDA + FFN KV's 143, host-bound;
GroupedMuon then 4.5 ms (175) and 3.9 ms (180), with the decay and update as foreach ops too. Those rounded the
decay factor to a bf16 parameter's dtype (the bf16 test caught it), so they run a tensor at a time now: two more
launches a matrix (~290 for MoDA + FFN KV), not timed yet.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch.optim.Muon's lr for a matrix of this shape: "original" (or None) sqrt(max(1, A/B)) (Keller Jordan),
    "match_rms_adamw" 0.2 sqrt(max(A, B)) (Moonlight: the update's RMS of AdamW's)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


def newton_schulz(x: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalisation of each matrix of x [N, A, B], in bf16 as torch's: each matrix
    scaled to Frobenius norm 1, iterated on its wide orientation (A <= B), returned as [N, A, B] bf16."""
    a, b, c = coefficients
    y = x.bfloat16()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        y = y.mT
    y = y / torch.linalg.vector_norm(y, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.mT
        y = torch.baddbmm(y, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    return y.mT if tall else y


class GroupedMuon(torch.optim.Muon):
    """torch.optim.Muon, stepped a shape at a time (see the module docstring); same arguments."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse or torch.is_complex(p) for p in params):
                raise RuntimeError("Muon supports neither sparse gradients nor complex parameters")
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            lr, momentum = float(group["lr"]), group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[tuple(p.shape)].append(i)
            for shape, idx in by_shape.items():
                ortho = newton_schulz(torch.stack([updates[i] for i in idx]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"])
                alpha = -adjusted_lr(lr, group["adjust_lr_fn"], shape)
                # Decay and update as torch does them, a tensor at a time: a foreach multiply by a Python scalar
                # rounds the scalar to a bf16 parameter's dtype (0.998 -> 0.996), doubling the decay there.
                for i, o in zip(idx, ortho.unbind(0)):
                    params[i].mul_(1 - lr * group["weight_decay"])
                    params[i].add_(o, alpha=alpha)
        return loss
