"""Paired seed differences vs the baseline, the paper's Table 6 orderings (moda_paper, the analysis' reference),
seed spread, the training check and the zero-shot accuracy tables, on run dirs written here with known per-seed
final losses and accuracies."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis import (  # noqa: E402
    add_significance,
    analyze,
    load_sweep_dir,
    pair_by_seed,
    paired_curves,
    paired_differences,
    paper_table,
    plot_paired_curves,
    plot_paired_differences,
    run_analysis,
    seed_spread,
    t_interval,
)
from moda_lab.analysis.__main__ import main, parse_args  # noqa: E402
from moda_paper import PAPER_TABLE6, TABLE6, VERDICTS, paper_orderings  # noqa: E402

T_975_2 = 4.303  # Student's t, 97.5% quantile, 2 degrees of freedom (printed tables)
T_975_1 = 12.706
TABLE6_SHAPE = {"model.n_heads": 6}  # with fx's width 64 -> 384 below and 2 KV heads: Table 6's shape
TASKS = ("piqa", "sciq")

# (layers, norm, model, ffn_kv) -> {seed: final val/loss}. Post-norm: seed 0 of MoDA has no baseline (unpaired),
# the baseline seeds are 1-3; pre-norm (48 layers): one pair plus an unpaired MoDA seed 5; reordered: the
# baseline's seed 1 is flat over its second half (did not train).
FINAL = {
    (24, "post", "residual", False): {1: 3.50, 2: 3.52, 3: 3.49},
    (24, "post", "moda", False): {0: 3.40, 1: 3.46, 2: 3.47, 3: 3.47},
    (24, "post", "moda", True): {1: 3.40, 2: 3.41, 3: 3.40},
    (48, "pre", "residual", False): {0: 3.45},
    (48, "pre", "moda", False): {0: 3.44, 5: 3.30},
    (24, "reordered", "residual", False): {0: 3.50, 1: 3.50},
    (24, "reordered", "moda", False): {0: 3.55, 1: 3.56},
}
FLAT = {(24, "reordered", "residual", False, 1)}
# Downstream accuracy gain over the baseline per seed (fraction); eval of the final checkpoint unless noted.
ACC_GAIN = {("residual", False): lambda s: 0.0, ("moda", True): lambda s: 0.02 + 0.005 * (s - 1)}
ACC_GAIN[("moda", False)] = lambda s: 0.01
EVAL_AT_STEP_100 = {(24, "post", "moda", False, 1)}  # not the final checkpoint: left out of accuracy tables
EVAL_IN_RESULTS_JSON_ONLY = {(24, "post", "moda", True, 1)}
NO_EVAL = {(24, "post", "moda", False, 0)}
STEPS = 200


def spec_of(layers: int, norm: str, model: str, ffn: bool, seed: int, extra: dict | None = None) -> fx.RunSpec:
    return fx.RunSpec(model, norm, seed, ffn_kv=ffn, layers=layers, width=384, steps=STEPS, extra=extra or TABLE6_SHAPE)


def val_at(final: float, step: int, flat: bool) -> float:
    """Falls 0.5 nats from step 50 to the end (0.33 over the second half); a flat run falls 0.01."""
    return final + (0.01 if flat else 0.5) * (STEPS - step) / 150


def acc_of(model: str, ffn: bool, seed: int, task_index: int) -> float:
    return 0.4 + 0.1 * task_index + ACC_GAIN[(model, ffn)](seed)


def rows_of(key: tuple, seed: int, final: float) -> tuple[list[dict], dict]:
    """metrics.jsonl rows (step-0 eval at 9.0, val every 50 steps, train every 10) and the eval metrics."""
    layers, norm, model, ffn = key
    spec = spec_of(layers, norm, model, ffn, seed)
    params, emb, fpt = fx.params_and_flops(spec)
    flat = (*key, seed) in FLAT
    rows: list[dict] = [{"step": 0, "tokens": 0, "model/params": params, "model/flops_per_token": fpt}]
    rows.append({"step": 0, "tokens": 0, "val/loss": 9.0, "val/c4/loss": 9.1, "val/wiki/loss": 9.2})
    for step in range(10, STEPS + 1, 10):
        rows.append({"step": step, "tokens": step * fx.TOKENS_PER_STEP, "train/loss": val_at(final, step, flat) + 0.05})
        if step % 50 == 0:
            val = val_at(final, step, flat)
            rows.append(
                {"step": step, "val/loss": val, "val/c4/loss": val + 0.1 + 0.002 * seed, "val/wiki/loss": val + 0.2}
            )
    metrics = {}
    if (model, ffn) in ACC_GAIN:
        for i, task in enumerate(TASKS):
            metrics |= {f"eval/{task}/acc_norm": acc_of(model, ffn, seed, i), f"eval/{task}/acc": 0.3}
    return rows, metrics


def build_paired_sweep(root: Path) -> Path:
    for key, seeds in FINAL.items():
        layers, norm, model, ffn = key
        for seed, final in seeds.items():
            rows, metrics = rows_of(key, seed, final)
            where = (*key, seed)
            step = 100 if where in EVAL_AT_STEP_100 else STEPS
            if metrics and where not in NO_EVAL and where not in EVAL_IN_RESULTS_JSON_ONLY:
                rows.append({"step": step, **metrics})
            run_dir = fx.write_run_dir(root, spec_of(*key, seed), rows)
            if where in EVAL_IN_RESULTS_JSON_ONLY:  # as moda_lab.eval writes it; metrics.jsonl lacks the rows
                (run_dir / "eval" / "last").mkdir(parents=True)
                results = {"results": {}, "moda": {"step": STEPS, "metrics": metrics, "missing_tasks": {}}}
                (run_dir / "eval" / "last" / "results.json").write_text(json.dumps(results))
    # A cell at another lr than the baseline's one lr: paired with it, each at its own lr (moda_lab.analysis.pairing).
    other = spec_of(24, "post", "dense", False, 1, extra={**TABLE6_SHAPE, "trainer.lr": 1e-3})
    fx.write_run_dir(root, other, rows_of((24, "post", "residual", False), 1, 3.48)[0])
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_paired_sweep(tmp_path_factory.mktemp("paired") / "table6_small")


def result_of(sweep: Path):
    return add_significance(analyze(load_sweep_dir(sweep)), reference=TABLE6)


@pytest.fixture(scope="module")
def result(sweep: Path):
    return result_of(sweep)


def diffs(a: dict, b: dict) -> list[float]:
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def row_of(paired: pd.DataFrame, layers: int, norm: str, variant: str, metric: str = "val/loss") -> pd.Series:
    sel = paired[(paired["layers"] == layers) & (paired["norm"] == norm) & (paired["variant"] == variant)]
    sel = sel[sel["metric"] == metric]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_t_interval_matches_a_hand_computation():
    stats = t_interval([-0.04, -0.05, -0.02])
    mean = -0.11 / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (-0.04, -0.05, -0.02)) / 2)
    assert (stats["n"], stats["mean"], stats["std"]) == (3, pytest.approx(mean), pytest.approx(std))
    assert stats["t"] == pytest.approx(T_975_2, abs=5e-4)
    half = T_975_2 * std / math.sqrt(3)
    assert stats["ci_low"] == pytest.approx(mean - half, abs=1e-5) and stats["ci_high"] == pytest.approx(
        mean + half, abs=1e-5
    )
    one = t_interval([-0.01])
    assert one["n"] == 1 and one["mean"] == -0.01 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=95)


def test_t_test_p_value_and_holm_against_hand_values():
    from moda_lab.analysis.significance import holm, t_pvalue

    # Student's t with 2 degrees of freedom has a closed-form CDF: P(|T| >= t) = 1 - t / sqrt(2 + t^2).
    t = 0.1 / (0.01 / math.sqrt(3))
    assert t_pvalue(-0.1, 0.01, 3) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert t_interval([-0.09, -0.10, -0.11])["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    # One degree of freedom (Cauchy): P(|T| >= 1) = 1/2.
    assert t_pvalue(0.5, 0.5 * math.sqrt(2), 2) == pytest.approx(0.5)
    assert math.isnan(t_pvalue(-0.1, float("nan"), 1)) and t_pvalue(-0.1, 0.0, 3) == 0.0 and t_pvalue(0, 0, 3) == 1
    # Sorted 0.01, 0.03, 0.04 of k=3: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04); NaN: not in the family.
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_verdict_words_and_untested_arms(sweep: Path, tmp_path: Path, capsys):
    from moda_paper import UntestedArm, check_orderings, verdict

    assert verdict(-0.05, 0.049) == "resolved, paper's sign" and verdict(0.05, 0.01) == "resolved, opposite sign"
    assert verdict(-0.05, 0.05) == "same sign, not resolved" and verdict(0.05, 0.2) == "opposite sign, not resolved"
    assert verdict(-0.05, 0.001, "a run did not train") == "untested" and verdict(-0.05, float("nan")) == "untested"
    # Marking post-norm MoDA + FFN KV untested makes its two orderings untested but keeps them in the family: the
    # Holm p of moda < residual is what it was unmarked (a marking made after seeing runs never resolves another).
    summary = analyze(load_sweep_dir(sweep)).summary
    unmarked = check_orderings(summary).set_index(["norm", "ordering"])
    orders = check_orderings(summary, untested=(UntestedArm.parse("post/moda +ffn_kv"),))
    post = orders[orders["norm"] == "post"].set_index("ordering")
    assert set(orders["family"]) == {4}  # a run that did not train keeps its p in the family too
    assert post.loc["moda < residual", "p_holm"] == pytest.approx(unmarked.loc[("post", "moda < residual"), "p_holm"])
    assert post.loc["moda < residual", "p_holm"] > post.loc["moda < residual", "p"]  # corrected over 4, not alone
    for o in ("moda +ffn_kv < residual", "moda +ffn_kv < moda"):
        assert (post.loc[o, "verdict"], post.loc[o, "untested_because"]) == ("untested", "marked untested (post/moda +ffn_kv)")
    every = check_orderings(summary, untested=(UntestedArm.parse("post"),))
    assert set(every.loc[every["norm"] == "post", "verdict"]) == {"untested"} and set(every["family"]) == {4}
    # @LR: only the orderings whose arms ran at that peak lr (an under-tuned lr beside tuned rows of the norm).
    lr = float(summary.loc[(summary["norm"] == "post") & (summary["variant"] == "residual"), "peak_lr"].iloc[0])
    at_lr = check_orderings(summary, untested=(UntestedArm.parse(f"post@{lr:g}"),))
    assert set(at_lr.loc[at_lr["norm"] == "post", "untested_because"]) == {f"marked untested (post@{lr:g})"}
    other = check_orderings(summary, untested=(UntestedArm.parse(f"post@{2 * lr:g}"),))
    assert not other["untested_because"].str.startswith("marked").any() and set(other["family"]) == {4}
    with pytest.raises(ValueError, match="lr 'fast' is not allowed; allowed: a positive number"):
        UntestedArm.parse("post@fast")
    with pytest.raises(ValueError, match="lr '-1' is not allowed"):
        UntestedArm.parse("post/moda@-1")
    with pytest.raises(ValueError, match="norm 'prenorm' is not allowed; allowed: post, pre, reordered"):
        UntestedArm.parse("prenorm")
    with pytest.raises(ValueError, match="variant 'dense' is not allowed"):
        UntestedArm.parse("post/dense")
    # The command: bad arm -> exit 2 naming it, nothing written; a good one reaches the report.
    with pytest.raises(SystemExit) as exit_:
        main([f"sweep_dir={sweep}", f"out={tmp_path / 'bad'}", "untested=post/dense"])
    assert exit_.value.code == 2
    assert "untested='post/dense': variant 'dense'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([f"sweep_dir={sweep}", f"out={tmp_path / 'ok'}", "untested=post/moda +ffn_kv"]) == 0
    assert "| marked untested (post/moda +ffn_kv) |" in (tmp_path / "ok" / "report.md").read_text()


def test_pairing_is_by_seed_and_lists_unpaired_and_duplicate_seeds():
    a = pd.DataFrame({"seed": [0, 1, 2, 2, 4], "val/loss": [1.0, 2.0, 3.0, 3.1, 5.0]})
    b = pd.DataFrame({"seed": [4, 1, 3, 0], "val/loss": [4.0, 1.5, 9.0, float("nan")]})
    pairing = pair_by_seed(a, b, "val/loss")
    assert pairing.seeds == [1, 4] and pairing.diffs == pytest.approx([0.5, 1.0])  # by seed, not by row order
    assert pairing.only_a == [0] and pairing.only_b == [3]  # b's seed 0 has no value: absent
    assert pairing.twice == [("a", 2)]
    assert pairing.unpaired_text() == "variant only: 0; baseline only: 3; seed 2 twice in variant"


def test_paired_means_and_intervals_against_the_baseline(result):
    paired = result.paired
    moda = row_of(paired, 24, "post", "moda")
    base, variant = FINAL[(24, "post", "residual", False)], FINAL[(24, "post", "moda", False)]
    d = diffs(variant, base)
    mean, std = sum(d) / 3, pd.Series(d).std()
    assert (moda["baseline"], moda["n"], moda["seeds"]) == ("residual", 3, "1, 2, 3")
    assert moda["mean"] == pytest.approx(mean) and moda["std"] == pytest.approx(std)
    half = T_975_2 * std / math.sqrt(3)
    assert (moda["ci_low"], moda["ci_high"]) == (
        pytest.approx(mean - half, abs=1e-5),
        pytest.approx(mean + half, abs=1e-5),
    )
    assert moda["excludes_0"] in (False,) and moda["unpaired"] == "variant only: 0"  # seed 0: never paired
    assert moda["paper Δ"] == pytest.approx(3.4537 - 3.4740)
    ffn = row_of(paired, 24, "post", "moda +ffn_kv")
    assert ffn["mean"] == pytest.approx(-0.10) and ffn["excludes_0"] in (True,) and ffn["unpaired"] == ""
    # Per-domain losses pair the same way (c4's seed term cancels within a pair).
    c4 = row_of(paired, 24, "post", "moda", "val/c4/loss")
    assert c4["mean"] == pytest.approx(mean) and c4["n"] == 3
    assert set(paired["metric"]) == {"val/loss", "val/c4/loss", "val/wiki/loss", "avg acc"}


def test_one_pair_has_no_interval_and_a_cell_at_its_own_lr_pairs_with_the_baselines_one_lr(result):
    pre = row_of(result.paired, 48, "pre", "moda")
    assert pre["n"] == 1 and pre["mean"] == pytest.approx(3.44 - 3.45) and math.isnan(pre["ci_low"])
    assert pre["note"] == "n=1: no interval" and pre["unpaired"] == "variant only: 5" and pd.isna(pre["excludes_0"])
    assert (pre["lr"], pre["baseline_lr"], pre["lr_pairing"]) == (0.003, 0.003, "same lr")
    # Dense at lr 1e-3, the post-norm residual at 3e-3 only: each at its own lr (issue 28), seed 1 the one pair.
    dense = row_of(result.paired, 24, "post", "dense")
    assert (dense["n"], dense["seeds"], dense["config"]) == (1, "1", "lr=0.001")
    assert dense["mean"] == pytest.approx(3.48 - 3.50) and dense["note"] == "n=1: no interval"
    assert (dense["lr"], dense["baseline_lr"], dense["lr_pairing"]) == (0.001, 0.003, "own lr")
    assert dense["unpaired"] == "baseline only: 2, 3"


def test_training_check_flags_the_flat_run_only(result):
    summary = result.summary.set_index("run")
    flat = spec_of(24, "reordered", "residual", False, 1).name
    assert summary.loc[flat, "trained"] in (False,)  # step 0 (9.0) left out: it fell 5.5 nats from there
    assert (
        summary.loc[flat, "val_drop"] == pytest.approx(0.01 * 100 / 150) and summary.loc[flat, "val_drop_from"] == 100
    )
    others = summary.drop(index=flat)
    assert others["trained"].eq(True).all() and others["val_drop"].min() == pytest.approx(0.5 * 100 / 150)
    assert [i.run for i in result.issues if i.kind == "not_trained"] == [flat]
    reordered = row_of(result.paired, 24, "reordered", "moda")
    assert reordered["not_trained"] == "baseline seed 1"


def test_seed_spread_against_the_target(result):
    spread = result.spread.set_index(["layers", "norm", "variant"])
    base = spread.loc[(24, "post", "residual")]
    assert base["seeds"] == 3 and base["std"] == pytest.approx(pd.Series([3.50, 3.52, 3.49]).std())
    assert base["within_target"] in (False,)  # 0.015 > 0.01
    assert spread.loc[(24, "post", "moda +ffn_kv"), "within_target"] in (True,)
    assert pd.isna(spread.loc[(48, "pre", "residual"), "within_target"])
    assert spread.loc[(24, "reordered", "residual"), "not_trained"] == "1"
    loose = seed_spread(result.summary, target=0.02).set_index(["layers", "norm", "variant"])
    assert loose.loc[(24, "post", "residual"), "within_target"] in (True,)
    with pytest.raises(ValueError, match="target"):
        seed_spread(result.summary, target=0)


def test_pairs_to_resolve_is_the_first_n_whose_interval_excludes_zero():
    from moda_lab.analysis.significance import PAIRS_CAP, pairs_to_resolve

    # Pre-norm depth KV - residual of the GPU table: -0.0549, -0.0235 (mean -0.0392, std 0.0222).
    mean, std = -0.0392, 0.0222
    n = pairs_to_resolve(mean, std)
    assert n == 4
    assert T_975_2 * std / math.sqrt(3) > abs(mean) > 3.182 * std / math.sqrt(4)  # n=3 is not enough, n=4 is
    assert pairs_to_resolve(+0.0392, std) == 4  # either sign: a reversal is resolved alike
    assert pairs_to_resolve(-0.01, 0.0) == 2  # no spread: the first interval there is
    assert pairs_to_resolve(0.0, 0.01) is None and pairs_to_resolve(float("nan"), 0.01) is None
    assert pairs_to_resolve(-0.001, 0.5) is None  # past the cap
    assert pairs_to_resolve(-0.001, 0.5, cap=10**6) > PAIRS_CAP


def test_paper_orderings_are_checked_with_sign_and_interval(result):
    assert len(PAPER_TABLE6) == 9 and len(paper_orderings()) == 9
    orders = result.claims
    by = {(r["layers"], r["norm"], r["ordering"]): r for _, r in orders.iterrows()}
    # The family: every ordering with a p: the three 24-layer post-norm ones and the reordered one, untested since
    # a run did not train but still corrected for (the rest have no p); Holm by hand on their p-values.
    tested = orders[orders["untested_because"] == ""]
    assert len(tested) == 3 and set(orders["family"]) == {4}
    p = {o: by[(24, "post", o)]["p"] for o in ("moda < residual", "moda +ffn_kv < residual", "moda +ffn_kv < moda")}
    p_reordered = by[(24, "reordered", "moda < residual")]["p"]
    low, mid, high = sorted(p.values())
    assert high < p_reordered and high > 0.05 > mid  # moda < residual: -0.037 [-0.075, +0.001], p 0.053
    assert by[(24, "post", "moda +ffn_kv < moda")]["p_holm"] == pytest.approx(max(4 * low, 3 * mid))
    assert by[(24, "post", "moda +ffn_kv < residual")]["p_holm"] == pytest.approx(max(4 * low, 3 * mid))
    assert by[(24, "post", "moda < residual")]["p_holm"] == pytest.approx(2 * high)
    assert by[(24, "post", "moda < residual")]["verdict"] == "same sign, not resolved"
    assert by[(24, "post", "moda +ffn_kv < residual")]["verdict"] == "resolved, paper's sign"
    assert by[(24, "post", "moda +ffn_kv < residual")]["params_change"] == pytest.approx(
        fx.params_and_flops(spec_of(24, "post", "moda", True, 1))[0]
        / fx.params_and_flops(spec_of(24, "post", "residual", False, 1))[0] - 1
    )
    assert by[(24, "post", "moda < residual")]["params_change"] == 0  # depth KV adds no weights
    moda_vs_ffn = by[(24, "post", "moda +ffn_kv < moda")]
    ffn, moda = FINAL[(24, "post", "moda", True)], FINAL[(24, "post", "moda", False)]
    assert moda_vs_ffn["mean"] == pytest.approx(sum(diffs(ffn, moda)) / 3)
    assert moda_vs_ffn["paper Δ"] == pytest.approx(3.4338 - 3.4537)
    one = by[(48, "pre", "moda < residual")]
    assert (one["verdict"], one["untested_because"]) == ("untested", "1 pair: no test") and pd.isna(one["p_holm"])
    # -0.06, -0.06, -0.07: at n=2 the half-width 12.7 * 0.0058 / sqrt(2) = 0.052 is already under 0.063.
    assert moda_vs_ffn["pairs_needed"] == 2
    # The paper's post is matched by our reordered too; here MoDA is worse, and the baseline had a flat seed.
    reordered = by[(24, "reordered", "moda < residual")]
    assert reordered["paper norm"] == "post" and reordered["mean"] == pytest.approx(0.055)
    half = T_975_1 * pd.Series([0.05, 0.06]).std() / math.sqrt(2)
    assert reordered["ci_high"] == pytest.approx(0.055 + half, abs=1e-5)
    assert (reordered["verdict"], reordered["untested_because"]) == ("untested", "a run did not train")
    assert pd.notna(reordered["p"]) and pd.notna(reordered["p_holm"])  # untested, yet its p stays in the family
    assert set(orders["verdict"]) <= set(VERDICTS)
    not_run = orders[orders["untested_because"] == "not run"]
    assert set(not_run["verdict"]) == {"untested"}
    assert set(zip(not_run["layers"], not_run["paper norm"])) == {(48, "pre"), (48, "post")}
    assert len(not_run) == 5  # 48 post: 3, 48 pre without MoDA + FFN KV: 2
    assert (orders["paper layers"] == orders["layers"]).all()  # every depth of ours is one the paper ran
    from moda_paper import orderings_markdown

    assert "paper layers" not in orderings_markdown(orders)


def test_a_depth_the_paper_did_not_run_is_checked_against_its_nearest(tmp_path: Path):
    """24-layer pre-norm (the paper ran pre-norm at 48 layers only): the three 48-layer pre-norm orderings, with
    our 24-layer pairs and ``paper layers`` 48; its markdown names the paper's depth."""
    from moda_paper import check_orderings, orderings_markdown

    final = {(24, "pre", "residual", False): {0: 3.50, 1: 3.52}, (24, "pre", "moda", False): {0: 3.46, 1: 3.47},
             (24, "pre", "moda", True): {0: 3.45, 1: 3.47}}
    for key, seeds in final.items():
        for seed, loss in seeds.items():
            fx.write_run_dir(tmp_path / "pre24", spec_of(*key, seed), rows_of(key, seed, loss)[0])
    orders = check_orderings(analyze(load_sweep_dir(tmp_path / "pre24")).summary)
    ours = orders[orders["norm"] == "pre"].set_index("ordering")
    assert list(ours.index) == ["moda < residual", "moda +ffn_kv < residual", "moda +ffn_kv < moda"]
    assert set(ours["paper layers"]) == {48} and set(ours["paper norm"]) == {"pre"} and set(ours["n"]) == {2}
    assert ours.loc["moda < residual", "mean"] == pytest.approx(-0.045)
    assert ours.loc["moda < residual", "paper Δ"] == pytest.approx(3.3759 - 3.3800)
    assert ours.loc["moda +ffn_kv < moda", "mean"] == pytest.approx((-0.01 + 0.0) / 2)
    # -0.05 in both seeds: no spread, p 0, so resolved in a family of three
    assert ours.loc["moda +ffn_kv < residual", "verdict"] == "resolved, paper's sign"
    # The paper's own rows (48 pre and post, 24 post) stay, not run; no post-norm ordering is checked on pre-norm.
    others = orders[orders["norm"] != "pre"]
    assert set(others["untested_because"]) == {"not run"} and set(others["verdict"]) == {"untested"}
    assert len(orders) == 9 + 3
    table = orderings_markdown(orders)
    assert table.splitlines()[0].startswith("| layers | paper layers | paper norm | our norm |")
    assert "| p | Holm p (3 tested) | verdict | untested because | pairs to resolve |" in table.splitlines()[0]
    assert ours.loc["moda +ffn_kv < residual", "pairs_needed"] == 2  # no spread
    assert "| 0 | 0 | resolved, paper's sign |  | 2 |" in table
    assert "| 24 | 48 | pre | pre |" in table


