"""Run directories and the facts about a run that training, evaluation, checkpoints and analysis share.

``<run_root>/<name>/<run name>/`` holds config.yaml (the resolved config), meta.json (status, wandb id, git
state, launches, host, world size, attention backend), metrics.jsonl (one JSON row per log call), env/ (git
diff, pip freeze, nvidia-smi per launch), checkpoints/ and wandb/. Each fact has one owner here: which config
keys define a run (run dir names and relaunch checks), the run dir name, tokens per optimizer step, the run dir
of a checkpoint, and the rows of metrics.jsonl. No torch or Lightning here: analysis reads run dirs with this.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import yaml

from .errors import UsageError
from .layout import upgrade_mixer_options

log = logging.getLogger(__name__)

# Config keys (and key prefixes, ending in ".") that do not define a run: they never name its run dir, and a
# relaunch may change them and resume the same run (longer training, logging, checkpointing, workers, paths,
# evaluation). run_name (the run dirs of conf/config.yaml) and check_resume_compatible both read this list.
RUN_INDEPENDENT_KEYS = (
    "experiment",  # a group, not a key: experiment files set `name`, the run's parent dir
    "name",
    "run_root",
    "trainer.max_steps",
    "trainer.val_every",
    "trainer.ckpt_every",
    "trainer.log_every",
    "trainer.keep_checkpoints",
    "trainer.threads",
    "trainer.devices",
    "trainer.strategy",
    "trainer.compile_cache",  # where the compile's artifacts are carried: the same graphs either way
    "trainer.accelerator",  # where it runs (trainer=gpu sets gpu; runs from before that say auto)
    "trainer.cudagraphs",  # how the compiled step is launched, not what it computes (added after runs existed)
    "trainer.max_skipped_steps",  # the divergence guard's settings (added after runs existed)
    "trainer.divergence_factor",
    "data.val_windows",  # how much validation measures, not what trains (its default grew)
    "data.num_workers",
    "data.num_proc",
    "data.build_default",
    "data.default_corpus_dir",
    "data.cache_dir",
    "logger.",
    "eval.",
)


class DamagedRunFile(UsageError):
    """A run dir's config.yaml or meta.json that does not parse as a mapping (a torn write, a hand edit)."""


def _read_mapping(path: Path, parse, errors: type[Exception], advice: str) -> dict | None:
    """The mapping a run file holds (None when there is no file); DamagedRunFile, with advice, when it does not
    parse as one."""
    if not path.is_file():
        return None
    try:
        content = parse(path.read_text())
    except errors as err:
        raise DamagedRunFile(f"{path} is damaged ({' '.join(str(err).split())}); nothing was written; {advice}") from None
    if not isinstance(content, dict):
        why = "it is empty" if content is None else f"it holds a {type(content).__name__}, not a mapping"
        raise DamagedRunFile(f"{path} is damaged ({why}); nothing was written; {advice}")
    return content


def run_independent(key: str) -> bool:
    """Whether a config key (or a group, such as ``logger``) is one of RUN_INDEPENDENT_KEYS or under a prefix."""
    return any(key == k or (k.endswith(".") and (key.startswith(k) or key == k[:-1])) for k in RUN_INDEPENDENT_KEYS)


def run_name(overrides: Sequence[str], max_len: int = 120) -> str:
    """Run-dir name from a job's command-line overrides (``hydra.overrides.task``): the run-defining ones, sorted
    and joined by commas (Hydra's override_dirname); readable, deterministic, short enough for any file system.

    Long names keep their group choices (model=..., norm=...) and replace the rest by a stable hash.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser  # only config.yaml's resolver needs it

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    dirname = ",".join(sorted(o.input_line for o in parsed if not run_independent(o.key_or_group)))
    name = dirname.replace("/", "_") or "default"
    if len(name) <= max_len:
        return name
    groups = [p for p in dirname.split(",") if "=" in p and "." not in p.split("=")[0]]
    digest = hashlib.sha1(dirname.encode()).hexdigest()[:10]
    return ",".join([*groups, digest]).replace("/", "_")[:max_len]


def tokens_per_step(batch_size: int, accumulate: int, seq_len: int, world_size: int) -> int:
    """Tokens one optimizer step trains on. world_size is the number of training processes (Lightning's
    trainer.world_size, which resolves trainer.devices=-1), never the -1 of the config."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} is out of range; allowed: >= 1 (the number of processes)")
    return batch_size * accumulate * seq_len * world_size


