"""NORM_PLACEMENTS: where the RMSNorm of a sublayer f sits relative to the residual add.

"Post-norm" means two different things in the literature, so both are offered and named explicitly:

* pre       - x + f(norm(x))         (GPT-2 / LLaMA)
* post      - norm(x + f(x))         (original Transformer; the paper's post-norm rows of Table 6)
* reordered - x + norm(f(x))         (OLMo2's reordered norm)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .layers import RMSNorm

Sublayer = Callable[[torch.Tensor], torch.Tensor]


class PreNorm(nn.Module):
    final_norm = True  # the stream is never normalised inside blocks, so the head needs a norm

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=eps)

    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return x + f(self.norm(x))


class PostNorm(PreNorm):
    final_norm = False  # every block already ends in a norm

    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return self.norm(x + f(x))


class ReorderedNorm(PreNorm):
    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return x + self.norm(f(x))


NORM_PLACEMENTS: dict[str, type[PreNorm]] = {"pre": PreNorm, "post": PostNorm, "reordered": ReorderedNorm}