def test_the_paired_tables_and_figures_give_the_nearest_depths_paper_delta(tmp_path: Path):
    """24-layer pre-norm pairs carry the paper's 48-layer pre-norm Δ with ``paper layers`` 48, in the paired
    table (``at 48 L``), the final-Δ figure (its own, grey legend entry) and the over-training figure; a depth the
    paper ran keeps its own depth's Δ and plain label."""
    from moda_lab.analysis.significance import paired_markdown

    final = {(24, "pre", "residual", False): {0: 3.50, 1: 3.52}, (24, "pre", "moda", False): {0: 3.46, 1: 3.47},
             (24, "post", "residual", False): {0: 3.40, 1: 3.42}, (24, "post", "moda", False): {0: 3.39, 1: 3.40}}
    for key, seeds in final.items():
        for seed, loss in seeds.items():
            fx.write_run_dir(tmp_path / "mixed", spec_of(*key, seed), rows_of(key, seed, loss)[0])
    result = add_significance(analyze(load_sweep_dir(tmp_path / "mixed")), reference=TABLE6)
    loss = result.paired[result.paired["metric"] == "val/loss"].set_index("norm")
    assert loss.loc["pre", "paper layers"] == 48 and loss.loc["pre", "paper Δ"] == pytest.approx(3.3759 - 3.3800)
    assert loss.loc["post", "paper layers"] == 24 and loss.loc["post", "paper Δ"] == pytest.approx(3.4537 - 3.4740)
    domain = result.paired[result.paired["metric"] != "val/loss"]
    assert domain["paper Δ"].isna().all() and domain["paper layers"].isna().all()  # val/loss rows only
    table = paired_markdown(result.paired, metrics=["val/loss"], reference=TABLE6)
    assert "| -0.0041 at 48 L |" in table and "| -0.0203 |" in table
    assert "paper Δ" not in paired_markdown(result.paired, metrics=["val/loss"])  # without the reference: no column
    fig = plot_paired_differences(result.paired, reference=TABLE6)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(legend) == ["paper (Table 6)", "paper at 48 layers (its nearest depth)"]
    curves = plot_paired_curves(result.curves, reference=TABLE6)
    texts = {ax.get_title(): [t.get_label() for t in ax.get_lines() if t.get_label().startswith("paper")]
             for ax in curves.axes if ax.get_title().startswith("norm")}
    assert texts == {"norm = pre": ["paper's final Δ at 48 layers (its nearest depth)"],
                     "norm = post": ["paper's final Δ (Table 6)"]}


