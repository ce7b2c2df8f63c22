"""Hyper-Connections (arXiv 2409.19606): the residual stream widened to n copies H [B, T, n, D] with learned
connection weights around every sublayer (attention and FFN each count as a layer T):

    h   = A_m^T H                       width connection: the sublayer's input, a weighted sum of the copies
    H'  = B^T T(h) + A_r^T H            depth connection: the output into each copy, plus a mix of the copies

Static weights (SHC) are parameters per sublayer, initialised as the paper's Pre-Norm equivalent: A_m = e_{k mod n}
for the k-th sublayer, A_r = I, B = 1. Dynamic weights (DHC) add per-token terms from the normalised copies
H_bar = norm(H): B(H) = s_b tanh(H_bar W_b)^T + B, [A_m(H) A_r(H)] = s_a tanh(H_bar W_a) + [A_m A_r], with
W_b, W_a zero-initialised and s_a, s_b = 0.01 (the paper's init; its norm is the decoder's RMSNorm here). Where
the backend runs fused kernels, H_bar W is one Triton op each way (``norm_proj``, moda_kernels/normproj, fp32):
one read of the copies, where the compiled norm and GEMM of n + 2 columns took 81 ms of a 24-layer H100 step.
The combine has a Triton op too (wide_combine.py), used only with MODA_WIDE_COMBINE=1: it measured slower than
the compiled multiply-adds below (moda_kernels/dispatch.py, ``wide_combine_kernel``).
Block 0 tiles the embeddings into n copies; the last block sums the copies for the head.

``WideStreamMixer`` holds what Hyper-Connections and mHC (mhc.py) share: the n-copy stream, the inputs and the
combine; a subclass gives each sublayer's connection weights. The weights are applied as broadcast multiply-adds
unrolled over the n copies, which torch.compile fuses into passes over the stream: the copy mix and the output
into the copies run in the combine, as one expression. As batched matmuls with an inner size of n (and an outer
product as a matmul of inner size 1) they took ~190 of a 390 ms step on an H100 (issue 30's profile, 2026-12-07).
Summing the copies at the end, like the residual adds, is not counted as FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from moda_kernels.dispatch import wide_combine_kernel
from moda_kernels.normproj import norm_proj_backward, norm_proj_forward

from .base import DepthMixer, MixerConfig, register_mixer
from .wide_combine import combine_copies, fits


@torch.library.custom_op("moda_lab::norm_proj", mutates_args=())
def norm_proj(x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor, eps: float,
              tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x; weight, eps) @ proj, the rows' rstd), both fp32, by the Triton kernel (moda_kernels/normproj):
    one read of x, where the compiled ops write the normalised x and read it back for a GEMM of a few columns.
    ``tf32``: the kernel's dots take tf32 inputs, forward and backward (the model keeps full fp32)."""
    return norm_proj_forward(x, weight, proj, eps, tf32)


@norm_proj.register_fake
def _norm_proj_fake(x, weight, proj, eps, tf32=False):
    lead = x.shape[:-1]
    return x.new_empty(*lead, proj.shape[1], dtype=torch.float32), x.new_empty(lead, dtype=torch.float32)


@torch.library.custom_op("moda_lab::norm_proj_bwd", mutates_args=())
def norm_proj_bwd(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor, z: torch.Tensor,
                  rstd: torch.Tensor, tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d x, d weight, d proj) of ``norm_proj`` by its Triton kernel: one read of x, one write of d x."""
    return norm_proj_backward(dz, x, weight, proj, z, rstd, tf32)


@norm_proj_bwd.register_fake
def _norm_proj_bwd_fake(dz, x, weight, proj, z, rstd, tf32=False):
    return torch.empty_like(x), torch.empty_like(weight), proj.new_empty(proj.shape)


def _norm_proj_setup(ctx, inputs, output):
    x, weight, proj, _, tf32 = inputs
    ctx.tf32 = tf32
    ctx.save_for_backward(x, weight, proj, *output)


def _norm_proj_backward(ctx, dz, _drstd):
    x, weight, proj, z, rstd = ctx.saved_tensors
    return (*norm_proj_bwd(dz.contiguous(), x, weight, proj, z, rstd, ctx.tf32), None, None)


norm_proj.register_autograd(_norm_proj_backward, setup_context=_norm_proj_setup)


def normed_projection(x: torch.Tensor, weight: torch.Tensor, proj: torch.Tensor, eps: float,
                      kernel: bool, tf32: bool = False) -> torch.Tensor:
    """RMSNorm(x; weight) @ proj [K, M], the weights' logits from the copies: by the Triton op in fp32 where the
    backend runs fused kernels (``kernel``), else as a norm and a matmul in x's dtype."""
    if kernel:
        return norm_proj(x, weight, proj, eps, tf32)[0]
    h = F.rms_norm(x, x.shape[-1:], weight.to(x.dtype), eps)
    return torch.matmul(h, proj.to(x.dtype))


