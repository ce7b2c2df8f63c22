"""The depth-flow variants that tests and benchmarks build, each as the MixerConfig it trains with.

VARIANTS has one entry per conf/model/<name>.yaml (tests/cpu/test_config.py checks that they agree): every
registered mixer under its own name, MoDA in its three named settings. A mixer registered in DEPTH_MIXERS
without options joins VARIANTS, and with it every test parametrised over it, by itself.
"""

from __future__ import annotations

from moda_lab.model import DEPTH_MIXERS, MixerConfig

# MoDA's settings by their depth K/V sources (the paper's Table 3 switches).
MODA_VARIANTS = {
    "moda": MixerConfig("moda", depth_kv=True, ffn_kv=True),  # the paper's default
    "moda_depth_kv": MixerConfig("moda", depth_kv=True),
    "moda_full": MixerConfig("moda", depth_kv=True, ffn_kv=True, attn_kv=True),
}
VARIANTS: dict[str, MixerConfig] = {
    **{name: MixerConfig(name) for name in DEPTH_MIXERS if name != "moda"},
    **MODA_VARIANTS,
    "attnres_block": MixerConfig("attnres", block_size=4),  # Block AttnRes (conf/model/attnres_block.yaml)
    "hyper_connections_static": MixerConfig("hyper_connections", dynamic=False),  # SHC (its own group file)
}
# One variant per registered mixer, MoDA with every K/V source on (the most code per forward): for the costlier
# parity tests.
PER_MIXER: dict[str, MixerConfig] = {name: VARIANTS[name] for name in VARIANTS if name not in MODA_VARIANTS}
PER_MIXER["moda_full"] = MODA_VARIANTS["moda_full"]
# Each MoDA K/V source alone, beyond the named settings.
MODA_SINGLE_SOURCES = {
    "moda_ffn_kv": MixerConfig("moda", ffn_kv=True),
    "moda_attn_kv": MixerConfig("moda", attn_kv=True),
}
