"""DEPTH_MIXERS: the depth-flow variants, one module each (the contract: base.py).

* residual   - deep residual stream, the OLMo2-style baseline (base.DepthMixer).
* dense      - DenseFormer depth-weighted average (arXiv 2402.02622).
* depth_attn - depth attention over the same token's K/V from every earlier layer.
* moda       - Mixture-of-Depths Attention (arXiv 2603.15619).

The paper's four come first, in this order; every other module of this package is a variant that registers
itself (``@register_mixer``) and is imported here by name order, so a new variant is its own module and its
conf/model file, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from . import dense, depth_attn, moda  # noqa: F401  the paper's variants, in the paper's order
from .base import DEPTH_MIXERS, DepthMixer, MixerConfig, StreamSpec, register_mixer

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEPTH_MIXERS", "DepthMixer", "MixerConfig", "StreamSpec", "register_mixer"]
