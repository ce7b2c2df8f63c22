"""Plain, frozen configuration of the decoder and of its two registries (depth mixing, norm placement).

These dataclasses are what model code receives; Hydra's YAML maps 1:1 onto them (conf/model, and conf/norm,
which sets model.norm) and the run config converts once at the door. Every check raises ValueError naming the
offending key. The allowed mixer and norm names are the registries' keys (mixers.DEPTH_MIXERS,
norms.NORM_PLACEMENTS): registering a class there is all it takes to make its name a valid choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .mixers import MixerConfig
from .mixers.base import check_choice as _check_choice
from .norms import NORM_PLACEMENTS

BACKEND_NAMES = ("auto", "naive", "sdpa", "triton")
# How GPT.init_weights draws the initial weights: "sequential", every weight in turn from the global RNG (a
# variant with extra modules, such as MoDA's FFN K/V projections, shifts the draws of every weight after them);
# "per_parameter", each weight from its own generator keyed by the seed and the weight's name, so two variants of
# one seed start from the same values in every weight they share (paired comparisons: common random numbers).
INIT_RNGS = ("sequential", "per_parameter")


@dataclass(frozen=True)
class ModelConfig:
    """Decoder skeleton: RMSNorm, RoPE, SwiGLU, GQA, optional QK-norm, tied or untied embeddings."""

    vocab_size: int = 4096
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None  # default d_model // n_heads
    ffn_hidden: int | None = None  # default: 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    qk_norm: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    init_rng: str = "sequential"  # one of INIT_RNGS
    attn_backend: str = "auto"
    mixer: MixerConfig = field(default_factory=MixerConfig)
    norm: str = "pre"  # a key of NORM_PLACEMENTS (the norm group: norm=pre|post|reordered)

    def __post_init__(self) -> None:
        if isinstance(self.mixer, dict):  # plain-dict construction (checkpoints, tests)
            object.__setattr__(self, "mixer", MixerConfig.from_dict(self.mixer))
        _check_choice("model.norm", self.norm, NORM_PLACEMENTS)
        _check_choice("model.attn_backend", self.attn_backend, BACKEND_NAMES)
        _check_choice("model.init_rng", self.init_rng, INIT_RNGS)
        for key in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "max_seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads} (GQA)"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; set model.head_dim"
            )
        if self.hd % 2:
            raise ValueError(f"head dim {self.hd} must be even for RoPE")

    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return ((8 * self.d_model // 3) + 63) // 64 * 64
