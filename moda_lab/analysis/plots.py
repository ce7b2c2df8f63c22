"""Sweep figures: loss curves (vs tokens / FLOPs), downstream accuracy bars, params/FLOPs vs loss and lr sweeps, and
the encoding and layout helpers they share with the paired figures (paired_plots.py).

Every function takes the tidy table (or the run summary) and returns a matplotlib Figure; ``save_figure`` writes
PNG and PDF. Curves and bars show the mean over seeds with a +/- 1 std band. The encoding is the same in every
figure: one colour per depth-mixing variant (``variant_colors``), one line style (curves), marker fill (scatter)
or hatch (bars) per norm placement, and one marker shape per further config difference (``cell_label``). In the
curves, a variant drawn under several configs in one panel (an lr sweep) takes one shade of its colour per config, light to
dark in the configs' numeric order (``config_shades``). The seed count is stated once per figure when all lines
share it, else per legend entry.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

from moda_lab.analysis.history import eval_tasks
from moda_lab.analysis.records import CELL_COLUMNS
from moda_lab.analysis.tidy import curves, final_eval_only, registry_order, seed_aggregate, sort_cells
from moda_lab.figures import figure_formats as figure_formats  # re-exported, as save_figure: the sweep figures
from moda_lab.figures import save_figure as save_figure

X_LABELS = {"tokens": "training tokens", "flops": "training FLOPs (tokens x FLOPs/token)"}
METRIC_LABELS = {"val/loss": "validation loss", "train/loss": "training loss"}
LOSS_UNIT = "nats/token"  # cross-entropy with the natural log, averaged over predicted tokens

# Fixed colours for the variants of the paper's tables, so a variant looks the same in every sweep's figures;
# other variants take the remaining colours of the cycle in canonical order.
VARIANT_COLORS = {
    "residual": "#4d4d4d",
    "dense": "#1f77b4",
    "depth_attn": "#2ca02c",
    "moda": "#ff7f0e",
    "moda +ffn_kv": "#d62728",
    "moda +ffn_kv +attn_kv": "#9467bd",
    "moda +attn_kv": "#8c564b",
}
_SPARE_COLORS = ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"]
NORM_LINESTYLES = {"pre": "-", "post": "--", "reordered": ":"}
# Marker fill per norm in scatter plots: pre filled, post hollow (white face, hiding the error bar behind it),
# reordered half filled.
NORM_FILLS = {"pre": "full", "post": "white", "reordered": "left"}
NORM_HATCHES = {"pre": "", "post": "//", "reordered": ".."}
LABEL_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LEGEND_INSIDE_MAX_CHARS = 40  # longer legend names go under the panel
SUPTITLE_CHARS_PER_INCH = 11.5  # a 12 pt figure title longer than this per inch of figure width is cut off


def variant_colors(frame: pd.DataFrame) -> dict[str, str]:
    """variant -> colour for every variant in ``frame`` (fixed for known variants, then in canonical order)."""
    if "variant" not in frame or frame.empty:
        return {}
    cols = [c for c in ("model", "depth_kv", "ffn_kv", "attn_kv", "variant") if c in frame]
    variants = sort_cells(frame[cols].drop_duplicates())["variant"].tolist()
    spare = iter(_SPARE_COLORS * (1 + len(variants) // len(_SPARE_COLORS)))
    return {v: VARIANT_COLORS.get(v) or next(spare) for v in dict.fromkeys(variants)}


def _numeric_key(label: str) -> tuple:
    """Sort key reading the numbers in a config label: lr=0.0001875 < lr=0.000375 < lr=0.003, seed-independent."""
    return tuple(float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", label)), label


def config_shades(frame: pd.DataFrame, colors: dict[str, str]) -> dict[tuple[str, str], tuple]:
    """(variant, cell_label) -> colour: the variant's own colour when no panel (norm) holds two of its configs (one
    config, or one per norm, as when each norm has its own lr); else, in the configs' numeric order, viridis when the
    figure holds that variant alone (an lr sweep of the baseline), one shade of the variant's colour per config (a
    light tint to a dark one) when other variants share the figure."""
    if frame.empty or "cell_label" not in frame:
        return {}
    shades = {}
    alone = frame["variant"].nunique() == 1
    for variant, rows in frame.groupby("variant", sort=False):
        labels = sorted(rows["cell_label"].fillna("").unique(), key=_numeric_key)
        base = np.array(to_rgb(colors[variant]))
        per_panel = rows.groupby("norm", dropna=False)["cell_label"].nunique(dropna=False) if "norm" in rows else None
        if len(labels) == 1 or (per_panel is not None and per_panel.max() == 1):
            shades.update({(variant, label): tuple(base) for label in labels})
            continue
        if alone:
            cmap = plt.get_cmap("viridis")
            shades.update({(variant, lab): cmap(0.9 * i / (len(labels) - 1))[:3] for i, lab in enumerate(labels)})
            continue
        for i, label in enumerate(labels):
            t = i / (len(labels) - 1)  # 0: 55% tint towards white, 1: 45% shade towards black
            mix = base + (1 - base) * 0.55 * (1 - 2 * t) if t <= 0.5 else base * (1 - 0.45 * (2 * t - 1))
            shades[(variant, label)] = tuple(np.clip(mix, 0, 1))
    return shades


def seeds_text(n_min: int, n_max: int) -> str:
    """``n=3 seeds``, ``n=2-3 seeds`` or ``1 seed``."""
    if n_max <= 1:
        return "1 seed"
    return f"n={n_min} seeds" if n_min == n_max else f"n={n_min}-{n_max} seeds"


def _seed_note(counts: list[tuple[int, int]]) -> tuple[str, bool]:
    """(note for the figure, whether legend entries need their own count)."""
    if not counts:
        return "", False
    if len(set(counts)) == 1 and counts[0][0] == counts[0][1]:
        n = counts[0][0]
        return ("1 seed per line, no spread" if n == 1 else f"mean ± std over {n} seeds"), False
    return "mean ± std over seeds", True


def varying_columns(frame: pd.DataFrame, candidates: list[str]) -> list[str]:
    """Columns among ``candidates`` taking more than one value in ``frame``."""
    return [c for c in candidates if c in frame and frame[c].nunique(dropna=False) > 1]


def cell_name(row: pd.Series, extra: list[str]) -> str:
    """Legend name of a sweep cell: the variant plus any other cell column that varies (norm, L, D, config)."""
    short = {"layers": "L", "width": "D", "n_heads": "H", "n_kv_heads": "Hk"}
    parts = [str(row["variant"])]
    for col in extra:
        if col == "cell_label":
            if row[col]:
                parts.append(str(row[col]))
        else:
            parts.append(f"{short[col]}={row[col]}" if col in short else str(row[col]))
    return ", ".join(parts)


def _label_columns(frame: pd.DataFrame, exclude: list[str]) -> list[str]:
    # The variant names the mixer and its switches; the cell id is a fingerprint, cell_label says what it means.
    cand = [c for c in CELL_COLUMNS if c not in ("model", "depth_kv", "ffn_kv", "attn_kv", "cell", *exclude)]
    return varying_columns(frame, cand)


def _label_markers(frame: pd.DataFrame) -> dict[str, str]:
    labels = sorted(frame["cell_label"].dropna().unique()) if "cell_label" in frame else []
    return {lab: LABEL_MARKERS[i % len(LABEL_MARKERS)] for i, lab in enumerate(labels)}


def axis_label(metric: str) -> str:
    name = METRIC_LABELS.get(metric)
    if name:
        return f"{name} ({LOSS_UNIT})"
    return f"{metric} ({LOSS_UNIT})" if metric.endswith("/loss") else metric


def place_legend(
    ax, fontsize: int = 8, under=None, drop: float = 0.16, max_inside: int | None = None
) -> tuple[int, int]:
    """The panel's legend: inside when its names are short (and, with ``max_inside``, few: a scatter's points fill
    the panel, so a long legend covers some), else under the panel (long names, cells differing in several keys,
    would cover the data), or under ``under`` (the bottom panel of its column). Returns (lines under the panel,
    their longest name), (0, 0) inside."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return 0, 0
    few = max_inside is None or len(labels) <= max_inside
    if few and max(map(len, labels)) <= LEGEND_INSIDE_MAX_CHARS:
        ax.legend(fontsize=fontsize)
        return 0, 0
    (under or ax).legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -drop), fontsize=7,
                         frameon=False)
    return len(labels), max(map(len, labels))


