"""NORM_PLACEMENTS: where the RMSNorm of a sublayer f sits relative to the residual add.

"Post-norm" means two different things in the literature, so both are offered and named explicitly:

* pre       - x + f(norm(x))         (GPT-2 / LLaMA)
* post      - norm(x + f(x))         (original Transformer; the paper's post-norm rows of Table 6)
* reordered - x + norm(f(x))         (OLMo2's reordered norm)
* deepnorm  - norm(alpha x + f(x))  (DeepNet's DeepNorm: post-norm with the stream up-weighted by
              alpha = (2N)^(1/4) for N layers, and the value, output and FFN weights initialised x (8N)^(-1/4))

A placement may scale some weights' initialisation: ``init_gain(n_layers)`` (None: the default init).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .layers import RMSNorm

Sublayer = Callable[[torch.Tensor], torch.Tensor]


class PreNorm(nn.Module):
    final_norm = True  # the stream is never normalised inside blocks, so the head needs a norm

    def __init__(self, d_model: int, eps: float, n_layers: int = 1) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=eps)

    @staticmethod
    def init_gain(n_layers: int) -> float | None:
        return None

    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return x + f(self.norm(x))


class PostNorm(PreNorm):
    final_norm = False  # every block already ends in a norm

    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return self.norm(x + f(x))


class ReorderedNorm(PreNorm):
    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return x + self.norm(f(x))


class DeepNorm(PostNorm):
    def __init__(self, d_model: int, eps: float, n_layers: int = 1) -> None:
        super().__init__(d_model, eps)
        self.alpha = (2.0 * n_layers) ** 0.25

    def forward(self, x: torch.Tensor, f: Sublayer) -> torch.Tensor:
        return self.norm(self.alpha * x + f(x))

    @staticmethod
    def init_gain(n_layers: int) -> float | None:
        return (8.0 * n_layers) ** -0.25


NORM_PLACEMENTS: dict[str, type[PreNorm]] = {
    "pre": PreNorm,
    "post": PostNorm,
    "reordered": ReorderedNorm,
    "deepnorm": DeepNorm,
}
