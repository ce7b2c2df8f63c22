"""Hyper-Connections (arXiv 2409.19606): the residual stream widened to n copies H [B, T, n, D] with learned
connection weights around every sublayer (attention and FFN each count as a layer T):

    h   = A_m^T H                       width connection: the sublayer's input, a weighted sum of the copies
    H'  = B^T T(h) + A_r^T H            depth connection: the output into each copy, plus a mix of the copies

Static weights (SHC) are parameters per sublayer, initialised as the paper's Pre-Norm equivalent: A_m = e_{k mod n}
for the k-th sublayer, A_r = I, B = 1. Dynamic weights (DHC) add per-token terms from the normalised copies
H_bar = norm(H): B(H) = s_b tanh(H_bar W_b)^T + B, [A_m(H) A_r(H)] = s_a tanh(H_bar W_a) + [A_m A_r], with
W_b, W_a zero-initialised and s_a, s_b = 0.01 (the paper's init; its norm is the decoder's RMSNorm here).
Block 0 tiles the embeddings into n copies; the last block sums the copies for the head.

``WideStreamMixer`` holds what Hyper-Connections and mHC (mhc.py) share: the n-copy stream, the inputs and the
combine; a subclass gives each sublayer's connection weights. Every weight is applied with a matmul (counted by
torch.utils.flop_counter as flops_per_token counts it); summing the copies at the end, like the residual adds, is
not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import DepthMixer, MixerConfig, register_mixer


class Connections(NamedTuple):
    """One sublayer's connection weights, static ([n], [n, n]) or per token ([B, T, n], [B, T, n, n]).

    pre[i]: copy i's weight in the sublayer input; res[j, i]: copy i's weight in new copy j (H' = res H);
    post[j]: the sublayer output's weight in new copy j."""

    pre: torch.Tensor
    res: torch.Tensor
    post: torch.Tensor


class Skip(NamedTuple):
    """What a sublayer's input and combine share: the mixed copies (times the placement's gain) and the weights."""

    kept: torch.Tensor  # [B, T, n, D]
    pre: torch.Tensor
    post: torch.Tensor


class WideStreamMixer(DepthMixer):
    """A stream of n copies [B, T, n, D]; subclasses implement ``connections`` and ``connection_flops``."""

    flops_seen_by_counter = True  # every weight is applied by a matmul

    def __init__(self, cfg, layer: int, n: int) -> None:
        super().__init__(cfg, layer)
        self.n = n

    def connections(self, x: torch.Tensor, sublayer: str) -> Connections:
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
        c = self.connections(x, sublayer)
        kept = torch.matmul(c.res.to(x.dtype), x)  # [.., n, n] @ [B, T, n, D]: sum_i res[j, i] H_i
        return Skip(kept if place.gain == 1.0 else place.gain * kept, c.pre, c.post)

    def _input(self, x, skip: Skip, place):
        h = torch.matmul(skip.pre.to(x.dtype).unsqueeze(-2), x).squeeze(-2)  # [.., 1, n] @ [B, T, n, D]
        return place.norm_input(h)

    def attn_inputs(self, x, skip, place, ctx):
        h = self._input(x, skip, place)
        return h, h, h

    def ffn_input(self, x, skip, place, ctx):
        return self._input(x, skip, place)

    def combine(self, skip, y, place, sublayer, ctx):
        y = place.norm_output(y)
        out = torch.matmul(skip.post.to(y.dtype).unsqueeze(-1), y.unsqueeze(-2))  # [.., n, 1] @ [B, T, 1, D]
        return place.norm_combined(skip.kept + out)

    def flops_per_token(self) -> int:
        n, D = self.n, self.cfg.d_model
        apply = 2 * n * D + 2 * n * n * D + 2 * n * D  # input, copy mix, output into the copies
        return 2 * (apply + self.connection_flops())  # attention and FFN


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

    def forward(self, x: torch.Tensor) -> Connections:
        if not self.dynamic:
            return Connections(self.pre, self.res, self.post)
        h = F.rms_norm(x, x.shape[-1:], self.norm_weight.to(x.dtype), self.eps)  # H_bar [B, T, n, D]
        z = torch.tanh(torch.matmul(h, self.w.to(x.dtype)))  # [B, T, n, n + 2]
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

    def connections(self, x, sublayer):
        return (self.attn_hc if sublayer == "attn" else self.ffn_hc)(x)

    def connection_flops(self) -> int:
        n, D = self.n, self.cfg.d_model
        return 2 * n * D * (n + 2) if self.cfg.mixer.dynamic else 0  # H_bar W per copy (norm, tanh not counted)
