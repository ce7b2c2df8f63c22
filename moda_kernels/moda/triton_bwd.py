"""Backward Triton kernels of MoDA attention (arXiv 2603.15619, section 3), FlashAttention-2 split.

With P recomputed from the stored log2-sum-exp and delta_i = rowsum(dO_i * O_i):

* ``_moda_bwd_preprocess_kernel``: delta for every folded query row.
* ``_moda_bwd_dkdv_kernel``: dK, dV of one sequence key tile, looping over all folded query rows
  (the G heads of a KV head accumulate into one dK/dV in registers: no atomics, deterministic).
* ``_moda_bwd_dq_kernel``: dQ of one folded query tile over sequence and depth keys. A depth slot is
  read only by the G rows of its own token, and those rows all sit in this tile, so the same program
  also produces dK_depth and dV_depth of its tokens' slots completely: each slot is written exactly
  once, with no atomics and no extra pass over the depth stream.

Recomputing P and dP in the dQ pass costs 7 matrix products per (query tile, key tile) pair instead of
FlashAttention-2's 5 (dQ added from the dK/dV kernel with atomics); the backward stays deterministic because
both atomic variants measured slower (experiments/bench/NOTES.md, v3a and v3b). On CUDA in 16-bit the hybrid
schedule (hybrid.py) hands the sequence part to cuDNN instead.
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
    sub_tile_rows,
    tagged_configs,
)

DKDV_BLOCKS = ("BLOCK_M", "BLOCK_N")  # the dK/dV kernel has no depth phase, hence no BLOCK_DN


if interpreter():
    DKDV_CONFIGS, DKDV_TAGS = tagged_configs([(16, 16, 4, 1, "seq")], DKDV_BLOCKS)
    DQ_CONFIGS, DQ_TAGS = tagged_configs([(32, 16, 16, 4, 1, "seq,depth,moda")])
else:
    # Tags and pruning as in triton_fwd (the dK/dV kernel always runs with sequence keys: tag "seq").
    DKDV_CONFIGS, DKDV_TAGS = tagged_configs([
        (32, 128, 4, 3, "seq"), (64, 128, 8, 3, "seq"), (64, 64, 4, 3, "seq"), (128, 128, 8, 2, "seq"),
        (32, 64, 4, 3, "seq"),
        (32, 64, 4, 2, "fallback"), (16, 64, 4, 1, "fallback"),
    ], DKDV_BLOCKS)
    # BLOCK_M >= 64 keeps SUB_M = max(16, G) <= BLOCK_M for G <= 32.
    DQ_CONFIGS, DQ_TAGS = tagged_configs([
        (128, 64, 16, 8, 3, "seq"), (64, 64, 16, 4, 3, "seq"), (128, 32, 16, 4, 3, "seq"),
        (128, 64, 64, 8, 3, "moda"), (64, 64, 64, 4, 3, "depth,moda"), (128, 32, 32, 4, 3, "moda"),
        (64, 32, 32, 4, 2, "depth,moda"), (64, 32, 16, 4, 3, "depth"), (128, 32, 16, 8, 2, "depth"),
        (64, 64, 32, 4, 3, "fallback"), (64, 32, 16, 4, 2, "fallback"), (64, 32, 16, 4, 1, "fallback"),
    ])

PRE_BLOCK_M = 64


@triton.jit
def _moda_bwd_preprocess_kernel(
    O, DO, DELTA, sob, sot, soh, sdob, sdot, sdoh, T, Hk,
    G: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hk).to(tl.int64)
    hk = pid_bh % Hk
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_tok = offs_m // G
    row_ok = row_tok < T
    head = hk * G + offs_m % G
    offs_d = tl.arange(0, HEAD_D)
    o = tl.load(O + b * sob + row_tok.to(tl.int64)[:, None] * sot + head[:, None] * soh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdob + row_tok.to(tl.int64)[:, None] * sdot + head[:, None] * sdoh + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * T * G + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, LSE, DELTA, q_base, do_base, sqt, sqh, sdot, sdoh, start_m, cols, T, qk_scale,
    G: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr,
):
    """Accumulate one query tile's contribution to the dK, dV of a key tile (transposed scores)."""
    rows = start_m + tl.arange(0, BLOCK_M)
    row_tok = rows // G
    row_ok = row_tok < T
    offs_d = tl.arange(0, HEAD_D)
    head = rows % G
    q = tl.load(q_base + row_tok[:, None] * sqt + head[:, None] * sqh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(do_base + row_tok[:, None] * sdot + head[:, None] * sdoh + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    # Padded rows load lse = delta = 0 with q = dO = 0, so they add exactly zero below.
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    pt = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale - lse[None, :])  # [BN, BM]
    if MASK:
        pt = tl.where(row_tok[None, :] >= cols[:, None], pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
    dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=TUNE_KEY,
                 prune_configs_by={"early_config_prune": make_prune("dkdv", DKDV_TAGS)})
@triton.jit
def _moda_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    qk_scale, scale,
    sqb, sqt, sqh,
    skb, skt, skh,
    svb, svt, svh,
    sdob, sdot, sdoh,
    sdkb, sdkt, sdkh,
    T, L, Hk,
    T_BUCKET, L_BUCKET,  # autotune key only (bucketed T and L)
    G: tl.constexpr, HEAD_D: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_DEPTH: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hk).to(tl.int64)
    hk = pid_bh % Hk
    start_n = pid_n * BLOCK_N
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < T
    offs_d = tl.arange(0, HEAD_D)
    k = tl.load(K + b * skb + hk * skh + cols[:, None] * skt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + b * svb + hk * svh + cols[:, None] * svt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    q_base = Q + b * sqb + hk * G * sqh
    do_base = DO + b * sdob + hk * G * sdoh
    lse_base = LSE + pid_bh.to(tl.int64) * T * G
    delta_base = DELTA + pid_bh.to(tl.int64) * T * G
    TQ = T * G
    if CAUSAL:
        # Rows before token start_n see none of the tile; rows from token start_n + BLOCK_N - 1 on see all of it.
        # (Key tiles near the start have the most rows and are launched first, which keeps the tail short.)
        m_lo = (start_n * G // BLOCK_M) * BLOCK_M
        m_mid = tl.minimum(tl.cdiv((start_n + BLOCK_N - 1) * G, BLOCK_M) * BLOCK_M, TQ)
        for start_m in range(m_lo, m_mid, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, lse_base, delta_base, q_base, do_base, sqt, sqh, sdot, sdoh,
                                start_m, cols, T, qk_scale, G, HEAD_D, BLOCK_M, True, PREC)
        for start_m in range(m_mid, TQ, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, lse_base, delta_base, q_base, do_base, sqt, sqh, sdot, sdoh,
                                start_m, cols, T, qk_scale, G, HEAD_D, BLOCK_M, False, PREC)
    else:
        # Padded key columns (cols >= T) only pollute their own dK/dV rows, which are not stored.
        for start_m in range(0, TQ, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, lse_base, delta_base, q_base, do_base, sqt, sqh, sdot, sdoh,
                                start_m, cols, T, qk_scale, G, HEAD_D, BLOCK_M, False, PREC)
    out = b * sdkb + hk * sdkh + cols[:, None] * sdkt + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_seq_tile(
    dq, q, do, lse, delta, k_base, v_base, skt, svt, start_n, row_tok, T, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    if MASK:
        col_ok = cols < T
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None], mask=col_ok[None, :], other=0.0)  # [d, BN]
        vt = tl.load(v_base + cols[None, :] * svt + offs_d[:, None], mask=col_ok[None, :], other=0.0)  # [d, BN]
    else:
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None])
        vt = tl.load(v_base + cols[None, :] * svt + offs_d[:, None])
    p = tl.math.exp2(tl.dot(q, kt, input_precision=PREC) * qk_scale - lse[:, None])
    if MASK:
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (row_tok[:, None] >= cols[None, :])
        p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, vt, input_precision=PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
    return dq


