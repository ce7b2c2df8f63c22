"""Mixture-of-Depths Attention (MoDA, arXiv 2603.15619): one softmax over sequence and depth keys.

Layout, fixed for the whole project
-----------------------------------
* ``q``: [B, T, Hq, d]; ``k``, ``v``: [B, T, Hk, d]; Hq = G * Hk, query head h reads KV head h // G.
* Depth stream ``k_depth``, ``v_depth``: token-major [B, T*L, Hk, d], passed viewed as [B, T, L, Hk, d]:
  slot t*L + l is the K/V that layer-slot l wrote for token t. Query token t attends to the L depth
  slots of token t only, in the same softmax as its causal sequence keys.
* The model preallocates one [B, T, Lmax, Hk, d] buffer per stream and passes the prefix view
  ``buf[:, :, :L]``; the kernel reads such views in place (only the trailing (Hk, d) dims must be dense).
* Inside the kernel GQA is folded into time as in the paper: per KV head the queries form G*T rows,
  row i = token i // G of head (h // G) * G + i % G.

``moda_attn`` is the Triton implementation (CUDA, or CPU under ``TRITON_INTERPRET=1``) with autograd;
``naive_moda_attn`` is the readable fp32 reference that defines the semantics.
"""

from __future__ import annotations

import torch

from ._validate import check_moda_inputs
from .naive import naive_moda_attn

__all__ = ["moda_attn", "naive_moda_attn"]


def moda_attn(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None = None,
    v_depth: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """MoDA attention with the Triton kernels; same semantics as ``naive_moda_attn``.

    Args:
        q: [B, T, Hq, d] queries (last dim contiguous).
        k, v: [B, T, Hk, d] sequence keys/values, or both None (depth-only attention).
        k_depth, v_depth: [B, T, L, Hk, d] depth keys/values (views of a larger buffer are fine), or both
            None (plain causal flash attention).
        causal: mask sequence keys after the query token (depth slots are never masked).
        scale: softmax scale, default 1 / sqrt(d).

    Returns:
        [B, T, Hq, d] in q.dtype. Differentiable w.r.t. every tensor input.

    Raises:
        ValueError: on wrong shapes, head counts, head dims, dtypes, devices or memory layouts.
    """
    scale = check_moda_inputs(q, k, v, k_depth, v_depth, causal, scale)
    from .function import moda_attn_fwd  # Triton is imported only when the kernel is used.

    out, _ = moda_attn_fwd(q, k, v, k_depth, v_depth, causal, scale)
    return out
