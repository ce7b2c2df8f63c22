"""Self-describing run directories: resolved config, git state, environment, meta (wandb id, status)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path

import yaml

from ..config import ConfigError

# Keys a relaunch may change without starting a different run (longer training, logging, workers, eval).
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.val_every",
    "trainer.ckpt_every",
    "trainer.log_every",
    "trainer.keep_checkpoints",
    "trainer.threads",
    "trainer.devices",
    "trainer.strategy",
    "data.num_workers",
    "data.num_proc",
    "data.build_default",
    "data.default_corpus_dir",
    "data.cache_dir",
    "logger.",
    "eval.",
    "run_root",
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def check_resume_compatible(old: dict, new: dict, run_dir: Path) -> None:
    """A relaunch into an existing run dir must describe the same run; raise ConfigError listing differences."""
    a, b = _flatten(old), _flatten(new)
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        lines = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:8])
        raise ConfigError(
            f"{run_dir} already holds a run with a different config ({lines}). Its checkpoints and logs are "
            "kept untouched; launch with another name=... or run_root=, or move that directory away."
        )


class RunDir:
    """<run_root>/<experiment>/<run name>: config.yaml, meta.json, metrics.jsonl, checkpoints/, wandb/."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self.meta_path = self.path / "meta.json"

    @property
    def last_ckpt(self) -> Path | None:
        last = self.ckpt_dir / "last.ckpt"
        return last if last.is_file() else None

    def read_meta(self) -> dict:
        return json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}

    def write_meta(self, **updates) -> dict:
        meta = {**self.read_meta(), **updates}
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.meta_path)
        return meta

    def open(self, resolved: dict) -> dict:
        """Create or re-open the run dir; returns meta (with a stable wandb id). Never deletes anything."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path = self.path / "config.yaml"
        if cfg_path.is_file():
            check_resume_compatible(yaml.safe_load(cfg_path.read_text()) or {}, resolved, self.path)
        tmp = cfg_path.with_suffix(".tmp")  # atomic: a relaunch compares against it, a torn one would refuse
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        tmp.replace(cfg_path)
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


def run_name(override_dirname: str, max_len: int = 120) -> str:
    """Run-dir name from Hydra's override dirname: readable, deterministic, and short enough for any file system.

    Long names keep their group choices (model=..., norm=...) and replace the rest by a stable hash.
    """
    name = override_dirname.replace("/", "_") or "default"
    if len(name) <= max_len:
        return name
    import hashlib

    groups = [p for p in override_dirname.split(",") if "=" in p and "." not in p.split("=")[0]]
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return ",".join([*groups, digest]).replace("/", "_")[:max_len]
