"""The Block contract for depth flow: what a depth-mixing variant implements, and the registry of variants.

A block is "read, attend, combine, feed forward, combine, write". The variant (a ``DepthMixer``) owns every step
that touches the stream; the norm placement (norms.py) only says where the norm sits and hands the variant three
roles (``norm_input``, ``norm_output``, ``norm_combined``) and the stream's ``gain``. One block, for a variant m
and the attention and FFN placements pa, pf::

    x = m.read(x, ctx)                               # the stream state entering the block (any shape)
    s = m.skip(x, pa, "attn", ctx)                   # what the combine (and the inputs) need, before the sublayer
    xq, xk, xv = m.attn_inputs(x, s, pa, ctx)        # what attention reads: normed q, k and v inputs [B, T, D]
    y, k, v = attention(xq, xk, xv, m.mix_values)    # m.mix_values may rewrite the values (value residual)
    m.after_attn(xk, k, v, ctx)                      # observe (MoDA writes depth K/V here)
    x = m.combine(s, y, pa, "attn", ctx)             # the sublayer output into the stream(s)
    s = m.skip(x, pf, "ffn", ctx); h = m.ffn_input(x, s, pf, ctx); m.before_ffn(h, ctx)
    x = m.combine(s, ffn(h), pf, "ffn", ctx)
    x = m.write(x, ctx)                              # after the last block: a [B, T, D] tensor again

``skip`` returns whatever the variant's inputs and combine share (the residual: the stream times the
placement's gain; Hyper-Connections: the mixed copies and the per-token connection weights). It runs before the
sublayer so that autograd sums the stream's gradient in the order it did when the add lived in the placements
(the pinned outputs stay bit for bit: tests/cpu/test_flow_contract_pins.py).

The stream state between blocks is the variant's own business (Hyper-Connections carry n copies, [B, T, n, D]);
the embeddings enter block 0's ``read`` and the last block's ``write`` must hand back [B, T, D] for the head.
A variant that reads what earlier layers wrote for the same token declares a depth stream (``stream_spec``) and
reaches it as ctx.stream (depth.py: ``put`` a slot; ``attend``, ``mix``, ``mix_tokens`` and ``dots`` read the
slots written so far in place). Inside the mixer, cfg.mixer is the variant's options.

Each variant has its own options dataclass, a subclass of ``MixerConfig`` named as the class attribute
``Options``; ``MixerConfig(name, **options)`` builds the options of the variant registered under ``name``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ...layout import upgrade_mixer_options

if TYPE_CHECKING:  # annotations only: config.py reads DEPTH_MIXERS, so this module comes first
    from ..attention import ForwardCtx
    from ..config import ModelConfig
    from ..norms import NormPlacement

# The registry: the single list of depth-flow variant names (config choices, analysis orderings, tests).
DEPTH_MIXERS: dict[str, type[DepthMixer]] = {}

def check_choice(key: str, value: str, allowed: Iterable[str]) -> None:
    """ValueError naming ``key`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {allowed}")


@dataclass(frozen=True)
class MixerConfig:
    """A depth-flow variant's options: ``name`` (a DEPTH_MIXERS key) and the fields of the variant's own
    subclass (``DepthMixer.Options``). ``MixerConfig(name, **options)`` returns that subclass, so every caller
    builds any variant's options the same way; an option the variant does not have raises ValueError naming it.
    """

    name: str = "residual"

    def __new__(cls, *args: Any, **kwargs: Any) -> MixerConfig:
        if cls is MixerConfig:
            name = args[0] if args else kwargs.get("name", "residual")
            cls = MixerConfig.options_class(name)
            allowed = [f.name for f in fields(cls)]
            for key, value in kwargs.items():
                if key not in allowed:
                    raise ValueError(
                        f"model.mixer.{key}={value!r} is not an option of model.mixer.name={name!r}; "
                        f"its options are {allowed[1:]}"
                    )
        return object.__new__(cls)

    def __post_init__(self) -> None:
        check_choice("model.mixer.name", self.name, DEPTH_MIXERS)
        expected = DEPTH_MIXERS[self.name].Options
        if type(self) is not expected:
            raise ValueError(f"model.mixer.name={self.name!r} takes {expected.__name__}, not {type(self).__name__}")

    @staticmethod
    def options_class(name: str) -> type[MixerConfig]:
        """The options dataclass of the variant registered as ``name`` (ValueError naming model.mixer.name)."""
        check_choice("model.mixer.name", name, DEPTH_MIXERS)
        return DEPTH_MIXERS[name].Options

    @staticmethod
    def from_dict(options: dict[str, Any]) -> MixerConfig:
        """The options of a saved config (run dir, checkpoint, Hugging Face config.json), including those saved
        before each variant had its own options (moda_lab.layout.upgrade_mixer_options)."""
        return MixerConfig(**upgrade_mixer_options(options))

    def label(self) -> str:
        """The variant as the analysis names it: the name, then every option away from its default."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)[1:] if getattr(self, f.name) != f.default]
        return self.name if not changed else f"{self.name}({', '.join(changed)})"


@dataclass(frozen=True)
class StreamSpec:
    """The depth stream a mixer needs per forward (allocated by GPT.forward): ``parts`` tensors per slot (2: K/V,
    1: hidden states), ``slots`` slots of shape ``feature``; ``activations``: in the dtype the projections
    produce (the autocast dtype), else in the parameters' dtype (the residual stream's)."""

    parts: int
    slots: int
    feature: tuple[int, ...]
    activations: bool = True


def register_mixer(name: str) -> Callable[[type[DepthMixer]], type[DepthMixer]]:
    """Class decorator: make ``name`` a depth-flow variant (``model.mixer.name``). Its options class, if any,
    must say ``name: str = "<name>"`` first."""

    def add(cls: type[DepthMixer]) -> type[DepthMixer]:
        if name in DEPTH_MIXERS:
            raise ValueError(f"depth-flow variant {name!r} is registered twice")
        DEPTH_MIXERS[name] = cls
        return cls

    return add


@register_mixer("residual")
class DepthMixer(nn.Module):
    """The residual stream (x + f(x) around each sublayer, the OLMo2-style baseline) and the contract's hooks:
    a variant overrides only what it changes."""

    Options: ClassVar[type[MixerConfig]] = MixerConfig
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer

    @staticmethod
    def stream_spec(cfg: ModelConfig) -> StreamSpec | None:
        """The forward's depth stream this mixer writes and reads (None: no stream)."""
        return None

    # --- the stream around the block -------------------------------------------------------------------

    def read(self, x: Any, ctx: ForwardCtx) -> Any:
        """Before the block: the stream state the block operates on (block 0 gets the embeddings [B, T, D])."""
        return x

    def write(self, x: Any, ctx: ForwardCtx) -> Any:
        """After the block: the state handed to the next block; the last block's must be [B, T, D]."""
        return x

    # --- each sublayer: what it reads, how its output joins the stream -------------------------------------

    def skip(self, x: Any, place: NormPlacement, sublayer: str, ctx: ForwardCtx) -> Any:
        """What sublayer ``sublayer`` ("attn" or "ffn") needs from the stream before it runs, handed to its input
        hook and its combine: here the stream, up-weighted by the placement's gain (DeepNorm's alpha)."""
        return x if place.gain == 1.0 else place.gain * x

    def attn_inputs(
        self, x: Any, skip: Any, place: NormPlacement, ctx: ForwardCtx
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention's query, key and value inputs [B, T, D] (one tensor three times: one projection)."""
        h = place.norm_input(x)
        return h, h, h

    def ffn_input(self, x: Any, skip: Any, place: NormPlacement, ctx: ForwardCtx) -> torch.Tensor:
        """The FFN's input [B, T, D]."""
        return place.norm_input(x)

    def combine(self, skip: Any, y: torch.Tensor, place: NormPlacement, sublayer: str, ctx: ForwardCtx) -> Any:
        """The stream after sublayer ``sublayer`` returned y [B, T, D], given what ``skip`` returned."""
        return place.norm_combined(skip + place.norm_output(y))

    # --- inside attention ---------------------------------------------------------------------------------

    def attn_depth(self) -> bool:
        """Whether this layer's attention softmax also covers the depth stream's slots (MoDA)."""
        return False

    def mix_values(self, v: torch.Tensor, ctx: ForwardCtx) -> torch.Tensor:
        """The values [B, T, Hk, d] this layer's attention uses (and caches), given its own projection's."""
        return v

    def after_attn(self, attn_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardCtx) -> None:
        """Sees the attention's key input and its (normed, rotated) K and its V."""

    def before_ffn(self, ffn_in: torch.Tensor, ctx: ForwardCtx) -> None:
        """Sees the FFN input."""

    # --- cost -------------------------------------------------------------------------------------------

    def depth_slots(self) -> int:
        """Depth slots the attention of this layer covers (for FLOPs)."""
        return 0

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the mixing itself, beyond its Linear layers' matmuls (counted from their
        weights by GPT.matmul_params) and the attention's QK^T and PV."""
        return 0

    def flops_unseen_by_counter(self) -> int:
        """The part of flops_per_token that torch.utils.flop_counter does not see: broadcast multiply-adds such
        as DWA's weighted sum (it sees matmuls and ops with a registered FLOP formula). The FLOPs test adds it to
        the counter's count."""
        return self.flops_per_token()
