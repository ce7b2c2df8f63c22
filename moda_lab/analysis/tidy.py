"""One tidy table (run x step) with config columns, the run summary, issue checks and mean/std over seeds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from moda_lab.analysis.records import (
    CELL_COLUMNS,
    CONFIG_COLUMNS,
    RUN_COLUMNS,
    RunIssue,
    RunRecord,
    cell_id,
    cell_labels,
    config_columns,
    variant_label,
)


def check_record(record: RunRecord) -> list[RunIssue]:
    """Issues that depend on content, not on files: crashed/unfinished runs and runs without a validation loss."""
    found: list[RunIssue] = []
    if record.status in ("running", "failed"):
        found.append(RunIssue(record.run, f"status_{record.status}", f"run status is '{record.status}'"))
    hist = record.history
    if not hist.empty:
        if "val/loss" not in hist or hist["val/loss"].isna().all():
            found.append(RunIssue(record.run, "no_val_loss", "no val/loss logged"))
        if hist["tokens"].isna().all():
            found.append(RunIssue(record.run, "no_tokens", "no 'tokens' logged; token/FLOPs axes unavailable"))
        if "model/flops_per_token" not in hist:
            found.append(RunIssue(record.run, "no_flops", "no model/flops_per_token logged; FLOPs axis unavailable"))
    for col, val in config_columns(record.config).items():
        if val is None and col in ("model", "norm", "seed"):
            found.append(RunIssue(record.run, "missing_config_key", f"config has no value for '{col}'"))
    return found


def all_issues(records: Iterable[RunRecord]) -> list[RunIssue]:
    """Loader issues plus content checks, deduplicated, in run order."""
    out: list[RunIssue] = []
    for rec in records:
        for issue in [*rec.issues, *check_record(rec)]:
            if issue not in out:
                out.append(issue)
    return out


def _run_columns(record: RunRecord) -> dict[str, object]:
    cols: dict[str, object] = {"run": record.run, "source": record.source, "status": record.status, "path": record.path}
    cols.update(config_columns(record.config))
    cols["variant"] = variant_label(cols["model"], cols["depth_kv"], cols["ffn_kv"], cols["attn_kv"])
    cols["cell"] = cell_id(record.config)
    return cols


def tidy_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    """Run x step table: run/config columns first, then step, tokens, time, flops and every logged metric.

    Runs without any history keep one row with NaN step so they are visible, not dropped.
    """
    records = list(records)
    labels = cell_labels({cell_id(r.config): r.config for r in records})
    frames = []
    for rec in records:
        hist = rec.history.copy() if not rec.history.empty else pd.DataFrame({"step": [np.nan]})
        cols = _run_columns(rec)
        cols["cell_label"] = labels[cols["cell"]]
        for col, val in reversed(list(cols.items())):
            hist.insert(0, col, val)
        frames.append(hist)
    if not frames:
        return pd.DataFrame(columns=[*RUN_COLUMNS, *CONFIG_COLUMNS, "variant", "cell", "cell_label", "step"])
    return pd.concat(frames, ignore_index=True, sort=False)


def _final(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.iloc[-1]) if len(values) else np.nan


def run_summary(tidy: pd.DataFrame, train_window: int = 10) -> pd.DataFrame:
    """One row per run: config columns, last step/tokens, final metrics.

    Final value of a metric = last logged value; train loss = mean of the last ``train_window`` logged values
    (single train-loss points are noisy). FLOPs = tokens at the last step x FLOPs per token.
    """
    id_cols = [*RUN_COLUMNS, *CONFIG_COLUMNS, "variant", "cell", "cell_label"]
    metric_cols = [c for c in tidy.columns if isinstance(c, str) and "/" in c and c not in id_cols]
    rows = []
    for _, run in tidy.groupby("run", sort=False):
        run = run.sort_values("step")
        row = {c: run[c].iloc[0] for c in id_cols if c in run}
        row["last_step"] = run["step"].max()
        row["tokens"] = run["tokens"].max() if "tokens" in run else np.nan
        for col in metric_cols:
            row[col] = _final(run[col])
        if "train/loss" in run:
            row["train/loss"] = float(run["train/loss"].dropna().tail(train_window).mean())
        fpt = row.get("model/flops_per_token", np.nan)
        row["train_flops"] = row["tokens"] * fpt if pd.notna(fpt) else np.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    # A run is complete when it reached the furthest step of its cell and did not stop early (a failed or still
    # running run may be the only one of its cell); tables compare complete runs only.
    keys = [c for c in CELL_COLUMNS if c in summary]
    furthest = summary.groupby(keys, dropna=False)["last_step"].transform("max")
    stopped = summary["status"].isin(UNFINISHED) if "status" in summary else False
    summary["complete"] = summary["last_step"].notna() & (summary["last_step"] >= furthest) & ~stopped
    return summary


UNFINISHED = ("failed", "crashed", "running", "killed")


def complete_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``run_summary`` that reached their cell's last step (what tables and bar plots compare)."""
    return summary[summary["complete"]] if "complete" in summary else summary


