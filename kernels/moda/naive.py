"""Readable fp32 reference of Mixture-of-Depths Attention (arXiv 2603.15619, eq. for MoDA and Alg. 1).

One softmax covers two key sets for each query token t (query head h, KV head h // G):

* the causal sequence keys of this layer, ``k[:, s]`` for s <= t (all s when ``causal=False``);
* the depth keys written for the SAME token by earlier layers, ``k_depth[:, t, 0:L]``.

Either set may be absent: ``k_depth=None`` is plain (flash-style) attention, ``k=None`` is
depth-only attention (the "depth attention" depth-mixing variant).

This is the specification every other backend is tested against and the model's ``naive`` backend.
It materialises the [T, T] score matrix, so it is meant for small shapes and CPU work.
"""

from __future__ import annotations

import math

import torch


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

    Shapes: q [B, T, Hq, d]; k, v [B, T, Hk, d]; k_depth, v_depth [B, T, L, Hk, d]
    (token-major depth stream: the memory of [B, T*L, Hk, d]); Hq = G * Hk.
    """
    if k is None and k_depth is None:
        raise ValueError("naive_moda_attn needs sequence keys (k), depth keys (k_depth) or both; got neither")
    B, T, Hq, d = q.shape
    Hk = (k if k is not None else k_depth).shape[-2]
    if Hq % Hk:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of KV heads Hk={Hk}")
    G = Hq // Hk
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # Query heads h = hk * G + g share KV head hk: view q as [B, T, Hk, G, d].
    qf = q.float().view(B, T, Hk, G, d) * scale
    scores, values = [], []
    if k is not None:
        # s[b, hk, g, t, s] = q[b, t, hk, g] . k[b, s, hk]
        s_seq = torch.einsum("bthgd,bshd->bhgts", qf, k.float())
        if causal:
            future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
            s_seq = s_seq.masked_fill(future, float("-inf"))
        scores.append(s_seq)
    if k_depth is not None:
        # Depth slots of token t only: s[b, hk, g, t, l] = q[b, t, hk, g] . k_depth[b, t, l, hk]
        scores.append(torch.einsum("bthgd,btlhd->bhgtl", qf, k_depth.float()))
    # One softmax over [sequence | depth] (the MoDA operator), fp32 throughout.
    p = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
    out = torch.zeros(B, Hk, G, T, d, dtype=torch.float32, device=q.device)
    if k is not None:
        out = out + torch.einsum("bhgts,bshd->bhgtd", p[..., :T], v.float())
    if k_depth is not None:
        out = out + torch.einsum("bhgtl,btlhd->bhgtd", p[..., p.shape[-1] - k_depth.shape[2] :], v_depth.float())
    # [B, Hk, G, T, d] -> [B, T, Hq, d]
    return out.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, d).to(q.dtype)
