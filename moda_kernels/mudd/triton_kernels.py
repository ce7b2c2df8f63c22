"""Triton kernels of MUDDFormer's multiway mix: one pass over the history prefix per direction, all ways at once.

Forward: a program owns BLOCK_T tokens x BLOCK_D features and, walking the n slots, loads each slot's tile once
and adds it, weighted per token and way, into all C ways' accumulators [BLOCK_T, C, BLOCK_D].
Backward: the same tile loads g [BLOCK_T, C, BLOCK_D] once and walks the slots: it adds sum_c w[:, c, j] g[:, c]
into the gradient buffer in place (read-add-write; the program is the only writer of its tile) and writes its
partial dw[:, c, j] = sum_d H[:, j, d] g[:, c, d] over its feature tile, which the launcher sums over the
feature tiles (no atomics: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import tile_tuning

TILE = 4096  # elements of a program's [BLOCK_T, C, BLOCK_D] accumulator (as DenseFormer's [16, 256] tile)


@triton.jit
def _slot_tiles(prev, H, h_off, j, shj, n, h_ok, PREFETCH: tl.constexpr):
    """(slot j's tile, the next step's prev). PREFETCH: prev is slot j's tile, loaded a step earlier, and slot
    j + 1's load is issued now; else slot j is loaded now and prev (unused) passes through."""
    if PREFETCH:
        return prev, tl.load(H + h_off + (j + 1) * shj, mask=h_ok & (j + 1 < n), other=0.0)
    else:
        return tl.load(H + h_off + j * shj, mask=h_ok, other=0.0), prev


@triton.jit
def _mudd_fwd_kernel(H, W, OUT, sht, shj, n_tok, n, D, N_BUCKET, C: tl.constexpr, CP: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr):
    """PREFETCH: slot j + 1's tile is loaded before slot j's is used (two loads in flight per program)."""
    pid_t, pid_d = tl.program_id(0), tl.program_id(1)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dim = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    way = tl.arange(0, CP)
    tok64 = tok.to(tl.int64)
    h_ok = (tok < n_tok)[:, None] & (dim < D)[None, :]
    w_ok = (tok < n_tok)[:, None] & (way < C)[None, :]
    h_off = tok64[:, None] * sht + dim[None, :]
    w_off = tok64[:, None] * (C * n) + way[None, :] * n
    acc = tl.zeros([BLOCK_T, CP, BLOCK_D], dtype=tl.float32)
    nxt = tl.load(H + h_off, mask=h_ok & (n > 0) & PREFETCH, other=0.0)  # masked off without PREFETCH
    for j in range(0, n):
        cur, nxt = _slot_tiles(nxt, H, h_off, j, shj, n, h_ok, PREFETCH)
        h = cur.to(tl.float32)
        w = tl.load(W + w_off + j, mask=w_ok, other=0.0).to(tl.float32)
        acc += w[:, :, None] * h[:, None, :]
    o_off = tok64[:, None, None] * (C * D) + way[None, :, None] * D + dim[None, None, :]
    o_ok = w_ok[:, :, None] & (dim < D)[None, None, :]
    tl.store(OUT + o_off, acc.to(OUT.dtype.element_ty), mask=o_ok)


