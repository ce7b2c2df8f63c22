"""Causal self-attention with GQA, optional QK-norm and RoPE, whose softmax may also cover depth slots (MoDA)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from moda_kernels.moda.naive import naive_moda_attn, naive_moda_probs

from .depth import DepthStream
from .layers import RMSNorm, Rotary

if TYPE_CHECKING:  # annotations only: config.py reads the mixer registry, which builds on this module
    from .config import ModelConfig


@dataclass
class KVCache:
    """Per-layer sequence K/V of the tokens seen so far (incremental decoding): lists of [B, S, Hk, d]."""

    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return next(iter(self.k.values())).shape[1] if self.k else 0


@dataclass
class ForwardCtx:
    """What a forward pass hands every block: RoPE, the attention backend (backends.AttnBackend) and the
    forward's depth stream (what earlier layers wrote for each token: K/V slots or hidden states)."""

    rope: Rotary
    attn: object
    offset: int = 0
    stream: DepthStream | None = None
    cache: KVCache | None = None
    probs: list[torch.Tensor] | None = None  # filled with [B, Hq, T, S + L] maps when inspecting
    # What a depth-flow variant keeps for later layers of this forward beyond the depth stream (value residual:
    # the first layer's values), keyed by the variant's own names.
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def inference(self) -> bool:
        """Decoding with a KV cache or inspecting maps: plain reference attention over views, no gradients."""
        return self.cache is not None or self.probs is not None


class KVProjection(nn.Module):
    """K/V heads of an input, normalised and rotated like the attention keys (shared by the MoDA extra slots)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_kv, self.hd = cfg.n_kv_heads, cfg.hd
        self.wkv = nn.Linear(cfg.d_model, 2 * cfg.n_kv_heads * cfg.hd, bias=False)
        self.k_norm = RMSNorm(cfg.hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(
        self, x: torch.Tensor, ctx: ForwardCtx, xv: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K of x and V of xv (default x: one fused projection), each [B, T, Hk, d]."""
        B, T, _ = x.shape
        if xv is None or xv is x:
            k, v = self.wkv(x).view(B, T, 2, self.n_kv, self.hd).unbind(2)  # [B, T, Hk, d] each
        else:  # separate key and value inputs (MUDDFormer): the two halves of wkv
            wk, wv = self.wkv.weight.chunk(2, dim=0)
            k = F.linear(x, wk).view(B, T, self.n_kv, self.hd)
            v = F.linear(xv, wv).view(B, T, self.n_kv, self.hd)
        # Rotated at the token's own position: against a query of the same token RoPE cancels, so a depth
        # slot scores like an unrotated key, whichever layer wrote it.
        return ctx.rope(self.k_norm(k), ctx.offset), v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.hd = layer, cfg.n_heads, cfg.hd
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.hd, bias=False)
        self.kv = KVProjection(cfg)
        self.q_norm = RMSNorm(cfg.hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.wo = nn.Linear(cfg.n_heads * cfg.hd, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        ctx: ForwardCtx,
        depth: bool,
        xk: torch.Tensor | None = None,
        xv: torch.Tensor | None = None,
        values: Callable[[torch.Tensor, ForwardCtx], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries from x [B, T, D], keys from xk and values from xv (default x); with ``depth`` the softmax also
        covers every slot of ctx.stream; ``values`` rewrites the projected values before they are used and
        cached (a depth-flow variant's mix_values). Returns (out, k, v)."""
        B, T, _ = x.shape
        q = ctx.rope(self.q_norm(self.wq(x).view(B, T, self.n_heads, self.hd)), ctx.offset)
        k, v = self.kv(x if xk is None else xk, ctx, xv)
        if values is not None:
            v = values(v, ctx)
        k_seq, v_seq = k, v
        if ctx.cache is not None:
            if self.layer in ctx.cache.k:
                k_seq = torch.cat([ctx.cache.k[self.layer], k], dim=1)
                v_seq = torch.cat([ctx.cache.v[self.layer], v], dim=1)
            ctx.cache.k[self.layer], ctx.cache.v[self.layer] = k_seq, v_seq
        if ctx.inference:
            k_depth, v_depth = ctx.stream.views() if depth else (None, None)
            if ctx.probs is not None:
                ctx.probs.append(naive_moda_probs(q, k_seq, k_depth))
            out = naive_moda_attn(q, k_seq, v_seq, k_depth, v_depth, causal=True)
        elif depth:
            out = ctx.attn.stream(q, k, v, ctx.stream, causal=True)
        else:
            out = ctx.attn(q, k, v, causal=True)
        return self.wo(out.reshape(B, T, -1)), k, v

    def flops_per_token(self, context: int, depth_slots: int) -> int:
        """Forward FLOPs of QK^T and PV per token (the projections are counted as parameters)."""
        return 4 * self.n_heads * self.hd * (context + depth_slots)