def layout_with_legend(fig: Figure, below: int, longest: int, panels: int = 1, margin: float = 0.75) -> None:
    """tight_layout, with room under the panels for ``below`` legend lines of up to ``longest`` characters and
    ``margin`` inches for the x axis' ticks and label."""
    if not below:
        fig.tight_layout()
        return
    height = fig.get_figheight()
    fig.set_size_inches(max(fig.get_figwidth(), 0.062 * longest * panels), height + 0.16 * below)
    fig.tight_layout()
    fig.subplots_adjust(bottom=(0.16 * below + margin) / fig.get_figheight())


def ordered_norms(frame: pd.DataFrame) -> list[str]:
    """The norm placements of ``frame``, in the registry's order (pre -> post -> reordered): one panel each."""
    rank = registry_order("norm")
    names = frame["norm"].dropna().unique() if "norm" in frame else []
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


# A zoomed panel of losses (the curves' last stretch, the lr sweep's final losses) shows the band within this many
# nats of the lowest: lines that collapsed or lag far behind are off its scale, not squeezing the ones compared.
ZOOM_BAND = 0.4


def shared_parts(names: Sequence[str]) -> tuple[dict[str, str], str]:
    """Legend names of one panel without what all of them share: (name -> its short form, the shared parts).
    A name is the variant then ", "-separated config parts (cell_name); the variant always stays. With one name
    nothing is shared (it keeps its parts)."""
    variants = {n: str(n).split(", ", 1) for n in names}
    configs = [parts[1] for parts in variants.values() if len(parts) > 1]
    if len(names) < 2 or len(configs) < len(names):  # one line, or a line with no config part: nothing shared
        return {n: str(n) for n in names}, ""
    differing = differing_parts(configs)
    short = {n: ", ".join(filter(None, [parts[0], differing(parts[1])])) for n, parts in variants.items()}
    return short, ", ".join(common_parts(configs))