def test_zero_shot_table_uses_final_checkpoints_and_pairs_the_average(result):
    table = paper_table(result.summary, "downstream").set_index(["layers", "norm", "model", "ffn_kv"])
    ffn = table.loc[(24, "post", "moda", True)]
    expected = [100 * sum(acc_of("moda", True, s, i) for i in range(2)) / 2 for s in (1, 2, 3)]
    assert ffn["seeds"] == 3 and ffn["avg acc"] == pytest.approx(sum(expected) / 3)  # seed 1 from results.json
    assert table.loc[(24, "post", "moda", False), "seeds"] == 2  # seed 1 evaluated at step 100, seed 0 not at all
    assert "dense" not in set(table.index.get_level_values("model"))  # never evaluated: no row
    assert [i.run for i in result.issues if i.kind == "eval_not_final"] == [spec_of(24, "post", "moda", False, 1).name]
    acc = row_of(result.paired, 24, "post", "moda +ffn_kv", "avg acc")
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(2.5) and acc["std"] == pytest.approx(0.5)
    assert acc["ci_high"] - acc["mean"] == pytest.approx(T_975_2 * 0.5 / math.sqrt(3), rel=1e-3)
    moda = row_of(result.paired, 24, "post", "moda", "avg acc")
    assert (moda["n"], moda["seeds"], moda["unpaired"]) == (2, "2, 3", "baseline only: 1")


