"""Norm placement vs pre-norm per variant (moda_lab/analysis/norm_gap.py): cells that differ in the placement (and
lr) alone pair by seed; other configs stay apart; the report and the tables carry it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis import add_significance, analyze, load_sweep_dir  # noqa: E402
from moda_lab.analysis.norm_gap import norm_differences, norm_gap_markdown  # noqa: E402
from moda_lab.analysis.pipeline import significance_markdown, write_significance  # noqa: E402

STEPS = 200
# (norm, model, lr, extra config) -> {seed: final val loss}
FINAL = {
    ("post", "residual", 1e-3, ()): {0: 3.10, 1: 3.12, 2: 3.11},
    ("pre", "residual", 4e-3, ()): {0: 3.00, 1: 3.00, 2: 3.02},
    ("post", "moda", 1e-3, ()): {0: 2.95, 1: 2.97},
    ("pre", "moda", 4e-3, ()): {0: 2.99, 1: 2.98, 2: 2.97},
    ("reordered", "residual", 2e-3, ()): {0: 3.05},
    # Another schedule: its post-norm run has no pre-norm cell of its own, and must not pair with the one above.
    ("post", "residual", 1e-3, (("trainer.schedule", "wsd"),)): {0: 2.50},
}


def rows(final: float) -> list[dict]:
    out = [{"step": 0, "tokens": 0, "model/params": 1000, "model/flops_per_token": 6000.0}]
    for step in range(50, STEPS + 1, 50):  # falls 0.5 nats from step 50: trained
        out.append({"step": step, "tokens": step * fx.TOKENS_PER_STEP, "val/loss": final + 0.5 * (STEPS - step) / 150})
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("norms") / "sweep"
    for (norm, model, lr, extra), seeds in FINAL.items():
        for seed, final in seeds.items():
            spec = fx.RunSpec(model, norm, seed, steps=STEPS, extra={"trainer.lr": lr, **dict(extra)})
            fx.write_run_dir(root, spec, rows(final))
    return root


def test_placements_pair_by_seed_against_pre_norm_each_at_its_own_lr(sweep: Path):
    table = norm_differences(analyze(load_sweep_dir(sweep)).summary)
    got = {(r["variant"], r["norm"], r["config"]): r for _, r in table.iterrows()}
    plain = [k for k in got if "wsd" not in k[2]]
    assert sorted((v, n) for v, n, _ in plain) == [("moda", "post"), ("residual", "post"), ("residual", "reordered")]
    assert not [k for k in got if "wsd" in k[2]]  # wsd has no pre-norm cell: no row, no pairing with cosine
    residual = next(r for (v, n, _), r in got.items() if (v, n) == ("residual", "post"))
    assert residual["n"] == 3 and residual["mean"] == pytest.approx((0.10 + 0.12 + 0.09) / 3)
    assert (residual["lr"], residual["reference_lr"]) == (1e-3, 4e-3) and residual["excludes_0"]
    moda = next(r for (v, n, _), r in got.items() if (v, n) == ("moda", "post"))
    assert moda["n"] == 2 and moda["mean"] == pytest.approx(-0.025) and moda["unpaired"] == "pre only: 2"
    reordered = next(r for (v, n, _), r in got.items() if (v, n) == ("residual", "reordered"))
    assert reordered["n"] == 1 and math.isnan(reordered["ci_low"]) and reordered["note"] == "n=1: no interval"
    text = norm_gap_markdown(table)
    assert "| residual | post − pre | 0.001 vs 0.004 | 3 | 0, 1, 2 | +0.1033 |" in text


def test_the_report_and_tables_carry_the_placement_section(sweep: Path, tmp_path: Path):
    analysis = add_significance(analyze(load_sweep_dir(sweep)))
    section = "\n".join(significance_markdown(analysis))
    assert "### Norm placement vs pre-norm, per variant" in section and "| moda | post − pre |" in section
    written = write_significance(analysis, tmp_path / "tables", tmp_path / "figures")
    assert tmp_path / "tables" / "norm_placement.md" in written
    only_pre = [d for d in sweep.iterdir() if "-pre-" in d.name]
    bare = norm_differences(analyze(load_sweep_dir(only_pre[0])).summary)
    assert bare.empty and "No variant ran under pre-norm" in norm_gap_markdown(bare)
