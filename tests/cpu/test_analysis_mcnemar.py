"""McNemar's exact per-question test between two evaluations of a task, on synthetic samples files with known
discordant counts, and its table and report section on run dirs written here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis import add_significance, analyze, load_sweep_dir  # noqa: E402
from moda_lab.analysis.mcnemar import (  # noqa: E402
    SamplesError,
    compare_samples,
    final_samples,
    mcnemar_p,
    mcnemar_table,
)
from moda_lab.analysis.pipeline import significance_markdown, write_significance  # noqa: E402


def outcomes(b: int, c: int, both: int, neither: int) -> tuple[list[int], list[int]]:
    """0/1 per question of two evaluations: b right only in the first, c only in the second."""
    first = [1] * b + [0] * c + [1] * both + [0] * neither
    second = [0] * b + [1] * c + [1] * both + [0] * neither
    return first, second


def write_samples(path: Path, scores: list[int], metric: str = "acc_norm", extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"doc_id": i, metric: float(s), "acc": s, **(extra or {})} for i, s in enumerate(scores)]
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return path


def test_exact_p_against_hand_values():
    # b=8, c=2: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024.
    assert mcnemar_p(8, 2) == pytest.approx(112 / 1024, rel=1e-12) and mcnemar_p(2, 8) == mcnemar_p(8, 2)
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)  # every discordant question one way
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0  # capped at 1; no discordant question
    from scipy.stats import binomtest

    assert mcnemar_p(1000, 1100) == pytest.approx(binomtest(1000, 2100, 0.5).pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_p(-1, 2)


def test_compare_samples_counts_discordant_questions(tmp_path: Path):
    first, second = outcomes(b=8, c=2, both=6, neither=4)
    a = write_samples(tmp_path / "a" / "samples_piqa.jsonl", first)
    b = write_samples(tmp_path / "b" / "samples_piqa.jsonl", second)
    test = compare_samples(a, b)
    assert (test["task"], test["metric"], test["n"], test["b"], test["c"]) == ("piqa", "acc_norm", 20, 8, 2)
    assert test["diff"] == pytest.approx((8 - 2) / 20) and test["acc_a"] == pytest.approx(14 / 20)
    assert test["p"] == pytest.approx(112 / 1024) and test["unpaired"] == 0
    # BoolQ reports acc (plots.REPORTED_METRIC): the same files are read on acc there.
    assert compare_samples(a, b, "boolq")["metric"] == "acc"
    # A file with one question more: paired on the shared doc_ids, the extra one counted as unpaired.
    longer = write_samples(tmp_path / "c" / "samples_piqa.jsonl", [*second, 1])
    assert compare_samples(a, longer)["n"] == 20 and compare_samples(a, longer)["unpaired"] == 1


def test_bad_samples_files_name_the_file_and_line(tmp_path: Path):
    good = write_samples(tmp_path / "good" / "samples_piqa.jsonl", [1, 0, 1])
    bad = tmp_path / "bad" / "samples_piqa.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"doc_id": 0, "acc": 1}\n{"doc_id": 1, "acc": \n')
    with pytest.raises(SamplesError, match=f"{bad}:2: not JSON"):
        compare_samples(good, bad)
    bad.write_text('{"doc_id": 0, "acc": 1}\n{"doc_id": 0, "acc": 0}\n')
    with pytest.raises(SamplesError, match=f"{bad}:2: doc_id 0 appears twice"):
        compare_samples(good, bad)
    bad.write_text('{"doc_id": 0, "acc": 0.5, "acc_norm": 1}\n')
    with pytest.raises(SamplesError, match=r"doc_id 0: acc=0.5; allowed: 0 or 1"):
        compare_samples(good, bad, "boolq")
    other = write_samples(tmp_path / "other" / "samples_piqa.jsonl", [1, 0, 1], extra={"doc_hash": "x"})
    hashed = write_samples(tmp_path / "hashed" / "samples_piqa.jsonl", [1, 0, 1], extra={"doc_hash": "y"})
    with pytest.raises(SamplesError, match="doc_id 0 is a different question"):
        compare_samples(other, hashed)
    # A full 64-hex doc_hash (files before 2026-12-07) and its 16-hex prefix (later files) are the same question.
    full = write_samples(tmp_path / "full" / "samples_piqa.jsonl", [1, 0, 1], extra={"doc_hash": "ab" * 32})
    short = write_samples(tmp_path / "short" / "samples_piqa.jsonl", [1, 1, 1], extra={"doc_hash": "ab" * 8})
    assert compare_samples(full, short)["task"] == "piqa"
    moved = write_samples(tmp_path / "moved" / "samples_piqa.jsonl", [1, 1, 1], extra={"doc_hash": "ac" * 8})
    with pytest.raises(SamplesError, match="doc_id 0 is a different question"):
        compare_samples(full, moved)


# Per (variant, task): (b, c, both right, neither) of the variant's run against the baseline's run of the same seed.
COUNTS = {"piqa": (30, 5, 40, 25), "boolq": (3, 2, 50, 45)}


def write_evaluation(run_dir: Path, name: str, scores: dict[str, list[int]], step: int = 200, limit=None) -> Path:
    folder = run_dir / "eval" / "last" / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"moda": {"step": step, "eval_config": {"limit": limit}}}))
    for task, values in scores.items():
        write_samples(folder / f"samples_{task}.jsonl", values)
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """residual and moda, post-norm, seeds 0-1 with samples; moda seed 2 without a baseline run."""
    root = tmp_path_factory.mktemp("mcnemar") / "sweep"
    for seed in (0, 1, 2):
        for model in ("residual", "moda"):
            if (model, seed) == ("residual", 2):
                continue
            spec = fx.RunSpec(model=model, norm="post", seed=seed)
            run_dir = fx.write_run_dir(root, spec, fx.metrics_rows(spec))
            pick = 0 if model == "moda" else 1
            scores = {task: outcomes(*counts)[pick] for task, counts in COUNTS.items()}
            write_evaluation(run_dir, "step200_2tasks_aaaa", scores)
            if model == "moda" and seed == 0:  # a later, partial evaluation (limit) is not the final one
                write_evaluation(run_dir, "step200_2tasks_bbbb_limit5", {"piqa": [0] * 5}, limit=5)
                write_evaluation(run_dir, "step100_2tasks_cccc", {"piqa": [0] * 100}, step=100)
    return root


def test_table_pairs_each_seed_with_its_baseline_and_holm_over_tasks(sweep: Path):
    summary = analyze(load_sweep_dir(sweep)).summary
    moda0 = summary[(summary["variant"] == "moda") & (summary["seed"] == 0)].iloc[0]
    assert set(final_samples(moda0["path"], moda0["last_step"])) == {"piqa", "boolq"}
    assert final_samples(moda0["path"], 150) == {}  # no evaluation of that step
    table = mcnemar_table(summary)
    assert sorted(set(zip(table["seed"], table["task"]))) == [(0, "boolq"), (0, "piqa"), (1, "boolq"), (1, "piqa")]
    piqa = table[(table["seed"] == 0) & (table["task"] == "piqa")].iloc[0]
    assert (piqa["variant"], piqa["baseline"], piqa["n"], piqa["b"], piqa["c"]) == ("moda", "residual", 100, 30, 5)
    assert piqa["diff"] == pytest.approx(0.25)
    p_piqa = 2 * sum(math.comb(35, k) for k in range(6)) / 2**35
    boolq = table[(table["seed"] == 0) & (table["task"] == "boolq")].iloc[0]
    assert piqa["p"] == pytest.approx(p_piqa) and boolq["p"] == 1.0
    assert piqa["p_holm"] == pytest.approx(2 * p_piqa) and boolq["p_holm"] == 1.0  # Holm over the pair's 2 tasks
    assert piqa["exceeds_noise"] in (True,) and boolq["exceeds_noise"] in (False,)


def test_the_table_reads_runs_inside_a_committed_archive(sweep: Path, tmp_path: Path, monkeypatch):
    """Committed sweeps are archives (experiments/results/runs_gpu/*.tar.xz): a run's path stands for a folder that
    does not exist, and its samples are read from the extraction, as for an extracted folder."""
    from moda_lab.analysis.archive import CACHE_ENV, pack

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    archive = pack(sweep, tmp_path / "committed" / "sweep.tar.xz")
    table = mcnemar_table(analyze(load_sweep_dir(archive)).summary)
    assert len(table) == 4 and not (tmp_path / "committed" / "sweep").exists()
    assert table.drop(columns="config").equals(mcnemar_table(analyze(load_sweep_dir(sweep)).summary)
                                               .drop(columns="config"))


def test_report_section_only_where_samples_exist(sweep: Path, tmp_path: Path):
    analysis = add_significance(analyze(load_sweep_dir(sweep)))
    section = "\n".join(significance_markdown(analysis))
    assert "### Per-question tests per task (McNemar, final checkpoints)" in section
    assert "| 4 | post | 0.003 (both) | moda − residual | 0 | piqa | acc_norm | 100 | +25.00 | 30 | 5 |" in section
    written = write_significance(analysis, tmp_path / "tables", tmp_path / "figures")
    assert tmp_path / "tables" / "mcnemar.md" in written and (tmp_path / "tables" / "mcnemar.csv").exists()
    # The same runs without samples files: no section, no file, no issue.
    for samples in sweep.glob("*/eval/last/*/samples_*.jsonl"):
        samples.rename(samples.with_suffix(".bak"))
    try:
        bare = add_significance(analyze(load_sweep_dir(sweep)))
        assert bare.mcnemar.empty and "McNemar" not in "\n".join(significance_markdown(bare))
        assert "mcnemar.md" not in {p.name for p in write_significance(bare, tmp_path / "t2", tmp_path / "f2")}
        assert not [i for i in bare.issues if i.kind == "bad_samples"]
    finally:
        for kept in sweep.glob("*/eval/last/*/samples_*.bak"):
            kept.rename(kept.with_suffix(".jsonl"))


def test_a_broken_samples_file_is_an_issue_not_a_crash(tmp_path: Path):
    root = tmp_path / "sweep"
    for model in ("residual", "moda"):
        spec = fx.RunSpec(model=model, norm="post", seed=0)
        run_dir = fx.write_run_dir(root, spec, fx.metrics_rows(spec))
        folder = write_evaluation(run_dir, "step200_1tasks_aaaa", {"piqa": [1, 0, 1]})
        if model == "moda":
            (folder / "samples_piqa.jsonl").write_text("not json\n")
    analysis = add_significance(analyze(load_sweep_dir(root)))
    assert analysis.mcnemar.empty
    bad = [i for i in analysis.issues if i.kind == "bad_samples"]
    assert len(bad) == 1 and "samples_piqa.jsonl:1: not JSON" in bad[0].detail
