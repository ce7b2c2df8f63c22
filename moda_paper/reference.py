"""The paper's Table 6 as the analysis' reference (moda_lab.analysis.reference.Reference): its Δ beside our paired
rows, its orderings checked with a verdict each, their table and the report's section on them.

``python -m moda_lab.analysis`` uses it unless given ``reference=none``; its option ``untested=`` marks arms the setup
could not test (UntestedArm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from moda_lab.analysis.significance import ALPHA, LEVEL, format_delta
from moda_paper.orderings import VERDICTS, UntestedArm, check_orderings, orderings_markdown
from moda_paper.table6 import PAPER_NORMS, PAPER_TABLE6_SOURCE, paper_depth_shown, paper_orderings, with_paper_delta


def untested_arms(text: str) -> tuple[UntestedArm, ...]:
    """``untested=``'s comma-separated arms (UntestedArm.parse)."""
    return tuple(UntestedArm.parse(part) for part in text.split(",") if part.strip())


def gaps_text() -> str:
    """The range of the gaps between Table 6's rows (its orderings' Δ), in nats: ``0.004-0.058``."""
    gaps = sorted(abs(o.paper_delta) for o in paper_orderings())
    return f"{gaps[0]:.3f}-{gaps[-1]:.3f}"


@dataclass(frozen=True)
class Table6Reference:
    """Table 6 of arXiv 2603.15619; ``untested``: arms whose orderings are "untested" (UntestedArm)."""

    untested: tuple[UntestedArm, ...] = ()
    delta_column: ClassVar[str] = "paper Δ"  # with_paper_delta's column
    corrected_note: ClassVar[str] = "the orderings below give Holm-corrected ones"
    options: ClassVar[dict[str, str]] = {
        "untested": 'arms the setup could not test, comma-separated NORM or NORM/VARIANT, either with @LR for the '
        'arms at that peak lr only ("post/moda +ffn_kv", "post@3.75e-4")'
    }

    @property
    def spread_note(self) -> str:
        return f"the paper's size ({gaps_text()} nats in Table 6)"

    def configure(self, values: Mapping[str, str]) -> Table6Reference:
        """``untested=`` parsed; UsageError naming the norm or variant it does not allow."""
        return Table6Reference(untested_arms(values["untested"])) if "untested" in values else self

    def annotate(self, paired: pd.DataFrame) -> pd.DataFrame:
        return with_paper_delta(paired)

    def delta_text(self, row: pd.Series, metric: str) -> str:
        """A row's ``paper Δ``, naming the paper's depth where it is not the row's (``-0.0041 at 48 L``)."""
        text = format_delta(row[self.delta_column], metric)
        depth = paper_depth_shown(row)
        return text if depth is None else f"{text} at {depth} L"

    def marker(self, row: pd.Series, over_training: bool) -> tuple[str, bool]:
        """``paper (Table 6)``, ``paper's final Δ at 48 layers (its nearest depth)``, ...; False at a nearest depth."""
        what = "paper's final Δ" if over_training else "paper"
        depth = paper_depth_shown(row)
        return (
            (f"{what} (Table 6)", True) if depth is None else (f"{what} at {depth} layers (its nearest depth)", False)
        )

    def check(self, summary: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
        return check_orderings(summary, level=level, untested=self.untested)

    def tables(self, claims: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
        return [("paper_table6_orderings", claims, orderings_markdown(claims))]

    def report_lines(self, claims: pd.DataFrame, level: str) -> list[str]:
        lines = ["### The paper's Table 6 orderings", ""]
        lines += [
            f"Paper: {PAPER_TABLE6_SOURCE}, at the paper's token budget. Ours: the cells with the same layers, width, "
            "heads and norm (our corpus and token budget differ, so compare signs, not sizes). The paper's `post` is "
            f"matched by our {' and '.join(f'`{n}`' for n in PAPER_NORMS['post'])}. A depth the paper did not run "
            "under a norm is checked against the paper's nearest depth under it (`paper layers`). Δ = loss of the "
            f"first minus the second, with its {level} CI (uncorrected), the paired t-test's p and the Holm-corrected "
            "p over every ordering with a p-value in this analysis (one family, untested ones included). Verdicts: "
            f"{', '.join(f'*{v}*' for v in VERDICTS)}; *resolved* needs the Holm-corrected p < {ALPHA:g}, the sign is "
            "ours against the paper's, and *untested* is an ordering the setup could not test (not run, fewer than 2 "
            "pairs, a run that did not train, or an arm marked untested). Params: the first "
            "variant's parameter count against the second's. *Pairs to resolve*: the fewest seed pairs at which the "
            "uncorrected interval would exclude 0 (either side) if more seeds kept the measured mean and std of Δ: a "
            "planning estimate, not a prediction.",
            "",
        ]
        return lines + orderings_markdown(claims).splitlines()


TABLE6 = Table6Reference()
