"""One tidy table (run x step) with config columns, the run summary, issue checks and mean/std over seeds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from moda_lab.analysis.history import metric_columns
from moda_lab.analysis.records import (
    CELL_COLUMNS,
    CONFIG_COLUMNS,
    LR_KEY,
    RUN_COLUMNS,
    RunIssue,
    RunRecord,
    cell_id,
    cell_labels,
    config_columns,
    get_dotted,
    lr_group_id,
    pair_group_id,
    variant_of,
)

# Identity columns of the tidy table and the run summary; ``pair_group`` is equal for runs that differ only in the
# depth-mixing variant, the seed and the peak lr (records.pair_group_id), the runs whose seeds may be paired against
# the baseline (which of its cells: pairing.py).
# ``peak_lr`` (trainer.lr; the cell fingerprint already holds it) and ``lr_group`` (the cell without it,
# records.lr_group_id) are the x axis and the lines of the lr-sweep figure (plots.plot_lr_sweep).
RUN_ID_COLUMNS: list[str] = [
    *RUN_COLUMNS, *CONFIG_COLUMNS, "variant", "cell", "cell_label", "pair_group", "lr_group", "peak_lr"
]


# meta.json statuses of runs that stopped before their last step (or have not reached it yet): never complete,
# so left out of the final-metric tables (in the curves up to where they stopped). ``diverged``: the loss became
# NaN/inf; ``interrupted``: stopped by a signal, resumable.
UNFINISHED = ("failed", "crashed", "running", "killed", "diverged", "interrupted")


def check_record(record: RunRecord) -> list[RunIssue]:
    """Issues that depend on content, not on files: crashed/unfinished runs and runs without a validation loss."""
    found: list[RunIssue] = []
    if record.status in UNFINISHED:
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
    cols["variant"] = variant_of(record.config)
    cols["cell"] = cell_id(record.config)
    cols["pair_group"] = pair_group_id(record.config)
    cols["lr_group"] = lr_group_id(record.config)
    lr = get_dotted(record.config, LR_KEY)
    cols["peak_lr"] = float(lr) if isinstance(lr, (int, float)) else np.nan
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
        return pd.DataFrame(columns=[*RUN_ID_COLUMNS, "step"])
    return pd.concat(frames, ignore_index=True, sort=False)


# Did a run train? metrics.jsonl holds the validation loss at every evaluation (step 0 included: the loss of the
# initialisation, about ln V), not the unigram entropy of the training data, so the rule looks for a plateau: a
# run did not train when its val/loss fell by less than TRAINED_MIN_DROP nats over the second half of the run,
# from the lowest evaluation at or before half its last step (step 0 left out) to its final one. The lowest, not
# the last: a stuck run's plateau wobbles (table6_24l lr sweep, post-norm residual at lr 3e-3: 7.389, 7.418, 7.378,
# 7.357 at steps 100-400 would "fall" 0.061 from step 200, but only 0.032 from its first-half best). A drop from the
# first evaluation would not do: a run stuck at the unigram level still falls ~2 nats from ln V (table6_24l,
# post-norm residual: 9.26 at step 0, 7.17 at step 50, then 7.137 -> 7.140 over steps 100-200), and ln V minus the
# unigram entropy depends on the vocabulary. Every run of that sweep that trained fell 0.69-0.77 nats over the
# same half. A run with no evaluation in its first half (after step 0) is not judged (``trained`` is None).
TRAINED_MIN_DROP = 0.05


def training_progress(val: pd.Series, last_step: float, min_drop: float = TRAINED_MIN_DROP) -> dict[str, object]:
    """``val``: val/loss indexed by step. Returns ``val_drop_from`` (the step of the lowest first-half evaluation),
    ``val_drop`` (its loss minus the final one, nats) and ``trained`` (``val_drop >= min_drop``; None when not
    judged)."""
    val = val.dropna()
    val = val[val.index > 0]
    first_half = val[val.index <= last_step / 2] if pd.notna(last_step) else val.iloc[0:0]
    if first_half.empty or first_half.index[-1] == val.index[-1]:
        return {"val_drop_from": np.nan, "val_drop": np.nan, "trained": None}
    best = first_half.idxmin()
    drop = float(first_half[best] - val.iloc[-1])
    return {"val_drop_from": int(best), "val_drop": drop, "trained": bool(drop >= min_drop)}


def _final(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.iloc[-1]) if len(values) else np.nan


def accuracy_columns(frame: pd.DataFrame) -> list[str]:
    """The downstream accuracy columns, ``eval/<task>/acc`` and ``eval/<task>/acc_norm``."""
    return [c for c in metric_columns(frame, "eval/") if c.endswith(("/acc", "/acc_norm"))]


def _eval_step(run: pd.DataFrame) -> float:
    """Last step with a downstream accuracy logged; NaN without any."""
    cols = accuracy_columns(run)
    logged = run[cols].notna().any(axis=1) if cols else pd.Series(False, index=run.index)
    return float(run.loc[logged, "step"].max()) if logged.any() else np.nan


def run_summary(tidy: pd.DataFrame, train_window: int = 10, min_drop: float = TRAINED_MIN_DROP) -> pd.DataFrame:
    """One row per run: config columns, last step/tokens, final metrics, whether it trained.

    Final value of a metric = last logged value; train loss = mean of the last ``train_window`` logged values
    (single train-loss points are noisy). FLOPs = tokens at the last step x FLOPs per token. ``eval_step`` = the
    step of the last downstream evaluation (the final checkpoint's when it equals ``last_step``). ``trained``: see
    TRAINED_MIN_DROP.
    """
    if not min_drop >= 0:
        raise ValueError(f"min_drop={min_drop!r} is out of range; allowed: >= 0 (nats)")
    metric_cols = [c for c in tidy.columns if isinstance(c, str) and "/" in c and c not in RUN_ID_COLUMNS]
    rows = []
    for _, run in tidy.groupby("run", sort=False):
        run = run.sort_values("step")
        row = {c: run[c].iloc[0] for c in RUN_ID_COLUMNS if c in run}
        row["last_step"] = run["step"].max()
        row["tokens"] = run["tokens"].max() if "tokens" in run else np.nan
        for col in metric_cols:
            row[col] = _final(run[col])
        if "train/loss" in run:
            row["train/loss"] = float(run["train/loss"].dropna().tail(train_window).mean())
        fpt = row.get("model/flops_per_token", np.nan)
        row["train_flops"] = row["tokens"] * fpt if pd.notna(fpt) else np.nan
        row["eval_step"] = _eval_step(run)
        val = run.set_index("step")["val/loss"] if "val/loss" in run else pd.Series(dtype=float)
        row["val_step"] = float(val.dropna().index.max()) if val.notna().any() else np.nan
        row.update(training_progress(val, row["last_step"], min_drop))
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


def stale_val_issues(summary: pd.DataFrame) -> list[RunIssue]:
    """One issue per run whose last val/loss was logged before its last step: its "final" val loss is not the
    final model's (a run that ended between validations, or validated off its steps)."""
    if "val_step" not in summary:
        return []
    stale = summary[summary["val_step"].notna() & (summary["val_step"] < summary["last_step"])]
    return [
        RunIssue(row["run"], "val_before_last_step",
                 f"last val/loss at step {int(row['val_step'])} of {int(row['last_step'])}: the tables' final val "
                 "loss is that step's")
        for _, row in stale.iterrows()
    ]


def untrained_issues(summary: pd.DataFrame, min_drop: float = TRAINED_MIN_DROP) -> list[RunIssue]:
    """One issue per run whose validation loss was flat over its second half (``trained`` is False)."""
    if "trained" not in summary:
        return []
    out = []
    for _, row in summary[summary["trained"].eq(False)].iterrows():
        detail = (
            f"val/loss fell {row['val_drop']:.3f} nats from step {int(row['val_drop_from'])} to step "
            f"{int(row['last_step'])} (< {min_drop:g}): flat over the second half, did not train (plateau)"
        )
        out.append(RunIssue(row["run"], "not_trained", detail))
    return out


def _early_eval(summary: pd.DataFrame) -> pd.Series:
    """Runs whose last downstream evaluation is of a checkpoint before their last step."""
    if "eval_step" not in summary:
        return pd.Series(False, index=summary.index)
    return summary["eval_step"].notna() & (summary["eval_step"] != summary["last_step"])


def final_eval_only(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with the downstream accuracies of runs evaluated before their last step set to NaN: accuracy
    tables compare final checkpoints only (eval_issues reports the runs left out)."""
    early, cols = _early_eval(summary), accuracy_columns(summary)
    if not early.any() or not cols:
        return summary
    out = summary.copy()
    out.loc[early, cols] = np.nan
    return out


def eval_issues(summary: pd.DataFrame) -> list[RunIssue]:
    """One issue per run whose last downstream evaluation is not of its final checkpoint."""
    early = _early_eval(summary)
    return [
        RunIssue(
            row["run"],
            "eval_not_final",
            f"downstream eval is of step {int(row['eval_step'])}, the run's last step is {int(row['last_step'])}: "
            "not the final checkpoint; left out of the accuracy tables",
        )
        for _, row in summary[early].iterrows()
    ]


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
    """Mean/std of ``metric`` over seeds per cell and step, with mean tokens and FLOPs at that step. A step that
    some run of the cell went past without logging ``metric`` there is left out (off_grid_steps): its mean would
    be of fewer seeds than the points beside it (e.g. a resumed run's extra validation), a jump in the curve."""
    rows = tidy.dropna(subset=[metric]) if metric in tidy else tidy.iloc[0:0]
    if not rows.empty and "run" in rows:
        rows = rows[~off_grid_steps(rows)]
    return seed_aggregate(rows, [metric, "tokens", "flops"], by=["step"])


def off_grid_steps(rows: pd.DataFrame) -> pd.Series:
    """Per row of ``rows`` (one run's logged metric at one step): True where another run of the same cell logged
    the metric both before and after that step but not at it (the step is off that run's grid)."""
    keys = [c for c in [*CELL_COLUMNS, "variant"] if c in rows]
    off = pd.Series(False, index=rows.index)
    for _, cell in rows.groupby(keys, dropna=False, sort=False):
        logged = cell.groupby("run")["step"].agg(set)
        skipped = {step for step in cell["step"].unique()
                   if any(min(s) < step < max(s) and step not in s for s in logged)}
        off[cell.index[cell["step"].isin(skipped)]] = True
    return off
