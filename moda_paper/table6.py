"""The paper's Table 6 (arXiv 2603.15619): its rows, the orderings they claim, and the lookups that match a cell of
ours to a row (layers, norm, variant, shape), with the paper's Δ beside our paired differences (with_paper_delta).

The numbers are copied here (not read from ../shared/docs/moda.md) so the analysis runs anywhere the package does.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pandas as pd

from moda_lab.analysis.records import variant_label


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


def paper_depth_shown(row: pd.Series) -> int | None:
    """The paper's depth behind a row's ``paper Δ`` where it is not the row's own depth (with_paper_delta takes the
    paper's nearest depth, ``paper layers``, for one it did not run), else None: what the paired table and figures
    name beside the paper's Δ."""
    depth = row.get("paper layers", math.nan)
    return int(depth) if pd.notna(depth) and depth != row.get("layers") else None
