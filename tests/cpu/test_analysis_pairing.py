"""Which baseline cell a variant's cell is paired with (moda_lab.analysis.pairing, issue 28): per-variant tuned lrs,
a shared lr, an lr sweep and two optimizers in one folder, through the paired table, the curves, McNemar's table and
the paper's orderings, on run dirs written here with known final losses."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis import analyze, load_sweep_dir, paired_curves, paired_differences  # noqa: E402
from moda_lab.analysis.mcnemar import mcnemar_markdown, mcnemar_table  # noqa: E402
from moda_lab.analysis.pairing import NO_BASELINE, OWN_LR, SAME_LR, match_lr  # noqa: E402
from moda_lab.analysis.significance import paired_markdown  # noqa: E402
from moda_paper.orderings import check_orderings, orderings_markdown  # noqa: E402

STEPS = 200
TABLE6 = {"layers": 24, "width": 384}  # with 6 query / 2 KV heads: the paper's Table 6 shape (its orderings apply)
MUON = {"trainer.optimizer": "muon", "trainer.schedule": "wsd"}
# (group, model, lr) -> {seed: final val/loss}. "muon": the Table 6 rows at per-variant tuned lrs; "adamw": the older
# rows, both variants at one lr, in the same folder and shape; "sweep": a pre-norm lr sweep, one seed per lr, where
# MoDA's 4.5e-3 is not among the baseline's lrs but its 3e-3 is.
FINAL = {
    ("muon", "residual", 3e-3): {0: 3.50, 1: 3.52, 2: 3.49},
    ("muon", "moda", 4.5e-3): {0: 3.45, 1: 3.46, 2: 3.45},
    ("adamw", "residual", 3.75e-4): {0: 3.60, 1: 3.61, 2: 3.62},
    ("adamw", "moda", 3.75e-4): {0: 3.58, 1: 3.60, 2: 3.59},
    ("sweep", "residual", 1e-3): {0: 3.90},
    ("sweep", "residual", 3e-3): {0: 3.80},
    ("sweep", "residual", 1e-2): {0: 4.00},
    ("sweep", "moda", 4.5e-3): {0: 3.70},
    ("sweep", "moda", 3e-3): {0: 3.75},
}
# McNemar: per task (b: only MoDA right, c: only the residual right, both right, neither) for each muon seed.
COUNTS = {"piqa": (12, 3, 30, 15)}


def spec_of(group: str, model: str, lr: float, seed: int) -> fx.RunSpec:
    extra = {"trainer.lr": lr, "model.n_heads": 6, **(MUON if group == "muon" else {})}
    return fx.RunSpec(model, "pre" if group == "sweep" else "post", seed, steps=STEPS, extra=extra, **TABLE6)


def rows_of(spec: fx.RunSpec, final: float) -> list[dict]:
    """Step-0 sizes, then val/loss every 50 steps falling 0.5 nats to ``final``."""
    params, _, fpt = fx.params_and_flops(spec)
    rows: list[dict] = [{"step": 0, "tokens": 0, "model/params": params, "model/flops_per_token": fpt}]
    for step in range(50, STEPS + 1, 50):
        rows.append({"step": step, "tokens": step * fx.TOKENS_PER_STEP, "val/loss": final + 0.5 * (STEPS - step) / 150})
    return rows


def write_samples(run_dir: Path, model: str) -> None:
    """One final-checkpoint evaluation with samples_<task>.jsonl: MoDA right on the b questions, the residual on c."""
    folder = run_dir / "eval" / "last" / "step200_1tasks"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"moda": {"step": STEPS, "eval_config": {"limit": None}}}))
    for task, (b, c, both, neither) in COUNTS.items():
        moda = [1] * b + [0] * c + [1] * both + [0] * neither
        base = [0] * b + [1] * c + [1] * both + [0] * neither
        lines = [{"doc_id": i, "acc_norm": s, "acc": s} for i, s in enumerate(moda if model == "moda" else base)]
        (folder / f"samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pairing") / "rows"
    for (group, model, lr), seeds in FINAL.items():
        for seed, final in seeds.items():
            spec = spec_of(group, model, lr, seed)
            run_dir = fx.write_run_dir(root, spec, rows_of(spec, final))
            if group == "muon":
                write_samples(run_dir, model)
    return analyze(load_sweep_dir(root))


@pytest.fixture(scope="module")
def summary(analysis) -> pd.DataFrame:
    return analysis.summary


def row(paired: pd.DataFrame, norm: str, lr: float) -> pd.Series:
    sel = paired[(paired["norm"] == norm) & (paired["lr"] == lr) & (paired["metric"] == "val/loss")]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def mean_of(a: dict, b: dict) -> float:
    return sum(a[s] - b[s] for s in a) / len(a)


@pytest.mark.parametrize(
    ("lr", "baseline_lrs", "expected"),
    [
        (4.5e-3, [3e-3], (0, OWN_LR, "")),  # each at its own lr
        (3e-3, [1e-3, 0.003, 1e-2], (1, SAME_LR, "")),  # same lr wins over the sweep's other lrs
        (4.5e-3, [1e-3, 3e-3, 1e-2], (None, "", "baseline at several lrs (0.001, 0.003, 0.01), none at this one")),
        (4.5e-3, [3e-3, 3e-3], (0, OWN_LR, "")),  # two baseline cells at one lr: still one lr
        (math.nan, [math.nan], (0, SAME_LR, "")),  # no lr known (earlier runs.csv): as before
        (3e-3, [], (None, "", NO_BASELINE)),
    ],
    ids=["own-lr", "same-lr-in-sweep", "sweep-no-match", "one-lr-twice", "unknown-lr", "no-baseline"],
)
def test_the_rule_on_lrs_alone(lr, baseline_lrs, expected):
    assert match_lr(lr, baseline_lrs) == expected


def test_per_variant_lrs_pair_and_the_table_shows_both_lrs(analysis, summary):
    groups = summary.groupby(["norm", "peak_lr"])["pair_group"].first()
    assert groups[("post", 3e-3)] == groups[("post", 4.5e-3)]  # the peak lr is not in the pair group any more
    paired = paired_differences(summary, metrics=["val/loss"])
    muon = row(paired, "post", 4.5e-3)
    base, moda = FINAL[("muon", "residual", 3e-3)], FINAL[("muon", "moda", 4.5e-3)]
    assert (muon["n"], muon["seeds"], muon["baseline_lr"], muon["lr_pairing"]) == (3, "0, 1, 2", 3e-3, OWN_LR)
    assert muon["mean"] == pytest.approx(mean_of(moda, base)) == pytest.approx(-0.05)
    assert muon["std"] == pytest.approx(0.01) and muon["note"] == ""
    text = paired_markdown(paired)
    assert "| lr: variant vs baseline | variant − baseline |" in text
    assert "| 0.0045 vs 0.003 | moda − residual | same params | val/loss | 3 | 0, 1, 2 | -0.0500 | 0.0100 |" in text
    # Over training too: the same three seeds at every validation, the final Δ at the last one.
    curves = paired_curves(analysis.tidy, metric="val/loss")
    own = curves[curves["lr"] == 4.5e-3]
    assert own["step"].tolist() == [50, 100, 150, 200] and set(own["baseline_lr"]) == {3e-3}
    assert set(own["n"]) == {3} and own["mean"].iloc[-1] == pytest.approx(-0.05)


def test_a_shared_lr_still_pairs_at_that_lr(summary):
    paired = paired_differences(summary, metrics=["val/loss"])
    adamw = row(paired, "post", 3.75e-4)
    base, moda = FINAL[("adamw", "residual", 3.75e-4)], FINAL[("adamw", "moda", 3.75e-4)]
    assert (adamw["n"], adamw["baseline_lr"], adamw["lr_pairing"]) == (3, 3.75e-4, SAME_LR)
    assert adamw["mean"] == pytest.approx(mean_of(moda, base)) == pytest.approx(-0.02)
    assert "| 0.000375 (both) | moda − residual |" in paired_markdown(paired)


def test_an_lr_sweep_pairs_same_lr_only_and_says_why_not_otherwise(summary):
    paired = paired_differences(summary, metrics=["val/loss"])
    same = row(paired, "pre", 3e-3)  # the baseline ran at 3e-3 too: same lr wins over its other lrs
    assert (same["n"], same["baseline_lr"], same["lr_pairing"]) == (1, 3e-3, SAME_LR)
    assert same["mean"] == pytest.approx(3.75 - 3.80)
    none = row(paired, "pre", 4.5e-3)
    assert none["n"] == 0 and math.isnan(none["baseline_lr"]) and none["lr_pairing"] == ""
    assert none["note"] == "baseline at several lrs (0.001, 0.003, 0.01), none at this one"
    assert none["unpaired"] == "variant only: 0"
    assert len(paired[paired["norm"] == "pre"]) == 2  # no row against the nearest lr, nor one per baseline lr
    line = next(ln for ln in paired_markdown(paired).splitlines() if "0.0045 vs –" in ln)
    assert "| 0 | – |" in line and line.endswith("| baseline at several lrs (0.001, 0.003, 0.01), none at this one |")


def test_adamw_and_muon_rows_of_one_folder_are_never_mixed(summary):
    post = summary[summary["norm"] == "post"]
    by_optimizer = post.groupby(post["peak_lr"] == 3.75e-4)["pair_group"].unique()
    assert [len(g) for g in by_optimizer] == [1, 1] and by_optimizer[True][0] != by_optimizer[False][0]
    paired = paired_differences(summary, metrics=["val/loss"])
    rows = paired[paired["norm"] == "post"]
    # Mixed, MoDA at 4.5e-3 would face residuals at 3e-3 and 3.75e-4: no pair; MoDA at 3.75e-4 a 6-run baseline.
    assert sorted(zip(rows["lr"], rows["baseline_lr"], rows["n"])) == [(3.75e-4, 3.75e-4, 3), (4.5e-3, 3e-3, 3)]
    assert rows["config"].nunique() == 2 and all("optimizer=" in c for c in rows["config"])


def test_mcnemar_pairs_each_variant_at_its_own_lr(summary):
    table = mcnemar_table(summary)
    assert sorted(table["seed"]) == [0, 1, 2] and set(table["task"]) == {"piqa"}  # only the muon runs have samples
    first = table[table["seed"] == 0].iloc[0]
    assert (first["lr"], first["baseline_lr"], first["lr_pairing"]) == (4.5e-3, 3e-3, OWN_LR)
    assert (first["n"], first["b"], first["c"]) == (60, 12, 3) and first["diff"] == pytest.approx(9 / 60)
    p = 2 * sum(math.comb(15, k) for k in range(4)) / 2**15
    assert first["p"] == pytest.approx(p) and first["p_holm"] == pytest.approx(p)  # one task: Holm leaves it
    text = mcnemar_markdown(table)
    assert "| lr: variant vs baseline | variant − baseline | seed |" in text
    assert "| 0.0045 vs 0.003 | moda − residual | 0 | piqa | acc_norm | 60 | +15.00 | 12 | 3 |" in text


def test_the_papers_orderings_pair_the_arms_by_the_same_rule(summary):
    orderings = check_orderings(summary)
    ours = orderings[orderings["untested_because"] != "not run"]  # the 48-layer orderings: not run here
    assert set(ours["ordering"]) == {"moda < residual"}
    # The pre-norm lr sweep (checked against the paper's 48-layer pre-norm rows): same lr, else no pair and why.
    sweep = ours[ours["norm"] == "pre"].set_index("lr")
    assert sweep.loc[3e-3, "untested_because"] == "1 pair: no test" and sweep.loc[3e-3, "baseline_lr"] == 3e-3
    assert sweep.loc[4.5e-3, "untested_because"] == "residual at several lrs (0.001, 0.003, 0.01), none at this one"
    assert set(sweep["verdict"]) == {"untested"} and sweep["p_holm"].isna().all()
    tested = ours[ours["norm"] == "post"].sort_values("lr")
    assert tested["lr"].tolist() == [3.75e-4, 4.5e-3] and tested["baseline_lr"].tolist() == [3.75e-4, 3e-3]
    assert tested["n"].tolist() == [3, 3] and tested["mean"].tolist() == pytest.approx([-0.02, -0.05])
    # One family: both rows (the shared-lr and the tuned-lr comparison) are Holm-corrected together.
    assert set(tested["family"]) == {2} and set(tested["untested_because"]) == {""}
    ps = sorted(tested["p"])
    assert sorted(tested["p_holm"]) == pytest.approx([min(1.0, 2 * ps[0]), max(min(1.0, 2 * ps[0]), ps[1])])
    text = orderings_markdown(orderings)
    assert "| lr: better vs worse |" in text and "| 0.0045 vs 0.003 | moda < residual |" in text