def test_report_section_and_files(sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert main([f"sweep_dir={sweep}", f"out={out}", "seed_std_target=0.02"]) == 0
    report = (out / "report.md").read_text()
    assert "## Paired differences vs the baseline" in report and "### The paper's Table 6 orderings" in report
    assert "### Seed spread (target: std ≤ 0.02 nats)" in report and "### Zero-shot accuracy" in report
    lines = report.splitlines()

    def line(*parts: str) -> str:
        found = [ln for ln in lines if all(p in ln for p in parts)]
        assert len(found) == 1, (parts, found)
        return found[0]

    ffn = line("| 24 | post | post |", "| moda +ffn_kv < residual |")
    assert "| -0.0402 | -0.1000 | +8.3% params | 3 | [-0.1248, -0.0752] | 0.003 | 0.011 | resolved, paper's sign |" in ffn
    assert "| n=1 | – | – | untested | 1 pair: no test |" in line("| 48 | pre | pre |", "| moda < residual |")
    assert "reproduc" not in report.lower()
    moda = line("| moda − residual | same params | val/loss | 3 | 1, 2, 3 |", "| 24 | 384 | post |")
    assert "| -0.0203 | variant only: 0 |" in moda  # the paper's Δ, then the unpaired seed
    assert "| n=1 | – | -0.0041 | variant only: 5 |" in line("| moda − residual | same params | val/loss | 1 | 0 |")
    flat = spec_of(24, "reordered", "residual", False, 1).name
    assert line(f"| {flat} |").endswith("| 0.007 (from step 100) | **no** |")
    assert "[not_trained]" in report and "[eval_not_final]" in report
    for stem in ("paired_differences", "paper_table6_orderings", "seed_spread", "table4_domain_loss"):
        assert (out / "tables" / f"{stem}.md").exists() and (out / "tables" / f"{stem}.csv").exists()
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"paired_val_loss.png", "paired_val_loss_vs_tokens.png"} <= figures
    assert len(pd.read_csv(out / "tables" / "paired_curves.csv")) == len(result_of(sweep).curves)
    csv = pd.read_csv(out / "tables" / "paired_differences.csv")
    assert len(csv) == 4 * 5  # 5 non-baseline cells x (val, c4, wiki, avg acc)


