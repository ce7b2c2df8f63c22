"""Paired seed differences against the baseline with Student-t intervals, and the seed spread of each cell.

Pairing: a variant's cell is compared with the baseline cell that pairing.py's rule picks in its pair group (same
config except the depth-mixing variant ``model.mixer.*``, the seed and the peak lr; ``pair_group`` of the run
summary, records.pair_group_id): the baseline at the variant's lr where it ran at it, else the baseline's one lr
(each arm at its own tuned lr), else none (the baseline at several lrs, none the variant's). The rows say which:
``lr``, ``baseline_lr`` and ``lr_pairing`` (``same lr`` or ``own lr``). Runs of the two cells pair when they share
a seed. Per shared seed s the difference is
d_s = metric(variant, s) - metric(baseline, s); the report gives the mean, the std (ddof 1), the number of pairs and
a two-sided interval mean +/- t_{(1+level)/2, n-1} * std / sqrt(n) (Student's t: the seeds' differences are the
sample; pairing removes what the seed shares between the two runs, e.g. the data order), and the paired t-test's
two-sided p-value of "mean 0" (uncorrected; ``holm`` corrects a family of them). With one pair there is no
interval and no test ("n=1"). Seeds run for one side only are listed as unpaired and left out, never paired with another
seed; a seed present twice in a cell (e.g. the same run from two sources) is left out as well.

Only complete runs enter (``tidy.run_summary``), the same runs as the tables; downstream accuracies only from
final checkpoints (``tidy.final_eval_only``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from moda_lab.analysis.history import val_domains
from moda_lab.analysis.pairing import SAME_LR, CellPair, cell_pairs, lr_text
from moda_lab.analysis.records import variant_label
from moda_lab.analysis.tables import with_derived
from moda_lab.analysis.tidy import sort_cells

if TYPE_CHECKING:
    from moda_lab.analysis.reference import Reference

LEVEL = 0.95
# A family-corrected p below this resolves a difference (reference.verdict) or a task (mcnemar).
ALPHA = 0.05
# A cell's seed std of the final val loss should stay below this (nats/token): the gaps worth resolving between
# depth-mixing variants are a few hundredths of a nat, so with 3 seeds a spread above 0.01 cannot resolve most of
# them (the 95% half-width is 2.48 std at n=3).
SEED_STD_TARGET = 0.01
# Identity columns of the paired and spread tables, in order, when present; ``config`` = the cell label.
GROUP_COLUMNS = ["layers", "width", "n_heads", "n_kv_heads", "norm", "config"]
VARIANT_COLUMNS = ["model", "depth_kv", "ffn_kv", "attn_kv", "variant"]
# The peak lrs of a paired row: the variant's, the baseline's and how they relate (pairing.CellPair.lr_columns).
LR_COLUMNS = ["lr", "baseline_lr", "lr_pairing"]
# The Markdown column of a pair's lrs (pair_lrs_text).
LRS_HEADER = "lr: variant vs baseline"


def baseline_variant() -> str:
    """The baseline's variant label: the first name of DEPTH_MIXERS (the registry lists baseline -> MoDA), no
    switches on (``residual``)."""
    from moda_lab.model import DEPTH_MIXERS  # on first use: importing the model imports torch

    return variant_label(next(iter(DEPTH_MIXERS)))


def _student_t():
    try:
        from scipy import stats
    except ImportError as err:  # scipy comes with lm-eval (scikit-learn) and is pinned in constraints.txt
        raise ImportError("paired confidence intervals and tests need scipy: pip install scipy") from err
    return stats.t


def t_quantile(level: float, df: int) -> float:
    """Two-sided Student-t quantile t_{(1+level)/2, df}, e.g. ``t_quantile(0.95, 2) == 4.3027``."""
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} is out of range; allowed: 0 < level < 1")
    if df < 1:
        raise ValueError(f"df={df!r} is out of range; allowed: >= 1")
    return float(_student_t().ppf(0.5 + level / 2, df))


def t_pvalue(mean: float, std: float, n: int) -> float:
    """Two-sided p-value of the paired t-test of "the mean difference is 0": P(|T_{n-1}| >= |mean| / (std/sqrt(n))).
    NaN with fewer than 2 values; with no spread (std 0) 0 for a nonzero mean, 1 for a zero one."""
    if n < 2 or any(v is None or math.isnan(v) for v in (mean, std)):
        return math.nan
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * _student_t().sf(abs(mean) / (std / math.sqrt(n)), n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of one family, in the input order: the i-th smallest of the k values
    becomes max over j <= i of min(1, (k - j + 1) * p_(j)). Rejecting where the adjusted p < alpha keeps the chance
    of any false rejection in the family at or below alpha (Holm 1979). NaN entries are not in the family and stay
    NaN."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out = [math.nan] * len(pvalues)
    k, running = len(tested), 0.0
    for j, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (k - j) * p))
        out[i] = running
    return out


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """``n``, ``mean``, ``std`` (ddof 1), ``t``, the interval ``ci_low``/``ci_high`` of the mean of ``values`` and
    the t-test's two-sided ``p`` (t_pvalue, uncorrected); std, t, the interval and p are NaN with fewer than 2
    values (mean too with none)."""
    xs = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(xs)
    out = {"n": n, "mean": float(xs.mean()) if n else np.nan, "std": np.nan, "t": np.nan}
    out |= {"ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    if n >= 2:
        std, t = float(xs.std(ddof=1)), t_quantile(level, n - 1)
        half = t * std / math.sqrt(n)
        out |= {"std": std, "t": t, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half}
        out["p"] = t_pvalue(out["mean"], std, n)
    return out


# pairs_to_resolve looks this far: beyond it a difference is too small for its spread to plan seeds for.
PAIRS_CAP = 50


def pairs_to_resolve(mean: float, std: float, level: float = LEVEL, cap: int = PAIRS_CAP) -> int | None:
    """The fewest pairs n >= 2 at which the interval mean +/- t_{n-1} * std / sqrt(n) would exclude 0, if more seeds
    kept the measured mean and std: a planning estimate for how many seeds an ablation needs, not a prediction
    (the next seeds move both). None when the mean is 0 or unknown, the std unknown, or n would exceed ``cap``."""
    if any(v is None or math.isnan(v) for v in (mean, std)) or mean == 0:
        return None

    def resolved(n: int) -> bool:
        return t_quantile(level, n - 1) * std / math.sqrt(n) < abs(mean)

    if cap < 2 or not resolved(cap):
        return None
    # The half-width falls as n grows (t_{n-1} falls, sqrt(n) rises): bisect for the first n that resolves.
    lo, hi = 2, cap
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if resolved(mid) else (mid + 1, hi)
    return lo


@dataclass
class Pairing:
    """The seeds of two cells, paired: differences ``a - b`` per shared seed, and the seeds left out."""

    seeds: list[int] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    only_a: list[int] = field(default_factory=list)
    only_b: list[int] = field(default_factory=list)
    twice: list[tuple[str, int]] = field(default_factory=list)  # (side, seed) present more than once: left out

    def unpaired_text(self, a: str = "variant", b: str = "baseline") -> str:
        """``variant only: 3; baseline only: 2; seed 1 twice in baseline`` (empty when every seed paired)."""
        parts = [
            f"{name} only: {', '.join(map(str, seeds))}"
            for name, seeds in ((a, self.only_a), (b, self.only_b))
            if seeds
        ]
        parts += [f"seed {s} twice in {a if side == 'a' else b}" for side, s in self.twice]
        return "; ".join(parts)


def _seed_values(runs: pd.DataFrame, metric: str) -> tuple[dict[int, float], list[int]]:
    """seed -> metric of the runs that logged it, and the seeds present more than once."""
    rows = runs[runs[metric].notna() & runs["seed"].notna()] if metric in runs else runs.iloc[0:0]
    seeds = rows["seed"].astype(int)
    twice = sorted(set(seeds[seeds.duplicated()]))
    return {s: float(v) for s, v in zip(seeds, rows[metric]) if s not in twice}, twice


def pair_by_seed(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> Pairing:
    """Pair the runs of two cells by seed on ``metric`` (runs without it count as absent)."""
    va, twice_a = _seed_values(a, metric)
    vb, twice_b = _seed_values(b, metric)
    shared = sorted(set(va) & set(vb))
    return Pairing(
        seeds=shared,
        diffs=[va[s] - vb[s] for s in shared],
        only_a=sorted(set(va) - set(vb) - set(twice_b)),
        only_b=sorted(set(vb) - set(va) - set(twice_a)),
        twice=[("a", s) for s in twice_a] + [("b", s) for s in twice_b],
    )


def _untrained_text(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> str:
    parts = []
    for name, runs in zip(names, (a, b)):
        if "trained" in runs:
            seeds = sorted(runs.loc[runs["trained"].eq(False), "seed"].dropna().astype(int))
            if seeds:
                parts.append(f"{name} seed {', '.join(map(str, seeds))}")
    return "; ".join(parts)


def params_change(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The relative parameter count of cell ``a`` against cell ``b``: params(a) / params(b) - 1, from the runs'
    ``model/params`` (logged at step 0); NaN where either cell lacks it."""
    counts = [runs["model/params"].dropna() if "model/params" in runs else pd.Series(dtype=float) for runs in (a, b)]
    if any(c.empty for c in counts):
        return math.nan
    return float(counts[0].iloc[0] / counts[1].iloc[0] - 1)


