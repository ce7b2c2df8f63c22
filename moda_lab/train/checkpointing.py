"""Checkpoints that survive a kill at any instant: atomic writes, step-complete save points, intact fallback.

- ``AtomicCheckpointIO`` writes ``<name>.tmp`` beside the target, fsyncs it and renames it over the target, so a
  checkpoint file is always either the old complete one or the new complete one. (Lightning's own save stages the
  bytes in the system temp dir and moves them; across file systems that move is a copy into the target.)
- ``StepCheckpoint`` saves every n optimizer steps once that step is fully logged: at the end of its validation
  (checkpoint steps are validation steps, see ``TrainerConfig``) and when training ends. A run resumed from it
  continues right after the last metrics row it wrote: no row is written twice and none is lost.
- ``resume_checkpoint`` picks the newest checkpoint that loads, setting aside unreadable ones with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
_STEP_FILE = re.compile(r"step_(\d+)\.ckpt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the target's directory, fsync, then rename over the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + TMP_SUFFIX)
        with tmp.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)


class StepCheckpoint(ModelCheckpoint):
    """Every ``every`` optimizer steps and at the end of training, saved once the step's rows are logged.

    Lightning's ``every_n_train_steps`` saves in ``on_train_batch_end``, before that step's train row and
    validation are logged; a kill right after such a save loses those rows for good, since the resumed run starts
    at the next step. Saving at validation end is the save point Lightning's loops resume from without running
    that validation again.
    """

    def __init__(self, every: int, healthy: Callable[[Any, Any], bool] | None = None, **kwargs: Any) -> None:
        super().__init__(every_n_train_steps=0, every_n_epochs=0, enable_version_counter=False, **kwargs)
        self.every = every
        self.healthy = healthy  # (trainer, module) -> whether the weights may be saved (DivergenceGuard.healthy)

    @property
    def state_key(self) -> str:
        # The key ModelCheckpoint(every_n_train_steps=every) had (Callback._generate_state_key's format): runs
        # checkpointed before this class still restore their top-k bookkeeping (which step files to delete next).
        kwargs = {
            "monitor": self.monitor,
            "mode": self.mode,
            "every_n_train_steps": self.every,
            "every_n_epochs": 0,
            "train_time_interval": None,
        }
        return f"ModelCheckpoint{kwargs!r}"

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Step saves wait for validation end (see the class docstring)."""

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Saves are step-based; epochs end wherever the data does."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.global_step % self.every == 0:
            self._save_step(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_step(trainer)  # the final step, whether or not it is a multiple of `every`

    def _save_step(self, trainer) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        if self.healthy is not None and not self.healthy(trainer, trainer.lightning_module):
            log.warning("step %d not checkpointed: the weights diverged; the last good checkpoint stays", trainer.global_step)
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def _step_of(path: Path) -> int:
    m = _STEP_FILE.search(path.name)
    return int(m.group(1)) if m else -1


def checkpoint_step(path: Path) -> tuple[int | None, str]:
    """(global_step, '') when the checkpoint loads, else (None, why)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        step = int(ckpt["global_step"])
        for key in ("state_dict", "optimizer_states", "loops"):
            if key not in ckpt:
                return None, f"no {key!r} in it"
        return step, ""
    except Exception as err:  # truncated zip, garbage bytes, a file that is not a checkpoint
        first = str(err).split(". ")[0].splitlines()[0] if str(err) else ""  # torch's advice paragraph is dropped
        return None, f"{type(err).__name__}: {first}".rstrip(": ")


def resume_checkpoint(ckpt_dir: str | Path, set_aside: bool = True) -> tuple[Path, int] | None:
    """(path, global step) of the newest checkpoint in ckpt_dir that loads (last.ckpt or a step_*.ckpt), or None
    to start afresh.

    Unreadable checkpoints are renamed to ``*.corrupt`` (kept for inspection, never picked again) with one
    warning each; leftover temp files of interrupted writes are removed. DDP children pass set_aside=False.
    """
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    if set_aside:
        for tmp in d.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
    last = d / "last.ckpt"
    last_step, why = checkpoint_step(last) if last.is_file() else (None, "")
    if last.is_file() and last_step is None:
        _set_aside(last, why, set_aside)
    steps = sorted((p for p in d.glob("step_*.ckpt") if _step_of(p) > (last_step or -1)), key=_step_of, reverse=True)
    for path in steps:  # newer than last.ckpt: a kill between the step file and last.ckpt, or last.ckpt is torn
        step, why = checkpoint_step(path)
        if step is None:
            _set_aside(path, why, set_aside)
            continue
        if last_step is None:
            log.warning("resuming from %s (step %d): last.ckpt is missing or unreadable", path, step)
        else:
            log.warning("resuming from %s (step %d), newer than last.ckpt (step %d)", path, step, last_step)
        if not set_aside:
            return path, step
        # last.ckpt must hold the newest state: a run resumed at its final step saves nothing more.
        tmp = last.with_name(last.name + TMP_SUFFIX)
        shutil.copyfile(path, tmp)
        os.replace(tmp, last)
        return last, step
    return (last, last_step) if last_step is not None else None


def _set_aside(path: Path, why: str, rename: bool) -> None:
    if rename:
        path.replace(path.with_name(path.name + CORRUPT_SUFFIX))
        log.warning("checkpoint %s is unreadable (%s); moved it to %s", path, why, path.name + CORRUPT_SUFFIX)
    else:
        log.warning("checkpoint %s is unreadable (%s)", path, why)
