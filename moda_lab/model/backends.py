"""Attention backend switch: one call site for sequence-only, depth-only and MoDA attention.

``naive``  the fp32 PyTorch reference (kernels/moda/naive.py); any device, any mode.
``sdpa``   torch's scaled_dot_product_attention for sequence-only attention; modes with depth slots use the
           reference, since SDPA cannot put depth slots under the same softmax.
``triton`` the fused MoDA kernel (kernels/moda); CUDA, or CPU under TRITON_INTERPRET=1.
``auto``   triton on CUDA when Triton imports, otherwise naive.

The backend is resolved once when the model is built; it holds no parameters, so switching never changes
``state_dict()`` keys. ``MODA_LAB_ATTN_BACKEND`` overrides the configured choice (tests, debugging).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.moda.naive import naive_moda_attn

from .config import BACKEND_NAMES

AttnFn = Callable[..., torch.Tensor]
OVERRIDE_ENV = "MODA_LAB_ATTN_BACKEND"


def _sdpa_attn(q, k, v, k_depth=None, v_depth=None, *, causal=True, scale=None):
    if k_depth is not None or k is None:
        return naive_moda_attn(q, k, v, k_depth, v_depth, causal=causal, scale=scale)
    G = q.shape[2] // k.shape[2]
    # SDPA wants [B, H, T, d]; GQA is expanded here (enable_gqa is not available on every backend).
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if G > 1:
        kt, vt = kt.repeat_interleave(G, dim=1), vt.repeat_interleave(G, dim=1)
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
    return out.transpose(1, 2)


def _triton_attn():
    try:
        from kernels.moda import moda_attn
        from kernels.moda._validate import SUPPORTED_GROUPS
    except ImportError as err:  # triton missing or broken
        raise RuntimeError(f"model.attn_backend='triton' needs a working Triton install: {err}") from err

    def attn(q, k, v, k_depth=None, v_depth=None, *, causal=True, scale=None):
        Hk = (k if k is not None else k_depth).shape[-2]
        B, T, Hq, d = q.shape
        G = Hq // Hk
        if G in SUPPORTED_GROUPS or k_depth is None:
            return moda_attn(q, k, v, k_depth, v_depth, causal=causal, scale=scale)
        # With depth keys the kernel folds power-of-two groups into time. Another group (e.g. Table 6's 6 query /
        # 2 KV heads, G=3) gets zero query heads up to the next power of two: one launch that reads the depth
        # stream and writes its gradient once. A padded head's output is dropped, so its dO is zero and it adds
        # nothing to any gradient; it costs (Gp - G) / G more attention arithmetic.
        Gp = next(s for s in SUPPORTED_GROUPS if s >= G)
        qp = F.pad(q.view(B, T, Hk, G, d), (0, 0, 0, Gp - G)).view(B, T, Hk * Gp, d)
        out = moda_attn(qp, k, v, k_depth, v_depth, causal=causal, scale=scale)
        return out.view(B, T, Hk, Gp, d)[:, :, :, :G].reshape(B, T, Hq, d)

    return attn


def triton_usable() -> bool:
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        _triton_attn()
    except RuntimeError:
        return False
    return True


def resolve_backend(name: str) -> tuple[str, AttnFn]:
    """Map a backend name (or ``auto``) to (resolved name, attention function)."""
    name = os.environ.get(OVERRIDE_ENV, name)
    if name not in BACKEND_NAMES:
        raise ValueError(f"attention backend {name!r} is not allowed; choose one of {list(BACKEND_NAMES)}")
    if name == "auto":
        name = "triton" if torch.cuda.is_available() and triton_usable() else "naive"
    if name == "naive":
        return name, naive_moda_attn
    if name == "sdpa":
        return name, _sdpa_attn
    return name, _triton_attn()
