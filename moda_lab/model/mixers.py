"""DEPTH_MIXERS: how a block reads from and writes to the depth stream ("read, operate, write").

Each mixer is a small per-layer module with hooks the block calls; the base class is the plain residual
stream (read identity, write add), so a mixer only overrides what it changes.

* residual   - deep residual stream, the OLMo2-style baseline.
* dense      - DenseFormer depth-weighted average (arXiv 2402.02622): after block l the stream is a learned
               scalar combination of the embeddings and all block outputs so far, initialised to identity.
* depth_attn - depth attention: before block l, the token's query attends over K/V written for the same token
               by every earlier layer (and the embeddings); the read is added through a zero-initialised
               output projection, so the model starts as the residual baseline.
* moda       - Mixture-of-Depths Attention (arXiv 2603.15619): the block's own attention softmax also covers
               depth K/V slots of the same token written by earlier layers (Table 3 switches in MixerConfig).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from moda_kernels.moda.naive import naive_moda_attn

from .attention import ForwardCtx, KVProjection
from .layers import RMSNorm

if TYPE_CHECKING:  # annotations only: config.py reads DEPTH_MIXERS, so this module comes first
    from .config import ModelConfig


@dataclass(frozen=True)
class StreamSpec:
    """The depth stream a mixer needs per forward (allocated by GPT.forward): ``parts`` tensors per slot (2: K/V,
    1: hidden states), ``slots`` slots of shape ``feature``; ``activations``: in the dtype the projections
    produce (the autocast dtype), else in the parameters' dtype (the residual stream's)."""

    parts: int
    slots: int
    feature: tuple[int, ...]
    activations: bool = True


class DepthMixer(nn.Module):
    """Residual baseline and the hook interface. A mixer that reads what earlier layers wrote for the same token
    asks for a depth stream (``stream_spec``), which the block's hooks reach as ctx.stream."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer

    @staticmethod
    def stream_spec(cfg: ModelConfig) -> StreamSpec | None:
        """The forward's depth stream this mixer writes and reads (None: no stream)."""
        return None

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        """Before the block: the stream the block operates on."""
        return x

    def write(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        """After the block: the stream handed to the next block."""
        return x

    def attn_depth(self) -> bool:
        """Whether this layer's attention softmax also covers the depth stream's slots (MoDA)."""
        return False

    def after_attn(self, attn_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardCtx) -> None:
        """Sees the attention input and its (normed, rotated) K/V."""

    def before_ffn(self, ffn_in: torch.Tensor, ctx: ForwardCtx) -> None:
        """Sees the FFN input."""

    def depth_slots(self) -> int:
        """Depth slots the attention of this layer covers (for FLOPs)."""
        return 0

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the mixing itself, beyond its parameters' matmuls."""
        return 0


class DWAMixer(DepthMixer):
    """DenseFormer depth-weighted average: x_{l+1} = sum_{j<=l+1} alpha_{l,j} X_j, X_0 = embeddings.

    The X_j are slots of the depth stream (written once, read in place; each mix's backward adds alpha_j g into
    the stream's gradient buffer in one pass and reduces dalpha in the same pass), not a re-stacked history."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        alpha = torch.zeros(layer + 2)
        alpha[-1] = 1.0  # identity: the block output passes unchanged
        self.alpha = nn.Parameter(alpha)

    @staticmethod
    def stream_spec(cfg: ModelConfig) -> StreamSpec:
        return StreamSpec(1, cfg.n_layers + 1, (cfg.d_model,), activations=False)

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        if self.layer == 0:
            ctx.stream.put(x)  # X_0, the embeddings
        return x

    def write(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        ctx.stream.put(x)  # X_{l+1}, this block's output
        return ctx.stream.mix(self.alpha, kernel=ctx.attn.fused_kernels)

    def flops_per_token(self) -> int:
        return 2 * self.cfg.d_model * (self.layer + 2)


class DepthAttnMixer(DepthMixer):
    """Depth attention: a query of the stream attends over K/V of the same token from all earlier layers."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.hd, bias=False)
        self.q_norm = RMSNorm(cfg.hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.kv = KVProjection(cfg)
        self.wo = nn.Linear(cfg.n_heads * cfg.hd, cfg.d_model, bias=False)
        self.wo.zero_init = True  # GPT.init_weights: start as the residual stream

    @staticmethod
    def stream_spec(cfg: ModelConfig) -> StreamSpec:
        return StreamSpec(2, cfg.n_layers, (cfg.n_kv_heads, cfg.hd))

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
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


class ModaMixer(DepthMixer):
    """MoDA: depth K/V slots written by earlier layers join this layer's attention softmax."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        mix = cfg.mixer
        # The last layer's writes would have no reader: it writes nothing and owns no extra projections.
        self.writes = layer < cfg.n_layers - 1
        self.attn_kv = KVProjection(cfg) if mix.attn_kv and self.writes else None
        self.ffn_kv = KVProjection(cfg) if mix.ffn_kv and self.writes else None

    @staticmethod
    def stream_spec(cfg: ModelConfig) -> StreamSpec:
        return StreamSpec(2, max(1, (cfg.n_layers - 1) * cfg.mixer.slots_per_layer), (cfg.n_kv_heads, cfg.hd))

    def attn_depth(self) -> bool:
        return self.layer > 0  # layer 0 has no earlier layer: sequence-only

    def after_attn(self, attn_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardCtx) -> None:
        if self.cfg.mixer.depth_kv and self.writes:
            ctx.stream.put(k, v)  # the layer's own sequence K/V: no extra parameters (Table 3 row 3)
        if self.attn_kv is not None:
            ctx.stream.put(*self.attn_kv(attn_in, ctx))

    def before_ffn(self, ffn_in: torch.Tensor, ctx: ForwardCtx) -> None:
        if self.ffn_kv is not None:
            ctx.stream.put(*self.ffn_kv(ffn_in, ctx))

    def depth_slots(self) -> int:
        return self.layer * self.cfg.mixer.slots_per_layer


DEPTH_MIXERS: dict[str, type[DepthMixer]] = {
    "residual": DepthMixer,
    "dense": DWAMixer,
    "depth_attn": DepthAttnMixer,
    "moda": ModaMixer,
}
