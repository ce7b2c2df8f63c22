"""The depth-flow catalogue's table (issue 30): final val loss per variant over seeds, and each variant minus the
residual paired by seed, with the 95% t-interval, the paired t-test's p and Holm's correction over every variant
with at least two pairs (one family), from an analysis' runs.csv.

    python experiments/catalogue/table.py experiments/results/depth_flow_catalogue_analysis/runs.csv

Verdicts: "resolved, lower" / "resolved, higher" where the Holm-corrected p < 0.05, "not resolved" otherwise,
"untested" with fewer than two pairs. Printed as markdown (experiments/results/README.md, "Issue 30").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moda_lab.analysis.significance import ALPHA, holm, paired_differences  # noqa: E402

BASELINE = "residual"


def catalogue_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: seeds, loss mean and std, and the analysis' paired difference to the baseline
    (significance.paired_differences: same cell otherwise, paired by seed) with Holm over the variants."""
    runs = runs[runs["complete"].astype(bool)]
    cells = runs.groupby("variant")["cell"].nunique()
    if (cells > 1).any():  # its rows average over a variant's runs: mixed cells would be one silent wrong mean
        mixed = ", ".join(f"{v} ({n} cells)" for v, n in cells[cells > 1].items())
        raise SystemExit(f"runs.csv holds several cells of a variant: {mixed}; the catalogue table takes one cell "
                         "per variant (one norm, lr and config): keep one cell's rows first")
    paired = paired_differences(runs, metrics=["val/loss"], baseline=BASELINE).set_index("variant")
    rows = []
    for variant, g in runs.groupby("variant", sort=False):
        loss = g["val/loss"]
        rows.append({"variant": variant, "seeds": len(loss), "loss_mean": loss.mean(), "loss_std": loss.std(ddof=1),
                     **{f"delta_{k}": paired[k].get(variant, float("nan")) for k in ("n", "mean", "ci_low", "ci_high", "p")},
                     "params": g["model/params"].iloc[0], "flops_per_token": g["model/flops_per_token"].iloc[0]})
    out = pd.DataFrame(rows)
    out["holm_p"] = holm(out["delta_p"].tolist())
    return out.sort_values("variant", key=lambda v: v.map(lambda x: (x != BASELINE, x))).reset_index(drop=True)


def verdict(row: pd.Series) -> str:
    if row["variant"] == BASELINE:
        return "baseline"
    if pd.isna(row["holm_p"]):
        return "untested (fewer than 2 pairs)"
    if row["holm_p"] >= ALPHA:
        return "not resolved"
    return "resolved, lower" if row["delta_mean"] < 0 else "resolved, higher"


def markdown(rows: pd.DataFrame) -> str:
    tested = int(rows["holm_p"].notna().sum())
    head = (f"| variant | seeds | final val loss (mean ± std) | Δ vs {BASELINE}, paired (95% t-interval) | p | "
            f"Holm p ({tested} tested) | verdict | params | training FLOPs/token |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        loss = f"{r['loss_mean']:.3f} ± {r['loss_std']:.3f}" if r["seeds"] > 1 else f"{r['loss_mean']:.3f}"
        if r["variant"] == BASELINE:
            delta = "-"
        elif pd.isna(r["delta_ci_low"]):
            delta = f"{r['delta_mean']:+.3f} (n={int(r['delta_n'])})"
        else:
            delta = f"{r['delta_mean']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
        p = "-" if pd.isna(r["delta_p"]) else f"{r['delta_p']:.3f}"
        holm_p = "-" if pd.isna(r["holm_p"]) else f"{r['holm_p']:.3f}"
        lines.append(f"| {r['variant']} | {r['seeds']} | {loss} | {delta} | {p} | {holm_p} | {verdict(r)} | "
                     f"{r['params'] / 1e6:.3f}M | {r['flops_per_token'] / 1e6:.2f}M |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        sys.exit("usage: python experiments/catalogue/table.py <analysis>/runs.csv")
    print(markdown(catalogue_rows(pd.read_csv(sys.argv[1]))))
