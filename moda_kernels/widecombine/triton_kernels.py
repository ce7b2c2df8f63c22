"""Triton kernels of the wide stream's combine (the math: naive.py), whole rows of every copy per program.

A program takes BLOCK_R tokens and holds their n copies as one [BLOCK_R, NP, BLOCK_D] tile (NP = next_pow2(n),
BLOCK_D = next_pow2(D), the padding masked to zero), so the norm's reductions over D need no second pass:

Forward: c = post y + gain * sum_i res[:, :, i] x_i, one copy x_i at a time; with a norm, rstd = 1 / sqrt(mean
c^2 + eps) per copy and out = c * rstd * weight. It writes out [R, n, D] (x's dtype) and rstd [R, n] (fp32).

Backward: c is recomputed from x and y (the forward saves only rstd), then with chat = c * rstd and
g = dout * weight, RMSNorm's vector-Jacobian product is dc = rstd * (g - chat * mean(g * chat)); without a norm
dc = dout. From dc: d post = <dc_j, y>, d y = sum_j post_j dc_j, d res[:, j, i] = gain <dc_j, x_i> and
d x_i = gain sum_j res[:, j, i] dc_j. d weight = sum over tokens and copies of dout * chat is accumulated over a
span of row blocks per program (grid: spans) and the spans' partial sums [spans, D] are added by the caller.

res and post come per token ([R, n, n], [R, n]); static weights are expanded by the caller (a few MB), and
their gradients summed over the tokens by autograd. The arithmetic is fp32 whatever the inputs' dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE = 4096  # elements of a [BLOCK_R, NP, BLOCK_D] tile: BLOCK_R = TILE // (NP * BLOCK_D), at least 1
SPAN_PROGRAMS = 1024  # programs the backward aims for on a GPU (d weight's partial sums: [spans, D] fp32)


@triton.jit
def _mix(X, Y, RES, POST, r, r_ok, j, j_ok, d, d_ok, D, gain,
         N: tl.constexpr):
    """c [BLOCK_R, NP, BLOCK_D] = post y + gain * sum_i res[:, :, i] x_i, and y [BLOCK_R, BLOCK_D], fp32."""
    r64 = r.to(tl.int64)
    rd = r_ok[:, None] & d_ok[None, :]
    rj = r_ok[:, None] & j_ok[None, :]
    y = tl.load(Y + r64[:, None] * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
    post = tl.load(POST + r64[:, None] * N + j[None, :], mask=rj, other=0.0).to(tl.float32)
    c = post[:, :, None] * y[:, None, :]
    for i in tl.static_range(N):
        x_i = tl.load(X + (r64[:, None] * N + i) * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
        res_i = tl.load(RES + (r64[:, None] * N + j[None, :]) * N + i, mask=rj, other=0.0).to(tl.float32)
        c += (gain * res_i)[:, :, None] * x_i[:, None, :]
    return c, y


@triton.jit
def _wide_combine_fwd_kernel(X, Y, RES, POST, G, OUT, RSTD, R, D, gain, eps,
                             N: tl.constexpr, NP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_NORM: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    j = tl.arange(0, NP)
    j_ok = j < N
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    c, _ = _mix(X, Y, RES, POST, r, r_ok, j, j_ok, d, d_ok, D, gain, N)
    r64 = r.to(tl.int64)
    if HAS_NORM:
        rstd = 1.0 / tl.sqrt(tl.sum(c * c, 2) / D + eps)  # [BLOCK_R, NP]
        g = tl.load(G + d, mask=d_ok, other=0.0).to(tl.float32)
        c = c * rstd[:, :, None] * g[None, None, :]
        tl.store(RSTD + r64[:, None] * N + j[None, :], rstd, mask=r_ok[:, None] & j_ok[None, :])
    offs = (r64[:, None, None] * N + j[None, :, None]) * D + d[None, None, :]
    mask = r_ok[:, None, None] & j_ok[None, :, None] & d_ok[None, None, :]
    tl.store(OUT + offs, c.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _wide_combine_bwd_kernel(DOUT, X, Y, RES, POST, G, RSTD, DX, DY, DRES, DPOST, DGP, R, D, span, gain,
                             N: tl.constexpr, NP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_NORM: tl.constexpr):
    s = tl.program_id(0)
    j = tl.arange(0, NP)
    j_ok = j < N
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    g = tl.load(G + d, mask=d_ok, other=0.0).to(tl.float32)  # unused without a norm (G is then x)
    dg = tl.zeros([BLOCK_D], dtype=tl.float32)
    end = tl.minimum(s * span + span, R)
    for r0 in range(s * span, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < end
        r64 = r.to(tl.int64)
        rj = r_ok[:, None] & j_ok[None, :]
        rd = r_ok[:, None] & d_ok[None, :]
        offs = (r64[:, None, None] * N + j[None, :, None]) * D + d[None, None, :]
        mask = r_ok[:, None, None] & j_ok[None, :, None] & d_ok[None, None, :]
        dout = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_NORM:
            c, y = _mix(X, Y, RES, POST, r, r_ok, j, j_ok, d, d_ok, D, gain, N)
            rstd = tl.load(RSTD + r64[:, None] * N + j[None, :], mask=rj, other=0.0)
            chat = c * rstd[:, :, None]
            gd = dout * g[None, None, :]
            dc = rstd[:, :, None] * (gd - chat * (tl.sum(gd * chat, 2) / D)[:, :, None])
            dg += tl.sum(tl.sum(dout * chat, 1), 0)
        else:
            y = tl.load(Y + r64[:, None] * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
            dc = dout
        post = tl.load(POST + r64[:, None] * N + j[None, :], mask=rj, other=0.0).to(tl.float32)
        tl.store(DPOST + r64[:, None] * N + j[None, :], tl.sum(dc * y[:, None, :], 2), mask=rj)
        dy = tl.sum(post[:, :, None] * dc, 1)
        tl.store(DY + r64[:, None] * D + d[None, :], dy.to(DY.dtype.element_ty), mask=rd)
        for i in tl.static_range(N):
            x_i = tl.load(X + (r64[:, None] * N + i) * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
            res_i = tl.load(RES + (r64[:, None] * N + j[None, :]) * N + i, mask=rj, other=0.0).to(tl.float32)
            tl.store(DRES + (r64[:, None] * N + j[None, :]) * N + i, gain * tl.sum(dc * x_i[:, None, :], 2),
                     mask=rj)
            dx_i = gain * tl.sum(res_i[:, :, None] * dc, 1)
            tl.store(DX + (r64[:, None] * N + i) * D + d[None, :], dx_i.to(DX.dtype.element_ty), mask=rd)
    if HAS_NORM:
        tl.store(DGP + s * D + d, dg, mask=d_ok)


def _tiles(n: int, D: int, backward: bool = False) -> tuple[int, int, int, int]:
    """(NP, BLOCK_D, BLOCK_R, num_warps) for copies of n x D. The backward holds about twice the forward's tiles
    (d out, chat, dc besides c): twice the warps for the same tile keeps its registers under 128 a thread
    (ptxas -v for sm_90 at n = 4, D = 384: 228 at 4 warps)."""
    NP, BLOCK_D = triton.next_power_of_2(n), triton.next_power_of_2(D)
    block_r = max(1, TILE // (NP * BLOCK_D))
    warps = max(4, min(16, block_r * NP * BLOCK_D // (256 if backward else 1024)))
    return NP, BLOCK_D, block_r, warps


def _rows(x, y, res, post):
    """The token-major 2-D views the kernels index: x [R, n, D], y [R, D], res [R, n, n], post [R, n]."""
    n, D = x.shape[-2:]
    return (x.reshape(-1, n, D).contiguous(), y.reshape(-1, D).contiguous(), res.reshape(-1, n, n).contiguous(),
            post.reshape(-1, n).contiguous())


def wide_combine_forward(x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor,
                         weight: torch.Tensor | None, gain: float, eps: float):
    """x [.., n, D], y [.., D], res [.., n, n], post [.., n] (the same leading shape), weight [D] or None ->
    (out [.., n, D] in x's dtype, rstd [.., n] fp32; empty without a norm)."""
    n, D = x.shape[-2:]
    x2, y2, res2, post2 = _rows(x, y, res, post)
    R = x2.shape[0]
    NP, BLOCK_D, BLOCK_R, warps = _tiles(n, D)
    out = torch.empty_like(x2)
    has_norm = weight is not None
    rstd = torch.empty(R if has_norm else 0, n, device=x.device, dtype=torch.float32)
    if R:
        _wide_combine_fwd_kernel[(triton.cdiv(R, BLOCK_R),)](
            x2, y2, res2, post2, weight.contiguous() if has_norm else x2, out, rstd, R, D, float(gain), float(eps),
            N=n, NP=NP, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, HAS_NORM=has_norm, num_warps=warps)
    return out.view(x.shape), rstd.view(*x.shape[:-2], n) if has_norm else rstd


def wide_combine_backward(dout: torch.Tensor, x: torch.Tensor, y: torch.Tensor, res: torch.Tensor,
                          post: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor, gain: float):
    """(d x, d y, d res, d post, d weight or None), each in its input's dtype, given dout = d loss / d out and the
    forward's rstd."""
    n, D = x.shape[-2:]
    x2, y2, res2, post2 = _rows(x, y, res, post)
    R = x2.shape[0]
    NP, BLOCK_D, BLOCK_R, warps = _tiles(n, D, backward=True)
    has_norm = weight is not None
    blocks = triton.cdiv(R, BLOCK_R)
    spans = max(1, min(blocks, SPAN_PROGRAMS if x.is_cuda else 3))
    span = triton.cdiv(blocks, spans) * BLOCK_R
    spans = triton.cdiv(R, span) if R else 0
    dx, dy = torch.empty_like(x2), torch.empty_like(y2)
    dres = torch.empty(res2.shape, device=x.device, dtype=torch.float32)
    dpost = torch.empty(post2.shape, device=x.device, dtype=torch.float32)
    dgp = torch.zeros(spans if has_norm else 0, D, device=x.device, dtype=torch.float32)
    if R:
        _wide_combine_bwd_kernel[(spans,)](
            dout.reshape(R, n, D).contiguous(), x2, y2, res2, post2, weight.contiguous() if has_norm else x2,
            rstd.reshape(-1, n).contiguous() if has_norm else x2, dx, dy, dres, dpost, dgp, R, D, span,
            float(gain), N=n, NP=NP, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, HAS_NORM=has_norm, num_warps=warps)
    dweight = dgp.sum(0).to(weight.dtype) if has_norm else None
    return (dx.view(x.shape), dy.view(y.shape), dres.to(res.dtype).view(res.shape),
            dpost.to(post.dtype).view(post.shape), dweight)