@triton.jit
def _dq_depth_tile(
    dq, q3, do3, lse, delta, kd_base, vd_base, dkd_base, dvd_base, skdt, skdl, svdt, svdl, sdkdt, sdkdl,
    n0, sub_tok0, keep_row, loc_tok, span, T, L, qk_scale, scale,
    BLOCK_M: tl.constexpr, SUB_M: tl.constexpr, BLOCK_DN: tl.constexpr, HEAD_D: tl.constexpr, PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    """dQ from depth slots [n0, n0 + BLOCK_DN) of each sub-tile's span, plus those slots' dK_depth, dV_depth
    (stored, or with ACC added in fp32 to what the depth-gradient buffer already holds)."""
    NSUB: tl.constexpr = BLOCK_M // SUB_M
    j = n0 + tl.arange(0, BLOCK_DN)
    tok = sub_tok0[:, None] + j[None, :] // L  # [NSUB, DN]
    ok = (j[None, :] < span) & (tok < T)
    offs_d = tl.arange(0, HEAD_D)
    slot = tok.to(tl.int64)
    kd = tl.load(kd_base + (slot * skdt + (j % L)[None, :] * skdl)[:, :, None] + offs_d[None, None, :],
                 mask=ok[:, :, None], other=0.0)  # [NSUB, DN, d]
    vd = tl.load(vd_base + (slot * svdt + (j % L)[None, :] * svdl)[:, :, None] + offs_d[None, None, :],
                 mask=ok[:, :, None], other=0.0)  # [NSUB, DN, d]
    s = tl.reshape(tl.dot(q3, tl.permute(kd, (0, 2, 1)), input_precision=PREC), (BLOCK_M, BLOCK_DN))
    keep = keep_row[:, None] & (loc_tok[:, None] == (j // L)[None, :]) & (j < span)[None, :]
    p = tl.where(keep, tl.math.exp2(s * qk_scale - lse[:, None]), 0.0)
    dp = tl.reshape(tl.dot(do3, tl.permute(vd, (0, 2, 1)), input_precision=PREC), (BLOCK_M, BLOCK_DN))
    ds = p * (dp - delta[:, None])
    p3 = tl.reshape(p.to(vd.dtype), (NSUB, SUB_M, BLOCK_DN))
    ds3 = tl.reshape(ds.to(kd.dtype), (NSUB, SUB_M, BLOCK_DN))
    dq += tl.reshape(tl.dot(ds3, kd, input_precision=PREC), (BLOCK_M, HEAD_D))
    # The slots' only readers are this sub-tile's rows, so these sums over rows are complete.
    dvd = tl.dot(tl.permute(p3, (0, 2, 1)), do3, input_precision=PREC)  # [NSUB, DN, d]
    dkd = tl.dot(tl.permute(ds3, (0, 2, 1)), q3, input_precision=PREC) * scale  # [NSUB, DN, d]
    out = (slot * sdkdt + (j % L)[None, :] * sdkdl)[:, :, None] + offs_d[None, None, :]
    if ACC:
        # The model's depth stream: every later layer that read these slots has already added its share, and
        # this program is the only one touching them now, so a plain read-add-write is race-free.
        dkd += tl.load(dkd_base + out, mask=ok[:, :, None], other=0.0).to(tl.float32)
        dvd += tl.load(dvd_base + out, mask=ok[:, :, None], other=0.0).to(tl.float32)
    tl.store(dkd_base + out, dkd.to(dkd_base.dtype.element_ty), mask=ok[:, :, None])
    tl.store(dvd_base + out, dvd.to(dvd_base.dtype.element_ty), mask=ok[:, :, None])
    return dq


# restore_value: with ACC the kernel adds into the depth-gradient buffer, so every autotuning trial run would
# add once more; the autotuner saves DKD/DVD before each trial and restores them after it.
@triton.autotune(configs=DQ_CONFIGS, key=TUNE_KEY, restore_value=["DKD", "DVD"],
                 prune_configs_by={"early_config_prune": make_prune("dq", DQ_TAGS)})
@triton.jit
def _moda_bwd_dq_kernel(
    Q, K, V, KD, VD, DO, LSE, DELTA, DQ, DKD, DVD, DQ_INIT,
    qk_scale, scale,
    sqb, sqt, sqh,
    skb, skt, skh,
    svb, svt, svh,
    skdb, skdt, skdl, skdh,
    svdb, svdt, svdl, svdh,
    sdob, sdot, sdoh,
    sdqb, sdqt, sdqh,
    sdkdb, sdkdt, sdkdl, sdkdh,
    T, L, Hk,
    T_BUCKET, L_BUCKET,  # autotune key only (bucketed T and L)
    G: tl.constexpr, GP: tl.constexpr, HEAD_D: tl.constexpr, SUB_M: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_DEPTH: tl.constexpr, HAS_INIT: tl.constexpr, CAUSAL: tl.constexpr,
    PREC: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if CAUSAL and HAS_SEQ:
        pid_m = tl.num_programs(0) - 1 - pid_m  # longest tiles first (see the forward kernel)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hk).to(tl.int64)
    hk = pid_bh % Hk
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)  # rows t * GP + g, as in the forward kernel
    row_tok = offs_m // GP
    row_g = offs_m % GP
    row_ok = (row_tok < T) & (row_g < G)
    lse_row = pid_bh.to(tl.int64) * T * G + row_tok * G + row_g
    head = hk * G + row_g
    offs_d = tl.arange(0, HEAD_D)
    q = tl.load(Q + b * sqb + row_tok.to(tl.int64)[:, None] * sqt + head[:, None] * sqh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sdob + row_tok.to(tl.int64)[:, None] * sdot + head[:, None] * sdoh + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + lse_row, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + lse_row, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)

    if HAS_SEQ:
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh
        n_full, n_end = seq_bounds(start_m, T, GP, BLOCK_M, BLOCK_N, CAUSAL)
        for start_n in range(0, n_full, BLOCK_N):
            dq = _dq_seq_tile(dq, q, do, lse, delta, k_base, v_base, skt, svt, start_n, row_tok, T, qk_scale,
                              BLOCK_N, HEAD_D, False, CAUSAL, PREC)
        for start_n in range(n_full, n_end, BLOCK_N):
            dq = _dq_seq_tile(dq, q, do, lse, delta, k_base, v_base, skt, svt, start_n, row_tok, T, qk_scale,
                              BLOCK_N, HEAD_D, True, CAUSAL, PREC)

    if HAS_DEPTH:
        NSUB: tl.constexpr = BLOCK_M // SUB_M
        q3 = tl.reshape(q, (NSUB, SUB_M, HEAD_D))
        do3 = tl.reshape(do, (NSUB, SUB_M, HEAD_D))
        sub_tok0 = (start_m + tl.arange(0, NSUB) * SUB_M) // GP
        loc_tok = (tl.arange(0, BLOCK_M) % SUB_M) // GP
        span = (SUB_M // GP) * L
        kd_base = KD + b * skdb + hk * skdh
        vd_base = VD + b * svdb + hk * svdh
        dkd_base = DKD + b * sdkdb + hk * sdkdh
        dvd_base = DVD + b * sdkdb + hk * sdkdh
        for n0 in range(0, span, BLOCK_DN):
            dq = _dq_depth_tile(dq, q3, do3, lse, delta, kd_base, vd_base, dkd_base, dvd_base, skdt, skdl, svdt, svdl,
                                sdkdt, sdkdl, n0, sub_tok0, row_ok, loc_tok, span, T, L, qk_scale, scale,
                                BLOCK_M, SUB_M, BLOCK_DN, HEAD_D, PREC, ACC)

    dq_off = b * sdqb + row_tok.to(tl.int64)[:, None] * sdqt + head[:, None] * sdqh + offs_d[None, :]
    dq = dq * scale
    if HAS_INIT:
        # dQ of an earlier pass (the split schedule's depth pass in fp32, or the hybrid's aten sequence dQ in
        # q's dtype), same layout as DQ.
        dq += tl.load(DQ_INIT + dq_off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DQ + dq_off, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


def moda_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None,
    v_depth: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    split: bool = False,
    dkd_acc: torch.Tensor | None = None,
    dvd_acc: torch.Tensor | None = None,
    dq_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward kernels; returns (dq, dk, dv, dk_depth, dv_depth), None for absent inputs.

    ``split`` (MoDA mode only): the depth part of dQ (with dK_depth, dV_depth) is its own launch into an
    fp32 dQ that the sequence dQ launch adds to, instead of one fused dQ pass (see moda_fwd).
    Gradients are new contiguous tensors in q.dtype; dk_depth/dv_depth are [B, T, L, Hk, d].
    ``dkd_acc``, ``dvd_acc`` ([B, T, L, Hk, d] views with one stride layout, e.g. prefix views of the model's
    depth-gradient buffer): the depth gradients are added into them in place, and returned as None.
    ``dq_init`` (depth-only calls; [B, T, Hq, d] contiguous): a dQ computed elsewhere (the hybrid schedule's
    sequence part) that the depth dQ pass adds to.
    """
    if dq_init is not None and (k is not None or not dq_init.is_contiguous() or dq_init.shape != q.shape):
        raise ValueError("moda_bwd: dq_init must be a contiguous [B, T, Hq, d] tensor of a depth-only call")
    B, T, Hq, d = q.shape
    has_seq, has_depth = k is not None, k_depth is not None
    Hk = k.shape[2] if has_seq else k_depth.shape[3]
    L = k_depth.shape[2] if has_depth else 1
    G = Hq // Hk
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq = torch.empty((B, T, Hq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, T, Hk, d), dtype=q.dtype, device=q.device) if has_seq else None
    dv = torch.empty_like(dk) if has_seq else None
    accumulate = dkd_acc is not None
    if accumulate:
        dkd, dvd = dkd_acc, dvd_acc
    else:
        dkd = torch.empty((B, T, L, Hk, d), dtype=q.dtype, device=q.device) if has_depth else None
        dvd = torch.empty_like(dkd) if has_depth else None
    if dq.numel() == 0:
        return (dq, dk, dv, None, None) if accumulate else (dq, dk, dv, dkd, dvd)
    delta = torch.empty_like(lse)
    _moda_bwd_preprocess_kernel[(triton.cdiv(T * G, PRE_BLOCK_M), B * Hk)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2), T, Hk,
        G=G, HEAD_D=d, BLOCK_M=PRE_BLOCK_M,
    )
    qk_scale = scale * LOG2E
    t_bucket, l_bucket = triton.next_power_of_2(T), triton.next_power_of_2(L)
    prec = dot_precision(q.dtype)
    z4, z5 = (0, 0, 0, 0), (0, 0, 0, 0, 0)
    ks = k.stride() if has_seq else z4
    vs = v.stride() if has_seq else z4
    kds = k_depth.stride() if has_depth else z5
    vds = v_depth.stride() if has_depth else z5
    dkds = dkd.stride() if has_depth else z5

    if has_seq:
        def grid_kv(meta):
            return (triton.cdiv(T, meta["BLOCK_N"]), B * Hk)

        _moda_bwd_dkdv_kernel[grid_kv](
            q, k, v, do, lse, delta, dk, dv,
            qk_scale, scale,
            q.stride(0), q.stride(1), q.stride(2),
            ks[0], ks[1], ks[2],
            vs[0], vs[1], vs[2],
            do.stride(0), do.stride(1), do.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2),
            T, L, Hk, t_bucket, l_bucket,
            G=G, HEAD_D=d, HAS_SEQ=has_seq, HAS_DEPTH=has_depth, CAUSAL=causal, PREC=prec,
        )

    def launch_dq(seq_pass: bool, depth_pass: bool, dq_in: torch.Tensor | None, dq_out: torch.Tensor) -> None:
        """One dQ launch over the sequence keys, the depth slots or both, adding dq_in (if given) at the store."""
        GP = row_group(G, depth_pass)
        _moda_bwd_dq_kernel[lambda meta: (triton.cdiv(T * GP, meta["BLOCK_M"]), B * Hk)](
            q, k if seq_pass else q, v if seq_pass else q, k_depth if depth_pass else q, v_depth if depth_pass else q,
            do, lse, delta, dq_out, dkd if depth_pass else q, dvd if depth_pass else q,
            dq_in if dq_in is not None else dq_out,
            qk_scale, scale,
            q.stride(0), q.stride(1), q.stride(2),
            ks[0], ks[1], ks[2],
            vs[0], vs[1], vs[2],
            kds[0], kds[1], kds[2], kds[3],
            vds[0], vds[1], vds[2], vds[3],
            do.stride(0), do.stride(1), do.stride(2),
            dq_out.stride(0), dq_out.stride(1), dq_out.stride(2),
            dkds[0], dkds[1], dkds[2], dkds[3],
            T, L, Hk, t_bucket, l_bucket,
            G=G, GP=GP, HEAD_D=d, SUB_M=sub_tile_rows(G),
            HAS_SEQ=seq_pass, HAS_DEPTH=depth_pass, HAS_INIT=dq_in is not None, CAUSAL=causal, PREC=prec,
            ACC=accumulate and depth_pass,
        )

    if has_seq and has_depth and not split and not fusable_group(G):
        raise ValueError(f"moda_bwd: a group of G={G} cannot run fused; pass split=True")
    if has_seq and has_depth and split:
        dq_depth = torch.empty(dq.shape, dtype=torch.float32, device=q.device)
        launch_dq(False, True, None, dq_depth)
        launch_dq(True, False, dq_depth, dq)
    else:
        launch_dq(has_seq, has_depth, dq_init, dq)
    return (dq, dk, dv, None, None) if accumulate else (dq, dk, dv, dkd, dvd)
