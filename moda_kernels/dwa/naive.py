"""Reference of the DenseFormer depth-weighted average (arXiv 2402.02622) over a history buffer.

The history of block outputs lives in a buffer H [B, T, S, D] (token-major, one slot per block output, X_0 the
embeddings); layer l's mix reads the prefix of its n = l + 2 slots:

    out[b, t]  = sum_j alpha[j] H[b, t, j]                       (forward)
    dalpha[j]  = sum_{b, t, d} H[b, t, j, d] g[b, t, d]          (backward, g = d loss / d out)
    dH[b, t, j] += alpha[j] g[b, t]                              (added to the history's gradient buffer)
"""

from __future__ import annotations

import torch


def naive_dwa_mix(h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h [B, T, n, D] (a prefix view of the history), alpha [n] -> [B, T, D] in h's dtype (fp32 math)."""
    return torch.einsum("btjd,j->btd", h.float(), alpha.float()).to(h.dtype)


def naive_dwa_mix_bwd(g: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor, dh_acc: torch.Tensor) -> torch.Tensor:
    """Adds alpha[j] g into dh_acc[:, :, j] (same shape as h) in place; returns dalpha [n] in alpha's dtype."""
    gf = g.float()
    dalpha = torch.einsum("btjd,btd->j", h.float(), gf)
    dh_acc.add_((gf.unsqueeze(2) * alpha.float().view(1, 1, -1, 1)).to(dh_acc.dtype))
    return dalpha.to(alpha.dtype)