def tail_grid(n_cols: int, col_width: float, tail: float | None) -> tuple[Figure, np.ndarray]:
    """The panels of a figure with a zoomed row: one column per norm, the full range on top (one y axis shared
    along the row), and with ``tail`` a row under it for each panel's last ``tail`` of x (zoom_tail)."""
    rows = 2 if tail else 1
    fig, grid = plt.subplots(rows, n_cols, figsize=(col_width * n_cols, 4.4 + 3.2 * (rows - 1)), squeeze=False,
                             height_ratios=[4.4, 3.2][:rows])
    for ax in grid[0, 1:]:
        ax.sharey(grid[0, 0])  # the full range is shared; each zoom takes its own panel's range
        ax.tick_params(labelleft=False)
    return fig, grid


def zoom_tail(zoom, tail: float, x_max: float, x: str, values: Sequence[float], pad: float) -> None:
    """A zoomed panel of tail_grid: x from (1 - tail) * x_max to the end, y around ``values`` (the lines' values
    there) with ``pad`` of their range on each side (0.01 when they are equal; no y limits without values)."""
    zoom.set_xlim((1 - tail) * x_max, x_max * 1.02)
    zoom.set_title(f"last {tail:.0%} of {X_LABELS.get(x, x).removeprefix('training ')}, zoomed", fontsize=10)
    if len(values):
        lo, hi = min(values), max(values)
        margin = pad * (hi - lo) or 0.01
        zoom.set_ylim(lo - margin, hi + margin)


