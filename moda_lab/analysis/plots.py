"""Sweep figures: loss curves (vs tokens / FLOPs), downstream accuracy bars, params/FLOPs vs loss.

Every function takes the tidy table (or the run summary) and returns a matplotlib Figure; ``save_figure`` writes
PNG and PDF. Curves and bars show the mean over seeds with a +/- 1 std band and the seed count in the legend.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from moda_lab.analysis.history import eval_tasks
from moda_lab.analysis.records import CELL_COLUMNS
from moda_lab.analysis.tidy import curves, seed_aggregate

log = logging.getLogger(__name__)

X_LABELS = {"tokens": "training tokens", "flops": "training FLOPs (tokens x FLOPs/token)"}


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` and close the figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)  # layouts are tight already; bbox_inches="tight" would draw twice
    plt.close(fig)
    return paths


def seeds_text(n_min: int, n_max: int) -> str:
    """``n=3 seeds``, ``n=2-3 seeds`` or ``1 seed, no spread``."""
    if n_max <= 1:
        return "1 seed, no spread"
    return f"n={n_min} seeds" if n_min == n_max else f"n={n_min}-{n_max} seeds"


def varying_columns(frame: pd.DataFrame, candidates: list[str]) -> list[str]:
    """Columns among ``candidates`` taking more than one value in ``frame``."""
    return [c for c in candidates if c in frame and frame[c].nunique(dropna=False) > 1]


def cell_name(row: pd.Series, extra: list[str]) -> str:
    """Legend name of a sweep cell: the variant plus any other cell column that varies (norm, L, D, ...)."""
    short = {"layers": "L", "width": "D", "n_heads": "H", "n_kv_heads": "Hk"}
    parts = [str(row["variant"])]
    for col in extra:
        parts.append(f"{short[col]}={row[col]}" if col in short else str(row[col]))
    return ", ".join(parts)


def _label_columns(frame: pd.DataFrame, exclude: list[str]) -> list[str]:
    cand = [c for c in CELL_COLUMNS if c not in ("model", "depth_kv", "ffn_kv", "attn_kv", *exclude)]
    return varying_columns(frame, cand)


def plot_curves(tidy: pd.DataFrame, metric: str = "val/loss", x: str = "tokens") -> Figure:
    """``metric`` vs tokens or FLOPs: one panel per norm placement, one line per variant, mean +/- std over seeds."""
    agg = curves(tidy, metric)
    norms = sorted(agg["norm"].dropna().unique()) if not agg.empty else ["(no data)"]
    fig, axes = plt.subplots(1, len(norms), figsize=(5.5 * len(norms), 4.2), sharey=True, squeeze=False)
    extra = _label_columns(agg, exclude=["norm"])
    keys = [c for c in [*CELL_COLUMNS, "variant"] if c in agg]
    # One colour per variant across panels, so a variant missing from one norm does not shift the others.
    names = list(dict.fromkeys(cell_name(r, extra) for _, r in agg.iterrows())) if not agg.empty else []
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for ax, norm in zip(axes[0], norms):
        sub = agg[agg["norm"] == norm] if not agg.empty else agg
        for _, cell in sub.groupby(keys, dropna=False, sort=False):  # keeps seed_aggregate's canonical order
            cell = cell.sort_values("step")
            if x == "flops":
                cell = cell[cell[x] > 0]  # step 0 has no place on a log axis
            xs, ys = cell[x].to_numpy(float), cell[metric].to_numpy(float)
            sd = np.nan_to_num(cell[f"{metric}:std"].to_numpy(float))
            n = cell[f"{metric}:n"]
            name = cell_name(cell.iloc[0], extra)
            label = f"{name} ({seeds_text(int(n.min()), int(n.max()))})"
            ax.plot(xs, ys, marker="o", markersize=3, label=label, color=colors[name])
            ax.fill_between(xs, ys - sd, ys + sd, color=colors[name], alpha=0.2, linewidth=0)
        ax.set_title(f"norm = {norm}")
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.grid(alpha=0.3)
        if x == "flops":
            ax.set_xscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{metric} (mean ± std over seeds)")
    fig.suptitle(f"{metric} vs {X_LABELS.get(x, x)}")
    fig.tight_layout()
    return fig


def task_metric(summary: pd.DataFrame, task: str, prefer: tuple[str, ...] = ("acc_norm", "acc")) -> str | None:
    """The column reported for ``task``: the first of ``prefer`` that was logged."""
    for name in prefer:
        col = f"eval/{task}/{name}"
        if col in summary and summary[col].notna().any():
            return col
    return None


def plot_downstream(summary: pd.DataFrame, prefer: tuple[str, ...] = ("acc_norm", "acc")) -> Figure:
    """Grouped bars: downstream accuracy per task (and the average), one bar per sweep cell, +/- std over seeds."""
    tasks = [t for t in eval_tasks(summary) if task_metric(summary, t, prefer)]
    cols = [task_metric(summary, t, prefer) for t in tasks]
    frame = summary.copy()
    if cols:
        frame["avg"] = frame[cols].mean(axis=1, skipna=False)
    agg = seed_aggregate(frame, [*cols, "avg"]) if cols else pd.DataFrame()
    agg = agg[agg["avg"].notna()] if not agg.empty else agg
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * (len(tasks) + 1)), 4.2))
    if agg.empty:
        ax.text(0.5, 0.5, "no downstream evals logged", ha="center", va="center", transform=ax.transAxes)
        return fig
    extra = _label_columns(agg, exclude=[])
    width = 0.8 / len(agg)
    positions = np.arange(len(tasks) + 1)
    for i, (_, row) in enumerate(agg.iterrows()):
        means = [row[c] for c in [*cols, "avg"]]
        sds = [0.0 if pd.isna(row[f"{c}:std"]) else row[f"{c}:std"] for c in [*cols, "avg"]]
        n = int(row["avg:n"])
        ax.bar(
            positions + i * width,
            means,
            width,
            yerr=sds,
            capsize=3,
            label=f"{cell_name(row, extra)} ({seeds_text(n, n)})",
        )
    names = [f"{t}\n({c.rsplit('/', 1)[-1]})" for t, c in zip(tasks, cols)] + ["average"]
    ax.set_xticks(positions + width * (len(agg) - 1) / 2, names)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_title("Downstream accuracy per task")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_cost_vs_loss(summary: pd.DataFrame, x: str = "model/params", y: str = "val/loss") -> Figure:
    """Final ``y`` vs parameters or total training FLOPs, one point per sweep cell, +/- std over seeds."""
    agg = seed_aggregate(summary, [x, y]) if x in summary and y in summary else pd.DataFrame()
    agg = agg.dropna(subset=[x, y]) if not agg.empty else agg
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    if agg.empty:
        ax.text(0.5, 0.5, f"no runs with both {x} and {y}", ha="center", va="center", transform=ax.transAxes)
        return fig
    extra = _label_columns(agg, exclude=[])
    scale, unit = (1e6, "M") if x == "model/params" else (1.0, "")
    for _, row in agg.iterrows():
        n = int(row[f"{y}:n"])
        sd = 0.0 if pd.isna(row[f"{y}:std"]) else row[f"{y}:std"]
        ax.errorbar(
            row[x] / scale, row[y], yerr=sd, fmt="o", capsize=3, label=f"{cell_name(row, extra)} ({seeds_text(n, n)})"
        )
    ax.set_xlabel({"model/params": "parameters (M)", "train_flops": "total training FLOPs"}.get(x, x + unit))
    if x == "train_flops":
        ax.set_xscale("log")
    ax.set_ylabel(f"final {y} (mean ± std)")
    ax.set_title(f"final {y} vs {'parameters' if x == 'model/params' else 'training FLOPs'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
