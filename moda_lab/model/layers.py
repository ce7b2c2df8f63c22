"""Building blocks of the decoder: RMSNorm, RoPE and the SwiGLU feed-forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm whose (fp32) weight is cast to the input's dtype, so that bf16 activations under
    autocast take torch's fused rms_norm kernel instead of the unfused fp32 fallback that a dtype mismatch
    forces (one kernel per norm instead of about seven, forward and backward). Same state_dict as nn.RMSNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer, arXiv 2104.09864) on [B, T, H, d] tensors, half-split layout."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # [T, d/2]
        # Not persistent: derived from the config, so switching backends or resizing never changes state_dict keys.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.max_seq_len = max_seq_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.shape[1]
        if offset + T > self.max_seq_len:
            raise ValueError(f"sequence of {offset + T} tokens exceeds model.max_seq_len={self.max_seq_len}")
        cos = self.cos[offset : offset + T, None, :]  # [T, 1, d/2]
        sin = self.sin[offset : offset + T, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.to(x.dtype)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer, arXiv 2002.05202): w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=False)  # gate and up projections fused
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)
