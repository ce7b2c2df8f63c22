"""DenseFormer depth-weighted average over a preallocated history buffer (arXiv 2402.02622).

``dwa_mix_forward`` / ``dwa_mix_backward`` are the Triton passes (CUDA, or CPU under TRITON_INTERPRET=1), for
callers that own their autograd (the model's history stream, moda_lab/model/depth.py); ``naive_dwa_mix`` and
``naive_dwa_mix_bwd`` are the fp32 reference. Layout: h [B, T, n, D], a prefix view of a [B, T, S, D] buffer.
"""

from __future__ import annotations

from .naive import naive_dwa_mix, naive_dwa_mix_bwd

__all__ = ["dwa_mix_backward", "dwa_mix_forward", "naive_dwa_mix", "naive_dwa_mix_bwd"]


def dwa_mix_forward(h, alpha):
    from .triton_kernels import dwa_mix_forward as fwd  # Triton is imported only when the kernel is used.

    return fwd(h, alpha)


def dwa_mix_backward(g, h, alpha, dh_acc):
    from .triton_kernels import dwa_mix_backward as bwd

    return bwd(g, h, alpha, dh_acc)