def plot_curves(tidy: pd.DataFrame, metric: str = "val/loss", x: str = "tokens", tail: float | None = 0.5) -> Figure:
    """``metric`` vs tokens or FLOPs: one panel per norm placement, one line per cell, mean +/- std over seeds.

    tail: under each panel, the same lines over the last ``tail`` of its x range (by value), zoomed to their
    y range: the variants' gaps (hundredths of a nat) are invisible on the axis that holds the first steps.
    None: no zoomed row.
    """
    agg = curves(tidy, metric)
    norms = ordered_norms(agg)
    n_cols = max(1, len(norms))
    rows = 2 if tail else 1
    col_width = 5.5  # inches per panel
    fig, grid = tail_grid(n_cols, col_width, tail)
    colors = variant_colors(agg)
    shades = config_shades(agg, colors)
    markers = _label_markers(agg)
    extra = _label_columns(agg, exclude=["norm"])
    keys = [c for c in [*CELL_COLUMNS, "variant"] if c in agg]
    cells = list(agg.groupby(keys, dropna=False, sort=False)) if not agg.empty else []  # seed_aggregate's order
    counts = [(int(c[f"{metric}:n"].min()), int(c[f"{metric}:n"].max())) for _, c in cells]
    note, per_line = _seed_note(counts)
    below = longest = 0  # legend lines drawn under a panel (0: every legend fits inside it), their longest name
    for col, norm in enumerate(norms):
        ax = grid[0, col]
        drawn = 0
        tail_values = []  # each line's (lowest, highest) mean -/+ std over the tail
        x_max = max((c[x].max() for _, c in cells if c["norm"].iloc[0] == norm), default=0.0)
        # What every line of the panel shares goes under its title, once, instead of into every legend name.
        short, shared = shared_parts([cell_name(c.iloc[0], extra) for _, c in cells if c["norm"].iloc[0] == norm])
        for (_, cell), n in zip(cells, counts):
            if cell["norm"].iloc[0] != norm:
                continue
            cell = cell.sort_values("step")
            if x == "flops":
                cell = cell[cell[x] > 0]  # step 0 has no place on a log axis
            xs, ys = cell[x].to_numpy(float), cell[metric].to_numpy(float)
            sd = np.nan_to_num(cell[f"{metric}:std"].to_numpy(float))
            first = cell.iloc[0]
            name = short[cell_name(first, extra)]
            label = f"{name} ({seeds_text(*n)})" if per_line else name
            label_key = first.get("cell_label")
            color = shades.get((first["variant"], "" if pd.isna(label_key) else label_key), colors[first["variant"]])
            style = {
                "linestyle": NORM_LINESTYLES.get(norm, "-."),
                "marker": markers.get(first.get("cell_label"), "o"),
                "markersize": 3.5,
                # Wider lines first: a curve drawn over an identical one still shows the one below as its outline.
                "linewidth": max(1.0, 2.6 - 0.35 * drawn),
                "color": color,
            }
            for row in range(rows):
                grid[row, col].plot(xs, ys, label=label if row == 0 else None, **style)
                grid[row, col].fill_between(xs, ys - sd, ys + sd, color=color, alpha=0.15, linewidth=0)
            if tail:
                last = xs >= (1 - tail) * x_max
                if last.any():
                    tail_values.append((float(np.min(ys[last] - sd[last])), float(np.max(ys[last] + sd[last]))))
            drawn += 1
        title = f"norm = {norm} ({'solid' if norm == 'pre' else 'dashed' if norm == 'post' else 'dotted'})"
        if shared:
            chars = int(SUPTITLE_CHARS_PER_INCH * 1.2 * col_width)  # 1.2: a 10 pt line against the 12 pt title's
            title += "\n" + textwrap.fill(f"all lines: {shared}", width=chars)
        ax.set_title(title, fontsize=10 if shared else None)
        if tail:
            kept = tail_values
            if metric.endswith("loss") and tail_values:  # far-off lines leave the zoom to the ones compared
                top = min(lo for lo, _ in tail_values) + ZOOM_BAND
                kept = [v for v in tail_values if v[0] <= top]
            zoom_tail(grid[1, col], tail, x_max, x, [v for pair in kept for v in pair], pad=0.06)
            if len(kept) < len(tail_values):
                grid[1, col].set_title(f"{grid[1, col].get_title()} to within {ZOOM_BAND:g} nats of the lowest "
                                       f"({len(tail_values) - len(kept)} line(s) above)", fontsize=10)
        for row in range(rows):
            _curve_axis(grid[row, col], x)
        grid[-1, col].set_xlabel(X_LABELS.get(x, x))
        lines, width = place_legend(ax, under=grid[-1, col])  # a long legend goes under the zoom
        below, longest = max(below, lines), max(longest, width)
    for row in range(rows):
        grid[row, 0].set_ylabel(axis_label(metric))
    title = f"{METRIC_LABELS.get(metric, metric).capitalize()} vs {X_LABELS.get(x, x)}"
    text = f"{title} ({note})" if note else title
    wrap = note and len(text) > SUPTITLE_CHARS_PER_INCH * fig.get_figwidth()  # one narrow panel: the note below
    fig.suptitle(f"{title}\n({note})" if wrap else text)
    layout_with_legend(fig, below, longest, len(norms))
    return fig


