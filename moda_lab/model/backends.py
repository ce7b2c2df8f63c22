"""Attention backends: one interface for sequence-only, depth-only and MoDA attention.

``naive``  the fp32 PyTorch reference (moda_kernels/moda/naive.py); any device, any mode.
``sdpa``   torch's scaled_dot_product_attention for sequence-only attention; modes with depth slots use the
           reference, since SDPA cannot put depth slots under the same softmax.
``triton`` the fused MoDA kernel (moda_kernels/moda); CUDA, or CPU under TRITON_INTERPRET=1.
``auto``   triton on CUDA when Triton imports, otherwise naive.

A backend answers two calls (the ``AttnBackend`` protocol): plain attention over given tensors, and
attention over the forward's depth stream (moda_lab/model/depth.py), whose backward adds the depth gradients
into the stream's gradient buffer. The backend is resolved once when the model is built; it holds no
parameters, so switching never changes ``state_dict()`` keys. ``MODA_LAB_ATTN_BACKEND`` overrides the
configured choice (tests, debugging).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
import torch.nn.functional as F

from moda_kernels.moda import naive_moda_attn

from .config import BACKEND_NAMES
from .depth import DepthStream

OVERRIDE_ENV = "MODA_LAB_ATTN_BACKEND"
Tensor = torch.Tensor


class AttnBackend(Protocol):
    name: str
    fused_kernels: bool  # the depth stream's ops (attention, DWA mix) run their Triton kernels

    def __call__(self, q: Tensor, k: Tensor | None, v: Tensor | None, k_depth: Tensor | None = None,
                 v_depth: Tensor | None = None, *, causal: bool = True) -> Tensor:
        """q [B, T, Hq, d] over k, v [B, S, Hk, d] and k_depth, v_depth [B, T, L, Hk, d] (either set may be None)."""

    def stream(self, q: Tensor, k: Tensor | None, v: Tensor | None, stream: DepthStream, *,
               causal: bool = True) -> Tensor:
        """q over k, v and every slot of ``stream`` written so far (at least one)."""


class _StreamAttention:
    """Attention over the depth stream, with its Triton kernels when the backend's ``fused_kernels`` is set."""

    fused_kernels = False

    def stream(self, q, k, v, stream, *, causal=True):
        return stream.attend(q, k, v, causal=causal, kernel=self.fused_kernels)


class NaiveBackend(_StreamAttention):
    name = "naive"

    def __call__(self, q, k, v, k_depth=None, v_depth=None, *, causal=True):
        return naive_moda_attn(q, k, v, k_depth, v_depth, causal=causal)


class SdpaBackend(NaiveBackend):
    name = "sdpa"

    def __call__(self, q, k, v, k_depth=None, v_depth=None, *, causal=True):
        if k_depth is not None or k is None:
            return naive_moda_attn(q, k, v, k_depth, v_depth, causal=causal)
        G = q.shape[2] // k.shape[2]
        # SDPA wants [B, H, T, d]; GQA is expanded here (enable_gqa is not available on every backend).
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        if G > 1:
            kt, vt = kt.repeat_interleave(G, dim=1), vt.repeat_interleave(G, dim=1)
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)


class TritonBackend(_StreamAttention):
    """The fused kernel; it folds any GQA group (Table 6's 6 query / 2 KV heads, G=3, included)."""

    name = "triton"
    fused_kernels = True

    def __init__(self) -> None:
        try:
            from moda_kernels.moda import moda_attn
        except ImportError as err:  # triton missing or broken
            raise RuntimeError(f"model.attn_backend='triton' needs a working Triton install: {err}") from err
        self._attn = moda_attn

    def __call__(self, q, k, v, k_depth=None, v_depth=None, *, causal=True):
        return self._attn(q, k, v, k_depth, v_depth, causal=causal)


def triton_usable() -> bool:
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        TritonBackend()
    except RuntimeError:
        return False
    return True


def resolve_backend(name: str) -> AttnBackend:
    """The backend for a name (or ``auto``); its ``name`` is the resolved one."""
    name = os.environ.get(OVERRIDE_ENV, name)
    if name not in BACKEND_NAMES:
        raise ValueError(f"attention backend {name!r} is not allowed; choose one of {list(BACKEND_NAMES)}")
    if name == "auto":
        name = "triton" if torch.cuda.is_available() and triton_usable() else "naive"
    return {"naive": NaiveBackend, "sdpa": SdpaBackend, "triton": TritonBackend}[name]()