def test_paired_figure_rows_and_intervals(result):
    fig = plot_paired_differences(result.paired, reference=TABLE6)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 5  # the dense cell at its own lr included
    assert [lab for lab in labels if lab.startswith("dense")] == ["dense − residual (L=24, post)\nn=1; lr 0.001 vs 0.003"]
    assert any(lab.startswith("moda − residual") and "n=1" in lab for lab in labels)
    assert any("not trained: baseline seed 1" in lab for lab in labels)
    ffn = [lab for lab in labels if lab.startswith("moda +ffn_kv − residual")]
    assert len(ffn) == 1 and ffn[0].endswith("n=3; +8.3% params")  # depth KV: same params, nothing said
    assert not any("params" in lab for lab in labels if lab.startswith("moda − residual"))
    title = fig.get_suptitle()
    assert "uncorrected" in title
    assert "95% CI" in title and [t.get_text() for t in ax.get_legend().get_texts()] == ["paper (Table 6)"]
    assert plot_paired_differences(result.paired).axes[0].get_legend() is None  # no reference: no crosses


def test_paired_curves_pair_each_validation_by_seed(result):
    curves = result.curves
    assert set(curves["metric"]) == {"val/loss"}
    post = curves[(curves["layers"] == 24) & (curves["norm"] == "post") & (curves["variant"] == "moda")]
    d = diffs(FINAL[(24, "post", "moda", False)], FINAL[(24, "post", "residual", False)])
    assert post["step"].tolist() == [0, 50, 100, 150, 200] and post["tokens"].iloc[-1] == 200 * fx.TOKENS_PER_STEP
    assert post.iloc[0]["mean"] == pytest.approx(0.0)  # step 0: every run logs 9.0
    for _, r in post.iloc[1:].iterrows():  # the fixture's curves fall alike, so every later step has the final Δ
        assert (r["n"], r["seeds"]) == (3, "1, 2, 3") and r["mean"] == pytest.approx(sum(d) / 3)
    final = row_of(result.paired, 24, "post", "moda")
    assert (post.iloc[-1]["ci_low"], post.iloc[-1]["ci_high"]) == (pytest.approx(final["ci_low"]),
                                                                  pytest.approx(final["ci_high"]))
    assert post["paper Δ"].iloc[-1] == pytest.approx(3.4537 - 3.4740)
    pre = curves[(curves["layers"] == 48) & (curves["variant"] == "moda")]
    assert set(pre["n"]) == {1} and set(pre["seeds"]) == {"0"} and pre["ci_low"].isna().all()  # seed 5: no baseline
    # The baseline's flat seed 1 of the reordered cell: its Δ changes along the curve.
    reord = curves[curves["norm"] == "reordered"].set_index("step")["mean"]
    assert reord[50] != pytest.approx(reord[200])
    dense = curves[curves["model"] == "dense"]  # at lr 1e-3 against the residual at its one lr, 3e-3
    assert dense["seeds"].tolist() == ["1"] * 5 and set(dense["baseline_lr"]) == {0.003}
    assert dense["mean"].iloc[-1] == pytest.approx(3.48 - 3.50)
    only_complete = paired_curves(result.tidy, runs=[])
    assert only_complete.empty and list(only_complete.columns) == list(curves.columns[:-2])  # no paper Δ, layers yet
    fig = plot_paired_curves(curves, reference=TABLE6)
    assert [ax.get_title() for ax in fig.axes] == ["norm = pre", "norm = post", "norm = reordered",
                                                   *["last 50% of tokens, zoomed"] * 3]
    # The zoom under each panel: its last half of tokens, with the final means, intervals, crosses and zero in view.
    zoom = fig.axes[4]
    final = post.iloc[-1]
    lo, hi = zoom.get_ylim()
    assert lo < min(final["ci_low"], final["paper Δ"], 0.0) and hi > max(final["ci_high"], 0.0)
    assert zoom.get_xlim()[0] == pytest.approx(0.5 * curves[curves["norm"] == "post"]["tokens"].max())
    # A loss spike's t-band before the end (two seeds: +-3 nats) is clipped, not zoomed to.
    spiky = curves.copy()
    mid = (spiky["norm"] == "post") & (spiky["tokens"] == sorted(post["tokens"])[-2])
    spiky.loc[mid, ["ci_low", "ci_high"]] = [-5.0, 5.0]
    assert plot_paired_curves(spiky, reference=TABLE6).axes[4].get_ylim() == pytest.approx((lo, hi))
    assert len(plot_paired_curves(curves, tail=None).axes) == 3
    legend = [t.get_text() for t in fig.axes[4].get_legend().get_texts()]  # long names: under the zoom
    assert fig.axes[1].get_legend() is None
    assert "moda − residual (layers=24; lr=0.003; n=3 seeds)" in legend and "paper's final Δ (Table 6)" in legend
    assert "dense − residual (layers=24; lr 0.001 vs 0.003; 1 seed)" in legend  # each at its own lr, said once
    # 48 layers, pre: in Table 6; its lr named (dense's differs), so the names are long: under the zoom too.
    assert [t.get_text() for t in fig.axes[3].get_legend().get_texts()] == [
        "moda − residual (layers=48; lr=0.003; 1 seed)", "paper's final Δ (Table 6)"]
    # One variant paired under two configs: two lines, one shade each (both took the variant's colour before).
    from matplotlib.colors import to_hex

    two = plot_paired_curves(pd.concat([post.assign(config="lr=0.001"), post.assign(config="lr=0.002")]))
    lines = {line.get_label(): to_hex(line.get_color()) for line in two.axes[0].get_lines()
             if line.get_label().startswith("moda")}
    assert sorted(lines) == ["moda − residual (lr=0.001; n=3 seeds)", "moda − residual (lr=0.002; n=3 seeds)"]
    assert len(set(lines.values())) == 2