def _curve_axis(ax, x: str) -> None:
    ax.grid(alpha=0.3)
    if x == "flops":
        # Labels at 1, 2 and 5 per decade in engineering units: matplotlib's labelled minor ticks of a
        # ~1.3-decade axis ran into each other (3x10^16 over 4x10^16).
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))


# The accuracy each task reports: acc_norm (normalised by the choice's byte length) where lm-eval's own task of
# that name defines it, else acc. Our BoolQ and COPA YAMLs log acc_norm too, but it is not theirs to report: BoolQ's
# choices are "no"/"yes", and dividing by byte length moves a model that always answers "no" (acc 37.8%, the
# share of "no" labels) to "yes" on a part of the questions (acc_norm 39-61% over two seeds of one model).
REPORTED_METRIC = {
    "piqa": "acc_norm", "hellaswag": "acc_norm", "openbookqa": "acc_norm", "sciq": "acc_norm",
    "arc_easy": "acc_norm", "arc_challenge": "acc_norm",
    "boolq": "acc", "copa": "acc", "winogrande": "acc", "mmlu": "acc",
}


def task_metric(summary: pd.DataFrame, task: str, prefer: tuple[str, ...] | None = None) -> str | None:
    """The column reported for ``task``: the first of ``prefer`` that was logged (default: the task's
    REPORTED_METRIC, then the other one; a task not listed there: acc_norm, then acc)."""
    if prefer is None:
        first = REPORTED_METRIC.get(task, "acc_norm")
        prefer = (first, "acc" if first == "acc_norm" else "acc_norm")
    for name in prefer:
        col = f"eval/{task}/{name}"
        if col in summary and summary[col].notna().any():
            return col
    return None


def has_downstream(summary: pd.DataFrame, prefer: tuple[str, ...] | None = None) -> bool:
    """Whether any run logged a downstream accuracy (else there is no downstream figure to draw)."""
    return any(task_metric(summary, t, prefer) for t in eval_tasks(summary))


