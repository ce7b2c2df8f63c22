"""Triton kernels of Sinkhorn-Knopp per token (the math: naive.py): one launch each way, the [n, n] matrices of
BLOCK_R tokens held in registers as a [BLOCK_R, NP, NP] tile (NP: n rounded up to a power of two, the padding
kept at zero).

Forward: exp(L - max L), then ``iters`` rounds of columns then rows summed to 1.
Backward: the rounds in reverse. A normalisation y = x / s, s the sums along one axis, has the vector-Jacobian
product dx = (dy - sum(dy * y)) / s along that axis, which needs the round's input; round p's input is recomputed
from M_0 by p rounds (O(iters^2) rounds of 4 x 4 arithmetic a token: no memory traffic, and nothing saved from
the forward but the logits). Finally dL = dM_0 * M_0 (the max's gradient is zero: every round is scale-free).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R = 32  # tokens a program


@triton.jit
def _tile(R, n, NP: tl.constexpr, BLOCK_R: tl.constexpr):
    """(offsets, mask) of this program's [BLOCK_R, NP, NP] tile of a [R, n, n] tensor."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    i = tl.arange(0, NP)
    offs = r.to(tl.int64)[:, None, None] * (n * n) + i[None, :, None] * n + i[None, None, :]
    ok = (r < R)[:, None, None] & (i < n)[None, :, None] & (i < n)[None, None, :]
    return offs, ok


@triton.jit
def _start(L, offs, ok):
    """M_0 = exp(L - max L) per token; zero where masked (a token past R too)."""
    lg = tl.load(L + offs, mask=ok, other=float("-inf"))
    mx = tl.max(tl.max(lg, 2), 1)
    mx = tl.where(mx > float("-inf"), mx, 0.0)
    return tl.where(ok, tl.exp(lg - mx[:, None, None]), 0.0)


@triton.jit
def _round(x):
    """One round: (a, column sums, b, row sums), a = x over its column sums, b = a over its row sums. A padded
    column or row sums to 0 and divides by 1, so the padding stays zero."""
    cs = tl.sum(x, 1)
    cs = tl.where(cs > 0, cs, 1.0)
    a = x / cs[:, None, :]
    rs = tl.sum(a, 2)
    rs = tl.where(rs > 0, rs, 1.0)
    return a, cs, a / rs[:, :, None], rs


@triton.jit
def _sinkhorn_fwd_kernel(L, M, R, n, iters, NP: tl.constexpr, BLOCK_R: tl.constexpr):
    offs, ok = _tile(R, n, NP, BLOCK_R)
    x = _start(L, offs, ok)
    for _ in range(0, iters):
        a, cs, x, rs = _round(x)
    tl.store(M + offs, x, mask=ok)


@triton.jit
def _sinkhorn_bwd_kernel(L, G, DL, R, n, iters, NP: tl.constexpr, BLOCK_R: tl.constexpr):
    offs, ok = _tile(R, n, NP, BLOCK_R)
    x0 = _start(L, offs, ok)
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    for q in range(0, iters):
        x = x0
        for _ in range(0, iters - 1 - q):  # round p = iters - 1 - q's input
            a, cs, x, rs = _round(x)
        a, cs, b, rs = _round(x)
        ga = (g - tl.sum(g * b, 2)[:, :, None]) / rs[:, :, None]  # through the rows' normalisation
        g = (ga - tl.sum(ga * a, 1)[:, None, :]) / cs[:, None, :]  # through the columns'
        g = tl.where(ok, g, 0.0)
    tl.store(DL + offs, g * x0, mask=ok)


def _launch(kernel, R: int, n: int, *args) -> None:
    kernel[(triton.cdiv(R, BLOCK_R),)](*args, NP=triton.next_power_of_2(n), BLOCK_R=BLOCK_R)


def sinkhorn_forward(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """[.., n, n] fp32 logits -> the [.., n, n] matrices (fp32)."""
    n = logits.shape[-1]
    lg = logits.reshape(-1, n, n).contiguous()
    out = torch.empty_like(lg)
    _launch(_sinkhorn_fwd_kernel, lg.shape[0], n, lg, out, lg.shape[0], n, iters)
    return out.view(logits.shape)


def sinkhorn_backward(g: torch.Tensor, logits: torch.Tensor, iters: int) -> torch.Tensor:
    """d loss / d logits (fp32), given g = d loss / d sinkhorn_forward(logits, iters)."""
    n = logits.shape[-1]
    lg = logits.reshape(-1, n, n).contiguous()
    dl = torch.empty_like(lg)
    _launch(_sinkhorn_bwd_kernel, lg.shape[0], n, lg, g.reshape(-1, n, n).contiguous(), dl, lg.shape[0], n, iters)
    return dl.view(logits.shape)