def test_after_fit_attention_statistics_per_variant(tmp_path: Path):
    """eval/last/attention.csv (moda_lab.eval.attention_stats) of each run: averaged over heads and domains per
    layer, then over seeds per variant; a run without the file, or incomplete, is left out."""
    from moda_lab.analysis.attention_runs import attention_by_variant, load_run_attention, plot_attention_by_variant

    sweep = build_paired_sweep(tmp_path / "sweep")
    summary = analyze(load_sweep_dir(sweep)).summary
    post = summary[(summary["norm"] == "post") & (summary["layers"] == 24)]
    written = []
    for _, run in post[post["model"].isin(["residual", "moda"]) & post["complete"]].iterrows():
        moda = run["model"] == "moda"
        rows = [{"step": STEPS, "asked": 2, "domain": dom, "windows": 2, "layer": layer, "head": head,
                 "depth_slots": layer * moda, "depth_mass": 0.1 * layer * moda + 0.01 * head + 0.001 * run["seed"],
                 "sink_mass": 0.5 + (0.1 if dom == "c4" else 0.0), "sequence_mass": 0.0}
                for dom in ("c4", "wiki") for layer in range(3) for head in range(2)]
        out = Path(run["path"]) / "eval" / "last"
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out / "attention.csv", index=False)
        written.append(run["run"])
    frame = load_run_attention(summary)
    assert set(frame["run"]) == set(written) and len(frame) == 3 * len(written)
    by = attention_by_variant(frame).set_index(["variant", "layer"])
    ffn = post[(post["model"] == "moda") & post["ffn_kv"] & post["complete"]]
    plain = post[(post["model"] == "moda") & ~post["ffn_kv"] & post["complete"]]
    seeds = sorted(plain["seed"].astype(int))
    assert by.loc[("moda", 2), "seeds"] == len(seeds)
    expect = 0.2 + 0.005 + 0.001 * sum(seeds) / len(seeds)  # heads 0, 1 averaged; seeds averaged
    assert by.loc[("moda", 2), "depth_mass:mean"] == pytest.approx(expect)
    assert by.loc[("residual", 1), "depth_mass:mean"] == pytest.approx(0.005 + 0.002)  # seeds 1-3
    assert by.loc[("moda +ffn_kv", 1), "sink_mass:mean"] == pytest.approx(0.55) and len(ffn) == 3
    fig = plot_attention_by_variant(frame)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "norm = post: mass on depth slots"
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any(lab.startswith("moda (") for lab in labels) and any(lab.startswith("residual (") for lab in labels)
    depth_lines = [line.get_label() for line in fig.axes[0].get_lines()]  # no depth slots, no depth-mass line
    assert depth_lines and not any(lab.startswith("residual (") for lab in depth_lines)
    # The sink row takes its own top (a mean of 0.55 over domains here, so 0.63), at least 0.05; the depth row stays 0-1.
    assert fig.axes[0].get_ylim() == (0, 1) and fig.axes[1].get_ylim()[1] == pytest.approx(1.15 * 0.55)
    small = plot_attention_by_variant(frame.assign(sink_mass=frame["sink_mass"] * 0.01))
    assert small.axes[1].get_ylim()[1] == pytest.approx(0.05)
    # Runs of another config (recipe, lr, corpus) of the same variants are lines of their own, never averaged in.
    other = frame.assign(cell_label="lr=0.0045, optimizer=muon", depth_mass=frame["depth_mass"] + 0.5,
                         run=frame["run"] + "-muon")
    both = pd.concat([frame.assign(cell_label="lr=0.003, optimizer=adamw"), other], ignore_index=True)
    split = attention_by_variant(both).set_index(["variant", "cell_label", "layer"])
    assert split.loc[("moda", "lr=0.0045, optimizer=muon", 2), "depth_mass:mean"] == pytest.approx(expect + 0.5)
    assert split.loc[("moda", "lr=0.003, optimizer=adamw", 2), "depth_mass:mean"] == pytest.approx(expect)
    lines = [line.get_label() for line in plot_attention_by_variant(both).axes[0].get_lines()]
    assert sum(lab.startswith("moda (") for lab in lines) == 2 and any("optimizer=muon" in lab for lab in lines)
    run_analysis(sweep, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "attention_by_layer.png").is_file()
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "attention_by_layer.csv")) == 3 * 3  # 3 variants x 3 layers