def params_text(change: float) -> str:
    """``+3.2% params``, ``same params`` (equal counts), or ``–`` (unknown): beside a difference, whether the first
    side had more weights to spend."""
    if change is None or math.isnan(change):
        return "–"
    return "same params" if change == 0 else f"{change:+.1%} params"


def compare_cells(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metric: str,
    level: float = LEVEL,
    names: tuple[str, str] = ("variant", "baseline"),
) -> dict[str, object]:
    """Paired statistics of ``metric`` (a - b) between the runs of two cells: t_interval's keys (``p``: the paired
    t-test, uncorrected) plus ``seeds``, ``excludes_0`` (None without an interval), ``pairs_needed``
    (pairs_to_resolve at the measured mean and std), ``params_change`` (a's params over b's, minus 1), ``unpaired``,
    ``not_trained`` and ``note``."""
    pairing = pair_by_seed(a, b, metric)
    stats = t_interval(pairing.diffs, level)
    excludes = None if math.isnan(stats["ci_low"]) else bool(stats["ci_low"] > 0 or stats["ci_high"] < 0)
    note = {0: "no common seed", 1: "n=1: no interval"}.get(stats["n"], "")
    return {
        **stats,
        "level": level,
        "seeds": ", ".join(map(str, pairing.seeds)),
        "excludes_0": excludes,
        "pairs_needed": pairs_to_resolve(stats["mean"], stats["std"], level),
        "params_change": params_change(a, b),
        "unpaired": pairing.unpaired_text(*names),
        "not_trained": _untrained_text(a, b, names),
        "note": note,
    }


