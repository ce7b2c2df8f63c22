"""Triton kernels of the depth-weighted average: one pass over the history prefix per direction.

Forward: a program owns BLOCK_T tokens x BLOCK_D features and sums alpha[j] H[:, j] over the n slots.
Backward: the same tile loads g once and walks the slots: it adds alpha[j] g into the gradient buffer in place
(read-add-write; the program is the only writer of its tile) and writes its partial sum of H[:, j] * g per
slot, which the launcher reduces over programs (no atomics: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 16


@triton.jit
def _dwa_fwd_kernel(H, ALPHA, OUT, sht, shj, sot, n_tok, n, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_t, pid_d = tl.program_id(0), tl.program_id(1)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dim = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = (tok < n_tok)[:, None] & (dim < D)[None, :]
    off = tok.to(tl.int64)[:, None] * sht + dim[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for j in range(0, n):
        a = tl.load(ALPHA + j).to(tl.float32)
        acc += a * tl.load(H + off + j * shj, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + tok.to(tl.int64)[:, None] * sot + dim[None, :], acc.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _dwa_bwd_kernel(H, ALPHA, G, DH, PART, sht, shj, sgt, sdt, sdj, n_tok, n, D,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_t, pid_d = tl.program_id(0), tl.program_id(1)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dim = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = (tok < n_tok)[:, None] & (dim < D)[None, :]
    g = tl.load(G + tok.to(tl.int64)[:, None] * sgt + dim[None, :], mask=ok, other=0.0).to(tl.float32)
    h_off = tok.to(tl.int64)[:, None] * sht + dim[None, :]
    d_off = tok.to(tl.int64)[:, None] * sdt + dim[None, :]
    part = PART + (pid_t * tl.num_programs(1) + pid_d) * n
    for j in range(0, n):
        a = tl.load(ALPHA + j).to(tl.float32)
        h = tl.load(H + h_off + j * shj, mask=ok, other=0.0).to(tl.float32)
        tl.store(part + j, tl.sum(tl.sum(h * g, 1), 0))
        dh = tl.load(DH + d_off + j * sdj, mask=ok, other=0.0).to(tl.float32)
        tl.store(DH + d_off + j * sdj, (dh + a * g).to(DH.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(token stride, slot stride) of a [B, T, n, D] view whose (B, T) merge into one token axis."""
    B, T = t.shape[:2]
    if B > 1 and t.stride(0) != T * t.stride(1):
        raise ValueError(f"history view strides {tuple(t.stride())} do not merge its batch and time axes")
    if t.stride(-1) != 1:
        raise ValueError(f"history view needs a contiguous feature dim; strides {tuple(t.stride())}")
    return t.stride(1), t.stride(2)


def _block_d(D: int) -> int:
    """A feature tile that divides D when a power of two up to 256 does (width 384: 128), else masked."""
    return next((b for b in (256, 128, 64, 32) if D % b == 0), min(triton.next_power_of_2(D), 256))


def dwa_mix_forward(h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h [B, T, n, D] prefix view, alpha [n] -> [B, T, D] in h's dtype."""
    B, T, n, D = h.shape
    out = torch.empty(B, T, D, dtype=h.dtype, device=h.device)
    sht, shj = _rows(h)
    bd = _block_d(D)
    grid = (triton.cdiv(B * T, BLOCK_T), triton.cdiv(D, bd))
    _dwa_fwd_kernel[grid](h, alpha, out, sht, shj, D, B * T, n, D, BLOCK_T=BLOCK_T, BLOCK_D=bd)
    return out


def dwa_mix_backward(g: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor, dh_acc: torch.Tensor) -> torch.Tensor:
    """Adds alpha[j] g into dh_acc [B, T, n, D] in place; returns dalpha [n] (alpha's dtype)."""
    B, T, n, D = h.shape
    g = g.contiguous()
    sht, shj = _rows(h)
    sdt, sdj = _rows(dh_acc)
    bd = _block_d(D)
    grid = (triton.cdiv(B * T, BLOCK_T), triton.cdiv(D, bd))
    part = torch.empty(grid[0] * grid[1], n, dtype=torch.float32, device=h.device)
    _dwa_bwd_kernel[grid](h, alpha, g, dh_acc, part, sht, shj, D, sdt, sdj, B * T, n, D,
                          BLOCK_T=BLOCK_T, BLOCK_D=bd)
    return part.sum(0).to(alpha.dtype)
