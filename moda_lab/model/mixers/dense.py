"""DenseFormer depth-weighted average (arXiv 2402.02622): after block l the stream is a learned scalar
combination of the embeddings and all block outputs so far, initialised to identity."""

from __future__ import annotations

import torch
from torch import nn

from .base import DepthMixer, StreamSpec, register_mixer


class HiddenStates(DepthMixer):
    """A variant that reads every earlier block's output: the depth stream holds X_0 (the embeddings, put by
    block 0) and X_1..X_L (each block's output, put by the variant's ``write``), one [B, T, D] slot each."""

    @staticmethod
    def stream_spec(cfg) -> StreamSpec:
        return StreamSpec(1, cfg.n_layers + 1, (cfg.d_model,), activations=False)

    def read(self, x, ctx):
        if self.layer == 0:
            ctx.stream.put(x)  # X_0, the embeddings
        return x


@register_mixer("dense")
class DWAMixer(HiddenStates):
    """x_{l+1} = sum_{j<=l+1} alpha_{l,j} X_j, X_0 = embeddings.

    The X_j are slots of the depth stream (written once, read in place; each mix's backward adds alpha_j g into
    the stream's gradient buffer in one pass and reduces dalpha in the same pass), not a re-stacked history."""

    def __init__(self, cfg, layer: int) -> None:
        super().__init__(cfg, layer)
        alpha = torch.zeros(layer + 2)
        alpha[-1] = 1.0  # identity: the block output passes unchanged
        self.alpha = nn.Parameter(alpha)

    def write(self, x, ctx):
        ctx.stream.put(x)  # X_{l+1}, this block's output
        return ctx.stream.mix(self.alpha, kernel=ctx.attn.fused_kernels)

    def flops_per_token(self) -> int:
        return 2 * self.cfg.d_model * (self.layer + 2)
