"""Sinkhorn-Knopp per token, as mHC's residual mapping uses it (arXiv 2512.24880, Eq. 9).

``sinkhorn_forward`` / ``sinkhorn_backward`` are the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1): one
launch each way for all tokens, where the reference's rounds compile to a few small kernels each (the backward
of 20 rounds: ~76 launches a sublayer on the H100, and ~5 s of compile a sublayer); the op and its autograd are
moda_lab/model/mixers/mhc.py's. ``naive_sinkhorn`` and ``naive_sinkhorn_bwd`` are the reference. Layout: fp32
logits [.., n, n], one matrix per token.
"""

from __future__ import annotations

from .naive import naive_sinkhorn, naive_sinkhorn_bwd

__all__ = ["naive_sinkhorn", "naive_sinkhorn_bwd", "sinkhorn_backward", "sinkhorn_forward"]


def sinkhorn_forward(logits, iters):
    from .triton_kernels import sinkhorn_forward as fwd  # Triton is imported only when the kernel is used.

    return fwd(logits, iters)


def sinkhorn_backward(g, logits, iters):
    from .triton_kernels import sinkhorn_backward as bwd

    return bwd(g, logits, iters)
