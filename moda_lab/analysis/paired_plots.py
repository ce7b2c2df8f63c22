"""The paired seed differences against the baseline as figures: the final Δ per cell with its interval
(``significance.paired_differences``) and Δ over training (``significance.paired_curves``), each with a reference's
Δ where it annotated one (reference.Reference, e.g. moda_paper's Table 6). Colours, legends and the zoomed last-half
row are plots.py's.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from moda_lab.analysis.pairing import OWN_LR
from moda_lab.analysis.plots import (
    LOSS_UNIT,
    METRIC_LABELS,
    X_LABELS,
    config_shades,
    differing_parts,
    layout_with_legend,
    ordered_norms,
    place_legend,
    seeds_text,
    tail_grid,
    variant_colors,
    without_lr,
    zoom_tail,
)
from moda_lab.analysis.significance import pair_lrs_text, params_text

if TYPE_CHECKING:
    from moda_lab.analysis.reference import Reference

LABEL_CHARS = 52  # a row label's line: the axes keep ~60% of the figure's 10.5 inches at 8 pt


def _own_lrs(row: pd.Series) -> str:
    """``lr 0.0045 vs 0.003`` for a row whose arms ran each at its own lr (pairing.OWN_LR), else empty: a shared lr
    is in the row's config where it matters."""
    return f"lr {pair_lrs_text(row)}" if row.get("lr_pairing") == OWN_LR else ""


def _config_text(row: pd.Series, differing) -> str:
    """What sets a row's config apart (``differing``: plots.differing_parts), its lr left out where _own_lrs says
    both."""
    text = differing(row["config"])
    return without_lr(text) if _own_lrs(row) else text


def _reference_delta(row: pd.Series, reference: Reference | None) -> float | None:
    """The reference's Δ of an annotated row (None without one)."""
    if reference is None or pd.isna(row.get(reference.delta_column)):
        return None
    return float(row[reference.delta_column])


