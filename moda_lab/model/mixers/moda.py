"""Mixture-of-Depths Attention (arXiv 2603.15619): the block's own attention softmax also covers depth K/V slots
of the same token written by earlier layers; the options are the paper's Table 3 switches."""

from __future__ import annotations

from dataclasses import dataclass

from ..attention import KVProjection
from .base import DepthMixer, MixerConfig, StreamSpec, register_mixer


@dataclass(frozen=True)
class ModaOptions(MixerConfig):
    """Where MoDA's depth K/V slots come from (the columns of Table 3); at least one source."""

    name: str = "moda"
    depth_kv: bool = False  # each attention layer writes its sequence K/V to the depth stream
    ffn_kv: bool = False  # each FFN input is projected by a light K/V projection and written
    attn_kv: bool = False  # an extra K/V projection of each attention input is written

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.depth_kv or self.ffn_kv or self.attn_kv):
            raise ValueError(
                "model.mixer.name='moda' needs at least one depth K/V source: set model.mixer.depth_kv, "
                "model.mixer.ffn_kv or model.mixer.attn_kv to true"
            )

    @property
    def slots_per_layer(self) -> int:
        """Depth K/V slots one layer writes."""
        return int(self.depth_kv) + int(self.ffn_kv) + int(self.attn_kv)


@register_mixer("moda")
class ModaMixer(DepthMixer):
    """Depth K/V slots written by earlier layers join this layer's attention softmax."""

    Options = ModaOptions

    def __init__(self, cfg, layer: int) -> None:
        super().__init__(cfg, layer)
        mix = cfg.mixer
        # The last layer's writes would have no reader: it writes nothing and owns no extra projections.
        self.writes = layer < cfg.n_layers - 1
        self.attn_kv = KVProjection(cfg) if mix.attn_kv and self.writes else None
        self.ffn_kv = KVProjection(cfg) if mix.ffn_kv and self.writes else None

    @staticmethod
    def stream_spec(cfg) -> StreamSpec:
        return StreamSpec(2, max(1, (cfg.n_layers - 1) * cfg.mixer.slots_per_layer), (cfg.n_kv_heads, cfg.hd))

    def attn_depth(self) -> bool:
        return self.layer > 0  # layer 0 has no earlier layer: sequence-only

    def after_attn(self, attn_in, k, v, ctx) -> None:
        if self.cfg.mixer.depth_kv and self.writes:
            ctx.stream.put(k, v)  # the layer's own sequence K/V: no extra parameters (Table 3 row 3)
        if self.attn_kv is not None:
            ctx.stream.put(*self.attn_kv(attn_in, ctx))

    def before_ffn(self, ffn_in, ctx) -> None:
        if self.ffn_kv is not None:
            ctx.stream.put(*self.ffn_kv(ffn_in, ctx))

    def depth_slots(self) -> int:
        return self.layer * self.cfg.mixer.slots_per_layer
