"""Tables in the shape of the paper's (arXiv 2603.15619): Table 3 (main), Tables 4-5 (per-domain val ppl,
per-task downstream accuracy) and Table 6 (norm placement x depth, validation loss), plus the per-domain
validation losses behind Table 4 (what the paired differences of ``significance`` compare).

Each table is built from the run summary (complete runs only, see ``tidy.run_summary``) as a numeric frame with
``<col>`` (mean), ``<col> std`` and ``seeds`` columns (for CSV) and rendered to Markdown as ``mean ± std``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from moda_lab.analysis.history import eval_tasks, val_domains
from moda_lab.analysis.local_runs import EVAL_LIMIT, EVAL_PARTIAL_DATA
from moda_lab.analysis.plots import task_metric
from moda_lab.analysis.tidy import final_eval_only, seed_aggregate, sort_cells

# Identity columns shown in every table, in order, when present.
ID_COLUMNS = ["model", "norm", "depth_kv", "ffn_kv", "attn_kv", "layers", "width"]


def with_derived(
    summary: pd.DataFrame, prefer: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Complete runs with display-scale columns (params in M, ppl from loss, per-domain ``<domain> loss``, accuracy
    in % per task and ``avg acc``, final checkpoints' evaluations only) and the column -> source mapping."""
    frame = summary[summary["complete"]].copy() if "complete" in summary else summary.copy()
    frame = final_eval_only(frame)
    cols: dict[str, str] = {}
    if "model/params" in frame:
        frame["params M"] = frame["model/params"] / 1e6
        cols["params M"] = "model/params"
    if "model/flops_per_token" in frame:
        frame["GFLOPs/token"] = frame["model/flops_per_token"] / 1e9
        cols["GFLOPs/token"] = "model/flops_per_token"
    # Perplexity of the mean-over-window train loss; val ppl from the final val loss (exp of mean loss per run).
    if "train/loss" in frame:
        frame["train ppl"] = np.exp(frame["train/loss"])
        cols["train ppl"] = "train/loss"
    if "val/loss" in frame:
        frame["val loss"] = frame["val/loss"]
        frame["val ppl"] = np.exp(frame["val/loss"])
        cols["val loss"] = cols["val ppl"] = "val/loss"
    for dom in val_domains(frame):
        frame[f"{dom} ppl"] = np.exp(frame[f"val/{dom}/loss"])
        frame[f"{dom} loss"] = frame[f"val/{dom}/loss"]
        cols[f"{dom} ppl"] = cols[f"{dom} loss"] = f"val/{dom}/loss"
    accs = []
    for task in eval_tasks(frame):
        src = task_metric(frame, task, prefer)
        if src:
            frame[task] = 100.0 * frame[src]
            cols[task] = src
            accs.append(task)
    if accs:
        frame["avg acc"] = frame[accs].mean(axis=1, skipna=False)
        cols["avg acc"] = "mean of tasks"
    return frame, cols


