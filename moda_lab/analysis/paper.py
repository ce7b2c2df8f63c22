"""The paper's Table 6 (arXiv 2603.15619) and a verdict per ordering of it from our paired seed differences.

Each ordering "better < worse" at one (layers, norm) is a paired t-test over seeds; the orderings one analysis
tests form one family, Holm-corrected (significance.holm). A verdict uses only the words of VERDICTS: "resolved"
needs the Holm-corrected p below ALPHA; "untested" is an ordering the setup could not test (not run, fewer than 2
pairs, a run that did not train, or an arm marked untested: UntestedArm) and is left out of the family.

The numbers are copied here (not read from ../shared) so the analysis runs anywhere the package does.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pandas as pd

from moda_lab.analysis.records import variant_label
from moda_lab.analysis.significance import (
    LEVEL,
    PAIRS_CAP,
    compare_cells,
    format_delta,
    format_interval,
    format_p,
    holm,
    level_text,
    markdown_table,
    params_text,
)
from moda_lab.analysis.tables import with_derived
from moda_lab.errors import UsageError


@dataclass(frozen=True)
class PaperRow:
    layers: int
    norm: str  # the paper's label: "pre" or "post"
    variant: str  # our variant label (records.variant_label)
    params_m: float
    val_loss: float


OLMO2 = variant_label("residual")  # the paper's OLMo2 baseline: the deep residual stream
MODA_DEPTH_KV = variant_label("moda", depth_kv=True)  # "MoDA depth KV": model=moda_depth_kv
MODA_FFN_KV = variant_label("moda", depth_kv=True, ffn_kv=True)  # "MoDA + FFN KV": model=moda (the default)
PAPER_VARIANT_NAMES = {OLMO2: "OLMo2", MODA_DEPTH_KV: "MoDA depth KV", MODA_FFN_KV: "MoDA + FFN KV"}

# arXiv 2603.15619, Table 6: norm placement x depth at width 384, 6 query / 2 KV heads; validation loss on
# FineWeb-Edu (nats/token) after the paper's own token budget.
PAPER_TABLE6_SOURCE = "arXiv 2603.15619, Table 6 (width 384, 6 query / 2 KV heads, FineWeb-Edu validation loss)"
PAPER_TABLE6_SHAPE = {"width": 384, "n_heads": 6, "n_kv_heads": 2}
PAPER_TABLE6: tuple[PaperRow, ...] = (
    PaperRow(48, "pre", OLMO2, 123.38, 3.3800),
    PaperRow(48, "post", OLMO2, 123.38, 3.4062),
    PaperRow(48, "pre", MODA_DEPTH_KV, 123.38, 3.3759),
    PaperRow(48, "post", MODA_DEPTH_KV, 123.38, 3.3653),
    PaperRow(48, "pre", MODA_FFN_KV, 128.11, 3.3656),
    PaperRow(48, "post", MODA_FFN_KV, 128.11, 3.3484),
    PaperRow(24, "post", OLMO2, 71.35, 3.4740),
    PaperRow(24, "post", MODA_DEPTH_KV, 71.35, 3.4537),
    PaperRow(24, "post", MODA_FFN_KV, 73.72, 3.4338),
)
# The paper's "post" does not say whether it is classic norm(x + f(x)) or OLMo2's reordered x + norm(f(x)):
# both of our placements are checked against its post rows.
PAPER_NORMS: dict[str, tuple[str, ...]] = {"pre": ("pre",), "post": ("post", "reordered")}


@dataclass(frozen=True)
class Ordering:
    """The paper's claim ``better < worse`` in val loss at one (layers, norm); ``paper_delta`` = better - worse."""

    layers: int
    norm: str
    better: str
    worse: str
    paper_delta: float

    @property
    def text(self) -> str:
        return f"{self.better} < {self.worse}"


