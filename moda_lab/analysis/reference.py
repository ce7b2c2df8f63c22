"""Comparing a sweep with a published result, without knowing its numbers: the ``Reference`` hook and the verdict
vocabulary for a difference checked against an expected sign.

A reference (the MoDA paper's Table 6 is one: ``moda_paper``) lives outside this package. The analysis asks it for
four things: its Δ beside each paired row (``annotate``; shown by the paired table and figures), its own claims
checked on our runs (``check``: one row per claim), the tables and the report section that present them, and the
options it reads from the command line (``python -m moda_lab.analysis ... KEY=VALUE``). ``load_reference`` finds one
by module name, so this package imports none.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Protocol

import pandas as pd

from moda_lab.analysis.significance import ALPHA
from moda_lab.errors import UsageError

# A verdict on a difference with an expected sign is one of these five, ``expected`` naming whose sign it is
# (verdict_words("paper's")[0] == "resolved, paper's sign").
RESOLVED_OPPOSITE_SIGN = "resolved, opposite sign"
SAME_SIGN_NOT_RESOLVED = "same sign, not resolved"
OPPOSITE_SIGN_NOT_RESOLVED = "opposite sign, not resolved"
UNTESTED = "untested"


def verdict_words(expected: str = "expected") -> tuple[str, ...]:
    """The five verdicts, resolved with the expected sign first, untested last."""
    return (
        f"resolved, {expected} sign",
        RESOLVED_OPPOSITE_SIGN,
        SAME_SIGN_NOT_RESOLVED,
        OPPOSITE_SIGN_NOT_RESOLVED,
        UNTESTED,
    )


def verdict(
    mean: float,
    p_adjusted: float,
    expected_sign: int = -1,
    why_untested: str = "",
    alpha: float = ALPHA,
    expected: str = "expected",
) -> str:
    """One of verdict_words(expected) for a difference with mean ``mean`` and a family-corrected p-value (e.g.
    significance.holm): "resolved" where ``p_adjusted`` < ``alpha``, the sign being the mean's against
    ``expected_sign`` (-1 or +1); "untested" where the difference was not tested (``why_untested``, or no p)."""
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign={expected_sign!r} is not allowed; allowed: -1, 1")
    if why_untested or math.isnan(p_adjusted):
        return UNTESTED
    same = mean * expected_sign > 0
    if p_adjusted < alpha:
        return verdict_words(expected)[0] if same else RESOLVED_OPPOSITE_SIGN
    return SAME_SIGN_NOT_RESOLVED if same else OPPOSITE_SIGN_NOT_RESOLVED


class Reference(Protocol):
    """A published result the analysis shows beside ours. Strings: ``delta_column`` is the column ``annotate`` adds
    to the paired frames (NaN where the reference has no Δ), also the paired table's header for it;
    ``corrected_note`` completes the paired section's "uncorrected for the other rows (...)"; ``spread_note`` names
    the gaps the seed spread must resolve ("gaps of <spread_note>"); ``options``: command-line key -> help."""

    delta_column: str
    corrected_note: str
    spread_note: str
    options: Mapping[str, str]

    def configure(self, values: Mapping[str, str]) -> Reference:
        """This reference with its ``options`` set from the command line; UsageError naming a bad key's value."""

    def annotate(self, paired: pd.DataFrame) -> pd.DataFrame:
        """``paired`` (significance.paired_differences or paired_curves) with ``delta_column`` and any columns of
        its own added, the rows unchanged."""

    def delta_text(self, row: pd.Series, metric: str) -> str:
        """An annotated row's Δ in the paired table."""

    def marker(self, row: pd.Series, over_training: bool) -> tuple[str, bool]:
        """The legend entry of an annotated row's Δ in the paired figures (``over_training``: the figure over
        tokens), and whether the Δ is the reference's for the row's own cell (False: a nearby one, drawn grey)."""

    def check(self, summary: pd.DataFrame, level: float) -> pd.DataFrame:
        """The reference's claims checked on the run summary (tidy.run_summary), one row each."""

    def tables(self, claims: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
        """(file stem, frame, Markdown) of each table of ``claims`` written under ``tables/``."""

    def report_lines(self, claims: pd.DataFrame, level: str) -> list[str]:
        """The report's section on ``claims`` (``level``: the interval level as text, e.g. ``95%``)."""


NO_REFERENCE = "none"


def load_reference(spec: str) -> Reference | None:
    """The reference named ``spec``: ``MODULE`` (its ``REFERENCE``) or ``MODULE:NAME``; None for ``none``.
    UsageError naming ``reference=`` when the module or name is not there."""
    if spec == NO_REFERENCE:
        return None
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):  # a module it imports is missing: a bug
            raise
        raise UsageError(
            f"reference={spec!r}: no module {module_name!r}; allowed: MODULE or MODULE:NAME, or none"
        ) from None
    found = getattr(module, name or "REFERENCE", None)
    if found is None:
        raise UsageError(
            f"reference={spec!r}: {module_name} has no {name or 'REFERENCE'}; allowed: MODULE or MODULE:NAME, or none"
        )
    return found