def test_no_baseline_anywhere_and_cli_values(tmp_path: Path):
    res = add_significance(analyze(load_sweep_dir(fx.build_fixture_sweep(tmp_path / "fixture"))))
    assert (res.paired["n"] == 0).all() and set(res.paired["note"]) == {"no baseline run in this cell"}
    assert paired_differences(res.summary.iloc[0:0]).empty
    run_analysis(tmp_path / "fixture", tmp_path / "out")
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert not {"paired_val_loss.png", "paired_val_loss_vs_tokens.png"} & figures and res.curves.empty
    assert parse_args(["sweep_dir=a", "min_drop=0.1"])["min_drop"] == "0.1"
    for bad in ("seed_std_target=0", "min_drop=x"):
        with pytest.raises(ValueError, match="out of range"):
            parse_args(["sweep_dir=a", bad])


def test_training_check_and_pairing_when_the_baseline_sat_at_the_unigram_loss(tmp_path, monkeypatch):
    """As in the first 24-layer GPU runs (table6_24l/sweep.tar.xz): both post-norm residual seeds sat at the unigram
    loss while MoDA trained; the training check says so, and the pairs name the baseline seeds that did not train."""
    residual, moda = (24, "post", "residual", False), (24, "post", "moda", False)
    monkeypatch.setitem(globals(), "FLAT", {(*residual, 0), (*residual, 1)})
    for key, final in ((residual, 7.14), (moda, 5.79)):
        for seed in (0, 1):
            fx.write_run_dir(tmp_path / "sweep", spec_of(*key, seed), rows_of(key, seed, final + 0.01 * seed)[0])
    res = add_significance(analyze(load_sweep_dir(tmp_path / "sweep")), reference=TABLE6)
    untrained = set(res.summary.loc[res.summary["trained"].eq(False), "run"])
    assert untrained == {spec_of(*residual, seed).name for seed in (0, 1)}
    assert res.summary["trained"].eq(True).sum() == len(res.summary) - 2 == 2
    post = row_of(res.paired, 24, "post", "moda")
    assert (post["n"], post["seeds"], post["not_trained"]) == (2, "0, 1", "baseline seed 0, 1")
    assert post["paper Δ"] == pytest.approx(3.4537 - 3.4740)


