"""Sweep hook: run.py calls evaluate_run(run_dir, resolved["eval"]) after fitting when eval.after_fit=true."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..checkpoint import CheckpointError
from ..rundir import RunDir
from .evaluate import eval_config_from_dict, evaluate_checkpoint, results_dir

log = logging.getLogger(__name__)


def evaluate_run(run_dir: str | Path, eval_cfg: dict) -> dict:
    """Evaluate <run_dir>/checkpoints/last.ckpt; results land in <run_dir>/eval/last/ and metrics.jsonl.

    A relaunch of a finished run does not evaluate again: results.json of the run's final step with the same
    eval config are returned as they are (metrics.jsonl keeps one row of them). With eval.attention_windows > 0
    the attention statistics follow (attention_stats.write_run_attention), also for results that were there.
    """
    cfg = eval_config_from_dict(eval_cfg)
    rundir = RunDir(run_dir)
    if rundir.last_ckpt is None:
        raise CheckpointError(
            f"eval.after_fit: {rundir.ckpt_dir / 'last.ckpt'} does not exist (did training save a checkpoint?)"
        )
    done = _existing_results(rundir, dataclasses.asdict(cfg))
    if done is not None:
        log.info("%s: evaluated at step %s already with this eval config; not evaluated again", rundir.path,
                 done["moda"]["step"])
    results = done if done is not None else evaluate_checkpoint(rundir.last_ckpt, cfg)
    if cfg.attention_windows:
        from .attention_stats import write_run_attention

        write_run_attention(rundir.path, cfg.attention_windows, cfg.device)
    return results


def _existing_results(rundir: RunDir, eval_cfg: dict) -> dict | None:
    """results.json of last.ckpt when it scored the run's final step (meta.json) with this eval config."""
    path = results_dir(rundir.last_ckpt) / "results.json"
    step = rundir.read_meta().get("global_step")
    if step is None or not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:  # torn by a killed launch: evaluate again
        return None
    moda = results.get("moda") or {}
    same = moda.get("step") == step and _task_config(moda.get("eval_config") or {}) == _task_config(eval_cfg)
    return results if same else None


def _task_config(eval_cfg: dict) -> dict:
    """The eval config as results.json stores it, less attention_windows: it does not change the task results
    (attention_stats.py writes its own file)."""
    return {k: v for k, v in json.loads(json.dumps(eval_cfg)).items() if k != "attention_windows"}
