"""experiments/catalogue/table.py: paired differences to the residual with Holm over the variants tested."""

from __future__ import annotations

import importlib.util
import sys

import pandas as pd

from helpers import ROOT

spec = importlib.util.spec_from_file_location("catalogue_table", ROOT / "experiments" / "catalogue" / "table.py")
table = importlib.util.module_from_spec(spec)
sys.modules["catalogue_table"] = table
spec.loader.exec_module(table)


def runs_frame() -> pd.DataFrame:
    rows = []
    for seed, base in enumerate((5.00, 5.02, 4.98)):
        rows.append(("residual", seed, base))
        rows.append(("mudd", seed, base - 0.05 + 0.001 * seed))  # lower at every seed, tight: resolved
        rows.append(("dense", seed, base + (0.02, -0.03, 0.01)[seed]))  # either side: not resolved
    rows.append(("mhc", 0, 4.9))  # one seed: untested
    frame = pd.DataFrame(rows, columns=["variant", "seed", "val/loss"])
    # As runs.csv has them: one pair group (the variants differ in nothing else), a cell per variant.
    frame = frame.assign(model=frame["variant"], pair_group="g", cell=frame["variant"], trained=True, norm="pre")
    return frame.assign(complete=True, **{"model/params": 1e6, "model/flops_per_token": 6e6})


def test_verdicts_follow_holm_over_the_variants_with_two_pairs():
    rows = table.catalogue_rows(runs_frame()).set_index("variant")
    assert list(rows.index) == ["residual", "dense", "mhc", "mudd"]
    assert rows.loc["mudd", "delta_mean"] < 0 and rows.loc["mudd", "holm_p"] < 0.05
    assert rows.loc["dense", "holm_p"] >= 0.05 and pd.isna(rows.loc["mhc", "holm_p"])
    # Holm over two tested variants: the smaller p doubles
    assert rows.loc["mudd", "holm_p"] == min(1.0, 2 * rows.loc["mudd", "delta_p"])
    text = table.markdown(table.catalogue_rows(runs_frame()))
    assert "| mudd | 3 |" in text and "resolved, lower" in text and "not resolved" in text
    assert "untested (fewer than 2 pairs)" in text and "Holm p (2 tested)" in text


def test_a_variant_with_several_cells_is_refused_not_averaged():
    import pytest

    frame = runs_frame()
    other = frame[frame["variant"] == "mudd"].assign(cell="mudd-lr2", **{"val/loss": 9.0})
    with pytest.raises(SystemExit, match=r"several cells of a variant: mudd \(2 cells\)"):
        table.catalogue_rows(pd.concat([frame, other], ignore_index=True))
