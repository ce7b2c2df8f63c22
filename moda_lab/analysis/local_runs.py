"""Load the run dirs of a sweep from their local files (config.yaml, meta.json, metrics.jsonl).

Layout (one dir per job): ``<sweep_dir>/<run_dir>/{config.yaml, meta.json, metrics.jsonl, checkpoints/, wandb/}``.
A run dir without metrics.jsonl falls back to its offline wandb folder when there is one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml

from moda_lab.analysis.archive import is_archive, open_archive, stands_for
from moda_lab.analysis.history import history_frame, non_finite_keys
from moda_lab.analysis.records import RunRecord
from moda_lab.analysis.wandb_offline import find_offline_runs, load_offline_runs
from moda_lab.errors import UsageError
from moda_lab.rundir import upgrade_config

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_MARKERS = ("config.yaml", "meta.json", METRICS_FILE, "checkpoints", "wandb")


def is_run_dir(path: Path) -> bool:
    """A dir is a run dir when it holds any file a training job writes."""
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def find_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """Run dirs of a sweep, sorted by path.

    ``sweep_dir`` may be one run dir, a sweep (``<run_root>/<experiment>/``: run dirs directly under it), or a run
    root holding several sweeps (run dirs one level deeper).
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise UsageError(
            f"sweep_dir={str(root)!r} does not exist or is not a directory; allowed: a run dir, a sweep "
            "(<run_root>/<name>/) or a run root"
        )
    if (root / "config.yaml").exists() or (root / METRICS_FILE).exists():
        return [root]
    direct = sorted(p for p in root.iterdir() if is_run_dir(p))
    if direct:
        return direct
    return sorted(p for sub in root.iterdir() if sub.is_dir() for p in sub.iterdir() if is_run_dir(p))


