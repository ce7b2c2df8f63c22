"""Run configuration: frozen dataclasses for every Hydra group and one strict converter.

run.py composes the YAML with Hydra and calls ``run_config_from_dict`` once; everything below it takes these
plain dataclasses. Unknown keys, wrong types and bad choices raise ConfigError naming the full key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field

from .model.config import MixerConfig, ModelConfig


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    corpus_dir: str = "data/corpus"  # text/JSONL/Parquet files or saved datasets; subdirectories are named domains
    packed_dir: str | None = None  # an already packed folder (python -m moda_lab.data); overrides corpus_dir
    build_default: bool = True  # build the embedded default corpus into corpus_dir when it is missing
    cache_dir: str = "data/cache"
    vocab_size: int = 8192  # BPE size to train; with data.tokenizer, the model's embedding rows (>= its vocab)
    tokenizer: str | None = None  # a pretrained tokenizer.json (or a folder holding one) instead of training BPE
    seq_len: int = 128
    val_fraction: float = 0.02
    val_windows: int = 32  # held-out windows per domain per validation
    num_workers: int = 0


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 300
    batch_size: int = 16  # sequences per device per micro-step
    accumulate: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (paper: 3e-4 -> 3e-5)
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    val_every: int = 50
    ckpt_every: int = 100
    keep_checkpoints: int = 2  # step checkpoints kept besides last.ckpt (-1: all)
    log_every: int = 10
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: int = 1  # -1: every visible device
    strategy: str = "auto"  # auto | ddp | fsdp
    compile: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        choices = {
            "precision": ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
            "strategy": ("auto", "ddp", "fsdp"),
            "accelerator": ("auto", "cpu", "gpu", "cuda"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"trainer.{key}={getattr(self, key)!r} is not allowed; choose one of {list(allowed)}")
        for key in ("max_steps", "batch_size", "accumulate", "val_every", "ckpt_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.devices < 1 and self.devices != -1:
            raise ConfigError(f"trainer.devices must be >= 1, or -1 for every visible device; got {self.devices}")


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = True
    mode: str = "auto"  # auto: online when WANDB_API_KEY is set, else offline
    project: str = "moda-lab"
    entity: str | None = None


@dataclass(frozen=True)
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class NormConfig:
    placement: str = "pre"


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    seed: int = 0
    name: str = "default"  # sweep name: the run dir is <run_root>/<name>/<overrides>
    run_root: str = "runs"
    extra: dict = field(default_factory=dict)  # config sections owned by other entry points (eval, ...)


def _type_ok(value: object, hint: object) -> bool:
    if hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def from_dict(cls: type, data: dict, prefix: str) -> object:
    """Build dataclass cls from a plain dict, strictly: unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {names}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
        hint_t = hints[key]
        if dataclasses.is_dataclass(hint_t):
            kwargs[key] = from_dict(hint_t, value, full)
        elif not _type_ok(value, hint_t):
            raise ConfigError(f"{full}={value!r} has the wrong type; expected {hint_t}")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err


def run_config_from_dict(cfg: dict) -> RunConfig:
    """The resolved Hydra config (as a dict) -> RunConfig. The norm group fills ModelConfig.norm."""
    cfg = dict(cfg)
    known = {f.name for f in dataclasses.fields(RunConfig)} - {"extra"}
    extra = {k: cfg.pop(k) for k in list(cfg) if k not in known and k in EXTRA_SECTIONS}
    norm = from_dict(NormConfig, cfg.get("norm", {}), "norm")
    model = dict(cfg.get("model", {}))
    if "norm" in model:
        raise ConfigError("set the norm placement with the norm group (norm=pre|post|reordered), not model.norm")
    model["norm"] = norm.placement
    cfg["model"] = model
    try:
        run = from_dict(RunConfig, cfg, "")
    except ConfigError as err:
        raise ConfigError(str(err).replace("model.norm", "norm.placement")) from err
    return dataclasses.replace(run, extra=extra)


# Top-level sections that other entry points own and validate themselves (eval hooks, hydra internals).
EXTRA_SECTIONS = {"eval"}

__all__ = [
    "ConfigError",
    "DataConfig",
    "LoggerConfig",
    "MixerConfig",
    "ModelConfig",
    "NormConfig",
    "RunConfig",
    "TrainerConfig",
    "WandbConfig",
    "from_dict",
    "run_config_from_dict",
]