def plot_downstream(summary: pd.DataFrame, prefer: tuple[str, ...] | None = None) -> Figure:
    """Grouped bars: downstream accuracy per task (and the average), one bar per sweep cell, +/- std over seeds."""
    summary = final_eval_only(summary)  # final checkpoints only, as in the tables
    tasks = [t for t in eval_tasks(summary) if task_metric(summary, t, prefer)]
    cols = [task_metric(summary, t, prefer) for t in tasks]
    frame = summary.copy()
    if cols:
        frame["avg"] = frame[cols].mean(axis=1, skipna=False)
    agg = seed_aggregate(frame, [*cols, "avg"]) if cols else pd.DataFrame()
    agg = agg[agg["avg"].notna()] if not agg.empty else agg
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * (len(tasks) + 1)), 4.4))
    if agg.empty:
        ax.text(0.5, 0.5, "no downstream evals logged", ha="center", va="center", transform=ax.transAxes)
        return fig
    colors = variant_colors(agg)
    extra = _label_columns(agg, exclude=[])
    counts = [(int(r["avg:n"]), int(r["avg:n"])) for _, r in agg.iterrows()]
    note, per_bar = _seed_note(counts)
    width = 0.8 / len(agg)
    positions = np.arange(len(tasks) + 1)
    for i, ((_, row), n) in enumerate(zip(agg.iterrows(), counts)):
        means = [row[c] for c in [*cols, "avg"]]
        sds = np.array([row[f"{c}:std"] for c in [*cols, "avg"]], dtype=float)  # NaN with one seed
        name = cell_name(row, extra)
        ax.bar(
            positions + i * width,
            means,
            width,
            yerr=None if np.isnan(sds).all() else np.nan_to_num(sds),  # one seed: no error bar at all
            capsize=3,
            color=colors[row["variant"]],
            hatch=NORM_HATCHES.get(row.get("norm"), "xx"),
            edgecolor="white",
            label=f"{name} ({seeds_text(*n)})" if per_bar else name,
        )
    names = [f"{t}\n({c.rsplit('/', 1)[-1]})" for t, c in zip(tasks, cols)] + ["average"]
    ax.set_xticks(positions + width * (len(agg) - 1) / 2, names)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Downstream accuracy per task ({note})")
    ax.grid(axis="y", alpha=0.3)
    # Under the panel, never on a bar; beside it, long names (configs that differ in several keys) took half the
    # figure's width and the task names under the bars ran into each other.
    below, longest = place_legend(ax, max_inside=0)
    layout_with_legend(fig, below, longest, margin=1.0)
    return fig


def _fill(style: str, color: str) -> dict:
    if style == "white":
        return {"markerfacecolor": "white"}
    return {"fillstyle": style, "markerfacecoloralt": "white", "markerfacecolor": color}


def has_cost_and_loss(summary: pd.DataFrame, x: str, y: str = "val/loss") -> bool:
    return x in summary and y in summary and (summary[x].notna() & summary[y].notna()).any()


def plot_cost_vs_loss(summary: pd.DataFrame, x: str = "model/params", y: str = "val/loss") -> Figure:
    """Final ``y`` vs parameters or total training FLOPs, one point per sweep cell, +/- std over seeds."""
    agg = seed_aggregate(summary, [x, y]) if x in summary and y in summary else pd.DataFrame()
    agg = agg.dropna(subset=[x, y]) if not agg.empty else agg
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if agg.empty:
        ax.text(0.5, 0.5, f"no runs with both {x} and {y}", ha="center", va="center", transform=ax.transAxes)
        return fig
    colors = variant_colors(agg)
    markers = _label_markers(agg)
    extra = _label_columns(agg, exclude=[])
    counts = [(int(r[f"{y}:n"]), int(r[f"{y}:n"])) for _, r in agg.iterrows()]
    note, per_point = _seed_note(counts)
    scale = 1e6 if x == "model/params" else 1.0
    for (_, row), n in zip(agg.iterrows(), counts):
        sd = 0.0 if pd.isna(row[f"{y}:std"]) else row[f"{y}:std"]
        name = cell_name(row, extra)
        ax.errorbar(
            row[x] / scale,
            row[y],
            yerr=sd,
            fmt=markers.get(row.get("cell_label"), "o"),
            **_fill(NORM_FILLS.get(row.get("norm"), "bottom"), colors[row["variant"]]),
            markeredgewidth=1.5,
            markersize=7,
            capsize=3,
            color=colors[row["variant"]],
            label=f"{name} ({seeds_text(*n)})" if per_point else name,
        )
    ax.set_xlabel({"model/params": "parameters (M)", "train_flops": "total training FLOPs"}.get(x, x))
    if x == "model/params":
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")  # 71.2428 M, not 0.0028 + 7.124e1
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # few ticks: plain labels of close counts are long
    if x == "train_flops":
        if agg[x].max() >= 10 * agg[x].min():
            ax.set_xscale("log")
        else:  # within one decade a log axis labels only its crowded minor ticks
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_ylabel(f"final {axis_label(y)}")
    what = "parameters" if x == "model/params" else "training FLOPs"
    ax.set_title(f"Final {METRIC_LABELS.get(y, y)} vs {what} ({note})", fontsize=10)
    ax.grid(alpha=0.3)
    layout_with_legend(fig, *place_legend(ax, max_inside=COST_LEGEND_MAX_INSIDE))
    return fig


