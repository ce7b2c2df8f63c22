"""The moda-lab decoder: one skeleton, two registries (depth mixing, norm placement). No Hydra here."""

from .config import MixerConfig, ModelConfig
from .gpt import GPT
from .mixers import DEPTH_MIXERS
from .norms import NORM_PLACEMENTS

__all__ = ["DEPTH_MIXERS", "GPT", "NORM_PLACEMENTS", "MixerConfig", "ModelConfig"]
