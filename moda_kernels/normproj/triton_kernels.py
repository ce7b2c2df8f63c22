"""Triton kernels of an RMSNorm followed by a skinny projection (the math: naive.py), one read of x each way.

Forward: a program takes BLOCK_R rows and walks K in BLOCK_K chunks, accumulating the rows' sums of squares and
(x * weight) @ proj; z = rstd * that (rstd is a per-row scalar, so it factors out of the product). It writes z
[R, M] and rstd [R], both fp32 and tiny next to x.

Backward: with u = dz @ proj^T and xhat = x * rstd, RMSNorm's vector-Jacobian product is

    dx = rstd * (u * weight - xhat * c),    c = sum_k u_k weight_k xhat_k / K = (dz . z) / K

so c comes from z and dz alone, and every [row block, K chunk] tile of dx is independent. A program takes one
K chunk (grid axis 1) over a contiguous span of rows (axis 0), writes its dx tiles and accumulates its chunk's
d weight (sum of u * xhat) and d proj ((xhat * weight)^T @ dz) over the span; the spans' partial sums are added
by the caller (a [spans, K, M] fp32 tensor, ~1 MB at the Table 6 shape).

The products run in fp32: (x * weight) @ proj and d proj as tl.dot (M padded to MP, a power of two >= 16, the
padding kept zero) in full precision ("ieee", the default) or with tf32 inputs (``tf32=True``: tensor cores on a
GPU; Triton emits the ieee dot as FMA loops, and at mHC's 24 columns the forward took 0.98 ms a call on an H100
where HC's 6 took 0.30 ms for the same bytes), and the backward's u = dz @ proj^T as M outer products (M is a
compile-time constant: 6 for HC, 24 for mHC at n = 4). With u as a third tl.dot too, the backward took 255
registers and spilled on sm_90 (ptxas -v: 312 bytes at M = 6, 1,172 at M = 24); as it is, neither kernel spills
at either M (tests/cpu/test_flow_hyper_connections.py compiles them). The FLOPs are negligible next to the reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R_FWD, BLOCK_K_FWD = 32, 128
BLOCK_R_BWD, BLOCK_K_BWD = 32, 64
WARPS = 4
SPAN_PROGRAMS = 512  # programs the backward aims for on a GPU (a few per SM)


@triton.jit
def _norm_proj_fwd_kernel(X, G, W, Z, RSTD, R, K, stride_wk, stride_wm, eps,
                          M: tl.constexpr, MP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                          PRECISION: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    m = tl.arange(0, MP)
    ss = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, MP], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(X + r.to(tl.int64)[:, None] * K + k[None, :], mask=r_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        g = tl.load(G + k, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(W + k[:, None] * stride_wk + m[None, :] * stride_wm, mask=k_ok[:, None] & (m < M)[None, :],
                    other=0.0).to(tl.float32)
        ss += tl.sum(x * x, 1)
        acc += tl.dot(x * g[None, :], w, input_precision=PRECISION)
    rstd = 1.0 / tl.sqrt(ss / K + eps)
    tl.store(Z + r[:, None] * M + m[None, :], acc * rstd[:, None], mask=r_ok[:, None] & (m < M)[None, :])
    tl.store(RSTD + r, rstd, mask=r_ok)


@triton.jit
def _norm_proj_bwd_kernel(DZ, X, G, W, Z, RSTD, DX, DGP, DWP, R, K, span, stride_wk, stride_wm,
                          M: tl.constexpr, MP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                          PRECISION: tl.constexpr):
    s = tl.program_id(0)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < K
    m = tl.arange(0, MP)
    g = tl.load(G + k, mask=k_ok, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK_K], dtype=tl.float32)
    dw = tl.zeros([BLOCK_K, MP], dtype=tl.float32)
    end = tl.minimum(s * span + span, R)
    for r0 in range(s * span, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < end
        rm = r_ok[:, None] & (m < M)[None, :]
        dz = tl.load(DZ + r[:, None] * M + m[None, :], mask=rm, other=0.0)  # [BLOCK_R, MP]
        c = tl.sum(dz * tl.load(Z + r[:, None] * M + m[None, :], mask=rm, other=0.0), 1) / K
        rstd = tl.load(RSTD + r, mask=r_ok, other=0.0)
        rk = r_ok[:, None] & k_ok[None, :]
        offs = r.to(tl.int64)[:, None] * K + k[None, :]
        xhat = tl.load(X + offs, mask=rk, other=0.0).to(tl.float32) * rstd[:, None]
        xg = xhat * g[None, :]
        u = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)  # dz @ proj^T, a column of dz at a time
        for j in tl.static_range(M):
            dz_j = tl.load(DZ + r * M + j, mask=r_ok, other=0.0)
            w_j = tl.load(W + k * stride_wk + j * stride_wm, mask=k_ok, other=0.0).to(tl.float32)
            u += dz_j[:, None] * w_j[None, :]
        dw += tl.dot(tl.trans(xg), dz, input_precision=PRECISION)  # (xhat * weight)^T @ dz
        dx = rstd[:, None] * (u * g[None, :] - xhat * c[:, None])
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=rk)
        dg += tl.sum(u * xhat, 0)
    tl.store(DGP + s * K + k, dg, mask=k_ok)
    tl.store(DWP + (s * K + k[:, None]) * MP + m[None, :], dw, mask=k_ok[:, None] & (m < MP)[None, :])


def _mp(M: int) -> int:
    return max(16, triton.next_power_of_2(M))  # tl.dot's smallest side


def _precision(tf32: bool) -> str:
    return "tf32" if tf32 else "ieee"


def norm_proj_forward(x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor, eps: float, tf32: bool = False):
    """x [.., K] (any float dtype), weight [K], proj [K, M] (any strides) -> (z [.., M] fp32, rstd [..] fp32)."""
    K, M = proj.shape
    x2 = x.reshape(-1, K).contiguous()
    R = x2.shape[0]
    z = torch.empty(R, M, device=x.device, dtype=torch.float32)
    rstd = torch.empty(R, device=x.device, dtype=torch.float32)
    _norm_proj_fwd_kernel[(triton.cdiv(R, BLOCK_R_FWD),)](
        x2, weight.contiguous(), proj, z, rstd, R, K, proj.stride(0), proj.stride(1), eps,
        M=M, MP=_mp(M), BLOCK_R=BLOCK_R_FWD, BLOCK_K=BLOCK_K_FWD, PRECISION=_precision(tf32), num_warps=WARPS)
    return z.view(*x.shape[:-1], M), rstd.view(x.shape[:-1])


def norm_proj_backward(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor,
                       z: torch.Tensor, rstd: torch.Tensor, tf32: bool = False):
    """(d x in x's dtype, d weight and d proj in theirs), given dz = d loss / d z and the forward's z and rstd."""
    K, M = proj.shape
    x2 = x.reshape(-1, K).contiguous()
    R = x2.shape[0]
    if R == 0:  # no rows: nothing to launch
        return torch.zeros_like(x), torch.zeros_like(weight), torch.zeros_like(proj, memory_format=torch.contiguous_format)
    chunks = triton.cdiv(K, BLOCK_K_BWD)
    blocks = triton.cdiv(R, BLOCK_R_BWD)
    spans = max(1, min(blocks, SPAN_PROGRAMS // chunks)) if x.is_cuda else min(blocks, 3)
    span = triton.cdiv(blocks, spans) * BLOCK_R_BWD
    spans = triton.cdiv(R, span)
    MP = _mp(M)
    dx = torch.empty_like(x2)
    dgp = torch.empty(spans, K, device=x.device, dtype=torch.float32)
    dwp = torch.empty(spans, K, MP, device=x.device, dtype=torch.float32)
    _norm_proj_bwd_kernel[(spans, chunks)](
        dz.reshape(R, M).float().contiguous(), x2, weight.contiguous(), proj, z.reshape(R, M).contiguous(),
        rstd.reshape(R).contiguous(), dx, dgp, dwp, R, K, span, proj.stride(0), proj.stride(1),
        M=M, MP=MP, BLOCK_R=BLOCK_R_BWD, BLOCK_K=BLOCK_K_BWD, PRECISION=_precision(tf32), num_warps=WARPS)
    dweight = dgp.sum(0).to(weight.dtype)
    dproj = dwp.sum(0)[:, :M].to(proj.dtype).contiguous()
    return dx.view(x.shape), dweight, dproj