def read_metrics_jsonl(path: Path, record: RunRecord) -> list[dict[str, Any]]:
    """Parse metrics.jsonl line by line; unreadable lines (e.g. a write cut by a crash) become issues."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            where = "last line" if lineno == len(lines) else f"line {lineno}"
            record.add_issue("truncated_line", f"{METRICS_FILE} {where} is not valid JSON (cut write?); skipped")
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            record.add_issue("bad_line", f"{METRICS_FILE} line {lineno} has no numeric 'step'; skipped")
            continue
        rows.append(row)
    diverged = [(row["step"], non_finite_keys(row)) for row in rows if non_finite_keys(row)]
    if diverged:  # one issue: the metrics that stopped being numbers, from the first step one did
        keys = sorted({k for _, ks in diverged for k in ks})
        record.add_issue("non_finite", f"{', '.join(keys)} not finite (nan/inf) from step {diverged[0][0]} on")
    return rows


def _read_yaml(path: Path, record: RunRecord) -> dict[str, Any]:
    if not path.exists():
        record.add_issue("missing_config", "no config.yaml")
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        record.add_issue("bad_config", f"config.yaml unreadable: {' '.join(str(err).split())}")  # one line
        return {}
    if not isinstance(cfg, dict):
        record.add_issue("bad_config", f"config.yaml holds a {type(cfg).__name__}, not a mapping of config keys")
        return {}
    return upgrade_config(cfg)


def _read_meta(path: Path, record: RunRecord) -> dict[str, Any]:
    if not path.exists():
        record.add_issue("missing_meta", "no meta.json; status unknown")
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        record.add_issue("bad_meta", f"meta.json unreadable: {err}")
        return {}
    return meta if isinstance(meta, dict) else {}


# The examples per task of the evaluation a row's downstream accuracies come from (0: all; eval.limit otherwise).
EVAL_LIMIT = "eval/limit"
# 1 where a row's accuracies come from an evaluation with task files short of their full split (results.json's
# moda.partial_tasks: a subset of the task's examples), 0 otherwise.
EVAL_PARTIAL_DATA = "eval/partial_data"


def read_eval_results(run_dir: Path, record: RunRecord) -> list[dict[str, Any]]:
    """The run's evaluations (written by ``moda_lab.eval``): one metrics row per checkpoint step
    (``{"step": <checkpoint step>, "eval/<task>/acc": ..., "eval/limit": ...}``), and issues for paper tasks left
    out because their data file is missing.

    Read: ``eval/<checkpoint>/<evaluation>/results.json`` (one folder per evaluation) and
    ``eval/<checkpoint>/results.json`` (the layout before those folders). At one step, full evaluations win over
    partial ones (``eval.limit``, or task files short of their full split), later files over earlier ones. When
    the run has a partial evaluation, ``eval/limit`` says what each row holds: 0 (all examples), or the smallest
    limit of the partial evaluations merged into it; ``eval/partial_data`` is 1 where one of those read task files
    short of their full split. The accuracies normally are in metrics.jsonl already (a full eval appends them);
    these rows fill the gap when it does not have them (a partial evaluation, a metrics.jsonl copied before the
    eval ran); metrics.jsonl wins where both have a key.
    """
    found: dict[int, list[tuple[int, bool, float, dict]]] = {}  # step -> (limit, partial data, mtime, metrics)
    for path in sorted([*run_dir.glob("eval/*/results.json"), *run_dir.glob("eval/*/*/results.json")]):
        try:
            moda = json.loads(path.read_text(encoding="utf-8")).get("moda") or {}
            missing = moda.get("missing_tasks") or {}
            metrics, step = moda.get("metrics") or {}, moda.get("step")
            limit = int((moda.get("eval_config") or {}).get("limit") or 0)
            short = bool(moda.get("partial_tasks"))
        except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
            record.add_issue("bad_eval_results", f"{path.relative_to(run_dir)}: {err}")
            continue
        if isinstance(metrics, dict) and metrics and isinstance(step, int):
            values = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            found.setdefault(step, []).append((limit, short, path.stat().st_mtime, values))
        if missing:
            files = ", ".join(f"{task} ({where})" for task, where in missing.items())
            record.add_issue(
                "missing_eval_tasks", f"{path.relative_to(run_dir)}: not evaluated, data file missing: {files}"
            )
    rows = []
    any_partial = any(limit or short for evals in found.values() for limit, short, _, _ in evals)
    for step, evals in sorted(found.items()):
        full = [e for e in evals if e[0] == 0 and not e[1]]
        chosen = sorted(full or evals, key=lambda e: e[2])
        row: dict[str, Any] = {"step": step}
        for _, _, _, values in chosen:
            row.update(values)
        if any_partial:  # runs evaluated in full only keep their columns as they were (NaN in eval/limit: full)
            row[EVAL_LIMIT] = min([e[0] for e in chosen if e[0]], default=0)
            row[EVAL_PARTIAL_DATA] = int(any(e[1] for e in chosen))
        rows.append(row)
    return rows


def load_run_dir(run_dir: str | Path, name: str | None = None) -> RunRecord:
    """Load one run dir; never raises for a broken run, reports it in ``record.issues`` instead."""
    run_dir = Path(run_dir)
    record = RunRecord(run=name or run_dir.name, source="local", path=str(run_dir), status="unknown")
    record.config = _read_yaml(run_dir / "config.yaml", record)
    record.meta = _read_meta(run_dir / "meta.json", record)
    record.status = str(record.meta.get("status", "unknown"))
    eval_rows = read_eval_results(run_dir, record)
    metrics = run_dir / METRICS_FILE
    if metrics.exists():
        rows = read_metrics_jsonl(metrics, record)
        if not rows:
            record.add_issue("empty_metrics", f"{METRICS_FILE} has no readable rows")
        # history_frame keeps the last value per (step, key): metrics.jsonl's rows, after the eval rows, win.
        record.history = history_frame([*eval_rows, *rows] if rows else [])
        return record
    offline = find_offline_runs(run_dir)
    if offline:
        record.add_issue("missing_metrics", f"no {METRICS_FILE}; history read from offline wandb ({len(offline)})")
        record.source = "wandb-offline"
        merged = load_offline_runs(offline, run_name=record.run)
        record.history = merged.history
        record.config = record.config or merged.config
        record.issues.extend(i for i in merged.issues if i.kind != "no_exit_record" or record.status == "unknown")
        if record.status == "unknown":
            record.status = merged.status
        return record
    record.add_issue("missing_metrics", f"no {METRICS_FILE} and no offline wandb run")
    record.status = "missing" if record.status == "unknown" else record.status
    record.history = history_frame([])
    return record


def load_sweep_dir(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run dir of a sweep, in name order (broken ones included, with issues).

    Runs are named by their path relative to ``sweep_dir`` (``<experiment>/<run>`` for a run root). A
    ``<name>.tar.xz`` (moda_lab.analysis.archive) is read as the folder it holds, checked against its manifest.
    """
    root = open_archive(sweep_dir) if is_archive(sweep_dir) else Path(sweep_dir)
    dirs = find_run_dirs(root)
    records = [load_run_dir(p, name=p.relative_to(root).as_posix() if p != root else p.name) for p in dirs]
    if root != Path(sweep_dir):  # an archive's run is named by where its folder stands, not the cache it is read from
        for record, p in zip(records, dirs, strict=True):
            record.path = str(stands_for(sweep_dir, root) / p.relative_to(root))
    log.info("loaded %d run dirs from %s", len(records), sweep_dir)
    return records