def paper_orderings() -> list[Ordering]:
    """Every pair of Table 6 rows at the same (layers, norm), lower loss first, in the paper's row order."""
    out = []
    blocks: dict[tuple[int, str], list[PaperRow]] = {}
    for row in PAPER_TABLE6:
        blocks.setdefault((row.layers, row.norm), []).append(row)
    for (layers, norm), rows in blocks.items():
        for a, b in itertools.combinations(rows, 2):
            better, worse = (a, b) if a.val_loss < b.val_loss else (b, a)
            out.append(
                Ordering(layers, norm, better.variant, worse.variant, round(better.val_loss - worse.val_loss, 6))
            )
    return out


def paper_norm(norm: str) -> str | None:
    """The paper's label for one of our norm placements (None when the paper has none)."""
    return next((paper for paper, ours in PAPER_NORMS.items() if norm in ours), None)


def paper_row(layers: object, norm: object, variant: object) -> PaperRow | None:
    label = paper_norm(str(norm))
    return next((r for r in PAPER_TABLE6 if (r.layers, r.norm, r.variant) == (layers, label, variant)), None)


def paper_depth(layers: object, norm: object) -> int | None:
    """The paper's depth our (layers, norm) is compared with: ``layers`` when Table 6 has rows of that depth under
    the norm, else its nearest depth there (a tie: the shallower); None when the paper has no row under the norm."""
    label = paper_norm(str(norm))
    depths = {r.layers for r in PAPER_TABLE6 if r.norm == label}
    if not depths or layers is None or pd.isna(layers):
        return None
    return min(depths, key=lambda d: (abs(d - int(layers)), d))


def matches_paper_shape(row: pd.Series | dict) -> bool:
    """Whether a cell has Table 6's width and heads (layers and norm are matched per row)."""
    return all(k in row and row[k] == v for k, v in PAPER_TABLE6_SHAPE.items())


def with_paper_delta(paired: pd.DataFrame) -> pd.DataFrame:
    """``paired`` (significance.paired_differences) with ``paper Δ``: the paper's val loss of the row's variant minus
    its baseline's, on the val/loss rows of cells in Table 6's shape (NaN elsewhere), at ``paper layers``
    (paper_depth: our depth, or the paper's nearest under that norm, as check_orderings compares them)."""
    out = paired.copy()
    deltas, depths = [], []
    for _, row in out.iterrows():
        depth = paper_depth(row.get("layers"), row.get("norm"))
        a = paper_row(depth, row.get("norm"), row.get("variant"))
        b = paper_row(depth, row.get("norm"), row.get("baseline"))
        ok = row.get("metric") == "val/loss" and a and b and matches_paper_shape(row)
        deltas.append(round(a.val_loss - b.val_loss, 6) if ok else math.nan)
        depths.append(depth if ok else math.nan)
    out["paper Δ"] = deltas
    out["paper layers"] = depths
    return out


# A verdict is one of these and nothing else. "resolved": the Holm-corrected p of the ordering's paired t-test is
# below ALPHA; the sign is our mean's against the paper's (better - worse < 0 is the paper's sign).
ALPHA = 0.05
RESOLVED_PAPER_SIGN = "resolved, paper's sign"
RESOLVED_OPPOSITE_SIGN = "resolved, opposite sign"
SAME_SIGN_NOT_RESOLVED = "same sign, not resolved"
OPPOSITE_SIGN_NOT_RESOLVED = "opposite sign, not resolved"
UNTESTED = "untested"
VERDICTS = (RESOLVED_PAPER_SIGN, RESOLVED_OPPOSITE_SIGN, SAME_SIGN_NOT_RESOLVED, OPPOSITE_SIGN_NOT_RESOLVED, UNTESTED)


