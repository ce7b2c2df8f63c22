"""Run records shared by every loader: config columns, history frame, and the issues found while loading.

A loader (run dir, offline wandb, online wandb) returns one :class:`RunRecord` per run, including runs that could
not be read: those carry an empty history and at least one :class:`RunIssue`, so that nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from moda_lab.rundir import LATER_DEFAULTS, RUN_INDEPENDENT_KEYS, flatten_config, upgrade_config

# Config columns of the tidy table, in display order, with the dotted config key each comes from.
CONFIG_KEYS: dict[str, str] = {
    "experiment": "name",  # the sweep name (config key `name`; runs live in <run_root>/<name>/)
    "model": "model.mixer.name",
    "norm": "model.norm",
    "depth_kv": "model.mixer.depth_kv",
    "ffn_kv": "model.mixer.ffn_kv",
    "attn_kv": "model.mixer.attn_kv",
    "seed": "seed",
    "layers": "model.n_layers",
    "width": "model.d_model",
    "n_heads": "model.n_heads",
    "n_kv_heads": "model.n_kv_heads",
}
CONFIG_COLUMNS: list[str] = list(CONFIG_KEYS)
SWITCH_COLUMNS: list[str] = ["depth_kv", "ffn_kv", "attn_kv"]
# A "cell" of a sweep: runs whose whole resolved config is equal except for the seed; seeds of one cell are
# averaged. ``cell`` fingerprints that config (see cell_config), ``cell_label`` names what sets the cell apart
# from the others beyond the columns above ("lr=0.001, warmup_steps=10"; empty when nothing else differs).
CELL_COLUMNS: list[str] = [*(c for c in CONFIG_COLUMNS if c != "seed"), "cell", "cell_label"]
RUN_COLUMNS: list[str] = ["run", "source", "status", "path"]

# Config keys (and key prefixes) that do not change what is trained: the keys that do not define a run
# (moda_lab.rundir.RUN_INDEPENDENT_KEYS: where files go, logging, checkpointing, evaluation hooks, parallelism)
# except the training length and the world size, which do change it, plus the seed and the kernel choice. Every
# other key defines the cell.
NON_DEFINING_KEYS: tuple[str, ...] = (
    *(k for k in RUN_INDEPENDENT_KEYS if k not in ("trainer.max_steps", "trainer.devices")),
    "seed",
    "hydra.",
    "trainer.accelerator",
    "trainer.compile",
    "model.attn_backend",
)
# Keys that follow another by interpolation by default; a label names them only when they differ from it.
DERIVED_KEYS: dict[str, str] = {"model.vocab_size": "data.vocab_size", "model.max_seq_len": "data.seq_len"}


@dataclass(frozen=True)
class RunIssue:
    """Something wrong with one run (missing file, truncated line, crashed, no validation loss, ...)."""

    run: str
    kind: str
    detail: str

    def as_line(self) -> str:
        return f"{self.run}: [{self.kind}] {self.detail}"


@dataclass
class RunRecord:
    """One run as loaded: identity, flattened config, and its history (one row per step)."""

    run: str
    source: str  # "local" | "wandb-offline" | "wandb-online"
    path: str
    status: str  # "finished" | "running" | "failed" | "diverged" | "interrupted" | "unknown" | "missing"
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    issues: list[RunIssue] = field(default_factory=list)

    def add_issue(self, kind: str, detail: str) -> None:
        self.issues.append(RunIssue(self.run, kind, detail))


def unwrap_wandb_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Undo the legacy ``{"value": x, "desc": ...}`` wrapping some wandb APIs put around config entries; the
    result is in today's layout (moda_lab.rundir.upgrade_config), like a run dir's config."""
    out: dict[str, Any] = {}
    for key, val in cfg.items():
        if key.startswith("_wandb"):
            continue
        if isinstance(val, dict) and "value" in val and set(val) <= {"value", "desc"}:
            val = val["value"]
        out[key] = val
    return upgrade_config(out)


def get_dotted(cfg: dict[str, Any], dotted: str) -> Any:
    """``get_dotted({"a": {"b": 1}}, "a.b") == 1``; also accepts flat keys ``{"a.b": 1}``; missing -> None."""
    if dotted in cfg:
        return cfg[dotted]
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def config_columns(cfg: dict[str, Any]) -> dict[str, Any]:
    """The tidy-table config columns of one resolved run config (None where the key is absent)."""
    cols = {col: get_dotted(cfg, key) for col, key in CONFIG_KEYS.items()}
    for col in SWITCH_COLUMNS:
        # Switches are false where not applicable (contract); a missing key means the same thing.
        cols[col] = bool(cols[col]) if cols[col] is not None else False
    return cols


# MoDA's switches, which every run wrote (False outside MoDA) until the Block contract gave each variant its own
# options: a config without them counts as one with them False, so the cells of earlier runs keep their ids.
FORMER_SWITCHES: dict[str, bool] = {CONFIG_KEYS[col]: False for col in SWITCH_COLUMNS}


