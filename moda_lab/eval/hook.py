"""Sweep hook: run.py calls evaluate_run(run_dir, resolved["eval"]) after fitting when eval.after_fit=true."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..load import run_checkpoint
from ..rundir import RunDir
from .evaluate import (
    RESULTS_FILE,
    EvalConfig,
    eval_config_from_dict,
    evaluate_checkpoint,
    evaluation_name,
    resolve_device,
    results_dir,
)

log = logging.getLogger(__name__)


def evaluate_run(run_dir: str | Path, eval_cfg: dict) -> dict:
    """Evaluate the run's newest intact checkpoint (checkpoints/last.ckpt, else the newest step_*.ckpt that loads);
    results land in <run_dir>/eval/<ckpt stem>/<evaluation name>/ and metrics.jsonl.

    A relaunch of a finished run does not evaluate again: the results of that checkpoint's step with the same
    settings are returned as they are (metrics.jsonl keeps one row of them). With eval.attention_windows > 0
    the attention statistics follow (attention_stats.write_run_attention), also for results that were there.
    """
    cfg = eval_config_from_dict(eval_cfg)
    rundir = RunDir(run_dir)
    ckpt, step = run_checkpoint(rundir.path)
    done = existing_results(ckpt, step, cfg)
    if done is not None:
        log.info("%s: evaluated at step %s already with this eval config; not evaluated again", rundir.path, step)
    results = done if done is not None else evaluate_checkpoint(ckpt, cfg)
    if cfg.attention_windows:
        from .attention_stats import write_run_attention

        write_run_attention(rundir.path, cfg.attention_windows, cfg.device)
    return results


def existing_results(ckpt: Path, step: int, cfg: EvalConfig) -> dict | None:
    """The results of ckpt at this step with cfg's settings, when an earlier launch wrote them: its evaluation
    folder's results.json, or a results.json of the layout before evaluation folders with the same task config."""
    from .lm import resolve_precision  # here: importing lm imports lm-eval

    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    here = results_dir(ckpt)
    legacy = _read(here / RESULTS_FILE)  # the layout before evaluation folders
    if legacy is not None and _task_config((legacy.get("moda") or {}).get("eval_config") or {}) != _task_config(cfg):
        legacy = None
    for results in (_read(here / evaluation_name(cfg, step, precision) / RESULTS_FILE), legacy):
        if results is not None and (results.get("moda") or {}).get("step") == step and not _files_changed(results):
            return results
    return None


def _files_changed(results: dict) -> bool:
    """A partial evaluation (a task file short of its full split) whose file now holds another number of examples:
    the evaluation folder's name hashes the data dir's path, not its files, so a short file replaced by the full
    split at the same path would otherwise be reported as evaluated already."""
    partial = (results.get("moda") or {}).get("partial_tasks") or {}
    return any(_examples(Path(p["file"])) != p["examples"] for p in partial.values())


def _examples(path: Path) -> int:
    """Examples in a task's .jsonl file (one per non-blank line), -1 when it is gone."""
    if not path.is_file():
        return -1
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:  # torn by a killed launch of the old layout: evaluate again
        return None
    return results if isinstance(results, dict) else None


def _task_config(eval_cfg: dict | EvalConfig) -> dict:
    """The eval config as results.json stores it, less attention_windows: it does not change the task results
    (attention_stats.py writes its own file)."""
    if isinstance(eval_cfg, EvalConfig):
        eval_cfg = dataclasses.asdict(eval_cfg)
    return {k: v for k, v in json.loads(json.dumps(eval_cfg)).items() if k != "attention_windows"}
