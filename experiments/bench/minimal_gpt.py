"""A minimal nanoGPT-style decoder: the yardstick for the residual baseline's training step (issue 29).

Self-contained (torch only) and deliberately plain: pre- or post-norm RMSNorm, RoPE, SwiGLU, GQA through
torch's scaled_dot_product_attention (``enable_gqa``), tied embeddings, no biases, the whole forward one
nn.Module that ``model.compile()`` compiles. It is not a moda-lab variant (those live in moda_lab/model/, one
skeleton for all): it exists so bench_train.py can time moda-lab's residual against the same model written
without the depth-flow contract, the attention backends and the custom ops around them.

Architecture choices copied from moda-lab's residual (moda_lab/model/gpt.py at the same ModelConfig), so
that the two have the same parameters and FLOPs and compute the same function up to rounding:

* norm placement ``pre`` (x + f(norm(x)), a final norm before the head) or ``post`` (norm(x + f(x)), no
  final norm; experiment=table6_24l and bench_train.py's default); moda-lab's other placements are refused;
* QK-norm: an RMSNorm over the head dim on queries and keys before RoPE (ModelConfig.qk_norm, default on);
* RMSNorm eps 1e-6 with a learned gain; the gain is cast to the input's dtype (bf16 q/k under autocast stay
  bf16 for attention; the fp32 stream stays fp32);
* RoPE in the half-split layout, computed in fp32, theta 10000;
* one fused K/V projection (wkv) and one fused SwiGLU gate/up projection (w13), as moda-lab's;
* init: N(0, 0.02) for the embedding and every Linear, the attention output and FFN down projections scaled
  by 1/sqrt(2 n_layers) (GPT-2);
* loss: mean cross-entropy over full [B*T, V] logits (moda-lab upcasts the logits with .float(); here autocast's
  fp32 log_softmax does the same math, as in nanoGPT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend

NORMS = ("pre", "post")


@dataclass(frozen=True)
class MinimalConfig:
    vocab_size: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    max_seq_len: int
    norm: str = "pre"  # one of NORMS
    qk_norm: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"minimal_gpt norm={self.norm!r} is not allowed; choose one of {list(NORMS)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def like(cls, cfg) -> MinimalConfig:
        """The minimal model of a moda-lab ModelConfig's shape (read by attribute: no moda-lab import)."""
        if cfg.head_dim not in (None, cfg.d_model // cfg.n_heads) or not cfg.tie_embeddings:
            raise ValueError("minimal_gpt needs head_dim = d_model / n_heads and tied embeddings")
        return cls(cfg.vocab_size, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim,
                   cfg.max_seq_len, cfg.norm, cfg.qk_norm, cfg.rope_theta, cfg.norm_eps, cfg.init_std)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (3x forward), counted from the shapes: 2 per weight of every matmul (the tied
        head included) plus QK^T and PV over all seq_len keys per layer (un-masked, the PaLM convention)."""
        D, hd, F_ = self.d_model, self.head_dim, self.ffn_hidden
        attn_weights = D * self.n_heads * hd + D * 2 * self.n_kv_heads * hd + self.n_heads * hd * D
        ffn_weights = D * 2 * F_ + F_ * D
        forward = 2 * (self.n_layers * (attn_weights + ffn_weights) + self.vocab_size * D)
        forward += self.n_layers * 4 * self.n_heads * hd * seq_len
        return 3 * forward


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, d] rotated (half-split layout) by cos, sin [T, 1, d/2]; fp32 math, x's dtype out."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: MinimalConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = c.n_heads, c.n_kv_heads, c.head_dim
        self.wq = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.wkv = nn.Linear(c.d_model, 2 * c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.norm_eps) if c.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(c.head_dim, c.norm_eps) if c.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.hd)
        k, v = self.wkv(x).view(B, T, 2, self.n_kv, self.hd).unbind(2)  # [B, T, Hk, d] each
        q, k = rope(self.q_norm(q), cos, sin), rope(self.k_norm(k), cos, sin)
        # SDPA takes [B, H, T, d]; enable_gqa lets each KV head serve its Hq / Hk query heads without a copy.
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, c: MinimalConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(c.d_model, 2 * c.ffn_hidden, bias=False)
        self.w2 = nn.Linear(c.ffn_hidden, c.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: MinimalConfig) -> None:
        super().__init__()
        self.pre = c.norm == "pre"
        self.attn_norm, self.ffn_norm = RMSNorm(c.d_model, c.norm_eps), RMSNorm(c.d_model, c.norm_eps)
        self.attn, self.ffn = Attention(c), SwiGLU(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.attn_norm(x), cos, sin)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, cos, sin))
        return self.ffn_norm(x + self.ffn(x))


class MinimalGPT(nn.Module):
    backend = "sdpa"  # bench_train.py's row reports it

    def __init__(self, c: MinimalConfig) -> None:
        super().__init__()
        self.cfg = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps) if c.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied
        angles = torch.outer(torch.arange(c.max_seq_len, dtype=torch.float32),
                             1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)  # [T, 1, d/2]
        self.register_buffer("sin", angles.sin()[:, None, :], persistent=False)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                scale = 1 / math.sqrt(2 * c.n_layers) if name.endswith(("wo", "w2")) else 1.0
                nn.init.normal_(mod.weight, std=c.init_std * scale)
        nn.init.normal_(self.tok_emb.weight, std=c.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, V], or the mean cross-entropy when targets [B, T] are given."""
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def sdpa_kernel(self, batch: int, dtype: torch.dtype, device: torch.device) -> str:
        """The kernel torch's SDPA dispatch picks for this model's attention call at batch x max_seq_len (its name
        in torch.nn.attention.SDPBackend)."""
        c = self.cfg
        q = torch.empty(batch, c.n_heads, c.max_seq_len, c.head_dim, dtype=dtype, device=device)
        kv = torch.empty(batch, c.n_kv_heads, c.max_seq_len, c.head_dim, dtype=dtype, device=device)
        choice = torch._fused_sdp_choice(q, kv, kv, is_causal=True, enable_gqa=True)
        return next(name for name, b in SDPBackend.__members__.items() if int(b) == choice)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        return self.cfg.flops_per_token(seq_len)
