"""Boundary checks of the MoDA kernel: shapes, dtypes, devices and memory layouts.

Everything here runs once per call on the host, never inside a kernel. The checks raise
``ValueError`` naming the offending tensor and value, so a wrong call fails before any launch.
"""

from __future__ import annotations

import math

import torch

from ..dispatch import interpreter

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
# Query heads per KV head with depth keys: at most 32 (the paper's largest G, Table 2), so that a depth
# sub-tile of max(16, next power of two >= G) rows fits the smallest row tile (64). Groups that are not powers
# of two get padding rows in the depth phase only (shared.row_group). Sequence-only attention folds any G.
MAX_DEPTH_GROUP = 32


def _check_last_dim(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(
            f"{name} must have a contiguous last (head) dimension, stride(-1) == 1; got strides {tuple(t.stride())}"
        )


def check_moda_inputs(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_depth: torch.Tensor | None,
    v_depth: torch.Tensor | None,
    causal: bool,
    scale: float | None,
) -> float:
    """Validate a ``moda_attn`` call and return the softmax scale to use (1/sqrt(d) by default)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor [B, T, Hq, d]; got {getattr(q, 'shape', type(q))}")
    if (k is None) != (v is None):
        raise ValueError("pass both k and v (sequence keys/values) or neither; got only one of them")
    if (k_depth is None) != (v_depth is None):
        raise ValueError("pass both k_depth and v_depth (depth keys/values) or neither; got only one of them")
    if k is None and k_depth is None:
        raise ValueError("moda_attn needs sequence keys (k, v), depth keys (k_depth, v_depth) or both; got neither")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool; got {causal!r}")
    named = [("q", q)] + [(n, t) for n, t in (("k", k), ("v", v), ("k_depth", k_depth), ("v_depth", v_depth)) if t is not None]

    for name, t in named:
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported dtypes are float16, bfloat16, float32")
        if t.dtype != q.dtype:
            raise ValueError(f"all inputs must share q's dtype {q.dtype}; {name} is {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"all inputs must be on q's device {q.device}; {name} is on {t.device}")
    if q.device.type == "cpu" and not interpreter():
        raise ValueError("moda_attn runs Triton kernels: inputs must be CUDA tensors (CPU works only under TRITON_INTERPRET=1)")
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"moda_attn supports CUDA tensors; got device {q.device}")

    B, T, Hq, d = q.shape
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim d={d} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    Hk = None
    if k is not None:
        if k.dim() != 4 or k.shape[0] != B or k.shape[1] != T or k.shape[3] != d:
            raise ValueError(f"k must be [B, T, Hk, d] = [{B}, {T}, Hk, {d}] to match q {tuple(q.shape)}; got {tuple(k.shape)}")
        if v.shape != k.shape:
            raise ValueError(f"v must have k's shape {tuple(k.shape)}; got {tuple(v.shape)}")
        Hk = k.shape[2]
    if k_depth is not None:
        if k_depth.dim() != 5 or k_depth.shape[0] != B or k_depth.shape[1] != T or k_depth.shape[4] != d:
            raise ValueError(
                f"k_depth must be [B, T, L, Hk, d] = [{B}, {T}, L, Hk, {d}] to match q {tuple(q.shape)}; "
                f"got {tuple(k_depth.shape)}"
            )
        if v_depth.shape != k_depth.shape:
            raise ValueError(f"v_depth must have k_depth's shape {tuple(k_depth.shape)}; got {tuple(v_depth.shape)}")
        if k_depth.shape[2] < 1:
            raise ValueError(f"the depth stream needs L >= 1 slots per token; got L={k_depth.shape[2]}")
        if Hk is not None and k_depth.shape[3] != Hk:
            raise ValueError(f"k_depth has {k_depth.shape[3]} KV heads but k has {Hk}")
        Hk = k_depth.shape[3]
    if Hk < 1 or Hq % Hk:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of KV heads Hk={Hk}")
    if k_depth is not None and Hq // Hk > MAX_DEPTH_GROUP:
        raise ValueError(
            f"GQA group G=Hq/Hk={Hq // Hk} is not supported by the kernel with depth keys; at most "
            f"{MAX_DEPTH_GROUP} (sequence-only attention takes any G)"
        )

    for name, t in named:
        _check_last_dim(name, t)
    for name, t in (("k_depth", k_depth), ("v_depth", v_depth)):
        # Prefix views buf[:, :, :L] of a [B, T, Lmax, Hk, d] buffer are fine: only (Hk, d) must be dense.
        if t is not None and t.stride(-2) != d:
            raise ValueError(
                f"{name} must have dense (Hk, d) trailing dims, stride(-2) == d == {d}; got strides {tuple(t.stride())}"
            )

    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float or None; got {scale!r}")
    return float(scale)