# A cost-vs-loss scatter keeps its legend inside up to this many points (more cover some of them).
COST_LEGEND_MAX_INSIDE = 6
# Runs of one cell (all but the peak lr equal) at this many peak learning rates make an lr sweep worth a figure.
LR_SWEEP_MIN_POINTS = 2  # a per-variant sweep around the baseline's best lr can be two points
_SWEEP_GROUP = ["variant", "norm", "layers", "width", "lr_group"]


def common_parts(labels: Iterable[object]) -> list[str]:
    """The ", "-separated parts every one of ``labels`` has, in the first label's order."""
    parts = [str(lab).split(", ") for lab in dict.fromkeys(labels)]
    common = set.intersection(*map(set, parts)) if parts else set()
    return [p for p in parts[0] if p in common] if parts else []


def differing_parts(labels: Iterable[object]) -> Callable[[object], str]:
    """label -> its ", "-separated parts that not every one of ``labels`` has: what sets a cell apart, without the
    config every line of a figure shares."""
    common = set(common_parts(labels))
    return lambda label: ", ".join(p for p in str(label).split(", ") if p not in common)


def without_lr(label: str) -> str:
    """A cell label without its learning-rate part (``lr=0.003, warmup_steps=200`` -> ``warmup_steps=200``)."""
    return ", ".join(p for p in str(label).split(", ") if p and not p.startswith(("lr=", "trainer.lr=")))


def lr_sweep_points(summary: pd.DataFrame, y: str = "val/loss") -> pd.DataFrame:
    """Final ``y`` (mean over seeds) per lr sweep (``lr_group``: runs of one cell but for the peak lr) and peak lr,
    for the sweeps over at least LR_SWEEP_MIN_POINTS learning rates; ``trained`` is False when any seed of the
    point did not train; ``sweep_label`` says what sets a sweep apart (its cell label without the lr)."""
    need = [*_SWEEP_GROUP, "peak_lr", y]
    out = [*need, "seeds", "trained", "sweep_label"]
    if summary.empty or any(c not in summary for c in need):
        return pd.DataFrame(columns=out)
    rows = summary.dropna(subset=["peak_lr", y])
    trained = rows["trained"] if "trained" in rows else pd.Series(True, index=rows.index)
    labels = rows["cell_label"] if "cell_label" in rows else pd.Series("", index=rows.index)
    rows = rows.assign(_untrained=trained.eq(False), sweep_label=labels.fillna("").map(without_lr))
    agg = rows.groupby([*_SWEEP_GROUP, "peak_lr"], dropna=False, sort=False).agg(
        **{y: (y, "mean"), "seeds": (y, "size"), "_untrained": ("_untrained", "any"), "sweep_label": ("sweep_label", "first")}
    )
    agg = agg.reset_index()
    agg["trained"] = ~agg.pop("_untrained")
    sizes = agg.groupby(_SWEEP_GROUP, dropna=False)["peak_lr"].transform("nunique")
    agg = agg[sizes >= LR_SWEEP_MIN_POINTS].sort_values([*_SWEEP_GROUP, "peak_lr"]).reset_index(drop=True)
    return agg[out]


# When the final losses of the lr sweeps span more than LR_SWEEP_ZOOM_SPAN nats (runs that collapsed to the unigram
# loss beside runs that trained), a second panel shows the band within ZOOM_BAND nats of the lowest point, where the
# lr choices are made.
LR_SWEEP_ZOOM_SPAN = 1.0


