"""Value residual learning (ResFormer, arXiv 2410.17897): every layer after the first mixes its attention values
with the first layer's, V'_n = lambda_1 V_n + lambda_2 V_1 (the paper's Eq. for ResFormer; the first version's
fixed 1/2 and 1/2, learnable per layer in its later versions), on top of the hidden-state residual stream.

The mix is per token (V_1 of the token itself), so decoding with a KV cache caches the mixed values and needs
only V_1 of the new tokens, which layer 0 computes in the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import DepthMixer, MixerConfig, register_mixer

_FIRST = "value_residual.v1"  # ForwardCtx.state key: layer 0's values [B, T, Hk, d]


@dataclass(frozen=True)
class ValueResidualOptions(MixerConfig):
    """lambda_1 (own values) and lambda_2 (the first layer's) at init, and whether each layer learns them."""

    name: str = "value_residual"
    lambda_own: float = 0.5
    lambda_first: float = 0.5
    learnable: bool = True


@register_mixer("value_residual")
class ValueResidualMixer(DepthMixer):
    Options = ValueResidualOptions

    def __init__(self, cfg, layer: int) -> None:
        super().__init__(cfg, layer)
        opts = cfg.mixer
        lambdas = torch.tensor([opts.lambda_own, opts.lambda_first])
        if layer == 0:
            self.lambdas = None  # layer 0 only hands its values on
        elif opts.learnable:
            self.lambdas = nn.Parameter(lambdas)
        else:
            self.register_buffer("lambdas", lambdas, persistent=False)

    def mix_values(self, v: torch.Tensor, ctx) -> torch.Tensor:
        if self.lambdas is None:
            ctx.state[_FIRST] = v
            return v
        own, first = self.lambdas.to(v.dtype).unbind()
        return own * v + first * ctx.state[_FIRST]

    def flops_per_token(self) -> int:
        # Two multiply-adds per value element (the repository's convention for the mixers' own sums).
        return 0 if self.lambdas is None else 2 * 2 * self.cfg.n_kv_heads * self.cfg.hd
