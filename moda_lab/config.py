"""Run configuration: frozen dataclasses for every Hydra group and one strict converter.

run.py composes the YAML with Hydra and calls ``run_config_from_dict`` once; everything below it takes these
plain dataclasses. Unknown keys, wrong types and bad choices raise ConfigError naming the full key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field

from .data.corpus import HubDataset
from .data.packing import token_budget
from .errors import UsageError
from .layout import upgrade_mixer_options
from .model.config import MixerConfig, ModelConfig


class ConfigError(UsageError):
    """A configuration value or key is invalid; the message names the key."""


def check_range(key: str, value: float, allowed: str, ok: bool) -> None:
    """Raise ConfigError 'key=value is out of range; allowed: ...' unless ok (NaN and inf are never ok)."""
    finite = not isinstance(value, float) or math.isfinite(value)
    if not (ok and finite):
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {allowed}")


@dataclass(frozen=True)
class DataConfig:
    corpus_dir: str = "data/corpus"  # text/JSONL/Parquet files or saved datasets; subdirectories are named domains
    packed_dir: str | None = None  # an already packed folder (python -m moda_lab.data); overrides corpus_dir
    # Where the embedded default corpus lives. It is built there on first use (build_default), and only there:
    # a corpus_dir that names any other missing directory is an error, so a typo never trains on the default.
    default_corpus_dir: str = "data/corpus"
    build_default: bool = True
    # The named sources (moda_lab.data.corpus.SOURCES) that default corpus is built from.
    sources: list | tuple = ("python-docs", "stdlib")
    cache_dir: str = "data/cache"
    vocab_size: int = 8192  # BPE size to train; with data.tokenizer, the model's embedding rows (>= its vocab)
    tokenizer: str | None = None  # a pretrained tokenizer.json, a folder holding one, or a hub name (gpt2), not BPE
    seq_len: int = 128
    val_fraction: float = 0.02
    # Held-out windows of seq_len tokens per domain per validation (the first ones; null: every held-out window).
    # 256 x 128 tokens per domain measure 65k of the default corpus's 160k held-out tokens, 8x the 32 windows
    # this was (8k tokens, thin for 0.01-0.05-nat gaps between variants): the sampling noise of a domain's loss
    # falls by sqrt(8). null measures every held-out token, for final comparisons.
    val_windows: int | None = 256
    num_workers: int = 0
    # A dataset streamed by datasets.load_dataset (a hub id, or a folder of data files): with data.hf.path set it
    # is the corpus instead of corpus_dir (packed_dir still wins), one validation domain.
    hf: HubDataset = field(default_factory=HubDataset)
    max_tokens: int | float | None = None  # training tokens per domain at most (2e9 is fine); null: every document
    num_proc: int | None = None  # tokenising processes; null: min(cores, 8). The packed bytes do not depend on it

    def __post_init__(self) -> None:
        from .data.corpus import SOURCES

        object.__setattr__(self, "sources", tuple(self.sources))  # hashable: sweeps check each data setting once
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ConfigError(
                f"data.sources={list(self.sources)!r} is not allowed; choose a non-empty list from {sorted(SOURCES)}"
            )
        check_range(
            "data.vocab_size", self.vocab_size, "257..65535 (byte-level BPE in uint16)", 256 < self.vocab_size <= 65535
        )
        check_range("data.seq_len", self.seq_len, ">= 1", self.seq_len >= 1)
        check_range("data.val_fraction", self.val_fraction, "0 < x < 1", 0.0 < self.val_fraction < 1.0)
        if self.val_windows is not None:
            check_range(
                "data.val_windows", self.val_windows, ">= 1, or null (every held-out window)", self.val_windows >= 1
            )
        check_range("data.num_workers", self.num_workers, ">= 0", self.num_workers >= 0)
        object.__setattr__(self, "max_tokens", token_budget(self.max_tokens))  # 2e9 -> 2000000000
        if self.num_proc is not None:
            check_range("data.num_proc", self.num_proc, ">= 1, or null (min(cores, 8))", self.num_proc >= 1)

    @property
    def uses_default_corpus(self) -> bool:
        return self.packed_dir is None and self.hf.path is None and _same_path(self.corpus_dir, self.default_corpus_dir)


def _same_path(a: str, b: str) -> bool:
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 300
    batch_size: int = 16  # sequences per device per micro-step
    accumulate: int = 1
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (paper: 3e-4 -> 3e-5)
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # The optimizer and schedule (moda_lab.train.optim; the optim group sets them): adamw | muon, cosine | wsd.
    optimizer: str = "adamw"
    schedule: str = "cosine"
    decay_frac: float = 0.2  # wsd: the last fraction of max_steps decays linearly to lr * min_lr_ratio
    embed_lr_scale: float = 1.0  # the embedding table's (and an untied head's) lr, as a multiple of lr
    embed_weight_decay: float | None = None  # the table's weight decay; null: weight_decay
    val_every: int = 50
    ckpt_every: int = 100
    keep_checkpoints: int = 2  # step checkpoints kept besides last.ckpt (-1: all)
    log_every: int = 10
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: int = 1  # -1: every visible device
    strategy: str = "auto"  # auto | ddp | fsdp
    compile: bool = False
    # A folder for torch.compile's artifacts (moda_lab.train.compile_cache): loaded before the first compile,
    # written after the first optimizer step, so a later process (another machine of the same kind) skips most of
    # the compile. null: none.
    compile_cache: str | None = None
    # The compiled step as CUDA graphs (torch.compile mode "reduce-overhead"): no per-layer host work per step.
    # Needs trainer.compile, a CUDA GPU and trainer.accumulate=1 (docs/KERNELS.md, "CUDA graphs").
    cudagraphs: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    # Divergence guard (moda_lab.train.divergence): an optimizer step whose loss or gradient is not finite, or
    # whose loss exceeds divergence_factor x the lowest training loss so far (0: off), is skipped; after
    # max_skipped_steps skipped steps in a row the run stops as `diverged`, keeping its last good checkpoint.
    max_skipped_steps: int = 20
    divergence_factor: float = 4.0

    def __post_init__(self) -> None:
        choices = {
            "precision": ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
            "strategy": ("auto", "ddp", "fsdp"),
            "accelerator": ("auto", "cpu", "gpu", "cuda"),
            "optimizer": ("adamw", "muon"),
            "schedule": ("cosine", "wsd"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"trainer.{key}={getattr(self, key)!r} is not allowed; choose one of {list(allowed)}")
        for key in ("max_steps", "batch_size", "accumulate", "val_every", "ckpt_every", "log_every"):
            check_range(f"trainer.{key}", getattr(self, key), ">= 1", getattr(self, key) >= 1)
        check_range(
            "trainer.devices",
            self.devices,
            ">= 1, or -1 for every visible device",
            self.devices >= 1 or self.devices == -1,
        )
        check_range("trainer.lr", self.lr, "> 0", self.lr > 0)
        check_range("trainer.min_lr_ratio", self.min_lr_ratio, "0 <= x <= 1", 0.0 <= self.min_lr_ratio <= 1.0)
        check_range("trainer.warmup_steps", self.warmup_steps, ">= 0", self.warmup_steps >= 0)
        check_range("trainer.weight_decay", self.weight_decay, ">= 0", self.weight_decay >= 0)
        check_range("trainer.beta1", self.beta1, "0 <= x < 1", 0.0 <= self.beta1 < 1.0)
        check_range("trainer.beta2", self.beta2, "0 <= x < 1", 0.0 <= self.beta2 < 1.0)
        check_range("trainer.grad_clip", self.grad_clip, ">= 0 (0: no clipping)", self.grad_clip >= 0)
        check_range("trainer.decay_frac", self.decay_frac, "0 < x <= 1", 0.0 < self.decay_frac <= 1.0)
        check_range("trainer.embed_lr_scale", self.embed_lr_scale, "> 0", self.embed_lr_scale > 0)
        if self.embed_weight_decay is not None:
            check_range("trainer.embed_weight_decay", self.embed_weight_decay, ">= 0, or null (trainer.weight_decay)",
                        self.embed_weight_decay >= 0)
        check_range(
            "trainer.keep_checkpoints", self.keep_checkpoints, ">= 0, or -1 for all", self.keep_checkpoints >= -1
        )
        check_range("trainer.threads", self.threads, ">= 0 (0: torch's default)", self.threads >= 0)
        check_range(
            "trainer.max_skipped_steps", self.max_skipped_steps, ">= 0 (0: stop at the first bad step)",
            self.max_skipped_steps >= 0,
        )
        check_range(
            "trainer.divergence_factor", self.divergence_factor, "> 1, or 0 (off: only non-finite losses count)",
            self.divergence_factor > 1 or self.divergence_factor == 0,
        )
        if self.strategy == "fsdp" and self.accelerator == "cpu":
            raise ConfigError(
                "trainer.strategy='fsdp' is not allowed with trainer.accelerator='cpu'; allowed: fsdp on GPUs "
                "(Lightning's FSDP needs CUDA), or trainer.strategy=ddp on CPUs"
            )
        if self.strategy == "fsdp" and self.optimizer == "muon":
            # Muon orthogonalises each whole matrix (its Newton-Schulz iterations need all of it); under FSDP the
            # optimizer holds each rank's shard, so it would fail or orthogonalise pieces: another update.
            raise ConfigError(
                "trainer.optimizer='muon' is not allowed with trainer.strategy='fsdp' (FSDP shards the matrices Muon "
                "orthogonalises whole); allowed: trainer.strategy=ddp or auto with muon, or trainer.optimizer=adamw"
            )
        if self.compile_cache is not None and not self.compile:
            raise ConfigError(
                f"trainer.compile_cache={self.compile_cache!r} is not allowed with trainer.compile=false; allowed: "
                "trainer.compile=true (trainer=gpu sets it), or trainer.compile_cache=null"
            )
        self._check_cudagraphs()
        if self.ckpt_every % self.val_every:
            # A checkpoint is taken once its step is fully logged (train and validation rows), so that a resumed
            # run rewrites nothing and loses nothing: checkpoint steps must be validation steps.
            raise ConfigError(
                f"trainer.ckpt_every={self.ckpt_every} is not allowed with trainer.val_every={self.val_every}; "
                "allowed: a multiple of trainer.val_every (checkpoints are taken after validation)"
            )

    def _check_cudagraphs(self) -> None:
        """trainer.cudagraphs captures the compiled step on a GPU, one micro-batch per optimizer step: under
        gradient accumulation the second micro-batch's backward would add into gradients that live in the first
        replay's graph memory, which the next replay overwrites (torch refuses it at run time)."""
        if not self.cudagraphs:
            return
        if not self.compile:
            raise ConfigError(
                "trainer.cudagraphs=true is not allowed with trainer.compile=false; allowed: trainer.compile=true "
                "(CUDA graphs replay the compiled step), or trainer.cudagraphs=false"
            )
        if self.accelerator == "cpu":
            raise ConfigError(
                "trainer.cudagraphs=true is not allowed with trainer.accelerator='cpu'; allowed: CUDA graphs on a "
                "GPU (trainer=gpu), or trainer.cudagraphs=false"
            )
        if self.accumulate > 1:
            raise ConfigError(
                f"trainer.cudagraphs=true is not allowed with trainer.accumulate={self.accumulate}; allowed: "
                "trainer.accumulate=1 (a larger trainer.batch_size instead), or trainer.cudagraphs=false"
            )


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = True
    mode: str = "auto"  # auto: online when WANDB_API_KEY is set, else offline
    project: str = "moda-lab"
    entity: str | None = None

    def __post_init__(self) -> None:
        allowed = ("auto", "online", "offline", "disabled")
        if self.mode not in allowed:
            raise ConfigError(f"logger.wandb.mode={self.mode!r} is not allowed; choose one of {list(allowed)}")

    @property
    def run_mode(self) -> str | None:
        """The mode wandb runs in: online or offline (auto: online when WANDB_API_KEY is set), None when off."""
        if not self.enabled or self.mode == "disabled":
            return None
        if self.mode == "auto":
            return "online" if os.environ.get("WANDB_API_KEY") else "offline"
        return self.mode


