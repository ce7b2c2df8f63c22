"""Autograd and torch.compile wiring of the MoDA Triton kernels.

Two ``torch.library`` custom ops, ``moda_lab::moda_attn_fwd`` and ``moda_lab::moda_attn_bwd``, each with
a fake (meta) implementation, joined by ``register_autograd``: torch.compile traces them as opaque
nodes instead of graph-breaking, and eager autograd works the same way. Absent operands are passed
as None; the backward op returns an empty tensor in their place (custom ops cannot return None),
which the autograd formula maps back to None.
"""

from __future__ import annotations

import torch

from ..dispatch import plan_of
from .hybrid import hybrid_backward, hybrid_forward
from .triton_bwd import moda_bwd
from .triton_fwd import moda_fwd


def _kv_heads(k: torch.Tensor | None, k_depth: torch.Tensor | None) -> int:
    return k.shape[2] if k is not None else k_depth.shape[3]


def attn_forward(q, k, v, k_depth, v_depth, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, LSE) of validated inputs, run as the call's plan says (moda_kernels/dispatch.py): the hybrid schedule
    where an aten op does the sequence part, else the fused kernel with the plan's schedule."""
    plan = plan_of(q, k, k_depth)
    if plan.seq_impl != "fused":
        return hybrid_forward(plan.seq_impl, q, k, v, k_depth, v_depth, causal, scale)
    return moda_fwd(q, k, v, k_depth, v_depth, causal, scale, split=plan.split)


def attn_backward(do, q, k, v, k_depth, v_depth, o, lse, causal: bool, scale: float, dkd_acc=None, dvd_acc=None):
    """(dq, dk, dv, dk_depth, dv_depth) of validated inputs under the call's plan (the same as its forward's: a
    pure function of the same shapes, dtype and device); with dkd_acc/dvd_acc the depth gradients are added into
    those tensors in place and returned as None. Either schedule's backward is exact for any (o, lse)."""
    plan = plan_of(q, k, k_depth)
    if plan.seq_impl != "fused":
        return hybrid_backward(plan.seq_impl, do, q, k, v, k_depth, v_depth, o, lse, causal, scale, dkd_acc,
                               dvd_acc)
    return moda_bwd(do, q, k, v, k_depth, v_depth, o, lse, causal, scale, split=plan.split,
                    dkd_acc=dkd_acc, dvd_acc=dvd_acc)


@torch.library.custom_op("moda_lab::moda_attn_fwd", mutates_args=())
def moda_attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None,
    v_depth: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """O [B, T, Hq, d] and the per-row log2-sum-exp [B * Hk, T * G] (fp32) of validated inputs."""
    return attn_forward(q, k, v, k_depth, v_depth, causal, scale)


@moda_attn_fwd.register_fake
def _moda_attn_fwd_fake(q, k, v, k_depth, v_depth, causal, scale):
    B, T, Hq, d = q.shape
    Hk = _kv_heads(k, k_depth)
    return q.new_empty((B, T, Hq, d)), q.new_empty((B * Hk, T * (Hq // Hk)), dtype=torch.float32)


@torch.library.custom_op("moda_lab::moda_attn_bwd", mutates_args=())
def moda_attn_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None,
    v_depth: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dk_depth, dv_depth); an absent operand's gradient is an empty tensor."""
    grads = attn_backward(do, q, k, v, k_depth, v_depth, o, lse, causal, scale)
    return tuple(g if g is not None else q.new_empty(0) for g in grads)


@moda_attn_bwd.register_fake
def _moda_attn_bwd_fake(do, q, k, v, k_depth, v_depth, o, lse, causal, scale):
    def like(t):
        return q.new_empty(t.shape) if t is not None else q.new_empty(0)

    return like(q), like(k), like(v), like(k_depth), like(v_depth)


def _setup_context(ctx, inputs, output):
    q, k, v, k_depth, v_depth, causal, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, k_depth, v_depth, o, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.present = (k is not None, k_depth is not None)


def _backward(ctx, do, dlse):
    q, k, v, k_depth, v_depth, o, lse = ctx.saved_tensors
    dq, dk, dv, dkd, dvd = moda_attn_bwd(do, q, k, v, k_depth, v_depth, o, lse, ctx.causal, ctx.scale)
    has_seq, has_depth = ctx.present
    if not has_seq:
        dk = dv = None
    if not has_depth:
        dkd = dvd = None
    return dq, dk, dv, dkd, dvd, None, None


moda_attn_fwd.register_autograd(_backward, setup_context=_setup_context)
