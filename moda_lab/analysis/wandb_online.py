"""Load runs of an online wandb project through the public API, caching full histories as parquet.

``run.history()`` returns a *sample* of the rows, so full histories come from ``run.scan_history()``; that is slow,
so each run is cached as ``<cache_dir>/<run_id>.parquet`` plus ``<run_id>.json`` (config, name, state). A cached
run is re-fetched only when it was not finished at caching time, or on ``refresh=True``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from moda_lab.analysis.history import history_frame, normalise_wandb_row
from moda_lab.analysis.records import RunRecord, unwrap_wandb_config

log = logging.getLogger(__name__)

_STATUS = {"finished": "finished", "running": "running", "crashed": "failed", "failed": "failed", "killed": "failed"}


def _api() -> Any:
    try:
        import wandb
    except ImportError as err:  # optional dependency
        raise ImportError("loading online wandb runs needs `pip install wandb`") from err
    return wandb.Api()


def _cache_paths(cache_dir: Path, run_id: str) -> tuple[Path, Path]:
    return cache_dir / f"{run_id}.parquet", cache_dir / f"{run_id}.json"


def _to_record(info: dict[str, Any], history: pd.DataFrame) -> RunRecord:
    record = RunRecord(
        run=info["name"],
        source="wandb-online",
        path=info["url"],
        status=_STATUS.get(info["state"], "unknown"),
        config=info["config"],
        meta={"wandb_id": info["id"], "state": info["state"]},
    )
    record.history = history_frame(normalise_wandb_row(r) for r in history.to_dict("records"))
    if record.history.empty:
        record.add_issue("empty_metrics", "wandb history is empty")
    return record


def fetch_run(run: Any, cache_dir: Path, refresh: bool = False) -> RunRecord:
    """One ``wandb.apis.public.Run`` -> record, through the parquet cache."""
    hist_path, info_path = _cache_paths(cache_dir, run.id)
    if not refresh and hist_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if info["state"] == "finished":
            log.debug("wandb run %s from cache", run.id)
            return _to_record(info, pd.read_parquet(hist_path))
    info = {
        "id": run.id,
        "name": run.name or run.id,
        "state": run.state,
        "url": getattr(run, "url", run.id),
        "config": unwrap_wandb_config(dict(run.config)),
    }
    history = pd.DataFrame(list(run.scan_history()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Mixed-type object columns (e.g. wandb media dicts) do not fit parquet; keep numbers and strings only.
    keep = [c for c in history.columns if history[c].map(lambda v: v is None or isinstance(v, (int, float, str))).all()]
    history[keep].to_parquet(hist_path, index=False)
    info_path.write_text(json.dumps(info, default=str))
    return _to_record(info, history[keep])


def load_wandb_project(
    project: str,
    cache_dir: str | Path,
    api: Any | None = None,
    filters: dict[str, Any] | None = None,
    refresh: bool = False,
) -> list[RunRecord]:
    """All runs of ``entity/project`` (optionally a wandb ``filters`` query), histories cached under ``cache_dir``."""
    api = api if api is not None else _api()
    cache = Path(cache_dir) / project.replace("/", "__")
    records = [fetch_run(run, cache, refresh=refresh) for run in api.runs(project, filters=filters or {})]
    log.info("loaded %d wandb runs from %s", len(records), project)
    return records