@triton.jit
def _mudd_bwd_kernel(H, W, G, DH, PART, sht, shj, sdt, sdj, n_tok, n, D, N_BUCKET, C: tl.constexpr,
                     CP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr):
    """PREFETCH as in the forward."""
    pid_t, pid_d = tl.program_id(0), tl.program_id(1)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dim = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    way = tl.arange(0, CP)
    tok64 = tok.to(tl.int64)
    h_ok = (tok < n_tok)[:, None] & (dim < D)[None, :]
    w_ok = (tok < n_tok)[:, None] & (way < C)[None, :]
    g_off = tok64[:, None, None] * (C * D) + way[None, :, None] * D + dim[None, None, :]
    g = tl.load(G + g_off, mask=w_ok[:, :, None] & (dim < D)[None, None, :], other=0.0).to(tl.float32)
    h_off = tok64[:, None] * sht + dim[None, :]
    d_off = tok64[:, None] * sdt + dim[None, :]
    w_off = tok64[:, None] * (C * n) + way[None, :] * n
    part = PART + pid_d.to(tl.int64) * n_tok * C * n + w_off  # this feature tile's share of dw [n_tok, C, n]
    nxt = tl.load(H + h_off, mask=h_ok & (n > 0) & PREFETCH, other=0.0)  # masked off without PREFETCH
    for j in range(0, n):
        cur, nxt = _slot_tiles(nxt, H, h_off, j, shj, n, h_ok, PREFETCH)
        h = cur.to(tl.float32)
        w = tl.load(W + w_off + j, mask=w_ok, other=0.0).to(tl.float32)
        tl.store(part + j, tl.sum(h[:, None, :] * g, 2), mask=w_ok)
        dh = tl.load(DH + d_off + j * sdj, mask=h_ok, other=0.0).to(tl.float32)
        tl.store(DH + d_off + j * sdj, (dh + tl.sum(w[:, :, None] * g, 1)).to(DH.dtype.element_ty), mask=h_ok)


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(token stride, slot stride) of a [B, T, n, D] view whose (B, T) merge into one token axis."""
    B, T = t.shape[:2]
    if B > 1 and t.stride(0) != T * t.stride(1):
        raise ValueError(f"history view strides {tuple(t.stride())} do not merge its batch and time axes")
    if t.stride(-1) != 1:
        raise ValueError(f"history view needs a contiguous feature dim; strides {tuple(t.stride())}")
    return t.stride(1), t.stride(2)


def _tiles(C: int, D: int) -> tuple[int, int, int]:
    """(padded ways CP, BLOCK_T, BLOCK_D): a feature tile that divides D when a power of two up to 256 does, and
    as many tokens as keep the accumulator at TILE elements (the launch without autotuning; on a GPU the
    autotuner picks BLOCK_T, warps and PREFETCH)."""
    cp = triton.next_power_of_2(C)
    bd = next((b for b in (256, 128, 64, 32) if D % b == 0), min(triton.next_power_of_2(D), 256))
    return cp, max(1, TILE // (cp * bd)), bd


UNTUNED_WARPS = 4
PREFETCH_UNTUNED = False  # PREFETCH of the launch without autotuning (the tests run both)
# On a GPU both kernels are autotuned (moda_kernels/tile_tuning.py) per (n slots rounded up to a power of two, C,
# D, dtypes) within this many fp32 elements of the [BLOCK_T, CP, BLOCK_D] tile a thread: ptxas -v finds no spill
# there at C = 4, BLOCK_D = 128, 4 and 8 warps, with and without PREFETCH (the backward spills one step above).
PER_THREAD = {"fwd": 64, "bwd": 32}


def tuned_configs(configs, direction: str, C: int, D: int) -> list:
    """The autotuning candidates of a direction at (C, D) (tile_tuning.candidates), the pinned launch first."""
    cp, bt, bd = _tiles(C, D)
    return tile_tuning.candidates(configs, (bt, UNTUNED_WARPS), cp * bd, PER_THREAD[direction])


# direction -> the launched kernel (autotuned on a GPU; the backward's DH, which it adds into, put back per trial).
KERNELS = {
    "fwd": tile_tuning.tuned(_mudd_fwd_kernel, ["N_BUCKET", "D", "C"],
                             lambda configs, args: tuned_configs(configs, "fwd", args["C"], args["D"])),
    "bwd": tile_tuning.tuned(_mudd_bwd_kernel, ["N_BUCKET", "D", "C"],
                             lambda configs, args: tuned_configs(configs, "bwd", args["C"], args["D"]), ["DH"]),
}


def _launch(direction: str, n_tok: int, C: int, D: int, *args) -> None:
    cp, bt, bd = _tiles(C, D)
    pinned = {"BLOCK_T": bt, "PREFETCH": PREFETCH_UNTUNED, "num_warps": UNTUNED_WARPS}
    tile_tuning.launch(KERNELS[direction], lambda meta: (triton.cdiv(n_tok, meta["BLOCK_T"]), triton.cdiv(D, bd)),
                       pinned, *args, C=C, CP=cp, BLOCK_D=bd)


def mudd_mix_forward(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h [B, T, n, D] prefix view, w [B, T, C, n] -> [B, T, C, D] in h's dtype."""
    B, T, n, D = h.shape
    C = w.shape[2]
    w = w.contiguous()
    out = torch.empty(B, T, C, D, dtype=h.dtype, device=h.device)
    sht, shj = _rows(h)
    _launch("fwd", B * T, C, D, h, w, out, sht, shj, B * T, n, D, triton.next_power_of_2(n))
    return out


def mudd_mix_backward(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, dh_acc: torch.Tensor) -> torch.Tensor:
    """Adds sum_c w[:, :, c, j] g[:, :, c] into dh_acc [B, T, n, D] in place; returns dw [B, T, C, n] (w's
    dtype)."""
    B, T, n, D = h.shape
    C = w.shape[2]
    g, w = g.contiguous(), w.contiguous()
    sht, shj = _rows(h)
    sdt, sdj = _rows(dh_acc)
    bd = _tiles(C, D)[2]
    part = torch.empty(triton.cdiv(D, bd), B, T, C, n, dtype=torch.float32, device=h.device)  # per feature tile
    _launch("bwd", B * T, C, D, h, w, g, dh_acc, part, sht, shj, sdt, sdj, B * T, n, D, triton.next_power_of_2(n))
    return part.sum(0).to(w.dtype)
