"""Loading runs: run dirs (with broken ones), offline wandb files written by real wandb, online API with a cache."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis import analyze, load_runs, load_sweep_dir, load_wandb_project, read_offline_run  # noqa: E402
from moda_lab.analysis.history import history_frame  # noqa: E402
from moda_lab.analysis.wandb_offline import WandbFileError, load_offline_dir  # noqa: E402


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.build_fixture_sweep(tmp_path_factory.mktemp("sweep") / "fixture")


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Three runs written by real wandb (offline): finished, failed, and one inside a run dir without metrics.jsonl."""
    root = tmp_path_factory.mktemp("wandb")
    ok = fx.RunSpec("moda", "pre", 0, ffn_kv=True)
    bad = fx.RunSpec("dense", "post", 1, steps=60)
    in_run = fx.RunSpec("moda", "post", 1)
    sweep = fx.build_fixture_sweep(root / "sweep")
    run_dir = sweep / in_run.name
    (run_dir / "metrics.jsonl").unlink()
    jobs = [
        fx.offline_job(ok, root / "standalone"),
        fx.offline_job(bad, root / "standalone", exit_code=1),
        fx.offline_job(in_run, run_dir),
    ]
    fx.write_offline_wandb_runs(jobs, root / "work")
    return SimpleNamespace(root=root, standalone=root / "standalone", sweep=sweep, ok=ok, bad=bad, in_run=in_run)


def by_run(records):
    return {r.run: r for r in records}


def test_history_keeps_last_value_per_step_and_key():
    rows = [
        {"step": 0, "tokens": 0, "model/flops_per_token": 10.0},
        {"step": 10, "tokens": 100, "train/loss": 3.0},
        {"step": 10, "tokens": 100, "val/loss": 2.9},  # val on its own line, same step
        {"step": 10, "tokens": 100, "train/loss": 2.5},  # resumed run re-logs step 10
    ]
    frame = history_frame(rows)
    assert frame["step"].tolist() == [0, 10]
    row = frame.set_index("step").loc[10]
    assert row["train/loss"] == 2.5 and row["val/loss"] == 2.9
    assert row["flops"] == 100 * 10.0  # FLOPs = tokens x flops_per_token (broadcast from step 0)


def test_sweep_loads_every_run_dir_and_reports_broken_ones(sweep: Path):
    records = load_sweep_dir(sweep)
    assert len(records) == fx.FIXTURE_RUNS
    result = analyze(records)
    kinds: dict[str, set[str]] = {}
    for issue in result.issues:
        kinds.setdefault(issue.run, set()).add(issue.kind)
    for run, expected in fx.FIXTURE_BROKEN.items():
        assert expected <= kinds.get(run, set()), (run, kinds.get(run))
    healthy = {r.run for r in records} - set(fx.FIXTURE_BROKEN) - {"dense-pre-L4-s2"}
    assert not healthy & set(kinds), f"healthy runs with issues: {healthy & set(kinds)}"
    # Broken runs stay in the tidy table and run summary; partial ones are excluded from tables, and say so.
    assert set(result.summary["run"]) == {r.run for r in records}
    incomplete = set(result.summary.loc[~result.summary["complete"], "run"])
    assert incomplete == set(fx.FIXTURE_BROKEN)
    assert {i.run for i in result.issues if i.kind == "excluded_from_tables"} == incomplete


