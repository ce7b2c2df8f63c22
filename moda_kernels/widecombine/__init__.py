"""The wide stream's combine: the n copies mixed, the sublayer's output added into each copy and, under
post-norm, every copy normalised, for Hyper-Connections and mHC (math: naive.py).

``wide_combine_forward`` / ``wide_combine_backward`` are the Triton kernels (CUDA, or CPU under
TRITON_INTERPRET=1): a program holds whole rows of every copy, so the forward reads the copies and the output
once and writes the new copies once, and the backward reads the copies, the output and d out once and writes d
copies and d output once, the norm's and the weights' reductions included. Compiled, the same ops took two
kernels of ~1.1 ms a sublayer under post-norm plus ~0.44 ms of weight-gradient reductions, where the reads and
writes are ~0.45 ms at the H100's bandwidth (issue 30's profile, 2026-12-07). ``fits`` says whether a
shape takes the kernels (whole rows in registers: at most MAX_COPIES copies of at most MAX_WIDTH). The op and its autograd are
moda_lab/model/mixers/wide_combine.py's. ``naive_wide_combine`` and ``naive_wide_combine_bwd`` are the reference.
"""

from __future__ import annotations

from .naive import naive_wide_combine, naive_wide_combine_bwd

__all__ = ["MAX_COPIES", "MAX_WIDTH", "fits", "naive_wide_combine", "naive_wide_combine_bwd", "wide_combine_backward",
           "wide_combine_forward"]

MAX_COPIES = 4  # the copies a program holds as named tiles (triton_kernels.py)
MAX_WIDTH = 2048  # the widest copy: the backward at 8 warps holds ~8 elements a thread of each of ~14 tiles


def fits(n: int, d: int) -> bool:
    """Whether copies of n x d take the kernels."""
    return 1 <= n <= MAX_COPIES and 1 <= d <= MAX_WIDTH


def wide_combine_forward(x, y, res, post, weight, gain, eps):
    from .triton_kernels import wide_combine_forward as fwd  # Triton is imported only when the kernel is used.

    return fwd(x, y, res, post, weight, gain, eps)


def wide_combine_backward(dout, x, y, res, post, weight, rstd, gain):
    from .triton_kernels import wide_combine_backward as bwd

    return bwd(dout, x, y, res, post, weight, rstd, gain)