@dataclass(frozen=True)
class UntestedArm:
    """An arm the setup could not test, e.g. a variant whose lr is known to be under-tuned under a norm: every
    ordering with ``variant`` (every variant when None) under our ``norm`` is "untested". Written ``NORM`` or
    ``NORM/VARIANT`` (``post/moda +ffn_kv``; the analysis command's ``untested=``, comma-separated)."""

    norm: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> UntestedArm:
        """``post`` or ``post/moda +ffn_kv``; UsageError (a ValueError) naming the allowed norms or variants."""
        norm, _, variant = (part.strip() for part in text.partition("/"))
        norms = sorted({n for ours in PAPER_NORMS.values() for n in ours})
        if norm not in norms:
            raise UsageError(f"untested={text!r}: norm {norm!r} is not allowed; allowed: {', '.join(norms)}")
        if variant and variant not in PAPER_VARIANT_NAMES:
            allowed = ", ".join(PAPER_VARIANT_NAMES)
            raise UsageError(f"untested={text!r}: variant {variant!r} is not allowed; allowed: {allowed}")
        return cls(norm, variant or None)

    @property
    def text(self) -> str:
        return self.norm if self.variant is None else f"{self.norm}/{self.variant}"

    def covers(self, norm: str, order: Ordering) -> bool:
        return norm == self.norm and (self.variant is None or self.variant in (order.better, order.worse))


def untested_because(stats: dict, norm: str, order: Ordering, untested: tuple[UntestedArm, ...]) -> str:
    """Why the setup could not test an ordering on a pair group of ours (empty: it could)."""
    marked = [arm.text for arm in untested if arm.covers(norm, order)]
    if marked:
        return f"marked untested ({', '.join(marked)})"
    if stats["not_trained"]:  # a run stuck on a plateau makes any gap an optimisation failure, not the effect
        return "a run did not train"
    n = int(stats["n"])
    return "no paired seeds" if n == 0 else "1 pair: no test" if n == 1 else ""


def verdict(mean: float, p_holm: float, why_untested: str = "", alpha: float = ALPHA) -> str:
    """One of VERDICTS for a paired ``better - worse`` difference with its Holm-corrected p-value."""
    if why_untested or math.isnan(p_holm):
        return UNTESTED
    same = mean < 0
    if p_holm < alpha:
        return RESOLVED_PAPER_SIGN if same else RESOLVED_OPPOSITE_SIGN
    return SAME_SIGN_NOT_RESOLVED if same else OPPOSITE_SIGN_NOT_RESOLVED


def check_orderings(
    summary: pd.DataFrame, level: float = LEVEL, untested: tuple[UntestedArm, ...] = ()
) -> pd.DataFrame:
    """One row per paper ordering and matching pair group of ours (same layers, Table 6's width and heads, a norm of
    PAPER_NORMS): the paired val-loss difference better - worse with its interval and t-test ``p``, ``p_holm``
    (Holm over every row tested here: ``family`` rows), the paper's Δ, the parameter change of better against
    worse, and the verdict (VERDICTS; ``untested_because`` says why where untested). An ordering no cell of ours
    matches gets one row, untested because "not run".

    A depth of ours that the paper did not run under that norm (24-layer pre-norm: the paper has 48 only) is checked
    against the orderings of the paper's nearest depth under the same norm; ``paper layers`` says which."""
    frame, _ = with_derived(summary)
    columns = ["layers", "paper layers", "paper norm", "norm", "config", "ordering", "paper Δ", "n", "seeds", "mean"]
    columns += ["std", "level", "ci_low", "ci_high", "p", "p_holm", "family", "excludes_0", "pairs_needed"]
    columns += ["params_change", "unpaired", "not_trained", "verdict", "untested_because"]
    shape = frame.apply(matches_paper_shape, axis=1) if not frame.empty else pd.Series(dtype=bool)
    frame = frame[shape] if not frame.empty else frame
    rows = []

    def ids(order: Ordering, layers: int) -> dict[str, object]:
        return {"layers": layers, "paper layers": order.layers, "paper norm": order.norm, "ordering": order.text,
                "paper Δ": order.paper_delta}

    def check(order: Ordering, layers: int, norm: str) -> bool:
        """Append a row per pair group of our (layers, norm) cells that has both variants; whether any had."""
        cells = frame[(frame["layers"] == layers) & (frame["norm"] == norm)] if not frame.empty else frame
        found = False
        for _, group in cells.groupby("pair_group", sort=False) if not cells.empty else []:
            better, worse = group[group["variant"] == order.better], group[group["variant"] == order.worse]
            if better.empty or worse.empty:
                continue
            stats = compare_cells(better, worse, "val/loss", level, names=(order.better, order.worse))
            config = group["cell_label"].iloc[0] or ""
            rows.append({**ids(order, layers), "norm": norm, "config": config, **stats,
                         "untested_because": untested_because(stats, norm, order, tuple(untested))})
            found = True
        return found

    orderings = paper_orderings()
    for order in orderings:
        # A list, not a generator: every norm matching the paper's label is checked (post and reordered).
        if not any([check(order, order.layers, norm) for norm in PAPER_NORMS[order.norm]]):
            rows.append({**ids(order, order.layers), "norm": "–", "config": "", "n": 0, "p": math.nan,
                         "untested_because": "not run"})
    ours = frame[["layers", "norm"]].drop_duplicates().itertuples(index=False) if not frame.empty else []
    for layers, norm in sorted(ours, key=lambda t: (-t[0], str(t[1]))):
        depth = paper_depth(layers, norm)
        if depth is None or depth == layers:  # no paper row under the norm, or checked above at our own depth
            continue
        for order in (o for o in orderings if (o.norm, o.layers) == (paper_norm(str(norm)), depth)):
            check(order, int(layers), str(norm))
    out = pd.DataFrame(rows, columns=columns)
    # The family: every ordering tested in this analysis (an untested one has no p in it).
    tested = out["untested_because"].eq("") & out["p"].notna()
    out["p_holm"] = holm(out["p"].where(tested, math.nan).astype(float).tolist())
    out["family"] = int(tested.sum())
    out["verdict"] = [verdict(m, p, why) for m, p, why in zip(out["mean"], out["p_holm"], out["untested_because"])]
    return out


