"""A verdict per ordering of the paper's Table 6 (table6.paper_orderings) from our paired seed differences.

Each ordering "better < worse" at one (layers, norm) is a paired t-test over seeds; the orderings one analysis
tests form one family, Holm-corrected (significance.holm). A verdict uses only the words of VERDICTS
(reference.verdict_words with the paper's sign): "resolved" needs the Holm-corrected p below ALPHA; "untested" is
an ordering the setup could not test (not run, fewer than 2 pairs, a run that did not train, or an arm marked
untested: UntestedArm). The family is every ordering with a p-value, untested ones included: an arm marked
untested after its runs were seen keeps its place, so the marking never makes another ordering "resolved".

The two arms pair as a variant and the baseline do (moda_lab.analysis.pairing), the ordering's worse arm in the
baseline's place (OLMo2 wherever it is in an ordering: it is the worse arm of each): the worse arm at the better's
lr, else at its one lr, else none ("untested": the worse arm at several lrs, none the better's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from moda_lab.analysis.pairing import NO_BASELINE, cell_pairs, same_lr
from moda_lab.analysis.reference import verdict as generic_verdict
from moda_lab.analysis.reference import verdict_words
from moda_lab.analysis.significance import (
    ALPHA,
    LEVEL,
    LR_COLUMNS,
    PAIRS_CAP,
    compare_cells,
    format_delta,
    format_interval,
    format_p,
    holm,
    level_text,
    markdown_table,
    pair_lrs_text,
    params_text,
    shows_lrs,
)
from moda_lab.analysis.tables import with_derived
from moda_lab.errors import UsageError
from moda_paper.table6 import (
    PAPER_NORMS,
    PAPER_VARIANT_NAMES,
    Ordering,
    matches_paper_shape,
    paper_depth,
    paper_norm,
    paper_orderings,
)

# "resolved" where the Holm-corrected p is below ALPHA; the sign is our mean's against the paper's
# (better - worse < 0).
EXPECTED = "paper's"
VERDICTS = verdict_words(EXPECTED)


@dataclass(frozen=True)
class UntestedArm:
    """An arm the setup could not test, e.g. a variant whose lr is known to be under-tuned under a norm: every
    ordering with ``variant`` (every variant when None) under our ``norm`` is "untested"; with ``lr``, only where
    one of the ordering's arms ran at that peak lr (an under-tuned lr beside tuned rows of the same norm). Written
    ``NORM``, ``NORM/VARIANT``, ``NORM@LR`` or ``NORM/VARIANT@LR`` (``post/moda +ffn_kv``, ``post@3.75e-4``; the
    analysis command's ``untested=``, comma-separated)."""

    norm: str
    variant: str | None = None
    lr: float | None = None

    @classmethod
    def parse(cls, text: str) -> UntestedArm:
        """``post``, ``post/moda +ffn_kv`` or either with ``@LR``; UsageError (a ValueError) naming the allowed norms
        or variants, or the lr that is not a positive number."""
        arm, _, lr_text = (part.strip() for part in text.partition("@"))
        norm, _, variant = (part.strip() for part in arm.partition("/"))
        norms = sorted({n for ours in PAPER_NORMS.values() for n in ours})
        if norm not in norms:
            raise UsageError(f"untested={text!r}: norm {norm!r} is not allowed; allowed: {', '.join(norms)}")
        if variant and variant not in PAPER_VARIANT_NAMES:
            allowed = ", ".join(PAPER_VARIANT_NAMES)
            raise UsageError(f"untested={text!r}: variant {variant!r} is not allowed; allowed: {allowed}")
        lr = None
        if lr_text:
            try:
                lr = float(lr_text)
            except ValueError:
                lr = math.nan
            if not lr > 0 or math.isinf(lr):
                raise UsageError(f"untested={text!r}: lr {lr_text!r} is not allowed; allowed: a positive number")
        return cls(norm, variant or None, lr)

    @property
    def text(self) -> str:
        arm = self.norm if self.variant is None else f"{self.norm}/{self.variant}"
        return arm if self.lr is None else f"{arm}@{self.lr:g}"

    def covers(self, norm: str, order: Ordering, lrs: tuple[float, ...] = ()) -> bool:
        """Whether this arm is in ``order`` under ``norm`` whose arms ran at ``lrs`` (the better's, the worse's)."""
        if norm != self.norm or (self.variant is not None and self.variant not in (order.better, order.worse)):
            return False
        return self.lr is None or any(same_lr(self.lr, lr) for lr in lrs)


def untested_because(
    stats: dict, norm: str, order: Ordering, untested: tuple[UntestedArm, ...], no_pair: str = "",
    lrs: tuple[float, ...] = (),
) -> str:
    """Why the setup could not test an ordering on a pair of our cells (empty: it could); ``no_pair``: why the
    better arm's cell has no worse-arm cell to pair with (pairing.CellPair.note); ``lrs``: the arms' peak lrs."""
    marked = [arm.text for arm in untested if arm.covers(norm, order, lrs)]
    if marked:
        return f"marked untested ({', '.join(marked)})"
    if no_pair:
        return no_pair
    if stats["not_trained"]:  # a run stuck on a plateau makes any gap an optimisation failure, not the effect
        return "a run did not train"
    n = int(stats["n"])
    return "no paired seeds" if n == 0 else "1 pair: no test" if n == 1 else ""


def verdict(mean: float, p_holm: float, why_untested: str = "", alpha: float = ALPHA) -> str:
    """One of VERDICTS for a paired ``better - worse`` difference with its Holm-corrected p-value (the paper's sign:
    negative)."""
    return generic_verdict(mean, p_holm, -1, why_untested, alpha, expected=EXPECTED)


def check_orderings(
    summary: pd.DataFrame, level: float = LEVEL, untested: tuple[UntestedArm, ...] = ()
) -> pd.DataFrame:
    """One row per paper ordering and cell of its better arm whose pair group has its worse arm (same layers,
    Table 6's width and heads, a norm of PAPER_NORMS; the arms paired as the module docstring says): the paired
    val-loss difference better - worse with its interval and t-test ``p``, ``p_holm`` (Holm over every row with a
    p here: ``family`` rows), the paper's Δ, the parameter change of better against worse, the arms' lrs
    (LR_COLUMNS: ``lr`` the better arm's, ``baseline_lr`` the worse arm's) and the verdict (VERDICTS;
    ``untested_because`` says why where untested). An ordering no cell of ours matches gets one row, untested
    because "not run".

    A depth of ours that the paper did not run under that norm (24-layer pre-norm: the paper has 48 only) is checked
    against the orderings of the paper's nearest depth under the same norm; ``paper layers`` says which."""
    frame, _ = with_derived(summary)
    columns = ["layers", "paper layers", "paper norm", "norm", "config", *LR_COLUMNS, "ordering", "paper Δ", "n"]
    columns += ["seeds", "mean"]
    columns += ["std", "level", "ci_low", "ci_high", "p", "p_holm", "family", "excludes_0", "pairs_needed"]
    columns += ["params_change", "unpaired", "not_trained", "verdict", "untested_because"]
    shape = frame.apply(matches_paper_shape, axis=1) if not frame.empty else pd.Series(dtype=bool)
    frame = frame[shape] if not frame.empty else frame
    rows = []

    def ids(order: Ordering, layers: int) -> dict[str, object]:
        return {
            "layers": layers,
            "paper layers": order.layers,
            "paper norm": order.norm,
            "ordering": order.text,
            "paper Δ": order.paper_delta,
        }

    def check(order: Ordering, layers: int, norm: str) -> bool:
        """Append a row per cell of the better arm among our (layers, norm) cells whose pair group has the worse
        arm (paired as pairing.cell_pairs pairs them); whether any had."""
        cells = frame[(frame["layers"] == layers) & (frame["norm"] == norm)] if not frame.empty else frame
        found = False
        for pair in cell_pairs(cells, order.worse, variant=order.better, name=order.worse):
            if pair.note == NO_BASELINE:  # the worse arm was not run beside this one
                continue
            stats = compare_cells(pair.runs, pair.base, "val/loss", level, names=(order.better, order.worse))
            rows.append(
                {
                    **ids(order, layers),
                    "norm": norm,
                    "config": pair.runs["cell_label"].iloc[0] or "",
                    **pair.lr_columns(),
                    **stats,
                    "untested_because": untested_because(stats, norm, order, tuple(untested), pair.note,
                                                         (pair.lr, pair.baseline_lr)),
                }
            )
            found = True
        return found

    orderings = paper_orderings()
    for order in orderings:
        # A list, not a generator: every norm matching the paper's label is checked (post and reordered).
        if not any([check(order, order.layers, norm) for norm in PAPER_NORMS[order.norm]]):
            rows.append(
                {
                    **ids(order, order.layers),
                    "norm": "–",
                    "config": "",
                    "n": 0,
                    "p": math.nan,
                    "untested_because": "not run",
                }
            )
    ours = frame[["layers", "norm"]].drop_duplicates().itertuples(index=False) if not frame.empty else []
    for layers, norm in sorted(ours, key=lambda t: (-t[0], str(t[1]))):
        depth = paper_depth(layers, norm)
        if depth is None or depth == layers:  # no paper row under the norm, or checked above at our own depth
            continue
        for order in (o for o in orderings if (o.norm, o.layers) == (paper_norm(str(norm)), depth)):
            check(order, int(layers), str(norm))
    out = pd.DataFrame(rows, columns=columns)
    # The family: every ordering with a p in this analysis. An untested one with a p (an arm marked untested, a run
    # that did not train) stays in it: marking an arm after its runs are seen must not shrink the others' correction.
    tested = out["p"].notna()
    out["p_holm"] = holm(out["p"].astype(float).tolist())
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
    show_lrs = shows_lrs(orderings)
    header += ["lr: better vs worse"] if show_lrs else []
    header += ["paper ordering", "paper Δ", "our Δ mean", "params", "pairs", f"{level_text(orderings)} CI"]
    header += ["p", f"Holm p ({family} tested)", "verdict", "untested because", "pairs to resolve", "unpaired seeds"]
    header.append("not trained")
    body = []
    for _, r in orderings.iterrows():
        run = r["untested_because"] != "not run"
        cells = [r["layers"], *([r["paper layers"]] if show_depth else []), r["paper norm"], r["norm"]]
        cells += [r["config"]] if show_config else []
        cells += [pair_lrs_text(r) if run else "–"] if show_lrs else []
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
