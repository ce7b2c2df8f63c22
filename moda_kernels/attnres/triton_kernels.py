"""Triton kernels of one Attention Residuals read (the math: naive.py): two passes over the sources per direction.

A program owns BLOCK_T tokens and walks the D features in BLOCK_D chunks. Forward: pass 1 takes, per source, the
mean square and u . v_j in one read, keeping the softmax's running max and sum (online softmax) and the logits in
a [tokens, m] scratch; pass 2 sums alpha_j v_j. Backward: pass 1 recomputes the logits with da_j = G . v_j in the
same read; pass 2 walks each feature chunk over the sources, adds alpha_j G + c_j u + e_j v_j into the stream's
gradient buffer in place (read-add-write; the program is the only writer of its tile) and writes its partial
du = sum_t c_j v_j per chunk, which the launcher reduces over programs (no atomics: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 16


@triton.jit
def _source(H, LAST, tok, j, n, sht, shj, D):
    """Row pointers [BLOCK_T] of source j: slot j of the stream prefix, or (j == n) the partial sum."""
    if j < n:
        base = H + tok * sht + j * shj
    else:
        base = LAST + tok * D
    return base


@triton.jit
def _fwd_kernel(H, LAST, U, OUT, LOGIT, sht, shj, n_tok, n, m, D, eps,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok_t = tok < n_tok
    tok = tok.to(tl.int64)
    mx = tl.full([BLOCK_T], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_T], tl.float32)
    for j in range(0, m):
        base = _source(H, LAST, tok, j, n, sht, shj, D)
        ss = tl.zeros([BLOCK_T], tl.float32)
        dot = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dim = d0 + tl.arange(0, BLOCK_D)
            ok_d = dim < D
            v = tl.load(base[:, None] + dim[None, :], mask=ok_t[:, None] & ok_d[None, :], other=0.0).to(tl.float32)
            u = tl.load(U + dim, mask=ok_d, other=0.0)
            ss += tl.sum(v * v, 1)
            dot += tl.sum(v * u[None, :], 1)
        logit = dot * tl.rsqrt(ss / D + eps)
        tl.store(LOGIT + tok * m + j, logit, mask=ok_t)
        mx_new = tl.maximum(mx, logit)
        den = den * tl.exp(mx - mx_new) + tl.exp(logit - mx_new)
        mx = mx_new
    tl.debug_barrier()
    for d0 in range(0, D, BLOCK_D):
        dim = d0 + tl.arange(0, BLOCK_D)
        ok = ok_t[:, None] & (dim < D)[None, :]
        acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        for j in range(0, m):
            base = _source(H, LAST, tok, j, n, sht, shj, D)
            a = tl.exp(tl.load(LOGIT + tok * m + j, mask=ok_t, other=0.0) - mx) / den
            acc += a[:, None] * tl.load(base[:, None] + dim[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(OUT + tok[:, None] * D + dim[None, :], acc.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_kernel(H, LAST, U, G, DH, DLAST, DU, LOGIT, S, DA, sht, shj, sdt, sdj, n_tok, n, m, D, eps,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    tok = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    ok_t = tok < n_tok
    tok = tok.to(tl.int64)
    mx = tl.full([BLOCK_T], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_T], tl.float32)
    wda = tl.zeros([BLOCK_T], tl.float32)  # sum_j exp(logit_j - mx) da_j, rescaled with mx
    for j in range(0, m):
        base = _source(H, LAST, tok, j, n, sht, shj, D)
        ss = tl.zeros([BLOCK_T], tl.float32)
        dot = tl.zeros([BLOCK_T], tl.float32)
        da = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dim = d0 + tl.arange(0, BLOCK_D)
            ok_d = dim < D
            ok = ok_t[:, None] & ok_d[None, :]
            v = tl.load(base[:, None] + dim[None, :], mask=ok, other=0.0).to(tl.float32)
            u = tl.load(U + dim, mask=ok_d, other=0.0)
            g = tl.load(G + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
            ss += tl.sum(v * v, 1)
            dot += tl.sum(v * u[None, :], 1)
            da += tl.sum(v * g, 1)
        s = tl.rsqrt(ss / D + eps)
        logit = dot * s
        tl.store(LOGIT + tok * m + j, logit, mask=ok_t)
        tl.store(S + tok * m + j, s, mask=ok_t)
        tl.store(DA + tok * m + j, da, mask=ok_t)
        mx_new = tl.maximum(mx, logit)
        scale = tl.exp(mx - mx_new)
        p = tl.exp(logit - mx_new)
        den = den * scale + p
        wda = wda * scale + p * da
        mx = mx_new
    mean_da = wda / den  # sum_j alpha_j da_j
    tl.debug_barrier()
    for d0 in range(0, D, BLOCK_D):
        dim = d0 + tl.arange(0, BLOCK_D)
        ok_d = dim < D
        ok = ok_t[:, None] & ok_d[None, :]
        u = tl.load(U + dim, mask=ok_d, other=0.0)
        g = tl.load(G + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
        du = tl.zeros([BLOCK_D], tl.float32)
        for j in range(0, m):
            base = _source(H, LAST, tok, j, n, sht, shj, D)
            logit = tl.load(LOGIT + tok * m + j, mask=ok_t, other=0.0)
            s = tl.load(S + tok * m + j, mask=ok_t, other=0.0)
            a = tl.where(ok_t, tl.exp(logit - mx) / den, 0.0)
            c = s * a * (tl.load(DA + tok * m + j, mask=ok_t, other=0.0) - mean_da)
            e = -c * s * logit / D
            v = tl.load(base[:, None] + dim[None, :], mask=ok, other=0.0).to(tl.float32)
            dv = a[:, None] * g + c[:, None] * u[None, :] + e[:, None] * v
            du += tl.sum(c[:, None] * v, 0)
            if j < n:
                dptr = DH + tok[:, None] * sdt + j * sdj + dim[None, :]
                acc = tl.load(dptr, mask=ok, other=0.0).to(tl.float32)
                tl.store(dptr, (acc + dv).to(DH.dtype.element_ty), mask=ok)
            else:
                tl.store(DLAST + tok[:, None] * D + dim[None, :], dv.to(DLAST.dtype.element_ty), mask=ok)
        tl.store(DU + pid * D + dim, du, mask=ok_d)


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(token stride, slot stride) of a [B, T, n, D] view whose (B, T) merge into one token axis."""
    B, T = t.shape[:2]
    if B > 1 and t.stride(0) != T * t.stride(1):
        raise ValueError(f"stream view strides {tuple(t.stride())} do not merge its batch and time axes")
    if t.stride(-1) != 1:
        raise ValueError(f"stream view needs a contiguous feature dim; strides {tuple(t.stride())}")
    return t.stride(1), t.stride(2)


