"""Depth attention: before block l, the token's query attends over K/V written for the same token by every
earlier layer (and the embeddings); the read is added through a zero-initialised output projection, so the model
starts as the residual baseline."""

from __future__ import annotations

from torch import nn

from moda_kernels.moda.naive import naive_moda_attn

from ..attention import KVProjection
from ..layers import RMSNorm
from .base import DepthMixer, StreamSpec, register_mixer


@register_mixer("depth_attn")
class DepthAttnMixer(DepthMixer):
    """A query of the stream attends over K/V of the same token from all earlier layers."""

    def __init__(self, cfg, layer: int) -> None:
        super().__init__(cfg, layer)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.hd, bias=False)
        self.q_norm = RMSNorm(cfg.hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.kv = KVProjection(cfg)
        self.wo = nn.Linear(cfg.n_heads * cfg.hd, cfg.d_model, bias=False)
        self.wo.zero_init = True  # GPT.init_weights: start as the residual stream

    @staticmethod
    def stream_spec(cfg) -> StreamSpec:
        return StreamSpec(2, cfg.n_layers, (cfg.n_kv_heads, cfg.hd))

    def read(self, x, ctx):
        B, T, _ = x.shape
        h = self.norm(x)
        ctx.stream.put(*self.kv(h, ctx))  # slots 0..l: the stream entering blocks 0..l
        q = ctx.rope(self.q_norm(self.wq(h).view(B, T, self.cfg.n_heads, self.cfg.hd)), ctx.offset)
        if ctx.inference:
            out = naive_moda_attn(q, None, None, *ctx.stream.views())
        else:
            out = ctx.attn.stream(q, None, None, ctx.stream, causal=True)  # depth-only mode
        return x + self.wo(out.reshape(B, T, -1))

    def flops_per_token(self) -> int:
        return 4 * self.cfg.n_heads * self.cfg.hd * (self.layer + 1)

    def flops_unseen_by_counter(self) -> int:
        return 0  # the read runs through the depth_attn op, whose FLOP formula is registered