def plot_paired_differences(
    paired: pd.DataFrame, metric: str = "val/loss", reference: Reference | None = None
) -> Figure:
    """One row per non-baseline cell: the mean paired difference (variant - baseline) of ``metric`` with its
    confidence interval (a hollow marker without one: n=1), and the ``reference``'s difference where it annotated
    one (a cross; grey where it is not the reference's for the row's own cell, reference.Reference.marker). Rows with a run that did not train say so in their label, and so do rows
    whose variant has more (or fewer) parameters than the baseline (``+3.2% params``) and rows whose arms ran each
    at its own lr (``lr 0.0045 vs 0.003``)."""
    rows = paired[(paired["metric"] == metric) & (paired["n"] > 0)] if not paired.empty else paired
    if rows.empty:
        fig, ax = plt.subplots(figsize=(7.6, 2.1))
        ax.text(0.5, 0.5, f"no paired runs for {metric}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    colors = variant_colors(rows)
    extra = [c for c in ("layers", "width", "norm", "config") if c in rows and rows[c].nunique(dropna=False) > 1]
    short = {"layers": "L", "width": "D"}
    differing = differing_parts(rows["config"]) if "config" in extra else str  # what every row says: left out

    def shown(c: str, r: pd.Series) -> str:
        return f"{short[c]}={r[c]}" if c in short else _config_text(r, differing) if c == "config" else str(r[c])

    labels = []
    for _, r in rows.iloc[::-1].iterrows():
        parts = [shown(c, r) for c in extra if r[c] not in ("", None)]
        parts = [p for p in parts if p]
        label = f"{r['variant']} − {r['baseline']}" + (f" ({', '.join(parts)})" if parts else "")
        label += f"\nn={int(r['n'])}" + ("; not trained: " + r["not_trained"] if r["not_trained"] else "")
        label += f"; {_own_lrs(r)}" if _own_lrs(r) else ""
        change = r.get("params_change")
        if pd.notna(change) and change != 0:  # a variant with more weights: say so beside its difference
            label += f"; {params_text(change)}"
        # Wrapped: a config's parts on one line made the label wider than the figure, cut off at its left edge.
        labels.append("\n".join(textwrap.fill(line, LABEL_CHARS) for line in label.split("\n")))
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(10.5, 1.8 + 0.3 * max(len(labels), 1) + 0.14 * lines))
    drawn = set()
    for y, (_, r) in enumerate(rows.iloc[::-1].iterrows()):
        color = colors[r["variant"]]
        if int(r["n"]) >= 2:
            err = [[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]]
            ax.errorbar(r["mean"], y, xerr=err, fmt="o", color=color, capsize=4, markersize=7)
        else:
            ax.plot(r["mean"], y, "o", color=color, markerfacecolor="white", markeredgewidth=1.5, markersize=7)
        theirs = _reference_delta(r, reference)
        if theirs is not None:
            label, own_cell = reference.marker(r, over_training=False)
            ax.plot(theirs, y, "x", color="black" if own_cell else "#888888", markersize=8,
                    label=None if label in drawn else label)
            drawn.add(label)
    ax.axvline(0.0, color="#999999", linewidth=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    unit = LOSS_UNIT if metric.endswith("loss") else "points"
    ax.set_xlabel(f"Δ final {METRIC_LABELS.get(metric, metric)} ({unit}); < 0: variant lower")
    has_ci = rows["t"].notna().any()
    ci = f" with {rows['level'].iloc[0]:.0%} CI (Student's t)" if has_ci else ""
    # Each interval is one row's own: not corrected for the other rows (the report's orderings give Holm's p).
    note = "interval uncorrected for the other rows; " if has_ci else ""
    # Over the figure, not the axes: long row labels narrow the axes, and a title centred on them was cut off.
    fig.suptitle(f"Paired by seed, variant − baseline: mean{ci}\n{note}hollow marker: one pair, no interval",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_paired_curves(
    curves: pd.DataFrame, metric: str = "val/loss", tail: float | None = 0.5, reference: Reference | None = None
) -> Figure:
    """Variant minus baseline of ``metric`` over training tokens (significance.paired_curves), one line per
    non-baseline cell, one panel per norm: the mean over paired seeds, its confidence band where n >= 2, and the
    ``reference``'s final difference where it annotated one (its legend entry: reference.Reference.marker) as a
    cross at the last point.

    tail: under each panel, the last ``tail`` of its tokens, zoomed to the means, the crosses, zero and the final
    point's band there (earlier bands are clipped): with two seeds the t-band (t = 12.7) of a loss spike spans +-3
    nats, early or mid-run (post-norm Muon rows at 59M tokens, 2026-12-07), and flattens the final hundredths.
    None: no zoomed row.
    """
    rows = curves[curves["metric"] == metric] if not curves.empty else curves
    norms = ordered_norms(rows) or [None]
    n_rows = 2 if tail else 1
    fig, grid = tail_grid(len(norms), 6.4, tail)
    if rows.empty:
        grid[0, 0].text(0.5, 0.5, f"no paired runs for {metric}", ha="center", va="center",
                        transform=grid[0, 0].transAxes)
        return fig
    colors = variant_colors(rows)
    # A variant paired under several configs: one shade of its colour per config, as in the loss curves.
    rows = rows.assign(config=rows["config"].fillna("") if "config" in rows else "")
    shades = config_shades(rows.assign(cell_label=rows["config"]), colors)
    extra = [c for c in ("layers", "width", "config") if c in rows and rows[c].nunique(dropna=False) > 1]
    differing = differing_parts(rows["config"])  # the config every line shares is left out of the names
    below = longest = 0
    for col, norm in enumerate(norms):
        ax = grid[0, col]
        marker_labels: set[str] = set()
        in_norm = rows[rows["norm"] == norm]
        x_max = float(in_norm["tokens"].max())
        tail_values = [0.0]  # the zoom keeps zero in view: the sign is the point
        lrs = [c for c in ("lr", "baseline_lr") if c in in_norm]  # one line per pair of cells, never two merged
        for _, line in in_norm.groupby(["variant", *extra, *lrs], sort=False, dropna=False):
            line = line.sort_values("tokens")
            r = line.iloc[-1]
            parts = [_config_text(r, differing) if c == "config" else f"{c}={r[c]}" for c in extra
                     if r[c] not in ("", None)]
            parts = [p for p in parts if p] + ([_own_lrs(r)] if _own_lrs(r) else [])
            n_min, n_max = int(line["n"].min()), int(line["n"].max())
            label = f"{r['variant']} − {r['baseline']} ({'; '.join([*parts, seeds_text(n_min, n_max)])})"
            color = shades.get((r["variant"], r["config"]), colors[r["variant"]])
            band = line[line["n"] >= 2]
            theirs = _reference_delta(r, reference)
            for row in range(n_rows):
                grid[row, col].plot(line["tokens"], line["mean"], "o-", color=color, markersize=3,
                                    label=label if row == 0 else None)
                if not band.empty:
                    grid[row, col].fill_between(band["tokens"], band["ci_low"], band["ci_high"], color=color,
                                                alpha=0.18, linewidth=0)
                if theirs is not None:
                    grid[row, col].plot(r["tokens"], theirs, "x", color=color, markersize=9, markeredgewidth=2)
            if theirs is not None:
                marker_labels.add(reference.marker(r, over_training=True)[0])
            if tail:
                last = line[line["tokens"] >= (1 - tail) * x_max]
                tail_values += [*last["mean"].dropna(), *last[["ci_low", "ci_high"]].iloc[-1:].stack().dropna()]
                if theirs is not None:
                    tail_values.append(theirs)
        for text in sorted(marker_labels):  # one legend entry for the crosses of every line (per reference cell)
            ax.plot([], [], "x", color="black", markersize=8, markeredgewidth=2, label=text)
        for row in range(n_rows):
            grid[row, col].axhline(0.0, color="#999999", linewidth=1)
            grid[row, col].xaxis.set_major_formatter(EngFormatter(sep=""))
            grid[row, col].grid(alpha=0.3)
        if tail:
            zoom_tail(grid[1, col], tail, x_max, "tokens", tail_values, pad=0.08)
        grid[-1, col].set_xlabel(X_LABELS.get("tokens", "tokens"))
        ax.set_title(f"norm = {norm}")
        lines, width = place_legend(ax, under=grid[-1, col])
        below, longest = max(below, lines), max(longest, width)
    unit = LOSS_UNIT if metric.endswith("loss") else "points"
    fig.supylabel(f"Δ {METRIC_LABELS.get(metric, metric)} ({unit}); < 0: variant lower", fontsize=10)
    level = rows["level"].iloc[0]
    fig.suptitle(f"Paired by seed, variant − baseline over training\nmean; band: {level:.0%} CI (Student's t) "
                 "where n ≥ 2", fontsize=10)
    layout_with_legend(fig, below, longest, len(norms))
    return fig