def incomplete_issues(summary: pd.DataFrame) -> list[RunIssue]:
    """One issue per run left out of the final-metric tables because it stopped short of its cell's last step."""
    if summary.empty:
        return []
    keys = [c for c in CELL_COLUMNS if c in summary]
    furthest = summary.groupby(keys, dropna=False)["last_step"].transform("max")
    out = []
    for (_, row), top in zip(summary.iterrows(), furthest):
        if not row["complete"]:
            if pd.isna(row["last_step"]):
                detail = "no steps logged; absent from tables and curves"
            elif row.get("status") in UNFINISHED:
                detail = f"status {row['status']!r} at step {int(row['last_step'])}; in curves, not in tables"
            else:
                detail = f"reached step {int(row['last_step'])} of {top:.0f}; in curves, not in tables"
            out.append(RunIssue(row["run"], "excluded_from_tables", detail))
    return out


def seed_aggregate(
    frame: pd.DataFrame, values: Sequence[str], by: Sequence[str] = (), cell: Sequence[str] = CELL_COLUMNS
) -> pd.DataFrame:
    """Mean, std and seed count of ``values`` per sweep cell (and per ``by``, e.g. step).

    Columns come out as ``<value>`` (mean), ``<value>:std`` (NaN with one seed) and ``<value>:n``.
    """
    keys = [c for c in [*cell, "variant", *by] if c in frame]
    present = [v for v in values if v in frame]
    grouped = frame.groupby(keys, dropna=False, sort=True)[present]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = mean.copy()
    for v in present:
        out[f"{v}:std"] = std[v]
        out[f"{v}:n"] = count[v]
    return sort_cells(out.reset_index())


def registry_order(column: str) -> dict[str, int]:
    """Rank of each name of the ``model`` or ``norm`` column: the registry's own order (DEPTH_MIXERS: baseline ->
    MoDA; NORM_PLACEMENTS: pre -> post -> reordered); {} for other columns."""
    from moda_lab.model import DEPTH_MIXERS, NORM_PLACEMENTS  # on first use: importing the model imports torch

    names = {"model": DEPTH_MIXERS, "norm": NORM_PLACEMENTS}.get(column, {})
    return {name: rank for rank, name in enumerate(names)}


def sort_cells(frame: pd.DataFrame, first: Sequence[str] = ()) -> pd.DataFrame:
    """Canonical row order: ``first`` columns, then baseline -> MoDA (switches off -> on), then pre -> post norm."""
    order = [
        c
        for c in [*first, "layers", "width", "model", "depth_kv", "ffn_kv", "attn_kv", "norm", "cell_label"]
        if c in frame
    ]
    order = list(dict.fromkeys(order))

    def key(col: pd.Series) -> pd.Series:
        table = registry_order(str(col.name))
        return col.map(lambda v: table.get(v, len(table))) if table else col

    return frame.sort_values(order, key=key, kind="stable").reset_index(drop=True) if order else frame


def curves(tidy: pd.DataFrame, metric: str = "val/loss") -> pd.DataFrame:
    """Mean/std of ``metric`` over seeds per cell and step, with mean tokens and FLOPs at that step."""
    rows = tidy.dropna(subset=[metric]) if metric in tidy else tidy.iloc[0:0]
    return seed_aggregate(rows, [metric, "tokens", "flops"], by=["step"])