def _group_ids(runs: pd.DataFrame) -> dict[str, object]:
    first = runs.iloc[0]
    ids = {c: first[c] for c in GROUP_COLUMNS if c in runs}
    ids["config"] = first.get("cell_label") or ""
    return ids


def default_metrics(frame: pd.DataFrame) -> list[str]:
    """val/loss, each val/<domain>/loss, and the average downstream accuracy (%) when any run has one."""
    metrics = ["val/loss", *(f"val/{d}/loss" for d in val_domains(frame))]
    if "avg acc" in frame and frame["avg acc"].notna().any():
        metrics.append("avg acc")
    return [m for m in metrics if m in frame]


def _pair_ids(pair: CellPair) -> dict[str, object]:
    """A paired row's identity: the variant cell's group and variant columns, then its lr columns."""
    runs = pair.runs
    return {**_group_ids(runs), **{c: runs[c].iloc[0] for c in VARIANT_COLUMNS if c in runs}, **pair.lr_columns()}


def paired_differences(
    summary: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
    level: float = LEVEL,
    prefer: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """One row per (non-baseline cell, metric): the cell's variant minus the baseline cell pairing.py's rule picks
    in its pair group, paired by seed, with both lrs (LR_COLUMNS). ``metrics`` default to default_metrics (``avg
    acc``: the average task accuracy in %, as in Table 5); ``baseline`` is a variant label (default:
    baseline_variant()). A cell with no baseline cell to pair with gets rows with ``n`` = 0 and the rule's note
    ("no baseline run in this cell", "baseline at several lrs (...), none at this one")."""
    frame, _ = with_derived(summary, prefer)
    columns = [*GROUP_COLUMNS, *VARIANT_COLUMNS, *LR_COLUMNS, "baseline", "metric", "n", "seeds", "mean", "std"]
    columns += ["level", "t", "ci_low", "ci_high", "p", "excludes_0", "pairs_needed", "params_change", "unpaired"]
    columns += ["not_trained", "note"]
    if frame.empty or "pair_group" not in frame:
        return pd.DataFrame(columns=columns)
    metrics = list(metrics) if metrics is not None else default_metrics(frame)
    base = baseline or baseline_variant()
    rows = []
    for pair in cell_pairs(frame, base):
        for metric in metrics:
            stats = compare_cells(pair.runs, pair.base, metric, level)
            if pair.note:  # no baseline cell: every seed of the cell is unpaired, and the rule says why
                stats["note"] = pair.note
            rows.append({**_pair_ids(pair), "baseline": base, "metric": metric, **stats})
    out = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    return sort_cells(out, first=["layers", "norm"]) if not out.empty else out


def paired_curves(
    tidy: pd.DataFrame,
    runs: Sequence[str] | None = None,
    metric: str = "val/loss",
    baseline: str | None = None,
    level: float = LEVEL,
) -> pd.DataFrame:
    """The paired difference over training: per non-baseline cell and logged step, variant minus the baseline cell
    pairing.py's rule picks (as in paired_differences; LR_COLUMNS say which) of ``metric`` over the seeds both
    sides logged at that step, with t_interval's keys (``n``, ``mean``, ``ci_low``, ...). ``runs``: the run names to
    use (the complete ones, as in the tables); default every run of ``tidy``. A cell without a baseline cell has no
    rows. A seed present twice in a cell is left out, as in paired_differences."""
    columns = [*GROUP_COLUMNS, *VARIANT_COLUMNS, *LR_COLUMNS, "baseline", "metric", "step", "tokens", "seeds", "n"]
    columns += ["mean", "std", "level", "t", "ci_low", "ci_high"]
    if tidy.empty or metric not in tidy or "pair_group" not in tidy:
        return pd.DataFrame(columns=columns)
    rows = tidy[tidy[metric].notna() & tidy["seed"].notna()]
    if runs is not None:
        rows = rows[rows["run"].isin(set(runs))]
    base = baseline or baseline_variant()
    out = []
    for pair in cell_pairs(rows, base):
        if pair.base.empty:
            continue
        cell, ids = pair.runs, _pair_ids(pair)
        tokens = cell.groupby("step")["tokens"].first() if "tokens" in cell else pd.Series(dtype=float)
        both = pd.concat(
            {"v": _by_seed_and_step(cell, metric), "b": _by_seed_and_step(pair.base, metric)}, axis=1, join="inner"
        )
        for step, at in both.groupby(level="step"):
            seeds = sorted(int(s) for s in at.index.get_level_values("seed"))
            stats = t_interval((at["v"] - at["b"]).tolist(), level)
            out.append({**ids, "baseline": base, "metric": metric, "step": step, "tokens": tokens.get(step),
                        "seeds": ", ".join(map(str, seeds)), "level": level, **stats})
    frame = pd.DataFrame(out, columns=columns) if out else pd.DataFrame(columns=columns)
    return sort_cells(frame, first=["layers", "norm"]) if not frame.empty else frame


def _by_seed_and_step(runs: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` indexed by (seed, step); a (seed, step) logged by more than one run is dropped."""
    values = runs.assign(seed=runs["seed"].astype(int)).set_index(["seed", "step"])[metric]
    return values[~values.index.duplicated(keep=False)]


def seed_spread(summary: pd.DataFrame, target: float = SEED_STD_TARGET, metric: str = "val/loss") -> pd.DataFrame:
    """Per cell: seeds, mean and std of the final ``metric`` and whether the std is within ``target`` (None with
    one seed), with the seeds whose run did not train (``tidy.TRAINED_MIN_DROP``)."""
    if target <= 0:
        raise ValueError(f"target={target!r} is out of range; allowed: > 0 (nats)")
    frame, _ = with_derived(summary)
    columns = [*GROUP_COLUMNS, *VARIANT_COLUMNS, "seeds", "mean", "std", "target", "within_target", "not_trained"]
    if frame.empty or metric not in frame:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, runs in frame.groupby("cell", sort=False):
        values = runs[metric].dropna()
        std = float(values.std(ddof=1)) if len(values) >= 2 else np.nan
        untrained = runs.loc[runs["trained"].eq(False), "seed"] if "trained" in runs else pd.Series(dtype=float)
        rows.append(
            {
                **_group_ids(runs),
                **{c: runs[c].iloc[0] for c in VARIANT_COLUMNS if c in runs},
                "seeds": len(values),
                "mean": float(values.mean()) if len(values) else np.nan,
                "std": std,
                "target": target,
                "within_target": None if math.isnan(std) else bool(std <= target),
                "not_trained": ", ".join(str(int(s)) for s in sorted(untrained.dropna())),
            }
        )
    return sort_cells(pd.DataFrame(rows, columns=columns), first=["layers", "norm"])


def format_delta(value: float, metric: str) -> str:
    """Signed difference: 4 decimals for losses (nats), 2 for accuracies (percentage points)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.4f}" if metric.endswith("loss") else f"{value:+.2f}"


def format_p(p: float) -> str:
    """A p-value to 2 significant digits (``0.010``, ``0.41``, ``3.2e-05``); ``–`` without a test."""
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.2g}" if p < 1e-3 else f"{p:.2f}" if p >= 0.1 else f"{p:.3f}"


def format_interval(row: pd.Series | dict, metric: str) -> str:
    """``[-0.0746, +0.0013]``, or why there is none (``n=1``, ``no pairs``)."""
    n = int(row["n"])
    if n == 0:
        return "no pairs"
    if n == 1:
        return "n=1"
    return f"[{format_delta(row['ci_low'], metric)}, {format_delta(row['ci_high'], metric)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a Markdown table (cells rendered with str; None and NaN as '–')."""

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return "yes" if v is True else "no" if v is False else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _shown_group_columns(frame: pd.DataFrame) -> list[str]:
    # Heads only when they vary; the config label only when any row has one.
    cols = [c for c in ("layers", "width", "norm") if c in frame]
    cols += [c for c in ("n_heads", "n_kv_heads") if c in frame and frame[c].nunique(dropna=False) > 1]
    if "config" in frame and frame["config"].fillna("").astype(bool).any():
        cols.append("config")
    return cols


def pair_lrs_text(row: pd.Series | dict) -> str:
    """A paired row's peak lrs for a reader: ``0.0045 vs 0.003`` (each at its own lr), ``0.003 (both)`` (one lr
    shared), ``0.0045 vs –`` (no baseline cell); ``–`` for a row without lr columns (an earlier paired table)."""
    how = row.get("lr_pairing")
    lr, base = row.get("lr", math.nan), row.get("baseline_lr", math.nan)
    if how is None or (isinstance(how, float) and math.isnan(how)):
        how = ""
    if how == SAME_LR:
        return f"{lr_text(lr)} (both)"
    if how == "" and pd.isna(lr):
        return "–"
    return f"{lr_text(lr)} vs {lr_text(base)}"


def shows_lrs(frame: pd.DataFrame) -> bool:
    """Whether a paired table shows its lr column: where some row knows its lr (runs without trainer.lr, earlier
    tables: none)."""
    return "lr" in frame and frame["lr"].notna().any()


def level_text(frame: pd.DataFrame) -> str:
    """``95%``: the interval level of a paired frame (its ``level`` column; LEVEL when it has none)."""
    levels = frame["level"].dropna() if "level" in frame else pd.Series(dtype=float)
    return f"{levels.iloc[0] if len(levels) else LEVEL:.0%}"


def paired_markdown(
    paired: pd.DataFrame, metrics: Sequence[str] | None = None, reference: Reference | None = None
) -> str:
    """The paired table in Markdown, one row per cell and metric; with a ``reference`` (reference.Reference) that
    annotated ``paired``, its Δ as a column where any row has one."""
    rows_frame = paired if metrics is None else paired[paired["metric"].isin(metrics)]
    if rows_frame.empty:
        return "_No non-baseline cell among the complete runs._\n"
    ids = _shown_group_columns(rows_frame)
    lrs = shows_lrs(rows_frame)
    header = [*ids, *([LRS_HEADER] if lrs else []), "variant − baseline", "params", "metric", "pairs", "seeds"]
    header += ["Δ mean", "Δ std"]
    header += [f"{level_text(paired)} CI", "p (uncorrected)"]
    column = reference.delta_column if reference is not None else None
    shown = column is not None and column in rows_frame and rows_frame[column].notna().any()
    header += [*([column] if shown else []), "unpaired seeds", "not trained", "note"]
    body = []
    for _, r in rows_frame.iterrows():
        metric = r["metric"]
        std = "–" if pd.isna(r["std"]) else f"{r['std']:.4f}" if metric.endswith("loss") else f"{r['std']:.2f}"
        cells = [*(r[c] for c in ids), *([pair_lrs_text(r)] if lrs else [])]
        cells += [f"{r['variant']} − {r['baseline']}", params_text(r.get("params_change"))]
        cells += [metric, int(r["n"]), r["seeds"] or "–"]
        cells += [format_delta(r["mean"], metric), std, format_interval(r, metric), format_p(r.get("p"))]
        if shown:
            cells.append(reference.delta_text(r, metric))
        cells += [r["unpaired"] or "", r["not_trained"] or "", r["note"] or ""]
        body.append(cells)
    return "\n".join(markdown_table(header, body)) + "\n"


def spread_markdown(spread: pd.DataFrame) -> str:
    """The seed-spread table in Markdown."""
    if spread.empty:
        return "_No complete run with a validation loss._\n"
    ids = _shown_group_columns(spread)
    target = float(spread["target"].iloc[0])
    header = [*ids, "variant", "seeds", "val loss", "std", f"std ≤ {target:g}", "not trained (seeds)"]
    body = []
    for _, r in spread.iterrows():
        within = "n=1" if pd.isna(r["within_target"]) else bool(r["within_target"])
        std = "–" if pd.isna(r["std"]) else f"{r['std']:.4f}"
        mean = "–" if pd.isna(r["mean"]) else f"{r['mean']:.4f}"
        body.append([*(r[c] for c in ids), r["variant"], int(r["seeds"]), mean, std, within, r["not_trained"] or ""])
    return "\n".join(markdown_table(header, body)) + "\n"
