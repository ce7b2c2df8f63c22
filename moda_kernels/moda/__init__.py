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
  row i = token i // G of head (h // G) * G + i % G. A depth phase needs row tiles of whole tokens, so for a
  group that is not a power of two (Table 6's G=3) it folds with padding rows to the next power of two, and
  runs as its own launch next to the densely folded sequence launch.

``moda_attn`` is the Triton implementation (CUDA, or CPU under ``TRITON_INTERPRET=1``) with autograd;
``naive_moda_attn`` is the readable fp32 reference that defines the semantics (``naive_moda_attn_bwd`` its
written-out backward). ``moda_attn_forward`` / ``moda_attn_backward`` are the two kernel passes without
autograd, for callers that own their autograd, such as the model's depth stream (moda_lab/model/depth.py),
which lets the backward add the depth gradients into its gradient buffer in place. Every call runs as its plan
says (fused kernel or hybrid schedule, fused or split depth phase): moda_kernels/dispatch.py, docs/KERNELS.md.
"""

from __future__ import annotations

import torch

from ._validate import check_moda_inputs
from .naive import naive_moda_attn, naive_moda_attn_bwd

__all__ = [
    "moda_attn",
    "moda_attn_backward",
    "moda_attn_forward",
    "naive_moda_attn",
    "naive_moda_attn_bwd",
]


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


def moda_attn_forward(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None = None,
    v_depth: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel alone (no autograd): O [B, T, Hq, d] and the fp32 log2-sum-exp the backward needs.
    Arguments and checks as in ``moda_attn``."""
    scale = check_moda_inputs(q, k, v, k_depth, v_depth, causal, scale)
    from .function import attn_forward

    return attn_forward(q, k, v, k_depth, v_depth, causal, scale)


def moda_attn_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None,
    v_depth: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    dk_depth_acc: torch.Tensor | None = None,
    dv_depth_acc: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """The backward kernels alone: (dq, dk, dv, dk_depth, dv_depth) for the (o, lse) of ``moda_attn_forward``.

    With ``dk_depth_acc`` / ``dv_depth_acc`` (tensors of k_depth's shape and dtype, one stride layout for both)
    the depth gradients are ADDED into them in place and dk_depth, dv_depth come back as None.
    """
    scale = check_moda_inputs(q, k, v, k_depth, v_depth, causal, scale)
    if (dk_depth_acc is None) != (dv_depth_acc is None):
        raise ValueError("pass both dk_depth_acc and dv_depth_acc or neither")
    if dk_depth_acc is not None:
        if k_depth is None:
            raise ValueError("dk_depth_acc needs depth keys (k_depth)")
        for name, t in (("dk_depth_acc", dk_depth_acc), ("dv_depth_acc", dv_depth_acc)):
            if t.shape != k_depth.shape or t.dtype != k_depth.dtype or t.device != k_depth.device:
                raise ValueError(
                    f"{name} must match k_depth's shape {tuple(k_depth.shape)}, dtype and device; got "
                    f"{tuple(t.shape)} {t.dtype} on {t.device}"
                )
        if dk_depth_acc.stride() != dv_depth_acc.stride() or dk_depth_acc.stride(-1) != 1:
            raise ValueError(
                f"dk_depth_acc and dv_depth_acc must share one stride layout with a contiguous last dim; got "
                f"{dk_depth_acc.stride()} and {dv_depth_acc.stride()}"
            )
    from .function import attn_backward

    return attn_backward(do, q, k, v, k_depth, v_depth, o, lse, causal, scale, dk_depth_acc, dv_depth_acc)
