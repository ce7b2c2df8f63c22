"""Which baseline cell a variant's cell is compared with: the one rule behind significance.paired_differences,
significance.paired_curves, mcnemar.mcnemar_table and a reference's orderings (e.g. moda_paper's).

A pair group (records.pair_group_id) holds the runs whose configs are equal except for the depth-mixing variant
(``model.mixer.*``), the seed and the peak learning rate (records.LR_KEY); a cell is one variant at one peak lr
(records.cell_id). Within a pair group, a cell of a variant is paired with the baseline's cell

1. at the same peak lr, where the baseline ran at it (``same lr``: the variants share one lr). Same lr wins: a
   baseline that also ran at other lrs in the group does not change this;
2. else, where every baseline run of the group has one lr, that cell (``own lr``: each at the lr its own sweep
   chose, e.g. post-norm MoDA at 4.5e-3 against the residual at 3e-3, both with muon_wsd);
3. else none: the baseline ran at several lrs, none of them the variant's (an lr sweep), and the row says so
   (NO_LR_MATCH). Never the nearest lr: that would set a tuned arm against an untuned one without a word.

A group without a baseline run pairs nothing (NO_BASELINE). Runs without a peak lr (NaN, or a frame without the
``peak_lr`` column: runs.csv of earlier analyses) count as one lr, so they pair as they always did. The seeds of the
two cells then pair by seed (significance.pair_by_seed). The optimizer, schedule and every other key stay in the
pair group: an adamw row and a muon_wsd row of one folder are never compared.

Corrections for many tests are unchanged by the rule: each paired row is one test (p uncorrected); McNemar's Holm
family is the tasks of one pair of runs; a reference's family (moda_paper's orderings) is every row with a p-value,
a shared-lr and an own-lr comparison alike, while a row without a pair has none and is outside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

# The run summary's and the tidy table's column of the peak lr (tidy.py, from records.LR_KEY).
LR_COLUMN = "peak_lr"
# How a pair's lrs relate (the ``lr_pairing`` column of the paired tables).
SAME_LR = "same lr"
OWN_LR = "own lr"
NO_BASELINE = "no baseline run in this cell"


def no_lr_match(lrs: Sequence[float], name: str = "baseline") -> str:
    """The note of rule 3: ``baseline at several lrs (0.001, 0.003), none at this one``."""
    return f"{name} at several lrs ({', '.join(lr_text(lr) for lr in sorted(lrs))}), none at this one"


def lr_text(lr: float | None) -> str:
    """A peak lr as the tables show it (``0.0045``, ``3e-05``); ``–`` where unknown."""
    return "–" if lr is None or math.isnan(lr) else f"{lr:g}"


def lr_of(runs: pd.DataFrame) -> float:
    """The peak lr of a cell's runs; NaN where unknown."""
    values = runs[LR_COLUMN].dropna() if LR_COLUMN in runs else ()
    return float(values.iloc[0]) if len(values) else math.nan


def same_lr(a: float, b: float) -> bool:
    """Equal peak lrs (two unknown ones included); 3e-3 from one config and 0.003 from another are equal."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9)


def match_lr(lr: float, baseline_lrs: Sequence[float], name: str = "baseline") -> tuple[int | None, str, str]:
    """The rule in the module docstring on lrs alone: (index into ``baseline_lrs`` of the cell to pair with, or
    None; SAME_LR, OWN_LR or ""; the note where None)."""
    if not baseline_lrs:
        return None, "", NO_BASELINE
    same = [i for i, b in enumerate(baseline_lrs) if same_lr(lr, b)]
    if same:
        return same[0], SAME_LR, ""
    distinct: list[float] = []
    for b in baseline_lrs:
        if not any(same_lr(b, d) for d in distinct):
            distinct.append(b)
    if len(distinct) == 1:
        return 0, OWN_LR, ""
    return None, "", no_lr_match(distinct, name)


@dataclass
class CellPair:
    """A variant's cell and the baseline cell it is compared with (``base`` empty where none: ``note`` says
    why). ``runs`` and ``base`` are rows of the frame given to cell_pairs (runs, or runs x steps)."""

    runs: pd.DataFrame
    base: pd.DataFrame
    lr: float
    baseline_lr: float
    lr_pairing: str  # SAME_LR | OWN_LR | "" (no baseline cell)
    note: str

    def lr_columns(self) -> dict[str, object]:
        """The paired tables' lr columns: ``lr``, ``baseline_lr`` and ``lr_pairing``."""
        return {"lr": self.lr, "baseline_lr": self.baseline_lr, "lr_pairing": self.lr_pairing}


def cell_pairs(
    frame: pd.DataFrame, baseline: str, variant: str | None = None, name: str = "baseline"
) -> list[CellPair]:
    """Every cell of ``frame`` (columns ``pair_group``, ``cell``, ``variant``, ``peak_lr`` where known) whose variant
    is not ``baseline`` (only ``variant``'s, when given), with the ``baseline`` cell the rule pairs it with; in
    the frame's order. ``name`` names the baseline in the notes."""
    if frame.empty or "pair_group" not in frame:
        return []
    out = []
    for _, group in frame.groupby("pair_group", sort=False):
        cells = [runs for _, runs in group.groupby("cell", sort=False)]
        bases = [runs for runs in cells if runs["variant"].iloc[0] == baseline]
        base_lrs = [lr_of(runs) for runs in bases]
        for runs in cells:
            own = runs["variant"].iloc[0]
            if own == baseline or (variant is not None and own != variant):
                continue
            lr = lr_of(runs)
            i, how, note = match_lr(lr, base_lrs, name)
            base = bases[i] if i is not None else runs.iloc[0:0]
            out.append(CellPair(runs, base, lr, base_lrs[i] if i is not None else math.nan, how, note))
    return out