@dataclass(frozen=True)
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    name: str = "default"  # sweep name: the run dir is <run_root>/<name>/<overrides>
    run_root: str = "runs"
    extra: dict = field(default_factory=dict)  # config sections owned by other entry points (eval, ...)

    def __post_init__(self) -> None:
        check_range("seed", self.seed, "0 to 2**32 - 1 (numpy's seed range)", 0 <= self.seed < 2**32)
        # An empty run_root put runs at the file system's root (/<name>/...), an empty name straight into run_root
        # beside other sweeps, and a name with .. outside run_root.
        if not self.run_root.strip():
            raise ConfigError("run_root='' is not allowed; allowed: a directory path (default: runs)")
        parts = self.name.replace("\\", "/").split("/")
        if not self.name.strip() or self.name.startswith("/") or ".." in parts or "" in parts:
            raise ConfigError(
                f"name={self.name!r} is not allowed; allowed: a sweep name, a relative path inside run_root without "
                "'..' or empty parts (default: default)"
            )


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
    names = [f.name for f in dataclasses.fields(cls) if f.name != "extra" or cls is not RunConfig]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {names}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
        hint_t = hints[key]
        if hint_t is MixerConfig and isinstance(value, dict):  # the named variant's own options dataclass
            value = upgrade_mixer_options(value)
            try:
                hint_t = MixerConfig.options_class(value.get("name", "residual"))
            except ValueError as err:
                raise ConfigError(str(err)) from err
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


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_model(model: dict, data: dict) -> None:
    """Model checks that name every key involved (ModelConfig's own messages cannot know the Hydra keys)."""
    for key in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "max_seq_len"):
        if _is_int(model.get(key)):
            check_range(f"model.{key}", model[key], ">= 1", model[key] >= 1)
    d, h, hd = model.get("d_model"), model.get("n_heads"), model.get("head_dim")
    if _is_int(hd):
        check_range("model.head_dim", hd, "an even number >= 2 (RoPE rotates pairs), or null", hd >= 2 and hd % 2 == 0)
    elif hd is None and _is_int(d) and _is_int(h) and d >= 1 and h >= 1 and d % h == 0 and (d // h) % 2:
        raise ConfigError(
            f"model.d_model={d} / model.n_heads={h} gives head dim {d // h}; allowed: an even head dim "
            "(RoPE rotates pairs): change model.d_model or model.n_heads, or set an even model.head_dim"
        )
    for key in ("rope_theta", "norm_eps", "init_std"):
        v = model.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            check_range(f"model.{key}", v, "> 0", v > 0)
    ffn = model.get("ffn_hidden")
    if _is_int(ffn):
        check_range("model.ffn_hidden", ffn, ">= 1, or null", ffn >= 1)
    seq, max_len = data.get("seq_len"), model.get("max_seq_len")
    if _is_int(seq) and _is_int(max_len) and max_len < seq:
        raise ConfigError(f"model.max_seq_len={max_len} is out of range; allowed: >= data.seq_len={seq}")
    vocab, data_vocab = model.get("vocab_size"), data.get("vocab_size")
    if _is_int(vocab) and _is_int(data_vocab) and vocab < data_vocab:
        raise ConfigError(f"model.vocab_size={vocab} is out of range; allowed: >= data.vocab_size={data_vocab}")


def run_config_from_dict(cfg: dict) -> RunConfig:
    """The resolved Hydra config (as a dict) -> RunConfig, the one conversion (the norm group sets model.norm)."""
    cfg = dict(cfg)
    known = {f.name for f in dataclasses.fields(RunConfig)} - {"extra"}
    extra = {k: cfg.pop(k) for k in list(cfg) if k not in known and k in EXTRA_SECTIONS}
    from_dict(DataConfig, cfg.get("data", {}), "data")  # data first: model keys interpolate data.seq_len and vocab
    _check_model(cfg.get("model") or {}, cfg.get("data") or {})
    return dataclasses.replace(from_dict(RunConfig, cfg, ""), extra=extra)


# Top-level sections that other entry points own and validate themselves (eval hooks, hydra internals).
EXTRA_SECTIONS = {"eval"}

__all__ = [
    "ConfigError",
    "DataConfig",
    "LoggerConfig",
    "MixerConfig",
    "ModelConfig",
    "RunConfig",
    "TrainerConfig",
    "WandbConfig",
    "from_dict",
    "run_config_from_dict",
]
