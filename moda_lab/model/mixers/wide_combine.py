"""The wide stream's combine as one op: Hyper-Connections' and mHC's new copies from the old ones, the sublayer's
output and the connection weights, with the placement's norm of every copy where it normalises the combined
stream (post-norm, DeepNorm). Where the backend runs fused kernels it is the Triton op below
(moda_kernels/widecombine: one read of the copies each way); elsewhere the broadcast multiply-adds of
hyper_connections.py, which torch.compile fuses (two kernels of ~1.1 ms a sublayer under post-norm on an H100,
issue 30's profile of 2026-12-07).
"""

from __future__ import annotations

import torch

from moda_kernels.widecombine import fits, wide_combine_backward, wide_combine_forward


@torch.library.custom_op("moda_lab::wide_combine", mutates_args=())
def wide_combine(x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor,
                 weight: torch.Tensor | None, gain: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new copies [.., n, D] in x's dtype, the copies' rstd [.., n] fp32 or empty without a norm) from the copies
    x [.., n, D], the output y [.., D] and per-token weights res [.., n, n], post [.., n]; ``weight``: the
    norm's, or None for no norm."""
    return wide_combine_forward(x, y, res, post, weight, gain, eps)


@wide_combine.register_fake
def _wide_combine_fake(x, y, res, post, weight, gain, eps):
    rows = x.shape[:-1] if weight is not None else (0, x.shape[-2])
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("moda_lab::wide_combine_bwd", mutates_args=())
def wide_combine_bwd(dout: torch.Tensor, x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor,
                     weight: torch.Tensor | None, rstd: torch.Tensor, gain: float,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d x, d y, d res, d post, d weight) of ``wide_combine`` by its Triton kernel; d weight is empty [0]
    without a norm (an op returns no None)."""
    *grads, dweight = wide_combine_backward(dout, x, y, res, post, weight, rstd, gain)
    return (*grads, x.new_empty(0) if dweight is None else dweight)


@wide_combine_bwd.register_fake
def _wide_combine_bwd_fake(dout, x, y, res, post, weight, rstd, gain):
    dweight = x.new_empty(0) if weight is None else torch.empty_like(weight)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(y, memory_format=torch.contiguous_format),
            torch.empty_like(res, memory_format=torch.contiguous_format),
            torch.empty_like(post, memory_format=torch.contiguous_format), dweight)


def _setup(ctx, inputs, output):
    x, y, res, post, weight, gain, _ = inputs
    ctx.gain = gain
    ctx.save_for_backward(x, y, res, post, weight, output[1])


def _backward(ctx, dout, _drstd):
    x, y, res, post, weight, rstd = ctx.saved_tensors
    *grads, dweight = wide_combine_bwd(dout.contiguous(), x, y, res, post, weight, rstd, ctx.gain)
    return (*grads, None if weight is None else dweight, None, None)


wide_combine.register_autograd(_backward, setup_context=_setup)


def combine_copies(x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor, norm, gain: float,
                   ) -> torch.Tensor:
    """New copies [B, T, n, D] = norm(gain * res x + post y) by the Triton op; res [n, n] or [B, T, n, n], post
    [n] or [B, T, n] (static weights are expanded per token); ``norm``: the placement's RMSNorm of the combined
    stream, or None."""
    n, D = x.shape[-2:]
    lead = x.shape[:-2]
    res = res.float().expand(*lead, n, n).contiguous()
    post = post.float().expand(*lead, n).contiguous()
    weight = None if norm is None else norm.weight
    eps = 0.0 if norm is None else norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps  # rms_norm's default
    return wide_combine(x, y, res, post, weight, gain, eps)[0]


__all__ = ["combine_copies", "fits", "wide_combine", "wide_combine_bwd"]
