"""Triton kernels of the wide stream's combine (the math: naive.py), whole rows of every copy per program.

A program takes BLOCK_R tokens and holds each of their n <= MAX_COPIES copies as its own [BLOCK_R, BLOCK_D] tile
(x0..x3; BLOCK_D = next_pow2(D), the padding masked to zero), all in one register layout: the copy mix is
per-thread arithmetic and the norm's reductions over D need no second pass. (The first version held the copies
as one [BLOCK_R, n, BLOCK_D] tile; each copy's load then moved between thread layouts through shared memory, 8
conversions forward and 21 a row block backward in its sm_90 TTGIR, and on an H100 it ran slower than the
compiled ops: experiments/bench/results/wide_combine_h100.md.)

Forward, per copy j: c_j = post_j y + gain * sum_i res[:, j, i] x_i; with a norm, rstd_j = 1 / sqrt(mean c_j^2 +
eps) and out_j = c_j * rstd_j * weight. It writes out [R, n, D] (x's dtype) and rstd [R, n] (fp32).

Backward, per copy j: c_j is recomputed from the tiles (the forward saves only rstd); with chat = c_j * rstd_j
and g = dout_j * weight, RMSNorm's vector-Jacobian product is dc_j = rstd_j * (g - chat * mean(g * chat));
without a norm dc_j = dout_j. Then d post_j = <dc_j, y>, d res[:, j, i] = gain <dc_j, x_i>, and d y and every d x_i
accumulate (d y += post_j dc_j, d x_i += gain res[:, j, i] dc_j) in registers until the row block's end.
d weight = sum over tokens and copies of dout * chat is accumulated over a span of row blocks per program (grid:
spans) and the spans' partial sums [spans, D] are added by the caller.

res and post come per token ([R, n, n], [R, n]); static weights are expanded by the caller (a few MB), and
their gradients summed over the tokens by autograd. The arithmetic is fp32 whatever the inputs' dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import MAX_COPIES, MAX_WIDTH, fits

# Elements of one copy's [BLOCK_R, BLOCK_D] tile (BLOCK_R = TILE // BLOCK_D, at least 1), forward and backward,
# and a tile's elements per warp (num_warps = tile / WARPS_PER, from 4 to 16). The backward holds ~14 tiles
# (x0..x3, dx0..dx3, y, d y, dc, chat, ...): at the forward's 2,048 and 8 warps it took 242 registers a thread
# (ptxas -v for sm_90, D = 384), one block an SM; at half the tile and the same warps, fewer.
TILE, TILE_BWD = 2048, 1024
WARPS_PER, WARPS_PER_BWD = 256, 128
SPAN_PROGRAMS = 4096  # programs the backward aims for on a GPU (d weight's partial sums: [spans, D] fp32)


@triton.jit
def _copy(X, r64, rd, d, D, N: tl.constexpr, k: tl.constexpr):
    """Copy k of the rows as a [BLOCK_R, BLOCK_D] fp32 tile; zeros when k >= N."""
    if k < N:
        return tl.load(X + (r64[:, None] * N + k) * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
    else:
        return rd.to(tl.float32) * 0.0


@triton.jit
def _weight(P, offs, r_ok, N: tl.constexpr, k: tl.constexpr):
    """A per-token weight [BLOCK_R] at offs, fp32; zeros when k >= N."""
    return tl.load(P + offs, mask=r_ok & (k < N), other=0.0).to(tl.float32)


@triton.jit
def _mixed(x0, x1, x2, x3, y, RES, POST, r64, r_ok, gain, N: tl.constexpr, j: tl.constexpr):
    """c_j = post[:, j] y + gain * sum_i res[:, j, i] x_i: [BLOCK_R, BLOCK_D] fp32."""
    base = (r64 * N + j) * N
    c = _weight(POST, r64 * N + j, r_ok, N, 0)[:, None] * y
    c += (gain * _weight(RES, base, r_ok, N, 0))[:, None] * x0
    c += (gain * _weight(RES, base + 1, r_ok, N, 1))[:, None] * x1
    c += (gain * _weight(RES, base + 2, r_ok, N, 2))[:, None] * x2
    c += (gain * _weight(RES, base + 3, r_ok, N, 3))[:, None] * x3
    return c


@triton.jit
def _wide_combine_fwd_kernel(X, Y, RES, POST, G, OUT, RSTD, R, D, gain, eps,
                             N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_NORM: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    r64 = r.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    rd = r_ok[:, None] & d_ok[None, :]
    y = tl.load(Y + r64[:, None] * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
    x0, x1 = _copy(X, r64, rd, d, D, N, 0), _copy(X, r64, rd, d, D, N, 1)
    x2, x3 = _copy(X, r64, rd, d, D, N, 2), _copy(X, r64, rd, d, D, N, 3)
    g = tl.load(G + d, mask=d_ok, other=0.0).to(tl.float32)  # unused without a norm (G is then x)
    for j in tl.static_range(N):
        c = _mixed(x0, x1, x2, x3, y, RES, POST, r64, r_ok, gain, N, j)
        if HAS_NORM:
            rstd = 1.0 / tl.sqrt(tl.sum(c * c, 1) / D + eps)
            c = c * rstd[:, None] * g[None, :]
            tl.store(RSTD + r64 * N + j, rstd, mask=r_ok)
        tl.store(OUT + (r64[:, None] * N + j) * D + d[None, :], c.to(OUT.dtype.element_ty), mask=rd)


@triton.jit
def _wide_combine_bwd_kernel(DOUT, X, Y, RES, POST, G, RSTD, DX, DY, DRES, DPOST, DGP, R, D, gain,
                             N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_NORM: tl.constexpr):
    s = tl.program_id(0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    g = tl.load(G + d, mask=d_ok, other=0.0).to(tl.float32)  # unused without a norm (G is then x)
    dg = tl.zeros([BLOCK_D], dtype=tl.float32)
    per = tl.cdiv(tl.cdiv(R, BLOCK_R), tl.num_programs(0)) * BLOCK_R  # rows a program walks
    end = tl.minimum(s * per + per, R)
    for r0 in range(s * per, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < end
        r64 = r.to(tl.int64)
        rd = r_ok[:, None] & d_ok[None, :]
        y = tl.load(Y + r64[:, None] * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
        x0, x1 = _copy(X, r64, rd, d, D, N, 0), _copy(X, r64, rd, d, D, N, 1)
        x2, x3 = _copy(X, r64, rd, d, D, N, 2), _copy(X, r64, rd, d, D, N, 3)
        dy = tl.zeros(y.shape, dtype=tl.float32)
        dx0, dx1, dx2, dx3 = dy, dy, dy, dy
        for j in tl.static_range(N):
            dc = tl.load(DOUT + (r64[:, None] * N + j) * D + d[None, :], mask=rd, other=0.0).to(tl.float32)
            if HAS_NORM:
                rstd = tl.load(RSTD + r64 * N + j, mask=r_ok, other=0.0)
                chat = _mixed(x0, x1, x2, x3, y, RES, POST, r64, r_ok, gain, N, j) * rstd[:, None]
                dg += tl.sum(dc * chat, 0)
                gd = dc * g[None, :]
                dc = rstd[:, None] * (gd - chat * (tl.sum(gd * chat, 1) / D)[:, None])
            tl.store(DPOST + r64 * N + j, tl.sum(dc * y, 1), mask=r_ok)
            dy += _weight(POST, r64 * N + j, r_ok, N, 0)[:, None] * dc
            base = (r64 * N + j) * N
            tl.store(DRES + base, gain * tl.sum(dc * x0, 1), mask=r_ok)
            dx0 += (gain * _weight(RES, base, r_ok, N, 0))[:, None] * dc
            if N > 1:
                tl.store(DRES + base + 1, gain * tl.sum(dc * x1, 1), mask=r_ok)
                dx1 += (gain * _weight(RES, base + 1, r_ok, N, 1))[:, None] * dc
            if N > 2:
                tl.store(DRES + base + 2, gain * tl.sum(dc * x2, 1), mask=r_ok)
                dx2 += (gain * _weight(RES, base + 2, r_ok, N, 2))[:, None] * dc
            if N > 3:
                tl.store(DRES + base + 3, gain * tl.sum(dc * x3, 1), mask=r_ok)
                dx3 += (gain * _weight(RES, base + 3, r_ok, N, 3))[:, None] * dc
        tl.store(DY + r64[:, None] * D + d[None, :], dy.to(DY.dtype.element_ty), mask=rd)
        tl.store(DX + (r64[:, None] * N) * D + d[None, :], dx0.to(DX.dtype.element_ty), mask=rd)
        if N > 1:
            tl.store(DX + (r64[:, None] * N + 1) * D + d[None, :], dx1.to(DX.dtype.element_ty), mask=rd)
        if N > 2:
            tl.store(DX + (r64[:, None] * N + 2) * D + d[None, :], dx2.to(DX.dtype.element_ty), mask=rd)
        if N > 3:
            tl.store(DX + (r64[:, None] * N + 3) * D + d[None, :], dx3.to(DX.dtype.element_ty), mask=rd)
    if HAS_NORM:
        tl.store(DGP + s * D + d, dg, mask=d_ok)


def _tiles(D: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_R, num_warps) for copies of width D."""
    BLOCK_D = triton.next_power_of_2(D)
    block_r = max(1, (TILE_BWD if backward else TILE) // BLOCK_D)
    if backward:  # 16 warps cap a thread at 128 registers: the backward spilled at D = 1536 (ptxas -v)
        return BLOCK_D, block_r, max(4, min(8, block_r * BLOCK_D // WARPS_PER_BWD))
    return BLOCK_D, block_r, max(4, min(16, block_r * BLOCK_D // WARPS_PER))


def _rows(x, y, res, post):
    """The token-major 2-D views the kernels index: x [R, n, D], y [R, D], res [R, n, n], post [R, n]."""
    n, D = x.shape[-2:]
    if not fits(n, D):
        raise ValueError(f"wide_combine: copies of {n} x {D} do not fit the kernels (at most {MAX_COPIES} copies "
                         f"of width {MAX_WIDTH})")
    return (x.reshape(-1, n, D).contiguous(), y.reshape(-1, D).contiguous(), res.reshape(-1, n, n).contiguous(),
            post.reshape(-1, n).contiguous())


def wide_combine_forward(x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor,
                         weight: torch.Tensor | None, gain: float, eps: float):
    """x [.., n, D], y [.., D], res [.., n, n], post [.., n] (the same leading shape), weight [D] or None ->
    (out [.., n, D] in x's dtype, rstd [.., n] fp32; empty without a norm)."""
    n, D = x.shape[-2:]
    x2, y2, res2, post2 = _rows(x, y, res, post)
    R = x2.shape[0]
    BLOCK_D, BLOCK_R, warps = _tiles(D)
    out = torch.empty_like(x2)
    has_norm = weight is not None
    rstd = torch.empty(R if has_norm else 0, n, device=x.device, dtype=torch.float32)
    if R:
        _wide_combine_fwd_kernel[(triton.cdiv(R, BLOCK_R),)](
            x2, y2, res2, post2, weight.contiguous() if has_norm else x2, out, rstd, R, D, float(gain), float(eps),
            N=n, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, HAS_NORM=has_norm, num_warps=warps)
    return out.view(x.shape), rstd.view(*x.shape[:-2], n) if has_norm else rstd


def wide_combine_backward(dout: torch.Tensor, x: torch.Tensor, y: torch.Tensor, res: torch.Tensor,
                          post: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor, gain: float):
    """(d x, d y, d res, d post, d weight or None), each in its input's dtype, given dout = d loss / d out and the
    forward's rstd."""
    n, D = x.shape[-2:]
    x2, y2, res2, post2 = _rows(x, y, res, post)
    R = x2.shape[0]
    BLOCK_D, BLOCK_R, warps = _tiles(D, backward=True)
    has_norm = weight is not None
    spans = min(triton.cdiv(R, BLOCK_R), SPAN_PROGRAMS if x.is_cuda else 3)
    dx, dy = torch.empty_like(x2), torch.empty_like(y2)
    dres = torch.empty(res2.shape, device=x.device, dtype=torch.float32)
    dpost = torch.empty(post2.shape, device=x.device, dtype=torch.float32)
    dgp = torch.zeros(spans if has_norm else 0, D, device=x.device, dtype=torch.float32)
    if R:
        _wide_combine_bwd_kernel[(spans,)](
            dout.reshape(R, n, D).contiguous(), x2, y2, res2, post2, weight.contiguous() if has_norm else x2,
            rstd.reshape(-1, n).contiguous() if has_norm else x2, dx, dy, dres, dpost, dgp, R, D,
            float(gain), N=n, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, HAS_NORM=has_norm, num_warps=warps)
    dweight = dgp.sum(0).to(weight.dtype) if has_norm else None
    return (dx.view(x.shape), dy.view(y.shape), dres.to(res.dtype).view(res.shape),
            dpost.to(post.dtype).view(post.shape), dweight)
