"""The after-fit attention statistics of a sweep's runs side by side (``eval.attention_windows``, written by
moda_lab.eval.attention_stats to ``<run>/eval/last/attention.csv``): per norm and variant, the softmax mass on the
depth slots and on the first token (the sink) per layer, as the mean over heads, validation domains and seeds.
Runs of different configs (``cell_label``: lr, recipe, corpus) are never averaged together: each is its own line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from moda_lab.analysis.archive import files_dir
from moda_lab.analysis.plots import (
    config_shades,
    differing_parts,
    layout_with_legend,
    ordered_norms,
    place_legend,
    seeds_text,
    variant_colors,
)
from moda_lab.analysis.tidy import complete_runs, sort_cells

ATTENTION_FILE = Path("eval") / "last" / "attention.csv"
RUN_IDS = ["run", "model", "depth_kv", "ffn_kv", "attn_kv", "variant", "norm", "layers", "width", "cell_label", "seed"]
MASSES = {"depth_mass": "mass on depth slots", "sink_mass": "mass on the first token (sink)"}


def load_run_attention(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (complete local run, layer): depth_slots and the masses, averaged over heads and domains."""
    frames = []
    for _, run in complete_runs(summary).iterrows():
        path = files_dir(str(run.get("path", ""))) / ATTENTION_FILE  # an archive's run: from its extraction
        if run.get("source") != "local" or not path.is_file():
            continue
        per_layer = pd.read_csv(path).groupby("layer", as_index=False)[["depth_slots", *MASSES]].mean()
        frames.append(per_layer.assign(**{c: run[c] for c in RUN_IDS if c in run}))
    if not frames:
        return pd.DataFrame(columns=[*RUN_IDS, "layer", "depth_slots", *MASSES])
    return pd.concat(frames, ignore_index=True)


def attention_by_variant(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (layers, norm, variant, config, layer): mean and std over seeds of each mass, and the number of seeds."""
    keys = [c for c in ("layers", "width", "norm", "model", "depth_kv", "ffn_kv", "attn_kv", "variant", "cell_label")
            if c in frame]
    grouped = frame.groupby([*keys, "layer"], dropna=False, sort=False)
    out = grouped[list(MASSES)].agg(["mean", "std"])
    out.columns = [f"{m}:{stat}" for m, stat in out.columns]
    out["seeds"] = grouped["seed"].nunique()
    out["depth_slots"] = grouped["depth_slots"].max()
    return sort_cells(out.reset_index(), first=["layers", "norm"])


def plot_attention_by_variant(frame: pd.DataFrame) -> Figure:
    """Two rows of panels (depth mass, sink mass) x one column per norm: one line per variant, depth and config
    (a shade of the variant's colour each, plots.config_shades; the legend names what sets a config apart), the
    mean over seeds, +/- their std as a band. A variant without depth slots (the residual) has no depth-mass line:
    its zero is not a measurement."""
    agg = attention_by_variant(frame)
    norms = ordered_norms(agg) or [None]
    fig, axes = plt.subplots(2, len(norms), figsize=(5.8 * len(norms), 7.2), squeeze=False, sharex="col", sharey="row")
    colors = variant_colors(agg)
    agg["cell_label"] = agg["cell_label"].fillna("")  # a run without a config label: one line, not dropped
    shades = config_shades(agg, colors)
    differing = differing_parts(agg["cell_label"].unique())
    several_depths = agg["layers"].nunique() > 1 if not agg.empty else False
    # The sink row's axis: its own top (at least 0.05), not 0-1; sink masses of a few hundredths read as 0 there.
    sink = (agg["sink_mass:mean"] + agg["sink_mass:std"].fillna(0.0)).max() if not agg.empty else np.nan
    sink_top = min(1.0, max(0.05, 1.15 * sink)) if np.isfinite(sink) else 1.0
    below = longest = 0
    for col, norm in enumerate(norms):
        for row, (mass, label) in enumerate(MASSES.items()):
            ax = axes[row, col]
            panel = agg[agg["norm"] == norm]
            for (layers, variant, config), line in panel.groupby(["layers", "variant", "cell_label"], sort=False):
                if mass == "depth_mass" and not line["depth_slots"].max() > 0:
                    continue
                n = int(line["seeds"].max())
                parts = [p for p in (f"{layers} layers" if several_depths else "", differing(config)) if p]
                name = f"{variant} ({'; '.join([*parts, seeds_text(n, n)])})"
                color = shades.get((variant, config), colors[variant])
                mean, std = line[f"{mass}:mean"], line[f"{mass}:std"].fillna(0.0)
                ax.plot(line["layer"], mean, "o-", markersize=3, color=color, label=name)
                ax.fill_between(line["layer"], mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
            ax.set_ylim(0, 1 if mass == "depth_mass" else sink_top)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.set_title(f"norm = {norm}: {label}", fontsize=10)
            if col == 0:
                ax.set_ylabel(label)
            if row == 1:
                ax.set_xlabel("layer")
                lines, width = place_legend(ax)
                below, longest = max(below, lines), max(longest, width)
    fig.suptitle("Attention mass per layer after training\n(mean over heads, validation domains and seeds; "
                 "band: std over seeds)", fontsize=10)
    layout_with_legend(fig, below, longest, len(norms))
    return fig
