"""Sweep hook: run.py calls evaluate_run(run_dir, resolved["eval"]) after fitting when eval.after_fit=true."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import CheckpointError
from ..rundir import RunDir
from .evaluate import eval_config_from_dict, evaluate_checkpoint


def evaluate_run(run_dir: str | Path, eval_cfg: dict) -> dict:
    """Evaluate <run_dir>/checkpoints/last.ckpt; results land in <run_dir>/eval/last/ and metrics.jsonl."""
    cfg = eval_config_from_dict(eval_cfg)
    rundir = RunDir(run_dir)
    if rundir.last_ckpt is None:
        raise CheckpointError(
            f"eval.after_fit: {rundir.ckpt_dir / 'last.ckpt'} does not exist (did training save a checkpoint?)"
        )
    return evaluate_checkpoint(rundir.last_ckpt, cfg)
