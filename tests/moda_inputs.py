"""Random MoDA attention inputs for the kernel tests (CPU interpreter and hybrid schedule)."""

from __future__ import annotations

import torch


def moda_inputs(B, T, Hq, Hk, d, L, mode, seed, depth_prefix_of=None, split_depth=True):
    """Random fp32 inputs; depth tensors optionally prefix views of a [B, T, Lmax, Hk, d] buffer."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hq, d, generator=gen)
    k = v = kd = vd = None
    if mode in ("seq", "moda"):
        k = torch.randn(B, T, Hk, d, generator=gen)
        v = torch.randn(B, T, Hk, d, generator=gen)
    if mode in ("depth", "moda"):
        lmax = depth_prefix_of or L
        kbuf = torch.randn(B, T, lmax, Hk, d, generator=gen)
        vbuf = torch.randn(B, T, lmax, Hk, d, generator=gen) if split_depth else kbuf.flip(2).contiguous()
        kd, vd = kbuf[:, :, :L], vbuf[:, :, :L]
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, kd, vd)]
