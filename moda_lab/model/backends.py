"""Attention backends: one interface for sequence-only, depth-only and MoDA attention.

``naive``  the fp32 PyTorch reference (moda_kernels/moda/naive.py); any device, any mode.
``sdpa``   torch's scaled_dot_product_attention for sequence-only attention; modes with depth slots use the
           reference, since SDPA cannot put depth slots under the same softmax.
``triton`` the fused MoDA kernel (moda_kernels/moda); CUDA, or CPU under TRITON_INTERPRET=1.
``auto``   triton on CUDA when Triton is installed, otherwise naive.

A backend answers two calls (the ``AttnBackend`` protocol): plain attention over given tensors, and
attention over the forward's depth stream (moda_lab/model/depth.py), whose backward adds the depth gradients
into the stream's gradient buffer. The triton backend runs both through depth.py's one autograd op; what each
call runs (fused kernel or hybrid schedule) is moda_kernels/dispatch.py's plan. The backend is chosen once when
the model is built (``dispatch.choose_backend``, where ``MODA_LAB_ATTN_BACKEND`` overrides the configured
name); it holds no parameters, so switching never changes ``state_dict()`` keys. ``dispatch_record`` is what
a run records of these choices (meta.json).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from moda_kernels.dispatch import BackendChoice, choose_backend, kernel_plan
from moda_kernels.moda import naive_moda_attn

from .depth import DepthStream, kernel_attn

Tensor = torch.Tensor


class AttnBackend(Protocol):
    name: str
    choice: BackendChoice  # set by resolve_backend: what was asked for and what runs
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
    """The MoDA Triton kernels; they fold any GQA group (Table 6's 6 query / 2 KV heads, G=3, included)."""

    name = "triton"
    fused_kernels = True

    def __call__(self, q, k, v, k_depth=None, v_depth=None, *, causal=True):
        if k_depth is None and k is not None:
            return kernel_attn(q, k, v, causal=causal)
        from moda_kernels.moda import moda_attn  # explicit depth tensors: not the model's path (it has a stream)

        return moda_attn(q, k, v, k_depth, v_depth, causal=causal)


BACKENDS = {"naive": NaiveBackend, "sdpa": SdpaBackend, "triton": TritonBackend}


def resolve_backend(name: str) -> AttnBackend:
    """The backend for a name (or ``auto``, or ``MODA_LAB_ATTN_BACKEND``): moda_kernels/dispatch.py decides;
    its ``name`` is the resolved one and ``choice`` the whole decision."""
    choice = choose_backend(name)
    backend = BACKENDS[choice.name]()
    backend.choice = choice
    return backend


# The dtype attention sees under each Lightning precision (mixed precision autocasts the projections).
PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                    "16-true": torch.float16}


def dispatch_record(backend: AttnBackend, *, seq_len: int, n_heads: int, n_kv_heads: int, head_dim: int,
                    precision: str, device: torch.device | str) -> dict:
    """What a run's attention calls run, for its record (meta.json): the backend choice and, for the triton
    backend, the kernel plan of a training call (q [B, seq_len, n_heads, head_dim] under ``precision`` on
    ``device``) without (``seq_only``) and with (``with_depth``) depth keys."""
    record = {"backend": backend.name, "requested": backend.choice.requested, "via_env": backend.choice.via_env}
    if backend.name == "triton":
        dtype = PRECISION_DTYPES.get(precision, torch.float32)
        for key, has_depth in (("seq_only", False), ("with_depth", True)):
            plan = kernel_plan((1, seq_len, n_heads, head_dim), dtype, device, kv_heads=n_kv_heads, has_seq=True,
                               has_depth=has_depth)
            record[key] = str(plan)
    return record
