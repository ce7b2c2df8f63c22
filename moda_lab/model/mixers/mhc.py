"""Manifold-constrained Hyper-Connections (mHC, arXiv 2512.24880): Hyper-Connections whose stream-mixing matrix
is projected onto the doubly stochastic matrices, so that mixing the n copies neither amplifies nor damps them.

Per sublayer, from the flattened, normalised copies x' = RMSNorm(vec(H)) [B, T, n*D] (Eqs. 7-8):

    H_pre  = sigmoid(a_pre  * x' phi_pre  + b_pre)             [n]     the sublayer input  h = H_pre H
    H_post = 2 sigmoid(a_post * x' phi_post + b_post)          [n]     the output into each copy
    H_res  = Sinkhorn-Knopp(a_res * mat(x' phi_res) + b_res)   [n, n]  H' = H_res H + H_post^T T(h)

Sinkhorn-Knopp (Eq. 9): M = exp(H~_res), then ``sinkhorn_iters`` rounds of normalising the columns, then the rows
(the paper's t_max = 20). Finitely many rounds leave H_res only approximately doubly stochastic, the more so the
more peaked it is (mHC-lite, arXiv 2601.05732): exact rows, columns off by up to 1e-5 at this init, more on
strongly peaked matrices. phi is one Linear (counted once per token); a = 0.01 at init. The paper gives no init
for b; here b_pre = logit(1/n) (the input starts as the mean of the copies), b_post = 0 (each copy receives the
output, as Hyper-Connections' B = 1) and b_res = 0 on the diagonal, -2 off it (H_res starts as a mostly-identity
mix: 0.71 on the diagonal for n = 4, where 20 rounds converge; -4 would give 0.95 but leave columns off by 5e-5).

Where the attention backend runs fused kernels (attn_backend=triton, or auto on a GPU), the norm with phi
(moda_kernels/normproj, in fp32) and Sinkhorn-Knopp are one custom op each way (moda_kernels/sinkhorn's Triton
kernels); elsewhere the reference's ops, which torch.compile
unrolls: ~5 s of compile a sublayer at 20 rounds (CPU, 2026-12-07), and ~76 small kernels a sublayer a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from moda_kernels.sinkhorn import naive_sinkhorn, sinkhorn_backward, sinkhorn_forward

from .base import MixerConfig, register_mixer
from .hyper_connections import Connections, WideStreamMixer, normed_projection

_OFF_DIAGONAL = -2.0  # b_res off the diagonal (see the top)


@torch.library.custom_op("moda_lab::sinkhorn", mutates_args=())
def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Sinkhorn-Knopp of fp32 [.., n, n] logits by its Triton kernel (moda_kernels/sinkhorn): one launch, and
    to torch.compile one opaque op (the reference's rounds cost ~5 s of compile a sublayer at 20 rounds)."""
    return sinkhorn_forward(logits, iters)


@sinkhorn.register_fake
def _sinkhorn_fake(logits, iters):
    return torch.empty_like(logits)


@torch.library.custom_op("moda_lab::sinkhorn_bwd", mutates_args=())
def sinkhorn_bwd(g: torch.Tensor, logits: torch.Tensor, iters: int) -> torch.Tensor:
    """d loss / d logits of ``sinkhorn`` by its Triton kernel (recomputes the rounds from the logits)."""
    return sinkhorn_backward(g, logits, iters)


@sinkhorn_bwd.register_fake
def _sinkhorn_bwd_fake(g, logits, iters):
    return torch.empty_like(logits)


def _sinkhorn_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.iters = inputs[1]


def _sinkhorn_backward(ctx, g):
    (logits,) = ctx.saved_tensors
    return sinkhorn_bwd(g.contiguous(), logits, ctx.iters), None


sinkhorn.register_autograd(_sinkhorn_backward, setup_context=_sinkhorn_setup)


def sinkhorn_knopp(logits: torch.Tensor, iters: int, kernel: bool = False) -> torch.Tensor:
    """[.., n, n] fp32 logits -> a doubly stochastic [.., n, n]: exp, then ``iters`` times columns then rows summed
    to 1 (moda_kernels/sinkhorn/naive.py), by the Triton op where the backend runs fused kernels (``kernel``)."""
    return sinkhorn(logits, iters) if kernel else naive_sinkhorn(logits, iters)


@dataclass(frozen=True)
class MhcOptions(MixerConfig):
    """``expansion``: n copies; ``sinkhorn_iters``: Sinkhorn-Knopp rounds (t_max)."""

    name: str = "mhc"
    expansion: int = 4
    sinkhorn_iters: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.expansion < 1:
            raise ValueError(f"model.mixer.expansion={self.expansion} is out of range; allowed: >= 1")
        if self.sinkhorn_iters < 1:
            raise ValueError(f"model.mixer.sinkhorn_iters={self.sinkhorn_iters} is out of range; allowed: >= 1")


class _ManifoldConnection(nn.Module):
    """One sublayer's mHC mappings."""

    def __init__(self, cfg, n: int) -> None:
        super().__init__()
        self.n, self.eps, self.iters = n, cfg.norm_eps, cfg.mixer.sinkhorn_iters
        self.norm_weight = nn.Parameter(torch.ones(n * cfg.d_model))
        self.phi = nn.Linear(n * cfg.d_model, 2 * n + n * n, bias=False)  # [phi_pre | phi_post | phi_res]
        self.alpha = nn.Parameter(torch.full((3,), 0.01))  # a_pre, a_post, a_res
        b_res = torch.full((n, n), _OFF_DIAGONAL).fill_diagonal_(0.0)
        self.bias = nn.Parameter(torch.cat([torch.full((n,), -math.log(n - 1) if n > 1 else 20.0),
                                            torch.zeros(n), b_res.flatten()]))  # [b_pre | b_post | b_res]

    def forward(self, x: torch.Tensor, kernel: bool = False) -> Connections:
        """The mappings from the copies x [B, T, n, D]; ``kernel``: the norm with phi, and Sinkhorn-Knopp, by
        their Triton ops."""
        n = self.n
        flat = x.reshape(*x.shape[:2], -1)  # vec(H) [B, T, n*D]
        # RMSNorm, then phi: [B, T, 2n + n^2], the mappings in fp32
        z = normed_projection(flat, self.norm_weight, self.phi.weight.t(), self.eps, kernel).float()
        a_pre, a_post, a_res = self.alpha.float().unbind()
        b = self.bias.float()
        pre = torch.sigmoid(a_pre * z[..., :n] + b[:n])
        post = 2.0 * torch.sigmoid(a_post * z[..., n : 2 * n] + b[n : 2 * n])
        res = sinkhorn_knopp((a_res * z[..., 2 * n :] + b[2 * n :]).unflatten(-1, (n, n)), self.iters, kernel)
        return Connections(pre, res, post)


@register_mixer("mhc")
class MhcMixer(WideStreamMixer):
    Options = MhcOptions

    def __init__(self, cfg, layer: int) -> None:
        super().__init__(cfg, layer, cfg.mixer.expansion)
        self.attn_hc = _ManifoldConnection(cfg, self.n)
        self.ffn_hc = _ManifoldConnection(cfg, self.n)

    def connections(self, x, sublayer, ctx):
        return (self.attn_hc if sublayer == "attn" else self.ffn_hc)(x, ctx.attn.fused_kernels)

    def connection_flops(self) -> int:
        return 0  # phi is a Linear (GPT.matmul_params); the norm, sigmoids and Sinkhorn-Knopp are not counted