def paper_table(
    summary: pd.DataFrame, kind: str = "main", prefer: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Numeric table, one row per sweep cell. ``kind``:

    - ``main`` (Table 3): params M, GFLOPs/token, train ppl, val ppl, per-domain ppl, avg acc
    - ``domains`` (Table 4): val ppl per domain
    - ``domain_loss`` (Table 4 in nats): val loss overall and per domain
    - ``downstream`` (Table 5): accuracy (%) per task and average
    - ``norm`` (Table 6): layers, norm, model, params M, val loss
    """
    frame, cols = with_derived(summary, prefer)
    domains = [c for c in cols if c.endswith(" ppl") and c not in ("train ppl", "val ppl")]
    domain_losses = [c for c in cols if c.endswith(" loss") and c != "val loss"]
    tasks = [c for c in cols if cols[c].startswith("eval/")]
    values = {
        "main": ["params M", "GFLOPs/token", "train ppl", "val ppl", *domains, "avg acc"],
        "domains": ["val ppl", *domains],
        "domain_loss": ["val loss", *domain_losses],
        "downstream": [*tasks, "avg acc"],
        "norm": ["params M", "val loss"],
    }[kind]
    values = [v for v in values if v in frame]
    if frame.empty or not values:
        return pd.DataFrame(columns=[*ID_COLUMNS, "seeds"])
    by = []
    if kind in ("main", "downstream") and tasks:
        frame, by = _mark_partial_evals(frame, tasks)
    agg = seed_aggregate(frame, values, by=by)
    seeds = agg[[f"{v}:n" for v in values]].max(axis=1).astype(int)
    ids = [c for c in ID_COLUMNS if c in agg]
    if kind == "norm":
        ids = [c for c in ["layers", "norm", "model", "depth_kv", "ffn_kv", "attn_kv", "width"] if c in agg]
    table = agg[ids].copy()
    if "cell_label" in agg and agg["cell_label"].fillna("").astype(bool).any():
        table["config"] = agg["cell_label"].fillna("")  # what else sets the row's runs apart (lr, seq_len, ...)
    for col in by:
        table[col] = agg[col]
    table["seeds"] = seeds
    for v in values:
        table[v] = agg[v]
        # Static per-cell quantities (size, cost) have no seed spread worth printing.
        table[f"{v} std"] = np.nan if v in STATIC else agg[f"{v}:std"]
    table = table[table["seeds"] > 0]  # a cell with none of the values (e.g. never evaluated) has no row
    return sort_cells(table, first=["layers", "norm"] if kind == "norm" else ["norm"])


EVAL_EXAMPLES = "eval examples"  # the column marking partial evaluations in accuracy tables
SHORT_FILES = "task files short of the full split"  # its mark for evaluations of partial task files


def _mark_partial_evals(frame: pd.DataFrame, tasks: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """With a partial evaluation (eval.limit, or task files short of their full split) among the runs' accuracies,
    an ``eval examples`` column ("all", "first N per task" and/or SHORT_FILES) to group by, so partial accuracies
    get rows of their own, marked; else no change."""
    nan = pd.Series(np.nan, index=frame.index)
    limit = frame[EVAL_LIMIT] if EVAL_LIMIT in frame else nan
    short = frame[EVAL_PARTIAL_DATA] if EVAL_PARTIAL_DATA in frame else nan
    partial = ((limit > 0) | (short > 0)) & frame[tasks].notna().any(axis=1)
    if not partial.any():
        return frame, []
    frame = frame.copy()
    frame[EVAL_EXAMPLES] = "all"
    frame.loc[partial, EVAL_EXAMPLES] = [
        ", ".join([f"first {int(n)} per task"] * (n > 0) + [SHORT_FILES] * (s > 0))
        for n, s in zip(limit[partial], short[partial])
    ]
    return frame, [EVAL_EXAMPLES]


STATIC = {"params M", "GFLOPs/token"}
FORMATS = {"params M": "{:.2f}", "GFLOPs/token": "{:#.4g}"}


def _fmt(column: str, mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    fmt = FORMATS.get(column, "{:.4f}" if column.endswith(" loss") else "{:.2f}")
    if column == "params M" and abs(mean) < 1:
        fmt = "{:.4f}"  # tiny test models
    text = fmt.format(mean)
    return text if std is None or math.isnan(std) else f"{text} ± {fmt.format(std)}"


def to_markdown(table: pd.DataFrame, title: str = "") -> str:
    """Markdown rendering with ``mean ± std`` cells; a note states the seed counts (and flags single-seed rows)."""
    values = [c for c in table.columns if f"{c} std" in table.columns]
    ids = [c for c in table.columns if c not in values and not c.endswith(" std")]
    header = [*ids, *values]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [("yes" if v is True else "" if v is False else str(v)) for v in (row[c] for c in ids)]
        cells += [_fmt(v, row[v], row[f"{v} std"]) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    if not table.empty:
        seeds = sorted(set(int(s) for s in table["seeds"]))
        note = f"mean ± std over seeds (seeds per row: {', '.join(map(str, seeds))})"
        if 1 in seeds:
            note += "; rows with 1 seed show no std"
        lines += ["", f"_{note}. Complete runs only; see report.md for excluded runs._"]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, out_dir: str | Path, stem: str, title: str) -> list[Path]:
    """``<stem>.csv`` (numeric, mean and std columns) and ``<stem>.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{stem}.csv", out / f"{stem}.md"
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table, title), encoding="utf-8")
    return [csv, md]


TABLES = {
    "table3_main": ("main", "Main results (shape of the paper's Table 3)"),
    "table4_domains": ("domains", "Validation perplexity per domain (shape of Table 4)"),
    "table4_domain_loss": ("domain_loss", "Validation loss per domain, nats/token (Table 4's domains)"),
    "table5_downstream": ("downstream", "Downstream accuracy % per task (shape of Table 5)"),
    "table6_norm": ("norm", "Norm placement x depth, validation loss (shape of Table 6)"),
}
