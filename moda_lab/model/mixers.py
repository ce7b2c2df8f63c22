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

from .attention import ForwardCtx, KVProjection
from .config import ModelConfig
from .depth import DepthBuffer
from .layers import RMSNorm


class DepthMixer(nn.Module):
    """Residual baseline and the hook interface. State lives in ``ctx.state``, made by ``new_state``."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer

    @staticmethod
    def new_state(cfg: ModelConfig) -> object:
        return None

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        """Before the block: the stream the block operates on."""
        return x

    def write(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        """After the block: the stream handed to the next block."""
        return x

    def attn_depth(self, ctx: ForwardCtx) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Depth K/V [B, T, L, Hk, d] this layer's attention covers under its softmax (MoDA)."""
        return None, None

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
    def new_state(cfg: ModelConfig) -> DepthBuffer:
        return DepthBuffer(cfg.n_layers + 1)

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        if self.layer == 0:
            ctx.state.write(x)  # X_0, the embeddings
        return x

    def write(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        history = ctx.state.write(x)  # [B, T, l+2, D], a strided view of the preallocated buffer
        # Broadcast-multiply and sum rather than einsum: einsum would copy the strided prefix into a contiguous
        # tensor and keep that copy for backward at every layer (O(L^2) memory); this keeps only the view.
        return (history * self.alpha.to(history.dtype).view(1, 1, -1, 1)).sum(2)

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
    def new_state(cfg: ModelConfig) -> tuple[DepthBuffer, DepthBuffer]:
        return DepthBuffer(cfg.n_layers), DepthBuffer(cfg.n_layers)

    def read(self, x: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        B, T, _ = x.shape
        h = self.norm(x)
        k, v = self.kv(h, ctx)
        kbuf, vbuf = ctx.state
        k_depth, v_depth = kbuf.write(k), vbuf.write(v)  # slots 0..l: the stream entering blocks 0..l
        q = ctx.rope(self.q_norm(self.wq(h).view(B, T, self.cfg.n_heads, self.cfg.hd)), ctx.offset)
        out = ctx.attn(q, None, None, k_depth, v_depth, causal=True)  # depth-only mode
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
    def new_state(cfg: ModelConfig) -> tuple[DepthBuffer, DepthBuffer]:
        slots = max(1, (cfg.n_layers - 1) * cfg.mixer.slots_per_layer)
        return DepthBuffer(slots), DepthBuffer(slots)

    def attn_depth(self, ctx: ForwardCtx) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        kbuf, vbuf = ctx.state
        return kbuf.view, vbuf.view  # None at layer 0: sequence-only there

    def _write(self, k: torch.Tensor, v: torch.Tensor, ctx: ForwardCtx) -> None:
        kbuf, vbuf = ctx.state
        kbuf.write(k)
        vbuf.write(v)

    def after_attn(self, attn_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardCtx) -> None:
        if self.cfg.mixer.depth_kv and self.writes:
            self._write(k, v, ctx)  # the layer's own sequence K/V: no extra parameters (Table 3 row 3)
        if self.attn_kv is not None:
            self._write(*self.attn_kv(attn_in, ctx), ctx)

    def before_ffn(self, ffn_in: torch.Tensor, ctx: ForwardCtx) -> None:
        if self.ffn_kv is not None:
            self._write(*self.ffn_kv(ffn_in, ctx), ctx)

    def depth_slots(self) -> int:
        return self.layer * self.cfg.mixer.slots_per_layer


DEPTH_MIXERS: dict[str, type[DepthMixer]] = {
    "residual": DepthMixer,
    "dense": DWAMixer,
    "depth_attn": DepthAttnMixer,
    "moda": ModaMixer,
}