def orderings_markdown(orderings: pd.DataFrame) -> str:
    """The ordering check in Markdown: paper Δ next to ours, the interval, p before and after Holm, the verdict."""
    show_config = orderings["config"].fillna("").astype(bool).any()
    show_depth = (orderings["paper layers"] != orderings["layers"]).any()  # a depth the paper did not run
    family = int(orderings["family"].max()) if len(orderings) else 0
    header = ["layers", *(["paper layers"] if show_depth else []), "paper norm", "our norm"]
    header += ["config"] if show_config else []
    header += ["paper ordering", "paper Δ", "our Δ mean", "params", "pairs", f"{level_text(orderings)} CI"]
    header += ["p", f"Holm p ({family} tested)", "verdict", "untested because", "pairs to resolve", "unpaired seeds"]
    header.append("not trained")
    body = []
    for _, r in orderings.iterrows():
        run = r["untested_because"] != "not run"
        cells = [r["layers"], *([r["paper layers"]] if show_depth else []), r["paper norm"], r["norm"]]
        cells += [r["config"]] if show_config else []
        cells += [r["ordering"], format_delta(r["paper Δ"], "val/loss")]
        cells += [format_delta(r["mean"], "val/loss") if run else "–", params_text(r["params_change"]) if run else "–"]
        cells += [int(r["n"]) if run else "–", format_interval(r, "val/loss") if run else "–"]
        cells += [format_p(r["p"]), format_p(r["p_holm"]), r["verdict"], r["untested_because"]]
        cells += [_pairs_text(r) if run else "–"]
        cells += [r["unpaired"] if run and r["unpaired"] else "", r["not_trained"] if run and r["not_trained"] else ""]
        body.append(cells)
    return "\n".join(markdown_table(header, body)) + "\n"


def _pairs_text(row: pd.Series) -> str:
    """pairs_to_resolve of an ordering's row: the count, ``> cap`` past it, ``–`` without an interval yet."""
    if int(row["n"]) < 2:
        return "–"
    needed = row.get("pairs_needed")
    return f"> {PAIRS_CAP}" if needed is None or pd.isna(needed) else str(int(needed))
