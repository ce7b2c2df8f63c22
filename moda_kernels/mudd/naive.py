"""Reference of MUDDFormer's per-token multiway mix (arXiv 2502.12170, Section 2) over a history buffer.

Layer i's mixes read the prefix of its n = i + 2 slots H[b, t, :n] (X_0 the embeddings, X_j block j's output):

    out[b, t, c]   = sum_j w[b, t, c, j] H[b, t, j]                   (forward, one mix per way c)
    dw[b, t, c, j] = sum_d H[b, t, j, d] g[b, t, c, d]                 (backward, g = d loss / d out)
    dH[b, t, j]   += sum_c w[b, t, c, j] g[b, t, c]                    (added to the history's gradient buffer)

Unlike DenseFormer's mix (moda_kernels/dwa) the weights differ per token, so dw is not reduced over (b, t).
"""

from __future__ import annotations

import torch


def naive_mudd_mix(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h [B, T, n, D] (a prefix view of the history), w [B, T, C, n] -> [B, T, C, D] in h's dtype (fp32 math)."""
    return torch.einsum("btjd,btcj->btcd", h.float(), w.float()).to(h.dtype)


def naive_mudd_mix_bwd(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, dh_acc: torch.Tensor) -> torch.Tensor:
    """Adds sum_c w[:, :, c, j] g[:, :, c] into dh_acc[:, :, j] (same shape as h) in place; returns dw
    [B, T, C, n] in w's dtype."""
    gf = g.float()
    dw = torch.einsum("btjd,btcd->btcj", h.float(), gf)
    dh_acc.add_(torch.einsum("btcj,btcd->btjd", w.float(), gf).to(dh_acc.dtype))
    return dw.to(w.dtype)
