"""Forward Triton kernel of MoDA attention (arXiv 2603.15619, Algorithm 1 and section 3).

One program owns BLOCK_M rows of the GQA-folded query of one (batch, KV head): folded row i is query
token t = i // G of query head hk * G + i % G, so the G heads that share a KV head share every K/V
tile they load. Under ONE online softmax (log2 space, fp32 state) the program visits

1. sequence key tiles entirely at or before the tile's first base time (no mask),
2. the boundary tiles, masked with the grouped causal rule floor(i / G) >= s (non-causal: s < T only),
3. the depth slots of its own base times only (chunk- and group-aware: (BLOCK_M / G) * L slots),

then normalises once and stores O and the per-row log2-sum-exp (for the backward pass).

Depth phase detail. A depth slot is read by the G rows of its own token only, so a [BLOCK_M, slots]
score tile is mostly masked (the paper's group-aware kernel wastes a factor BLOCK_M / G). We cut that
waste by splitting the row tile into NSUB sub-tiles of SUB_M = max(16, G) rows and scoring each
sub-tile only against the (SUB_M / G) * L slots of its own tokens with one batched (3-D) ``tl.dot``;
16 is the smallest M a tensor-core dot accepts, so the waste drops to SUB_M / G (2x at G = 8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fusable_group, interpreter
from .shared import (
    LOG2E,
    TUNE_KEY,
    dot_precision,
    make_prune,
    row_group,
    seq_bounds,
    softmax_step,
    sub_tile_rows,
    tagged_configs,
)

# The interpreter cannot benchmark several configs, and tiny tiles keep CPU tests fast.
if interpreter():
    FWD_CONFIGS, FWD_TAGS = tagged_configs([(32, 16, 16, 4, 1, "seq,depth,moda")])
else:
    # Hopper-friendly tiles (BLOCK_M >= 64 keeps SUB_M = max(16, G) <= BLOCK_M for G <= 32). Each launch
    # autotunes over the configs tagged with its mode that fit in shared memory: the sequence loop wants
    # big tiles; the memory-bound depth phase wants small pipelined slot tiles (several blocks per SM).
    # Fallbacks are offered only when none of the tagged configs fits (head dim 128 with depth, fp32).
    FWD_CONFIGS, FWD_TAGS = tagged_configs(
        [
            (128, 64, 16, 8, 3, "seq"),
            (128, 128, 16, 8, 3, "seq"),
            (128, 128, 16, 8, 4, "seq"),
            (64, 64, 16, 4, 3, "seq"),
            (64, 64, 64, 4, 3, "depth,moda"),
            (64, 64, 32, 4, 2, "depth,moda"),
            (64, 64, 16, 4, 3, "depth,moda"),
            (128, 64, 16, 8, 3, "depth,moda"),
            (128, 64, 32, 8, 2, "depth,moda"),
            (64, 64, 32, 4, 3, "fallback"),
            (64, 64, 16, 4, 2, "fallback"),
            (64, 32, 16, 4, 1, "fallback"),
        ]
    )


@triton.jit
def _seq_tile(
    acc, l_i, m_i, q, k_base, v_base, skt, svt, start_n, row_tok, T, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):
    """Fold one [BLOCK_M, BLOCK_N] sequence tile into the online-softmax state (acc, l_i, m_i)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    if MASK:
        col_ok = cols < T
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None], mask=col_ok[None, :], other=0.0)  # [d, BN]
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=col_ok[:, None], other=0.0)  # [BN, d]
    else:
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None])
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :])
    # Scores in log2 units: exp(x * scale) == exp2(x * scale * log2(e)); one multiply per score.
    s = tl.dot(q, kt, input_precision=PREC) * qk_scale
    if MASK:
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (row_tok[:, None] >= cols[None, :])
        s = tl.where(keep, s, float("-inf"))
    p, alpha, l_i, m_new = softmax_step(s, m_i, l_i, MASK)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _depth_tile(
    acc, l_i, m_i, q3, kd_base, vd_base, skdt, skdl, svdt, svdl, n0, sub_tok0, keep_row, loc_tok, span, T, L,
    qk_scale,
    BLOCK_M: tl.constexpr, SUB_M: tl.constexpr, BLOCK_DN: tl.constexpr, HEAD_D: tl.constexpr, PREC: tl.constexpr,
):
    """Fold depth slots [n0, n0 + BLOCK_DN) of every sub-tile's span into the online-softmax state.

    Slot j of a sub-tile's span is layer-slot j % L of token sub_tok0 + j // L (token-major stream).
    """
    NSUB: tl.constexpr = BLOCK_M // SUB_M
    j = n0 + tl.arange(0, BLOCK_DN)
    tok = sub_tok0[:, None] + j[None, :] // L  # [NSUB, DN]
    ok = (j[None, :] < span) & (tok < T)
    offs_d = tl.arange(0, HEAD_D)
    kd_off = tok.to(tl.int64) * skdt + (j % L)[None, :] * skdl
    vd_off = tok.to(tl.int64) * svdt + (j % L)[None, :] * svdl
    kdt = tl.load(kd_base + kd_off[:, None, :] + offs_d[None, :, None], mask=ok[:, None, :], other=0.0)  # [NSUB, d, DN]
    vd = tl.load(vd_base + vd_off[:, :, None] + offs_d[None, None, :], mask=ok[:, :, None], other=0.0)  # [NSUB, DN, d]
    s = tl.reshape(tl.dot(q3, kdt, input_precision=PREC), (BLOCK_M, BLOCK_DN)) * qk_scale
    # Row r (local token loc_tok[r] of its sub-tile) sees slot j only if j is a slot of that token.
    keep = keep_row[:, None] & (loc_tok[:, None] == (j // L)[None, :]) & (j < span)[None, :]
    s = tl.where(keep, s, float("-inf"))
    p, alpha, l_i, m_new = softmax_step(s, m_i, l_i, True)
    p3 = tl.reshape(p.to(vd.dtype), (NSUB, SUB_M, BLOCK_DN))
    pv = tl.reshape(tl.dot(p3, vd, input_precision=PREC), (BLOCK_M, HEAD_D))
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY,
                 prune_configs_by={"early_config_prune": make_prune("fwd", FWD_TAGS)})
@triton.jit
def _moda_fwd_kernel(
    Q, K, V, KD, VD, O, LSE, O_INIT, LSE_INIT,
    qk_scale,
    sqb, sqt, sqh,
    skb, skt, skh,
    svb, svt, svh,
    skdb, skdt, skdl, skdh,
    svdb, svdt, svdl, svdh,
    sob, sot, soh,
    T, L, Hk,
    T_BUCKET, L_BUCKET,  # autotune key only (bucketed T and L)
    G: tl.constexpr, GP: tl.constexpr, HEAD_D: tl.constexpr, SUB_M: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_DEPTH: tl.constexpr, HAS_INIT: tl.constexpr, CAUSAL: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if CAUSAL and HAS_SEQ:
        # Causal tiles get longer with the row index: launch the longest first so the short ones fill the tail.
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hk).to(tl.int64)
    hk = pid_bh % Hk
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)  # folded query rows i = t * GP + g (GP = G but in padded passes)
    row_tok = offs_m // GP
    row_g = offs_m % GP
    row_ok = (row_tok < T) & (row_g < G)
    lse_row = pid_bh.to(tl.int64) * T * G + row_tok * G + row_g  # (O, LSE) rows are always densely folded
    offs_d = tl.arange(0, HEAD_D)

    q_ptrs = Q + b * sqb + row_tok.to(tl.int64)[:, None] * sqt + (hk * G + row_g)[:, None] * sqh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)

    o_off = b * sob + row_tok.to(tl.int64)[:, None] * sot + (hk * G + row_g)[:, None] * soh + offs_d[None, :]
    if HAS_INIT:
        # Resume the online softmax of an earlier pass (the depth pass of the split schedule):
        # state (m, l, acc) = (its log2-sum-exp, 1, its normalised fp32 output) is exact.
        m_i = tl.load(LSE_INIT + lse_row, mask=row_ok, other=0.0).to(tl.float32)
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
        acc = tl.load(O_INIT + o_off, mask=row_ok[:, None], other=0.0).to(tl.float32)  # 16-bit from the hybrid
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)

    if HAS_SEQ:
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh
        n_full, n_end = seq_bounds(start_m, T, GP, BLOCK_M, BLOCK_N, CAUSAL)
        for start_n in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _seq_tile(acc, l_i, m_i, q, k_base, v_base, skt, svt, start_n, row_tok, T, qk_scale,
                                      BLOCK_N, HEAD_D, False, CAUSAL, PREC)
        for start_n in range(n_full, n_end, BLOCK_N):
            acc, l_i, m_i = _seq_tile(acc, l_i, m_i, q, k_base, v_base, skt, svt, start_n, row_tok, T, qk_scale,
                                      BLOCK_N, HEAD_D, True, CAUSAL, PREC)

    if HAS_DEPTH:
        NSUB: tl.constexpr = BLOCK_M // SUB_M
        q3 = tl.reshape(q, (NSUB, SUB_M, HEAD_D))  # [BLOCK_M, d] -> [NSUB, SUB_M, d], rows stay in order
        sub_tok0 = (start_m + tl.arange(0, NSUB) * SUB_M) // GP  # first token of each sub-tile
        loc_tok = (tl.arange(0, BLOCK_M) % SUB_M) // GP  # token of a row, counted inside its sub-tile
        span = (SUB_M // GP) * L  # depth slots of one sub-tile's tokens
        kd_base = KD + b * skdb + hk * skdh
        vd_base = VD + b * svdb + hk * svdh
        for n0 in range(0, span, BLOCK_DN):
            acc, l_i, m_i = _depth_tile(acc, l_i, m_i, q3, kd_base, vd_base, skdt, skdl, svdt, svdl, n0, sub_tok0,
                                        row_ok, loc_tok, span, T, L, qk_scale,
                                        BLOCK_M, SUB_M, BLOCK_DN, HEAD_D, PREC)

    # Normalise once; padded rows (row_ok False) may have l_i == 0 and are never stored.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    tl.store(O + o_off, o.to(O.dtype.element_ty), mask=row_ok[:, None])
    # log2-sum-exp of the scaled scores of each row, the softmax normaliser the backward pass recomputes P with.
    tl.store(LSE + lse_row, m_i + tl.math.log2(l_safe), mask=row_ok)


def moda_fwd(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None,
    v_depth: torch.Tensor | None,
    causal: bool,
    scale: float,
    split: bool = False,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on validated inputs.

    ``split`` (MoDA mode only) runs the depth phase as its own launch into an fp32 (O, LSE) state and
    resumes that softmax in the sequence launch, instead of one fused pass: measured faster at long T
    (see experiments/bench/NOTES.md), where the fused pass slows the sequence loop down. A group that is not
    a power of two must split, so that only the depth launch has padding rows (row_group). The choice is the
    call's plan (moda_kernels/dispatch.py).
    ``init`` (depth-only calls): resume the softmax of an earlier sequence pass from its (O [B, T, Hq, d]
    contiguous, LSE in this layout), as the hybrid schedule does (hybrid.py).
    Returns O [B, T, Hq, d] in q.dtype and LSE [B * Hk, T * G] fp32 (log2 units, folded row order).
    """
    if init is not None:
        if k is not None:
            raise ValueError("moda_fwd: init resumes a sequence pass, so it takes depth keys only")
        return _launch_fwd(q, None, None, k_depth, v_depth, causal, scale, q.dtype, init)
    if k is not None and k_depth is not None and not split and not fusable_group(q.shape[2] // k.shape[2]):
        raise ValueError(f"moda_fwd: a group of G={q.shape[2] // k.shape[2]} cannot run fused; pass split=True")
    if k is not None and k_depth is not None and split:
        o_d, lse_d = _launch_fwd(q, None, None, k_depth, v_depth, causal, scale, torch.float32, None)
        return _launch_fwd(q, k, v, None, None, causal, scale, q.dtype, (o_d, lse_d))
    return _launch_fwd(q, k, v, k_depth, v_depth, causal, scale, q.dtype, None)


def _launch_fwd(q, k, v, k_depth, v_depth, causal, scale, out_dtype, init):
    B, T, Hq, d = q.shape
    has_seq, has_depth = k is not None, k_depth is not None
    Hk = k.shape[2] if has_seq else k_depth.shape[3]
    L = k_depth.shape[2] if has_depth else 1
    G = Hq // Hk
    GP = row_group(G, has_depth)
    o = torch.empty((B, T, Hq, d), dtype=out_dtype, device=q.device)
    lse = torch.empty((B * Hk, T * G), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    # Absent operands: pass q as a never-read placeholder pointer with zero strides.
    ks = k.stride() if has_seq else (0, 0, 0, 0)
    vs = v.stride() if has_seq else (0, 0, 0, 0)
    kds = k_depth.stride() if has_depth else (0, 0, 0, 0, 0)
    vds = v_depth.stride() if has_depth else (0, 0, 0, 0, 0)

    def grid(meta):
        return (triton.cdiv(T * GP, meta["BLOCK_M"]), B * Hk)

    _moda_fwd_kernel[grid](
        q, k if has_seq else q, v if has_seq else q, k_depth if has_depth else q, v_depth if has_depth else q, o, lse,
        init[0] if init else o, init[1] if init else lse,
        scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        ks[0], ks[1], ks[2],
        vs[0], vs[1], vs[2],
        kds[0], kds[1], kds[2], kds[3],
        vds[0], vds[1], vds[2], vds[3],
        o.stride(0), o.stride(1), o.stride(2),
        T, L, Hk,
        triton.next_power_of_2(T), triton.next_power_of_2(L),
        G=G, GP=GP, HEAD_D=d, SUB_M=sub_tile_rows(G),
        HAS_SEQ=has_seq, HAS_DEPTH=has_depth, HAS_INIT=init is not None, CAUSAL=causal,
        PREC=dot_precision(q.dtype),
    )
    return o, lse