# Keys added to the config after runs had been written, with the value every earlier run trained with: a config at
# these values defines the same run as one without the keys (analysis cells omit them: records.cell_config).
LATER_DEFAULTS: dict[str, object] = {
    "trainer.optimizer": "adamw",
    "trainer.schedule": "cosine",
    "trainer.decay_frac": 0.2,
    "trainer.embed_lr_scale": 1.0,
    "trainer.embed_weight_decay": None,
}


def upgrade_config(cfg: dict) -> dict:
    """A resolved config in today's layout. Run dirs and wandb runs written before the norm placement moved into
    the model config hold it as ``norm: {placement: x}``; that becomes ``model.norm: x``. A model config from
    before ``model.init_rng`` existed was initialised the one way there was: ``sequential``. The mixer's options
    are upgraded by upgrade_mixer_options."""
    legacy = cfg.get("norm")
    if isinstance(legacy, dict) and "placement" in legacy:
        cfg = {k: v for k, v in cfg.items() if k != "norm"}
        cfg["model"] = {**(cfg.get("model") or {}), "norm": legacy["placement"]}
    model = cfg.get("model")
    if isinstance(model, dict) and "d_model" in model and "init_rng" not in model:
        cfg = {**cfg, "model": {**model, "init_rng": "sequential"}}
    model = cfg.get("model")
    if isinstance(model, dict) and isinstance(model.get("mixer"), dict):
        cfg = {**cfg, "model": {**model, "mixer": upgrade_mixer_options(model["mixer"])}}
    return cfg


