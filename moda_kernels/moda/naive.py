"""Readable fp32 reference of Mixture-of-Depths Attention (arXiv 2603.15619, section 2 and Alg. 1).

One softmax covers two key sets for each query token t (query head h, KV head h // G):

* the causal sequence keys of this layer, ``k[:, s]`` for s <= t (all s when ``causal=False``);
* the depth keys written for the SAME token by earlier layers, ``k_depth[:, t, 0:L]``.

Either set may be absent: ``k_depth=None`` is plain (flash-style) attention, ``k=None`` is
depth-only attention (the "depth attention" depth-mixing variant).

This is the specification every other backend is tested against and the model's ``naive`` backend.
It materialises the [T, S] score matrix, so it is meant for small shapes and CPU work.
"""

from __future__ import annotations

import math

import torch


def _check(q, k, k_depth):
    if k is None and k_depth is None:
        raise ValueError("naive_moda_attn needs sequence keys (k), depth keys (k_depth) or both; got neither")
    Hq = q.shape[2]
    Hk = (k if k is not None else k_depth).shape[-2]
    if Hq % Hk:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of KV heads Hk={Hk}")
    return Hk


def naive_moda_probs(
    q: torch.Tensor,
    k: torch.Tensor | None,
    k_depth: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention probabilities [B, Hq, T, S + L] in fp32: sequence slots first, then the token's depth slots.

    Shapes: q [B, T, Hq, d]; k [B, S, Hk, d]; k_depth [B, T, L, Hk, d]. Usually S = T. S > T (causal only)
    is incremental decoding with a KV cache: the T queries are the last T of the S positions, so query t sees
    keys s <= S - T + t.
    """
    Hk = _check(q, k, k_depth)
    B, T, Hq, d = q.shape
    G = Hq // Hk
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # Query heads h = hk * G + g share KV head hk: view q as [B, T, Hk, G, d].
    qf = q.float().reshape(B, T, Hk, G, d) * scale
    scores = []
    if k is not None:
        S = k.shape[1]
        if S < T or (S > T and not causal):
            raise ValueError(f"sequence keys cover {S} positions for {T} queries; need S == T, or S > T with causal")
        s_seq = torch.einsum("bthgd,bshd->bhgts", qf, k.float())  # [B, Hk, G, T, S]
        if causal:
            future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1 + S - T)
            s_seq = s_seq.masked_fill(future, float("-inf"))
        scores.append(s_seq)
    if k_depth is not None:
        # Depth slots of token t only: s[b, hk, g, t, l] = q[b, t, hk, g] . k_depth[b, t, l, hk]
        scores.append(torch.einsum("bthgd,btlhd->bhgtl", qf, k_depth.float()))
    # One softmax over [sequence | depth] (the MoDA operator), fp32 throughout.
    p = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
    return p.reshape(B, Hq, T, p.shape[-1])


def naive_moda_attn(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None = None,
    v_depth: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """MoDA attention in fp32; returns [B, T, Hq, d] in q's dtype.

    Shapes: q [B, T, Hq, d]; k, v [B, S, Hk, d]; k_depth, v_depth [B, T, L, Hk, d]
    (token-major depth stream: the memory of [B, T*L, Hk, d]); Hq = G * Hk. See naive_moda_probs for S > T.
    """
    Hk = _check(q, k, k_depth)
    B, T, Hq, d = q.shape
    G = Hq // Hk
    p = naive_moda_probs(q, k, k_depth, causal=causal, scale=scale).reshape(B, Hk, G, T, -1)
    out = torch.zeros(B, Hk, G, T, d, dtype=torch.float32, device=q.device)
    S = 0
    if k is not None:
        S = k.shape[1]
        out = out + torch.einsum("bhgts,bshd->bhgtd", p[..., :S], v.float())
    if k_depth is not None:
        out = out + torch.einsum("bhgtl,btlhd->bhgtd", p[..., S:], v_depth.float())
    # [B, Hk, G, T, d] -> [B, T, Hq, d]
    return out.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, d).to(q.dtype)


def naive_moda_attn_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None = None,
    v_depth: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gradients (dq, dk, dv, dk_depth, dv_depth) of ``naive_moda_attn`` for output gradient do, in fp32 math
    and the inputs' dtypes (None for absent inputs), written out rather than traced, so that code which cannot
    run autograd (a custom op's implementation) can use it. With P the softmax over [sequence | depth] and
    O = P V: dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = scale dS K, dK = scale dS^T Q.
    """
    Hk = _check(q, k, k_depth)
    B, T, Hq, d = q.shape
    G = Hq // Hk
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    p = naive_moda_probs(q, k, k_depth, causal=causal, scale=scale).reshape(B, Hk, G, T, -1)
    dof = do.float().reshape(B, T, Hk, G, d)
    qf = q.float().reshape(B, T, Hk, G, d)
    S = k.shape[1] if k is not None else 0
    dp = []
    if k is not None:
        dp.append(torch.einsum("bthgd,bshd->bhgts", dof, v.float()))
    if k_depth is not None:
        dp.append(torch.einsum("bthgd,btlhd->bhgtl", dof, v_depth.float()))
    dp = torch.cat(dp, dim=-1)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))  # rowsum(P * dP) == rowsum(dO * O)
    dq = torch.zeros(B, T, Hk, G, d, dtype=torch.float32, device=q.device)
    grads: list[torch.Tensor | None] = [None, None, None, None]
    if k is not None:
        dq = dq + torch.einsum("bhgts,bshd->bthgd", ds[..., :S], k.float())
        grads[0] = (torch.einsum("bhgts,bthgd->bshd", ds[..., :S], qf) * scale).to(k.dtype)
        grads[1] = torch.einsum("bhgts,bthgd->bshd", p[..., :S], dof).to(v.dtype)
    if k_depth is not None:
        dq = dq + torch.einsum("bhgtl,btlhd->bthgd", ds[..., S:], k_depth.float())
        grads[2] = (torch.einsum("bhgtl,bthgd->btlhd", ds[..., S:], qf) * scale).to(k_depth.dtype)
        grads[3] = torch.einsum("bhgtl,bthgd->btlhd", p[..., S:], dof).to(v_depth.dtype)
    return ((dq * scale).reshape(B, T, Hq, d).to(q.dtype), *grads)