class Connections(NamedTuple):
    """One sublayer's connection weights, static ([n], [n, n]) or per token ([B, T, n], [B, T, n, n]).

    pre[i]: copy i's weight in the sublayer input; res[j, i]: copy i's weight in new copy j (H' = res H);
    post[j]: the sublayer output's weight in new copy j."""

    pre: torch.Tensor
    res: torch.Tensor
    post: torch.Tensor


class Skip(NamedTuple):
    """What a sublayer's input and combine share: the copies before the sublayer, their weights and the
    placement's gain on the mixed copies."""

    x: torch.Tensor  # [B, T, n, D]
    c: Connections
    gain: float


def read_copies(pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i pre[.., i] H_i: weights [n] or [B, T, n], copies x [B, T, n, D] -> [B, T, D]."""
    out = pre[..., 0, None] * x[..., 0, :]
    for i in range(1, x.shape[-2]):
        out = out + pre[..., i, None] * x[..., i, :]
    return out


def mix_copies(res: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H'_j = sum_i res[.., j, i] H_i: weights [n, n] or [B, T, n, n], copies x [B, T, n, D] -> [B, T, n, D]."""
    out = res[..., :, 0, None] * x[..., 0, None, :]
    for i in range(1, x.shape[-2]):
        out = out + res[..., :, i, None] * x[..., i, None, :]
    return out


def mix_and_add(x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor, gain: float) -> torch.Tensor:
    """gain * res x + post y, the new copies before the placement's norm of the combined stream: copies x
    [B, T, n, D], output y [B, T, D], weights res [n, n] or [B, T, n, n], post [n] or [B, T, n]."""
    kept = mix_copies(res.to(x.dtype), x)
    out = post.to(y.dtype)[..., :, None] * y.unsqueeze(-2)  # [.., n, 1] * [B, T, 1, D]
    return (kept if gain == 1.0 else gain * kept) + out


class WideStreamMixer(DepthMixer):
    """A stream of n copies [B, T, n, D]; subclasses implement ``connections`` and ``connection_flops``."""

    def __init__(self, cfg, layer: int, n: int) -> None:
        super().__init__(cfg, layer)
        self.n = n

    def connections(self, x: torch.Tensor, sublayer: str, ctx) -> Connections:
        """Sublayer ``sublayer``'s weights from the copies x; ctx: the forward's (ForwardCtx)."""
        raise NotImplementedError

    def connection_flops(self) -> int:
        """FLOPs per token of computing one sublayer's weights (beyond applying them)."""
        raise NotImplementedError

    def read(self, x, ctx):
        if self.layer == 0:  # H^0: n copies of the embeddings
            return x.unsqueeze(2).expand(-1, -1, self.n, -1)
        return x

    def write(self, x, ctx):
        return x.sum(2) if self.layer == self.cfg.n_layers - 1 else x

    def skip(self, x, place, sublayer, ctx) -> Skip:
        return Skip(x, self.connections(x, sublayer, ctx), place.gain)

    def _input(self, x, skip: Skip, place):
        return place.norm_input(read_copies(skip.c.pre.to(x.dtype), x))

    def attn_inputs(self, x, skip, place, ctx):
        h = self._input(x, skip, place)
        return h, h, h

    def ffn_input(self, x, skip, place, ctx):
        return self._input(x, skip, place)

    def combine(self, skip, y, place, sublayer, ctx):
        y = place.norm_output(y)
        if ctx.attn.fused_kernels and wide_combine_kernel() and fits(self.n, self.cfg.d_model):
            return combine_copies(skip.x, y, skip.c.res, skip.c.post, place.combined_norm(), skip.gain)
        return place.norm_combined(mix_and_add(skip.x, y, skip.c.res, skip.c.post, skip.gain))

    def _apply_flops(self) -> int:
        n, D = self.n, self.cfg.d_model
        return 2 * n * D + 2 * n * n * D + 2 * n * D  # input, copy mix, output into the copies

    def flops_per_token(self) -> int:
        return 2 * (self._apply_flops() + self.connection_flops())  # attention and FFN

    def flops_unseen_by_counter(self) -> int:
        return 2 * self._apply_flops()  # broadcast multiply-adds; the connections' matmuls are seen


@dataclass(frozen=True)
class HyperConnectionsOptions(MixerConfig):
    """``expansion``: n, the number of copies (the paper's expansion rate); ``dynamic``: DHC (per-token weights
    on top of the static ones) or SHC (static only)."""

    name: str = "hyper_connections"
    expansion: int = 4
    dynamic: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.expansion < 1:
            raise ValueError(f"model.mixer.expansion={self.expansion} is out of range; allowed: >= 1")


class _HyperConnection(nn.Module):
    """The static (and dynamic) weights of the k-th sublayer."""

    def __init__(self, cfg, n: int, k: int, dynamic: bool) -> None:
        super().__init__()
        pre = torch.zeros(n)
        pre[k % n] = 1.0
        self.pre = nn.Parameter(pre)  # A_m
        self.res = nn.Parameter(torch.eye(n))  # A_r^T (the identity either way)
        self.post = nn.Parameter(torch.ones(n))  # B
        self.dynamic = dynamic
        if dynamic:
            D = cfg.d_model
            self.norm_weight = nn.Parameter(torch.ones(D))
            self.eps = cfg.norm_eps
            self.w = nn.Parameter(torch.zeros(D, n + 2))  # [W_b | W_m | W_r]: zero, so DHC starts as SHC
            self.scale = nn.Parameter(torch.full((2,), 0.01))  # s_b, s_a

    def forward(self, x: torch.Tensor, kernel: bool = False) -> Connections:
        """The weights from the copies x [B, T, n, D]; ``kernel``: H_bar W by the Triton op (fp32)."""
        if not self.dynamic:
            return Connections(self.pre, self.res, self.post)
        z = torch.tanh(normed_projection(x, self.norm_weight, self.w, self.eps, kernel))  # [B, T, n, n + 2]
        s_b, s_a = self.scale.unbind()
        post = s_b * z[..., 0] + self.post  # B(H)[j]: from copy j
        pre = s_a * z[..., 1] + self.pre  # A_m(H)[i]: from copy i
        res = s_a * z[..., 2:].transpose(-1, -2) + self.res  # A_r(H)[i, j] from copy i, stored as res[j, i]
        return Connections(pre, res, post)


@register_mixer("hyper_connections")
class HyperConnectionsMixer(WideStreamMixer):
    Options = HyperConnectionsOptions

    def __init__(self, cfg, layer: int) -> None:
        opts = cfg.mixer
        super().__init__(cfg, layer, opts.expansion)
        self.attn_hc = _HyperConnection(cfg, self.n, 2 * layer, opts.dynamic)
        self.ffn_hc = _HyperConnection(cfg, self.n, 2 * layer + 1, opts.dynamic)

    def connections(self, x, sublayer, ctx):
        return (self.attn_hc if sublayer == "attn" else self.ffn_hc)(x, ctx.attn.fused_kernels)

    def connection_flops(self) -> int:
        n, D = self.n, self.cfg.d_model
        return 2 * n * D * (n + 2) if self.cfg.mixer.dynamic else 0  # H_bar W per copy (norm, tanh not counted)
