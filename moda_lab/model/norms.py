"""NORM_PLACEMENTS: where the RMSNorm of a sublayer f sits relative to the stream's combine.

A placement only places the norm: it gives the depth-flow variant (mixers/base.py) three roles, ``norm_input``
(on what the sublayer reads), ``norm_output`` (on what it returns) and ``norm_combined`` (on the stream after the
combine), and the stream's ``gain``; the variant's combine does the add. For the residual stream:

* pre       - x + f(norm(x))         (GPT-2 / LLaMA)
* post      - norm(x + f(x))         (original Transformer; the paper's post-norm rows of Table 6)
* reordered - x + norm(f(x))         (OLMo2's reordered norm)
* deepnorm  - norm(alpha x + f(x))  (DeepNet's DeepNorm: post-norm with the stream up-weighted by
              alpha = (2N)^(1/4) for N layers, and the value, output and FFN weights initialised x (8N)^(-1/4))

"Post-norm" means two different things in the literature, so both are offered and named explicitly. A placement
may scale some weights' initialisation: ``init_gain(n_layers)`` (None: the default init).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import RMSNorm


class NormPlacement(nn.Module):
    """Pre-norm, and the roles every placement gives: an identity role returns its input unchanged."""

    final_norm = True  # the stream is never normalised inside blocks, so the head needs a norm
    gain = 1.0  # the stream's weight in the combine

    def __init__(self, d_model: int, eps: float, n_layers: int = 1) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=eps)

    @staticmethod
    def init_gain(n_layers: int) -> float | None:
        return None

    def norm_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def norm_output(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def norm_combined(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def combined_norm(self) -> RMSNorm | None:
        """The norm that ``norm_combined`` applies, or None where it is the identity: for a variant whose fused
        combine applies it itself (mixers/wide_combine.py)."""
        return None


PreNorm = NormPlacement


class PostNorm(NormPlacement):
    final_norm = False  # every block already ends in a norm

    def norm_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def norm_combined(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def combined_norm(self) -> RMSNorm | None:
        return self.norm


class ReorderedNorm(NormPlacement):
    def norm_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def norm_output(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm(y)


class DeepNorm(PostNorm):
    def __init__(self, d_model: int, eps: float, n_layers: int = 1) -> None:
        super().__init__(d_model, eps)
        self.alpha = self.gain = (2.0 * n_layers) ** 0.25

    @staticmethod
    def init_gain(n_layers: int) -> float | None:
        return (8.0 * n_layers) ** -0.25


NORM_PLACEMENTS: dict[str, type[NormPlacement]] = {
    "pre": PreNorm,
    "post": PostNorm,
    "reordered": ReorderedNorm,
    "deepnorm": DeepNorm,
}