def test_a_wobbling_plateau_is_not_trained_a_falling_curve_is():
    from moda_lab.analysis.tidy import training_progress

    # table6_24l lr sweep, post-norm residual at lr 3e-3 (stuck at the unigram loss), and at lr 3.75e-4 (trained)
    stuck = pd.Series({0: 10.879, 100: 7.389, 200: 7.418, 300: 7.378, 400: 7.357})
    got = training_progress(stuck, 400)
    assert got["trained"] is False and got["val_drop_from"] == 100 and got["val_drop"] == pytest.approx(0.032)
    falling = pd.Series({0: 10.879, 100: 7.43, 200: 5.715, 300: 5.012, 400: 4.826})
    assert training_progress(falling, 400) == {"val_drop_from": 200, "val_drop": pytest.approx(0.889), "trained": True}


def test_a_run_whose_last_validation_came_before_its_last_step_is_reported(tmp_path: Path):
    """The Table 6 rows of 2026-12-01 validated last at step 1501 of 1600 (the accumulate/epoch bug) and the
    tables called 1501's loss final: the summary now says which step its val loss is from, and an issue names it."""
    spec = fx.RunSpec("residual", "pre", 0)
    rows = fx.metrics_rows(spec)
    last_val = max(r["step"] for r in rows if "val/loss" in r)
    stale = [r for r in rows if not ("val/loss" in r and r["step"] == last_val)]
    fx.write_run_dir(tmp_path / "sweep", spec, stale)
    fx.write_run_dir(tmp_path / "sweep", fx.RunSpec("moda", "pre", 0), None)
    res = analyze(load_sweep_dir(tmp_path / "sweep"))
    row = res.summary.set_index("run").loc[spec.name]
    assert row["val_step"] < row["last_step"] == last_val
    stale_issues = [i for i in res.issues if i.kind == "val_before_last_step"]
    assert [i.run for i in stale_issues] == [spec.name]
    assert f"of {last_val}" in stale_issues[0].detail
