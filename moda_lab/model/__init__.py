"""The moda-lab decoder: one skeleton, two registries (depth mixing, norm placement). No Hydra here."""

from .config import MIXER_NAMES, NORM_NAMES, MixerConfig, ModelConfig
from .gpt import GPT
from .mixers import DEPTH_MIXERS
from .norms import NORM_PLACEMENTS

__all__ = ["DEPTH_MIXERS", "GPT", "MIXER_NAMES", "NORM_NAMES", "NORM_PLACEMENTS", "MixerConfig", "ModelConfig"]