def _block_d(D: int) -> int:
    """A feature chunk that divides D when a power of two up to 128 does, else masked."""
    return next((b for b in (128, 64, 32) if D % b == 0), min(triton.next_power_of_2(D), 128))


def _inputs(h, last, query, gain):
    B, T, n, D = h.shape
    last = last.to(h.dtype).contiguous() if last is not None else h.new_empty(0)
    u = (query.float() * gain.float()).contiguous()
    return B, T, n, D, last, u, n + (last.numel() > 0)


def attnres_read_forward(h: torch.Tensor, last: torch.Tensor | None, query: torch.Tensor, gain: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """h [B, T, n, D] prefix view, last [B, T, D] or None, query and gain [D] -> out [B, T, D] in h's dtype."""
    B, T, n, D, last_c, u, m = _inputs(h, last, query, gain)
    sht, shj = _rows(h)
    out = torch.empty(B, T, D, dtype=h.dtype, device=h.device)
    logit = torch.empty(B * T, m, dtype=torch.float32, device=h.device)
    grid = (triton.cdiv(B * T, BLOCK_T),)
    _fwd_kernel[grid](h, last_c, u, out, logit, sht, shj, B * T, n, m, D, eps, BLOCK_T=BLOCK_T, BLOCK_D=_block_d(D))
    return out


def attnres_read_backward(g: torch.Tensor, h: torch.Tensor, last: torch.Tensor | None, query: torch.Tensor,
                          gain: torch.Tensor, eps: float, dh_acc: torch.Tensor):
    """Adds the slots' gradients into dh_acc (a [B, T, n, D] view like h) in place; returns (dlast or None,
    dquery, dgain)."""
    B, T, n, D, last_c, u, m = _inputs(h, last, query, gain)
    sht, shj = _rows(h)
    sdt, sdj = _rows(dh_acc)
    g = g.contiguous()
    grid = (triton.cdiv(B * T, BLOCK_T),)
    dlast = torch.empty(B, T, D, dtype=h.dtype, device=h.device) if last is not None else h.new_empty(0)
    du = torch.empty(grid[0], D, dtype=torch.float32, device=h.device)
    logit, s, da = (torch.empty(B * T, m, dtype=torch.float32, device=h.device) for _ in range(3))
    _bwd_kernel[grid](h, last_c, u, g, dh_acc, dlast, du, logit, s, da, sht, shj, sdt, sdj, B * T, n, m, D, eps,
                      BLOCK_T=BLOCK_T, BLOCK_D=_block_d(D))
    du = du.sum(0)
    dl = dlast.to(last.dtype) if last is not None else None
    return dl, (du * gain.float()).to(query.dtype), (du * query.float()).to(gain.dtype)
