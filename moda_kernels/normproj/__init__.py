"""RMSNorm followed by a skinny projection: the per-token weights of Hyper-Connections (H_bar W, n + 2 columns)
and mHC (phi of the flattened copies, 2n + n^2 columns) from the wide stream.

``norm_proj_forward`` / ``norm_proj_backward`` are the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1),
one read of x each way, where the compiled reference writes the normalised copies and reads them back for a GEMM
of a few columns, forward and backward (bench_hc_weights.py: 81 ms a 24-layer step for HC on an H100, against a
floor of ~13 ms). The op and its autograd are moda_lab/model/mixers/hyper_connections.py's.
``naive_norm_proj`` and ``naive_norm_proj_bwd`` are the reference. Layout: x [.., K] (rows contiguous), weight [K],
proj [K, M] (any strides); z and the rows' rstd come back in fp32. ``tf32``: the two products' dots take tf32
inputs (tensor cores) instead of full fp32.
"""

from __future__ import annotations

from .naive import naive_norm_proj, naive_norm_proj_bwd

__all__ = ["naive_norm_proj", "naive_norm_proj_bwd", "norm_proj_backward", "norm_proj_forward"]


def norm_proj_forward(x, weight, proj, eps, tf32=False):
    from .triton_kernels import norm_proj_forward as fwd  # Triton is imported only when the kernel is used.

    return fwd(x, weight, proj, eps, tf32)


def norm_proj_backward(dz, x, weight, proj, z, rstd, tf32=False):
    from .triton_kernels import norm_proj_backward as bwd

    return bwd(dz, x, weight, proj, z, rstd, tf32)