def flatten_config(cfg: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (flat input keys pass through)."""
    out = {}
    for key, val in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(val, dict):
            out.update(flatten_config(val, full + "."))
        else:
            out[full] = val
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def check_resume_compatible(old: dict, new: dict, run_dir: Path) -> None:
    """A relaunch into an existing run dir must describe the same run (old: RunDir.read_config()); raise
    ConfigError listing the run-defining keys that differ."""
    from .config import ConfigError  # here, not at the top: moda_lab.config imports the model (torch)

    a, b = flatten_config(old), flatten_config(new)
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not run_independent(k)]
    if diffs:
        lines = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:8])
        raise ConfigError(
            f"{run_dir} already holds a run with a different config ({lines}). Its checkpoints and logs are "
            "kept untouched; launch with another name=... or run_root=, or move that directory away."
        )


class RunDir:
    """<run_root>/<experiment>/<run name>: config.yaml, meta.json, metrics.jsonl, env/, checkpoints/, wandb/."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self.meta_path = self.path / "meta.json"
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> RunDir | None:
        """The run dir a checkpoint file belongs to (<run dir>/checkpoints/<file>.ckpt), else None."""
        p = Path(path)
        return cls(p.parent.parent) if p.is_file() and p.parent.name == "checkpoints" else None

    @property
    def last_ckpt(self) -> Path | None:
        last = self.ckpt_dir / "last.ckpt"
        return last if last.is_file() else None

    def read_config(self) -> dict:
        """The run's resolved config (today's layout, see upgrade_config); {} when there is none."""
        cfg = _read_mapping(
            self.config_path, yaml.safe_load, yaml.YAMLError, "delete it to relaunch with the config given now (the "
            "check that a relaunch describes the same run is then skipped), or restore it",
        )
        return upgrade_config(cfg) if cfg is not None else {}

    def read_meta(self) -> dict:
        meta = _read_mapping(
            self.meta_path, json.loads, json.JSONDecodeError, "delete it to resume from the checkpoints (its status, "
            "W&B id and launch count are lost), or restore it",
        )
        return meta if meta is not None else {}

    def trained(self, max_steps: int | None = None) -> bool:
        """meta.json says finished at max_steps or later (default: the config's trainer.max_steps; without one,
        finished is enough)."""
        meta = self.read_meta()
        want = max_steps if max_steps is not None else (self.read_config().get("trainer") or {}).get("max_steps")
        return meta.get("status") == "finished" and (want is None or meta.get("global_step", -1) >= want)

    def write_meta(self, **updates) -> dict:
        meta = {**self.read_meta(), **updates}
        text = json.dumps(meta, indent=2)
        tmp = self.meta_path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self.meta_path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.meta_path.is_file():
                raise
            # A full disk: rewrite meta.json in place, in the blocks it already holds, so that a run stopped by
            # the full disk is not left saying "running".
            with self.meta_path.open("r+") as f:
                f.write(text)
                f.truncate()
        return meta

    def check_relaunch(self, resolved: dict) -> None:
        """A run dir that already holds a run must be relaunched with the same run-defining config
        (check_resume_compatible); writes nothing."""
        if self.config_path.is_file():
            check_resume_compatible(self.read_config(), resolved, self.path)

    def open(self, resolved: dict) -> dict:
        """Create or re-open the run dir; returns meta (with a stable wandb id). Never deletes anything."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.check_relaunch(resolved)
        tmp = self.config_path.with_suffix(".tmp")  # atomic: a relaunch compares against it, a torn one would refuse
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        tmp.replace(self.config_path)
        meta = self.read_meta()
        launches = meta.get("launches", 0) + 1
        self._write_environment(launches)
        return self.write_meta(
            run_name=self.path.name,
            experiment=self.path.parent.name,
            wandb_id=meta.get("wandb_id") or uuid.uuid4().hex[:12],
            started=meta.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S"),
            launches=launches,
            status="running",
            finished=None,
            git_sha=_git("rev-parse", "HEAD").strip() or None,
            git_dirty=bool(_git("status", "--porcelain").strip()),
            host=platform.node(),
            pid=os.getpid(),
        )

    def _write_environment(self, launch: int) -> None:
        env = self.path / "env"
        env.mkdir(exist_ok=True)
        (env / f"git-{launch}.diff").write_text(_git("diff", "HEAD"))
        pkgs = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
        (env / f"pip-freeze-{launch}.txt").write_text("\n".join(pkgs) + "\n")
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
            (env / f"nvidia-smi-{launch}.txt").write_text(out)

    # --- metrics.jsonl: every row of it is written here -----------------------------------------------------

    def log_metrics(self, step: int, tokens: int | None, metrics: dict) -> None:
        """Append one row {"step", "tokens", "time", <metric>: float, ...}; NaN and inf are kept as strings."""
        row = {"step": step, "tokens": tokens, "time": time.time()}
        for k, v in metrics.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)  # visible without breaking JSON
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def metric_rows(self) -> Iterator[dict]:
        """The rows of metrics.jsonl in order; a torn line (a launch killed while writing it) is skipped."""
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.is_file() else []
        yield from (row for row in map(_row_or_none, lines) if row is not None)

    def drop_metrics_after(self, step: int) -> int:
        """Keep the rows of steps <= step; returns how many rows were dropped for being past it. Unreadable lines
        go too: a torn last line (a launch killed mid-write) quietly, any other with a warning naming it.

        A resumed run logs every step after its checkpoint again, so the rows a killed launch wrote past it go.
        """
        if not self.metrics_path.is_file():
            return 0
        lines = self.metrics_path.read_text().splitlines()
        rows = [_row_or_none(line) for line in lines]
        damaged = [i + 1 for i, row in enumerate(rows[:-1]) if row is None]
        if damaged:
            log.warning("%s: dropped unreadable line(s) %s (not JSON rows)", self.metrics_path, damaged)
        kept = [line for line, row in zip(lines, rows) if row is not None and row.get("step", 0) <= step]
        dropped = sum(row is not None and row.get("step", 0) > step for row in rows)
        if len(kept) < len(lines):
            tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.metrics_path)
        return dropped

    def tokens_at(self, step: int) -> int | None:
        """Tokens trained by an optimizer step: from the run's metrics rows, else from its config and world size
        (meta.json; run dirs from before it was recorded: trainer.devices, None when that is -1)."""
        for row in self.metric_rows():
            if row.get("step") == step and isinstance(row.get("tokens"), (int, float)):
                return int(row["tokens"])
        cfg = self.read_config()
        try:
            t, d = cfg["trainer"], cfg["data"]
            world = self.read_meta().get("world_size", t.get("devices", 1))
            return step * tokens_per_step(t["batch_size"], t.get("accumulate", 1), d["seq_len"], world)
        except (KeyError, TypeError, ValueError):
            return None


class RunDirLocked(UsageError):
    """Another live launch holds the run dir's lock."""


class RunLock:
    """``<run dir>/.lock``: the pid and host of the launch training in that run dir, so a second launch of the
    same command refuses instead of writing the same files. It is created atomically (a complete file linked into
    place, which fails when one exists) and removed when the launch ends. A lock whose holder is gone (a dead pid
    on this host: a kill -9, a power cut) is taken over with a warning; a holder on another host cannot be checked
    from here and is refused, naming the file to delete once that launch is known to be gone."""

    NAME = ".lock"

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self.me = {"pid": os.getpid(), "host": platform.node()}

    def holder(self) -> dict | None:
        """{"pid", "host", "since"} of the lock file, {} for an unreadable one, None when there is none."""
        try:
            held = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return held if isinstance(held, dict) and isinstance(held.get("pid"), int) else {}

    def _live(self, held: dict) -> bool:
        """Whether the holder may still be running (always, for a holder on another host)."""
        if not held:
            return False
        if held.get("host") != self.me["host"]:
            return True
        if held["pid"] == self.me["pid"]:
            return False  # this process: a lock left by an earlier job of the same multirun
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by another user
            return True
        return True

    def check(self) -> None:
        """Raise RunDirLocked when a live launch holds the lock (writes nothing)."""
        held = self.holder()
        if held is not None and self._live(held):
            raise RunDirLocked(
                f"{self.path.parent} is in use by pid {held['pid']} on host {held.get('host')!r} (since "
                f"{held.get('since')}); wait for it to end, or delete {self.path} if that launch is gone"
            )

    def acquire(self) -> None:
        """Take the lock, or raise RunDirLocked; a stale lock is taken over with a warning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {**self.me, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = self.path.with_name(f"{self.NAME}.{self.me['pid']}.tmp")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    self._create(tmp)
                    return
                except FileExistsError:
                    self.check()
                    held = self.holder() or {}
                    if held.get("pid") != self.me["pid"] or held.get("host") != self.me["host"]:
                        log.warning(
                            "%s: taking over the lock of pid %s on host %r, which is no longer running",
                            self.path.parent, held.get("pid"), held.get("host"),
                        )
                    self.path.unlink(missing_ok=True)
            self.check()
            raise RunDirLocked(f"{self.path}: could not take the run dir's lock; another launch is taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def _create(self, tmp: Path) -> None:
        """Put the complete file tmp in place as the lock; FileExistsError when one exists."""
        try:
            os.link(tmp, self.path)  # atomic and exclusive, content included
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create, then the content
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f:
                f.write(tmp.read_text())

    def release(self) -> None:
        held = self.holder()
        if held and held.get("pid") == self.me["pid"] and held.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)


def _row_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # the launch was killed while writing this row
        return None


def remove_stub(path: str | Path) -> bool:
    """Delete a run dir that holds only what Hydra writes before the task starts (.hydra/, <job>.log).

    A job refused for its config leaves nothing behind; a dir holding anything else is never touched.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    entries = list(p.iterdir())
    stub = all(e.name == ".hydra" or (e.suffix == ".log" and e.is_file()) for e in entries)
    if not stub:
        return False
    shutil.rmtree(p)
    for parent in (p.parent, p.parent.parent):  # <run_root>/<name>/ that Hydra made for this job alone
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return True
