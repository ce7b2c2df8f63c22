"""Reference of an RMSNorm followed by a skinny projection, as Hyper-Connections' dynamic weights and mHC's
mappings compute them from the wide stream (moda_lab/model/mixers/hyper_connections.py, mhc.py):

    z = RMSNorm(x; weight, eps) @ proj          x [.., K], weight [K], proj [K, M] with M small (n + 2, 2n + n^2)

in fp32 whatever the inputs' dtypes. Its gradients are autograd's through these ops in fp64
(naive_norm_proj_bwd): the Triton backward is checked against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_norm_proj(x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor, eps: float) -> torch.Tensor:
    """[.., K] -> [.., M] fp32 (fp64 for fp64 x): RMSNorm over the last axis (scaled by ``weight``), then @ proj."""
    dt = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for the gradient reference
    h = F.rms_norm(x.to(dt), x.shape[-1:], weight.to(dt), eps)
    return h @ proj.to(dt)


def naive_norm_proj_bwd(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d x, d weight, d proj) given dz = d loss / d naive_norm_proj(x, weight, proj, eps), each in its input's
    dtype (fp64 math)."""
    with torch.enable_grad():
        leaves = [t.detach().double().requires_grad_() for t in (x, weight, proj)]
        grads = torch.autograd.grad(naive_norm_proj(*leaves, eps).double(), leaves, dz.double())
    return tuple(g.to(t.dtype) for g, t in zip(grads, (x, weight, proj)))