def plot_lr_sweep(summary: pd.DataFrame, y: str = "val/loss") -> Figure:
    """Final ``y`` vs the peak learning rate (log scale), one line per lr sweep in its variant's colour and its
    norm's line style, one marker shape per further config difference; hollow markers: a run that did not train;
    a star on each line's lowest point. Where the losses span more than LR_SWEEP_ZOOM_SPAN, a second panel
    zooms on the band within ZOOM_BAND of the lowest."""
    points = lr_sweep_points(summary, y)
    if points.empty:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.text(0.5, 0.5, "no lr sweep in these runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    lowest = points[y].min()
    zoom = points[y].max() - lowest > LR_SWEEP_ZOOM_SPAN
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11.5 if zoom else 6.4, 4.4), squeeze=False)
    for ax in axes[0]:
        _draw_lr_sweeps(ax, points, y)
    seeds = sorted(points["seeds"].unique())
    seed_note = f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1 else "mean over seeds"
    title = f"Final {METRIC_LABELS.get(y, y)} vs learning rate ({seed_note}; hollow: did not train; star: lowest)"
    if not zoom:
        axes[0, 0].set_title(title, fontsize=9)
        layout_with_legend(fig, *place_legend(axes[0, 0], drop=0.27), margin=1.1)  # the rotated lr ticks sit lower
        return fig
    axes[0, 1].set_ylim(lowest - 0.1 * ZOOM_BAND, lowest + ZOOM_BAND)
    inside = points.loc[points[y] <= lowest + ZOOM_BAND, "peak_lr"]  # and the lrs that reach the band
    axes[0, 1].set_xlim(inside.min() / 1.25, inside.max() * 1.25)
    axes[0, 1].set_title(f"zoom: within {ZOOM_BAND:g} nats of the lowest ({lowest:.3f})", fontsize=9)
    axes[0, 0].set_title("all runs", fontsize=9)
    fig.suptitle(title, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()  # one legend, centred under both panels
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.01), fontsize=7, frameon=False)
    layout_with_legend(fig, len(labels), max(map(len, labels)), margin=1.1)
    return fig


def _draw_lr_sweeps(ax, points: pd.DataFrame, y: str) -> None:
    """Every sweep of ``points`` (lr_sweep_points) on one panel, with its axes."""
    colors = variant_colors(points)
    sweeps = points[["variant", "sweep_label"]].drop_duplicates()
    if sweeps["variant"].duplicated().any():  # a variant swept under several configs: each sweep its own colour
        palette = plt.get_cmap("tab10" if len(sweeps) <= 10 else "tab20").colors
        colors = {(v, lab): palette[i % len(palette)] for i, (v, lab) in enumerate(sweeps.itertuples(index=False))}
    multi_shape = points.groupby(["layers", "width"]).ngroups > 1
    several = points["lr_group"].nunique() > 1  # name what sets each sweep apart only when there is more than one
    differing = differing_parts(points["sweep_label"])  # what every sweep says is left out of the names
    shapes = {lab: LABEL_MARKERS[i % len(LABEL_MARKERS)] for i, lab in enumerate(sorted(points["sweep_label"].unique()))}
    for (variant, norm, layers, width, _), line in points.groupby(_SWEEP_GROUP, dropna=False, sort=False):
        label = line["sweep_label"].iloc[0]
        color = colors.get((variant, label), colors.get(variant))
        own = differing(label)
        parts = [variant, norm, *([f"L={layers}, D={width}"] if multi_shape else []), *([own] if own and several else [])]
        ax.plot(line["peak_lr"], line[y], linestyle=NORM_LINESTYLES.get(norm, "-."), color=color,
                marker=shapes[label], markersize=7, markeredgewidth=1.5, markerfacecolor=color, label=", ".join(parts))
        untrained = line[~line["trained"]]
        ax.plot(untrained["peak_lr"], untrained[y], shapes[label], color=color, markerfacecolor="white",
                markeredgewidth=1.5, markersize=7, linestyle="none")
        best = line.loc[line[y].idxmin()]
        ax.plot(best["peak_lr"], best[y], "*", color="black", markersize=12, zorder=5)
        note = "" if best["trained"] else " (did not train)"  # the star covers its hollow marker
        ax.annotate(f"{best['peak_lr']:.3g}{note}", (best["peak_lr"], best[y]), textcoords="offset points",
                    xytext=(7, 5), fontsize=8)
    ax.set_xscale("log")
    ticks = sorted(points["peak_lr"].unique())  # the learning rates tried, nothing in between
    ax.set_xticks(ticks, [f"{v:.2g}" for v in ticks], rotation=30)
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel(f"final {axis_label(y)}")
    ax.grid(alpha=0.3)
