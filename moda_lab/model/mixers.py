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

import torch
from torch import nn

from kernels.moda.naive import naive_moda_attn

from .attention import ForwardCtx, KVProjection
from .config import ModelConfig
from .layers import RMSNorm


class DepthMixer(nn.Module):
    """Residual baseline and the hook interface. A mixer that reads K/V slots of earlier layers asks for a
    depth stream of ``stream_slots`` slots (ctx.stream, allocated by GPT.forward); other per-forward state
    lives in ``ctx.state``, made by ``new_state``."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer

    @staticmethod
    def stream_slots(cfg: ModelConfig) -> int:
        """Depth K/V slots per token the forward's stream needs (0: no stream)."""
        return 0

    @staticmethod
    def new_state(cfg: ModelConfig) -> object:
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
    """DenseFormer depth-weighted average: x_{l+1} = sum_{j<=l+1} alpha_{l,j} X_j, X_0 = embeddings."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        alpha = torch.zeros(layer + 2)
        alpha[-1] = 1.0  # identity: the block output passes unchanged
        self.alpha = nn.Parameter(alpha)

    @staticmethod
    def new_state(cfg: ModelConfig) -> list[torch.Tensor]:
        return []  # X_0, X_1, ...: the block outputs so far

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        if not ctx.state:
            ctx.state.append(x)  # X_0, the embeddings
        return x

    def write(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        ctx.state.append(x)
        # A sum of scaled tensors, not a stacked [B, T, l+2, D] copy: autograd keeps only references to the X_j
        # (no O(L^2) memory), and torch.compile fuses the sum into one kernel reading every X_j once.
        alpha = self.alpha.to(x.dtype)
        out = ctx.state[0] * alpha[0]
        for j in range(1, len(ctx.state)):
            out = out + ctx.state[j] * alpha[j]
        return out

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
    def stream_slots(cfg: ModelConfig) -> int:
        return cfg.n_layers

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
    def stream_slots(cfg: ModelConfig) -> int:
        return max(1, (cfg.n_layers - 1) * cfg.mixer.slots_per_layer)

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