def test_run_root_with_several_sweeps_and_empty_dirs(sweep: Path, tmp_path: Path):
    records = load_sweep_dir(sweep.parent)  # <run_root>/ holding <experiment>/ dirs
    assert len(records) == fx.FIXTURE_RUNS and all(r.run.startswith("fixture/") for r in records)
    from moda_lab.analysis import run_analysis
    from moda_lab.errors import UsageError

    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"^sweep_dir='[^']*nothing_here': no runs found"):
        run_analysis(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tidy_table_columns_and_values(sweep: Path):
    result = analyze(load_sweep_dir(sweep))
    tidy = result.tidy
    for col in [
        "run",
        "model",
        "norm",
        "depth_kv",
        "ffn_kv",
        "attn_kv",
        "seed",
        "layers",
        "width",
        "step",
        "tokens",
        "flops",
    ]:
        assert col in tidy, col
    assert not tidy.duplicated(["run", "step"]).any()
    row = tidy[(tidy["run"] == "moda-ffnkv-pre-L4-s1") & (tidy["step"] == 100)].iloc[0]
    spec = fx.RunSpec("moda", "pre", 1, ffn_kv=True)
    assert (row["model"], row["norm"], row["seed"], row["layers"], row["width"]) == ("moda", "pre", 1, 4, 64)
    assert bool(row["depth_kv"]) and bool(row["ffn_kv"]) and not bool(row["attn_kv"])
    expected_val = next(r["val/loss"] for r in fx.metrics_rows(spec) if r["step"] == 100 and "val/loss" in r)
    assert row["val/loss"] == pytest.approx(expected_val)
    assert row["tokens"] == 100 * fx.TOKENS_PER_STEP
    assert row["flops"] == pytest.approx(row["tokens"] * fx.params_and_flops(spec)[2])


def test_resumed_run_keeps_the_last_launch(sweep: Path):
    tidy = analyze(load_sweep_dir(sweep)).tidy
    run = tidy[tidy["run"] == "dense-pre-L4-s2"].set_index("step")
    original = {r["step"]: r["train/loss"] for r in fx.metrics_rows(fx.RunSpec("dense", "pre", 2)) if "train/loss" in r}
    assert run.loc[120, "train/loss"] == pytest.approx(original[120] - fx.RESUME_SHIFT)
    assert run.loc[160, "train/loss"] == pytest.approx(original[160])
    assert run.index.is_unique


def test_truncated_last_line_is_skipped_not_fatal(sweep: Path):
    rec = by_run(load_sweep_dir(sweep))["moda-post-L4-s2"]
    assert rec.history["step"].max() == 120
    assert rec.status == "running"


def test_offline_wandb_run_matches_what_was_logged(offline: SimpleNamespace):
    records = by_run(load_offline_dir(offline.standalone))
    assert set(records) == {offline.ok.name, offline.bad.name}
    ok = records[offline.ok.name]
    assert ok.source == "wandb-offline" and ok.status == "finished" and not ok.issues
    assert ok.config["model"]["mixer"] == {"name": "moda", "depth_kv": True, "ffn_kv": True, "attn_kv": False}
    logged = fx.merge_step_rows(fx.metrics_rows(offline.ok))
    hist = ok.history.set_index("step")
    assert list(hist.index) == [r["step"] for r in logged]
    last = logged[-1]
    assert hist.loc[last["step"], "eval/piqa/acc"] == pytest.approx(last["eval/piqa/acc"])
    val150 = next(r for r in logged if r["step"] == 150)["val/c4/loss"]
    assert hist.loc[150, "val/c4/loss"] == pytest.approx(val150)
    assert records[offline.bad.name].status == "failed"


def test_truncated_offline_file_is_reported(offline: SimpleNamespace, tmp_path: Path):
    src = next(offline.standalone.rglob("run-*.wandb"))
    folder = tmp_path / "offline-run-20260101_000000-cut"
    folder.mkdir()
    data = src.read_bytes()
    (folder / src.name).write_bytes(data[: len(data) * 2 // 3])
    rec = read_offline_run(folder)
    kinds = {i.kind for i in rec.issues}
    assert "no_exit_record" in kinds and rec.status == "running"
    assert 0 < len(rec.history) < len(fx.merge_step_rows(fx.metrics_rows(offline.ok)))
    (folder / src.name).write_bytes(b"not a wandb file at all")
    assert {i.kind for i in read_offline_run(folder).issues} == {"bad_wandb_file"}
    with pytest.raises(WandbFileError):
        from moda_lab.analysis.wandb_offline import _read_chunks

        _read_chunks(b"xx")


def test_run_dir_without_metrics_falls_back_to_offline_wandb(offline: SimpleNamespace):
    rec = by_run(load_sweep_dir(offline.sweep))[offline.in_run.name]
    assert rec.source == "wandb-offline"
    assert "missing_metrics" in {i.kind for i in rec.issues}  # reported, though recovered
    assert rec.history["step"].max() == offline.in_run.steps
    assert rec.history["val/loss"].notna().sum() == offline.in_run.steps // offline.in_run.val_every


def test_load_runs_does_not_double_count_offline_copies(offline: SimpleNamespace):
    records = load_runs(offline.sweep, wandb_offline=offline.sweep)
    names = [r.run for r in records]
    assert len(names) == len(set(names)) == fx.FIXTURE_RUNS


class FakeRun:
    def __init__(self, spec: fx.RunSpec, state: str) -> None:
        self.id, self.name, self.state, self.url = f"id-{spec.seed}", spec.name, state, f"https://wandb/{spec.name}"
        cfg = fx.run_config(spec, legacy=spec.seed == 1)  # seed 1: a run logged before the norm moved
        self.config = {k: {"value": v, "desc": None} for k, v in cfg.items()}  # wandb's legacy wrapping
        self.rows = [dict(r, _step=r["step"]) for r in fx.merge_step_rows(fx.metrics_rows(spec))]
        self.scans = 0

    def history(self, *args, **kwargs):  # pragma: no cover - must not be used: it samples
        raise AssertionError("run.history() samples rows; use scan_history()")

    def scan_history(self):
        self.scans += 1
        return iter(self.rows)


class FakeApi:
    def __init__(self, runs: list[FakeRun]) -> None:
        self._runs = runs

    def runs(self, path: str, filters: dict | None = None) -> list[FakeRun]:
        assert path == "ent/proj"
        return self._runs


def test_online_wandb_full_history_and_parquet_cache(tmp_path: Path):
    done, live = FakeRun(fx.RunSpec("moda", "pre", 0), "finished"), FakeRun(fx.RunSpec("dense", "pre", 1), "crashed")
    api = FakeApi([done, live])
    first = by_run(load_wandb_project("ent/proj", tmp_path, api=api))
    assert (tmp_path / "ent__proj" / "id-0.parquet").exists()
    assert len(first[done.name].history) == len(done.rows)
    assert first[done.name].config["model"]["mixer"]["name"] == "moda"  # {"value": ...} unwrapped
    assert first[live.name].status == "failed"
    second = by_run(load_wandb_project("ent/proj", tmp_path, api=api))
    assert done.scans == 1, "a finished run must come from the parquet cache"
    assert live.scans == 2, "an unfinished run must be fetched again"
    pd.testing.assert_frame_equal(first[done.name].history, second[done.name].history, check_dtype=False)
    load_wandb_project("ent/proj", tmp_path, api=api, refresh=True)
    assert done.scans == 2
    info = json.loads((tmp_path / "ent__proj" / "id-0.json").read_text())
    assert info["state"] == "finished" and not math.isnan(second[done.name].history["val/loss"].dropna().iloc[-1])


def test_offline_fixture_files_are_real_wandb_logs(offline: SimpleNamespace):
    files = list(offline.root.rglob("run-*.wandb"))
    assert len(files) == 3
    assert all(f.read_bytes()[:4] == b":W&B" for f in files)
    shutil.rmtree(offline.root / "work", ignore_errors=True)


def test_eval_tasks_left_out_for_missing_data_are_in_the_report(sweep: Path, tmp_path: Path):
    from moda_lab.analysis import run_analysis

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    run_a, run_b = sorted(p for p in copy.iterdir() if (p / "metrics.jsonl").is_file())[:2]
    results = {"results": {}, "moda": {"missing_tasks": {"hellaswag": "/data/eval/hellaswag.jsonl"}}}
    (run_a / "eval" / "last").mkdir(parents=True)
    (run_a / "eval" / "last" / "results.json").write_text(json.dumps(results))
    (run_b / "eval" / "last").mkdir(parents=True)
    (run_b / "eval" / "last" / "results.json").write_text(json.dumps({"results": {}, "moda": {"missing_tasks": {}}}))
    result = run_analysis(copy, tmp_path / "out")
    missing = [i for i in result.issues if i.kind == "missing_eval_tasks"]
    assert [i.run for i in missing] == [run_a.name]
    assert "hellaswag (/data/eval/hellaswag.jsonl)" in missing[0].detail
    assert "[missing_eval_tasks] eval/last/results.json" in (tmp_path / "out" / "report.md").read_text()


def test_cell_ids_do_not_move_with_the_block_contracts_config_layout():
    """Runs written before the Block contract carry MoDA's switches (False) on every variant; today's configs carry
    only the variant's own options. Both name the same cell, so a committed analysis regenerates the same tidy.csv;
    a switch that is on still makes another cell."""
    from moda_lab.analysis.records import cell_id, lr_group_id, pair_group_id

    base = {"name": "x", "seed": 0, "trainer": {"lr": 1e-3}, "model": {"norm": "pre", "n_layers": 2}}
    old = {**base, "model": {**base["model"], "mixer": {"name": "residual", "depth_kv": False, "ffn_kv": False,
                                                        "attn_kv": False}}}
    new = {**base, "model": {**base["model"], "mixer": {"name": "residual"}}}
    for fingerprint in (cell_id, lr_group_id, pair_group_id):
        assert fingerprint(old) == fingerprint(new)
    on = {**base, "model": {**base["model"], "mixer": {"name": "residual", "depth_kv": True}}}
    assert cell_id(on) != cell_id(new)