def cell_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flattened config that defines a run's cell: every key except the seed and NON_DEFINING_KEYS, and the
    keys added later (LATER_DEFAULTS) where they hold the value earlier runs had; MoDA's switches as every run
    before the Block contract had them (FORMER_SWITCHES)."""
    flat = {**FORMER_SWITCHES, **flatten_config(cfg)}
    return {
        k: v
        for k, v in sorted(flat.items())
        if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in NON_DEFINING_KEYS)
        and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])
    }


def _fingerprint(flat: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cell_id(cfg: dict[str, Any]) -> str:
    """Short stable fingerprint of cell_config(cfg)."""
    return _fingerprint(cell_config(cfg))


# The config keys of the depth-mixing variant (mixer name and its switches): runs whose cell configs are equal
# without them and the peak lr differ only in the variant and its lr, so their seeds can be paired (pairing.py).
VARIANT_KEY_PREFIX = "model.mixer."
# The peak learning rate: cells equal without it are one lr sweep (plots.plot_lr_sweep).
LR_KEY = "trainer.lr"


def pair_group_id(cfg: dict[str, Any]) -> str:
    """Short stable fingerprint of cell_config(cfg) without the variant's keys (VARIANT_KEY_PREFIX) and the peak lr
    (LR_KEY): equal for a MoDA run and the baseline runs of the same cell otherwise (norm, sizes, optimizer,
    schedule, data, tokens, ...), at its lr or their own; pairing.py decides which baseline cell it is paired with."""
    return _fingerprint(
        {k: v for k, v in cell_config(cfg).items() if not k.startswith(VARIANT_KEY_PREFIX) and k != LR_KEY}
    )


def lr_group_id(cfg: dict[str, Any]) -> str:
    """Short stable fingerprint of cell_config(cfg) without LR_KEY: equal for the runs of one variant and cell
    otherwise at different peak learning rates."""
    return _fingerprint({k: v for k, v in cell_config(cfg).items() if k != LR_KEY})


# Keys shown by the config columns themselves (variant, norm, sizes, experiment): never repeated in a cell label.
_SHOWN_KEYS = {key for col, key in CONFIG_KEYS.items() if col != "seed"}


def cell_labels(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """cell id -> label of the config keys that differ between cells, beyond the columns already shown.

    Keys are named by their last part (``lr``, ``seq_len``) unless two differing keys share it.
    """
    flat = {cid: cell_config(cfg) for cid, cfg in configs.items()}
    # The variant's options are in its label (variant_of) already: never repeated, nor another variant's as None.
    keys = sorted(k for k in {k for c in flat.values() for k in c} - _SHOWN_KEYS if not k.startswith("model.mixer."))
    # A key added later reads as its earlier value where a config lacks it (cell_config leaves it out there).
    flat = {cid: {**{k: LATER_DEFAULTS[k] for k in keys if k in LATER_DEFAULTS}, **c} for cid, c in flat.items()}
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in flat.values()}) > 1]
    last = [k.rsplit(".", 1)[-1] for k in differing]
    labels = {}
    for cid, c in flat.items():
        parts = []
        for key, short in zip(differing, last):
            source = DERIVED_KEYS.get(key)
            if source in differing and c.get(key) == c.get(source):
                continue  # e.g. model.max_seq_len following data.seq_len
            name = short if last.count(short) == 1 else key
            parts.append(f"{name}={c.get(key)}")
        labels[cid] = ", ".join(parts)
    return labels


def variant_label(model: Any, depth_kv: Any = False, ffn_kv: Any = False, attn_kv: Any = False) -> str:
    """Short name of a depth-mixing variant with its MoDA switches, e.g. ``moda +ffn_kv``."""
    extras = [f"+{name}" for name, on in (("ffn_kv", ffn_kv), ("attn_kv", attn_kv)) if on]
    # MoDA reads depth K/V by definition; flag the unusual cases only.
    if str(model) == "moda" and not depth_kv:
        extras.insert(0, "-depth_kv")
    elif str(model) != "moda" and depth_kv:
        extras.insert(0, "+depth_kv")
    return " ".join([str(model), *extras])


def _option_defaults(name: str) -> dict[str, Any]:
    """The defaults of the options of the variant registered as ``name`` ({} when it is not registered here)."""
    from dataclasses import fields

    from moda_lab.model import DEPTH_MIXERS  # on first use: importing the model imports torch

    cls = DEPTH_MIXERS.get(name)
    return {f.name: f.default for f in fields(cls.Options)} if cls is not None else {}


def variant_of(cfg: dict[str, Any]) -> str:
    """The variant label of a run config: ``variant_label`` of the mixer name and MoDA's switches, then each other
    option of the variant (``model.mixer.*``) away from its default, as its options dataclass declares it:
    ``value_residual learnable=False``."""
    cols = config_columns(cfg)
    label = variant_label(cols["model"], cols["depth_kv"], cols["ffn_kv"], cols["attn_kv"])
    options = {
        k[len(VARIANT_KEY_PREFIX) :]: v for k, v in flatten_config(cfg).items() if k.startswith(VARIANT_KEY_PREFIX)
    }
    defaults = _option_defaults(str(cols["model"]))
    extras = [
        f"{k}={v}"
        for k, v in sorted(options.items())
        if k != "name" and k not in SWITCH_COLUMNS and (k not in defaults or v != defaults[k])
    ]
    return " ".join([label, *extras])

