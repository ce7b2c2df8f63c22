"""One Attention Residuals read (arXiv 2603.15031) over a prefix of the depth stream (moda_lab/model/depth.py).

``attnres_read_forward`` / ``attnres_read_backward`` are the Triton kernels (CUDA, or CPU under
TRITON_INTERPRET=1), for callers that own their autograd (moda_lab/model/mixers/attnres.py): the forward returns
the output, the softmax's log-sum-exp and the output's rounding residual, which the backward takes back;
``naive_attnres_read`` and ``naive_attnres_read_bwd`` are the fp32 reference. Layout: h [B, T, n, D], a prefix
view of a [B, T, S, D] buffer; the partial sum ``last`` [B, T, D] is one more source.
"""

from __future__ import annotations

from .naive import naive_attnres_read, naive_attnres_read_bwd

__all__ = ["attnres_read_backward", "attnres_read_forward", "backward_reads_forward", "naive_attnres_read",
           "naive_attnres_read_bwd"]


def backward_reads_forward(D: int) -> bool:
    """Whether the kernel's backward at width D takes the forward's (out, lse, lo) back (the one-pass schedule);
    the two-pass backward recomputes everything, so a caller need not keep them."""
    from .triton_kernels import schedule

    return schedule(D, "bwd") is not None


def attnres_read_forward(h, last, query, gain, eps):
    from .triton_kernels import attnres_read_forward as fwd  # Triton is imported only when the kernel is used.

    return fwd(h, last, query, gain, eps)


def attnres_read_backward(g, h, last, query, gain, eps, dh_acc, out, lse, lo):
    from .triton_kernels import attnres_read_backward as bwd

    return bwd(g, h, last, query, gain, eps, dh_acc, out, lse, lo)
