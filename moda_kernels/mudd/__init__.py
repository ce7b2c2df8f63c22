"""MUDDFormer's per-token multiway mix of a hidden-state history (arXiv 2502.12170, Section 2).

``mudd_mix_forward`` / ``mudd_mix_backward`` are the Triton passes (CUDA, or CPU under TRITON_INTERPRET=1), for
callers that own their autograd (the model's depth stream, moda_lab/model/mixers/mudd.py); ``naive_mudd_mix``
and ``naive_mudd_mix_bwd`` are the fp32 reference. Layout: h [B, T, n, D], a prefix view of a [B, T, S, D]
history buffer (slot j = X_j, X_0 the embeddings); w [B, T, C, n], one weight per token, way and slot; the mix
is [B, T, C, D].
"""

from __future__ import annotations

from .naive import naive_mudd_mix, naive_mudd_mix_bwd

__all__ = ["mudd_mix_backward", "mudd_mix_forward", "naive_mudd_mix", "naive_mudd_mix_bwd"]


def mudd_mix_forward(h, w):
    from .triton_kernels import mudd_mix_forward as fwd  # Triton is imported only when the kernel is used.

    return fwd(h, w)


def mudd_mix_backward(g, h, w, dh_acc):
    from .triton_kernels import mudd_mix_backward as bwd

    return bwd(g, h, w, dh_acc)
