"""Norm placement against pre-norm, per variant, paired by seed: what the paper's Table 6 asks (post-norm beating
pre-norm with MoDA) and whether a post-norm recipe trains as well as pre-norm (issue 28's first target, on the
residual).

Two cells are compared when they differ in the norm placement alone, their lrs aside: same depth, width, heads,
variant and every other config part (recipe, schedule, corpus); each placement may run at its own tuned lr, and
both lrs are shown. Each other placement (post, reordered) is set against pre-norm. A placement with runs at
several lrs gives a row per lr.
"""

from __future__ import annotations

import pandas as pd

from moda_lab.analysis.pairing import lr_of, lr_text
from moda_lab.analysis.plots import without_lr
from moda_lab.analysis.significance import (
    GROUP_COLUMNS,
    LEVEL,
    VARIANT_COLUMNS,
    compare_cells,
    format_delta,
    format_interval,
    format_p,
    level_text,
    markdown_table,
)
from moda_lab.analysis.tables import with_derived
from moda_lab.analysis.tidy import sort_cells

REFERENCE_NORM = "pre"
SHAPE_COLUMNS = [c for c in GROUP_COLUMNS if c not in ("norm", "config")]  # the shape of significance's groups
COLUMNS = [*SHAPE_COLUMNS, "config", *VARIANT_COLUMNS, "norm", "lr", "reference_norm", "reference_lr", "metric", "n",
           "seeds", "mean", "std", "level", "t", "ci_low", "ci_high", "p", "excludes_0", "pairs_needed", "unpaired",
           "not_trained", "note"]


def norm_differences(summary: pd.DataFrame, metric: str = "val/loss", level: float = LEVEL) -> pd.DataFrame:
    """One row per (shape, variant, config without lr, placement other than pre-norm, lr pair): ``metric`` of that
    placement minus pre-norm's, paired by seed (significance.compare_cells; p uncorrected). Empty where no such
    pair of cells exists."""
    frame, _ = with_derived(summary)
    need = {"norm", "variant", "seed", "cell_label", "peak_lr", metric}  # the summary's own columns (tidy.py)
    if frame.empty or not need <= set(frame.columns):
        return pd.DataFrame(columns=COLUMNS)
    frame = frame.assign(config=frame["cell_label"].fillna("").map(without_lr))
    keys = [c for c in (*SHAPE_COLUMNS, "config", *VARIANT_COLUMNS) if c in frame]
    rows = []
    for ids, group in frame.groupby(keys, dropna=False, sort=False):
        ids = dict(zip(keys, ids))
        by_lr = {norm: list(cells.groupby("peak_lr", dropna=False, sort=True))
                 for norm, cells in group.groupby("norm", sort=False)}
        for norm, cells in by_lr.items():
            if norm == REFERENCE_NORM or REFERENCE_NORM not in by_lr:
                continue
            for _, runs in cells:
                for _, ref in by_lr[REFERENCE_NORM]:
                    stats = compare_cells(runs, ref, metric, level, names=(norm, REFERENCE_NORM))
                    rows.append({**ids, "norm": norm, "lr": lr_of(runs), "reference_norm": REFERENCE_NORM,
                                 "reference_lr": lr_of(ref), "metric": metric, **stats})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return sort_cells(out, first=["layers", "norm"])


def norm_gap_markdown(table: pd.DataFrame) -> str:
    """The placement differences in Markdown: one row per variant and placement, both lrs, Δ with its interval."""
    if table.empty:
        return "_No variant ran under pre-norm and another placement with the same config._\n"
    show_config = table["config"].fillna("").astype(bool).any()
    header = ["layers", "width", *(["config"] if show_config else []), "variant", "placement − pre", "lr vs pre's",
              "pairs", "seeds", "Δ mean", "Δ std", f"{level_text(table)} CI", "p (uncorrected)", "unpaired seeds",
              "note"]
    body = []
    for _, r in table.iterrows():
        std = "–" if pd.isna(r["std"]) else f"{r['std']:.4f}"
        body.append([r["layers"], r["width"], *([r["config"]] if show_config else []), r["variant"],
                     f"{r['norm']} − {r['reference_norm']}", f"{lr_text(r['lr'])} vs {lr_text(r['reference_lr'])}",
                     int(r["n"]), r["seeds"] or "–", format_delta(r["mean"], r["metric"]), std,
                     format_interval(r, r["metric"]), format_p(r["p"]), r["unpaired"] or "", r["note"] or ""])
    return "\n".join(markdown_table(header, body)) + "\n"
