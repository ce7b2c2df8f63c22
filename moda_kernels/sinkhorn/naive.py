"""Reference of Sinkhorn-Knopp as mHC uses it (arXiv 2512.24880, Eq. 9): per token, an [n, n] matrix of logits
to an approximately doubly stochastic matrix.

    M_0 = exp(L - max L)                                   (the max: every normalisation below is scale-free)
    M_k = T_r(T_c(M_{k-1})),  k = 1 .. iters               T_c: columns summed to 1, T_r: rows summed to 1

Its gradient is autograd's through these ops (naive_sinkhorn_bwd): the Triton backward is checked against it.
"""

from __future__ import annotations

import torch


def naive_sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """[.., n, n] logits -> [.., n, n]: exp, then ``iters`` times columns then rows summed to 1."""
    m = torch.exp(logits - logits.amax(dim=(-1, -2), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(dim=-2, keepdim=True)  # T_c: columns
        m = m / m.sum(dim=-1, keepdim=True)  # T_r: rows
    return m


def naive_sinkhorn_bwd(g: torch.Tensor, logits: torch.Tensor, iters: int) -> torch.Tensor:
    """d loss / d logits, given g = d loss / d naive_sinkhorn(logits, iters) (fp64 math, logits' dtype)."""
    with torch.enable_grad():
        x = logits.detach().double().requires_grad_()
        (dl,) = torch.autograd.grad(naive_sinkhorn(x, iters), x, g.double())
    return dl.to(logits.dtype)
