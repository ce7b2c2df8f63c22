"""Probes of the analysis faults of issue 32: sweeps mixing every run status, missing or empty sweep dirs, figures
left open, and runs counted twice.

Each probe checks what the user sees (every run listed with its status; one line and exit status 2 for a sweep
that is not there) and that nothing is written where nothing can be analysed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis import run_analysis  # noqa: E402
from moda_lab.analysis.plots import save_figure  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _write(root: Path, spec: fx.RunSpec, last: int | None, nonfinite_from: int | None = None) -> Path:
    """A run dir logged up to step ``last`` (None: no metrics.jsonl); metrics from ``nonfinite_from`` on are
    written as "nan" / "inf", as RunDir.log_metrics writes a diverged run's."""
    rows = None
    if last is not None:
        rows = [dict(r) for r in fx.metrics_rows(spec) if r["step"] <= last]
        for row in rows:
            if nonfinite_from is not None and row["step"] >= nonfinite_from:
                row.update({k: "inf" if k.startswith("val/") else "nan" for k in row if k.endswith("loss")})
    return fx.write_run_dir(root, spec, rows)


# run -> status in meta.json; every one of them must be listed with that status.
MIXED = {
    "dense-pre-L4-s0": "finished",
    "dense-pre-L4-s1": "finished",
    "moda-pre-L4-s0": "finished",
    "moda-pre-L4-s1": "diverged",
    "moda-pre-L4-s2": "interrupted",
    "dense-pre-L4-s2": "failed",
    "moda-post-L4-s0": "running",
    "dense-post-L4-s0": "finished",
    "dense-post-L4-s1": "unknown",
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, Path, object]:
    """Finished, diverged (nan/inf logged), interrupted, failed, partial, empty and metrics-less runs, analysed."""
    root = tmp_path_factory.mktemp("mixed") / "sweep"
    for name, status in MIXED.items():
        model, norm, _, seed = name.split("-")
        spec = fx.RunSpec(model, norm, int(seed[1:]), status=status)
        last = {"diverged": 120, "interrupted": 60, "failed": 30, "running": 90}.get(status, spec.steps)
        if status == "unknown":  # a dir holding only an empty metrics.jsonl: no meta.json status either
            run_dir = _write(root, spec, last=0)
            (run_dir / "metrics.jsonl").write_text("")
            (run_dir / "meta.json").unlink()
            continue
        _write(root, spec, last=last, nonfinite_from=100 if status == "diverged" else None)
    (root / "residual-pre-L4-s0").mkdir()
    (root / "residual-pre-L4-s0" / "config.yaml").write_text(json.dumps(fx.run_config(fx.RunSpec("residual", "pre", 0))))
    out = root.parent / "out"
    assert plt.get_fignums() == []
    analysis = run_analysis(root, out)
    return root, out, analysis


def test_every_run_of_a_mixed_sweep_is_listed_with_its_status(mixed):
    root, out, analysis = mixed
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    expected = {**MIXED, "residual-pre-L4-s0": "missing"}  # a config.yaml alone: no metrics, no status
    assert runs["status"].to_dict() == expected
    report = (out / "report.md").read_text()
    for run, status in expected.items():
        assert f"| {run} | local | {status} |" in report, run
    # Only the runs that reached their cell's last step without stopping count in the tables.
    assert set(runs.index[runs["complete"]]) == {"dense-pre-L4-s0", "dense-pre-L4-s1", "moda-pre-L4-s0",
                                                 "dense-post-L4-s0"}
    table = pd.read_csv(out / "tables" / "table3_main.csv")
    assert sorted(table["seeds"]) == [1, 1, 2]
    kinds = {(i.run, i.kind) for i in analysis.issues}
    assert {("moda-pre-L4-s1", "status_diverged"), ("moda-pre-L4-s1", "non_finite"),
            ("moda-pre-L4-s2", "status_interrupted"), ("dense-pre-L4-s2", "status_failed")} <= kinds
    diverged = next(i for i in analysis.issues if i.kind == "non_finite")
    assert diverged.detail == "train/loss, val/c4/loss, val/loss, val/wiki/loss not finite (nan/inf) from step 100 on"
    # The diverged run's curve stops where its loss stopped being a number: no inf reaches a mean or an axis.
    tidy = analysis.tidy[analysis.tidy["run"] == "moda-pre-L4-s1"]
    assert tidy["val/loss"].dropna().index.size == 1 and tidy.loc[tidy["step"] >= 100, "train/loss"].isna().all()


def test_the_analysis_leaves_no_figure_open(mixed):
    _, out, analysis = mixed
    assert [p for p in analysis.written if p.suffix == ".png"]  # figures were drawn ...
    assert plt.get_fignums() == []  # ... and closed (the fixture ran in this process)


def test_a_figure_that_cannot_be_saved_is_closed_too(tmp_path):
    fig, _ = plt.subplots()
    (tmp_path / "curve.png").mkdir()  # savefig cannot write a file where a folder is
    with pytest.raises(OSError):
        save_figure(fig, tmp_path, "curve")
    assert plt.get_fignums() == []


def _analysis_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "moda_lab.analysis", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_a_sweep_dir_without_runs_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    sweep = tmp_path / "sweep"
    if case == "empty":
        (sweep / "notes").mkdir(parents=True)  # folders, but none a run dir
    proc = _analysis_cli([f"sweep_dir={sweep}", f"out={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    why = "does not exist or is not a directory" if case == "missing" else "no runs found"
    assert lines == [lines[0]] and lines[0].startswith(f"moda_lab.analysis: sweep_dir='{sweep}'") and why in lines[0]
    assert not (tmp_path / "out").exists() and not (sweep / "analysis").exists()


@pytest.mark.parametrize("case", ["a file", "below a file", "read-only"])
def test_an_out_where_no_folder_can_be_made_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, case):
    from moda_lab.analysis.__main__ import main
    from moda_lab.errors import UsageError

    sweep = tmp_path / "sweep"
    _write(sweep, fx.RunSpec("dense", "pre", 0), last=200)
    notes, ro = tmp_path / "notes.txt", tmp_path / "ro"
    notes.write_text("mine")
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    out, why = {
        "a file": (notes, f"{notes} is a file, not a directory"),
        "below a file": (notes / "analysis", f"{notes} is a file, not a directory"),
        "read-only": (ro / "analysis", f"{ro} is read-only for this user"),
    }[case]
    line = f"out='{out}': {why}; allowed: a directory path this user can write"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main([f"sweep_dir={sweep}", f"out={out}"])
    assert exit_.value.code == 2 and capsys.readouterr().err == f"moda_lab.analysis: {line}\n"
    with pytest.raises(UsageError) as err:  # the library call too, once it has found the runs
        run_analysis(sweep, out)
    assert str(err.value) == line
    assert sorted(tmp_path.rglob("*")) == before and notes.read_text() == "mine"


# --- never count a run twice ----------------------------------------------------------------------------------


@pytest.fixture
def sweep_with_repeats(tmp_path) -> Path:
    """Two dense-pre cells' worth of seeds, plus a relaunch of seed 0 that stopped early, a copy of seed 1 under
    another name, and a link reaching seed 0's dir again."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        _write(root, fx.RunSpec("dense", "pre", seed), last=200)
    relaunch = _write(tmp_path / "elsewhere", fx.RunSpec("dense", "pre", 0, status="interrupted"), last=80)
    relaunch.rename(root / "dense-pre-L4-s0-relaunch")
    shutil.copytree(root / "dense-pre-L4-s1", root / "copy-of-s1")
    (root / "link-to-s0").symlink_to(root / "dense-pre-L4-s0", target_is_directory=True)
    return root


def test_a_run_is_never_counted_twice(sweep_with_repeats, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="moda_lab.analysis.repeats"):
        analysis = run_analysis(sweep_with_repeats, out)
    assert set(analysis.summary["run"]) == {"dense-pre-L4-s0", "copy-of-s1"}  # what tables and curves see
    table = pd.read_csv(out / "tables" / "table3_main.csv")
    assert table["seeds"].tolist() == [2]
    repeats = {(r.record.run, r.kept, r.why) for r in analysis.repeats}
    assert repeats == {
        ("link-to-s0", "dense-pre-L4-s0", "same run dir"),
        ("dense-pre-L4-s0-relaunch", "dense-pre-L4-s0", "same config and seed"),  # fewer steps
        ("dense-pre-L4-s1", "copy-of-s1", "same config and seed"),  # a tie: the first loaded wins
    }
    assert len(caplog.records) == 3 and all("is not counted" in r.getMessage() for r in caplog.records)
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    assert len(runs) == 5 and runs.loc["dense-pre-L4-s0-relaunch", "repeat_of"] == "dense-pre-L4-s0"
    assert runs.loc["dense-pre-L4-s0-relaunch", "status"] == "interrupted"
    assert "| dense-pre-L4-s0-relaunch | local | interrupted | dense | pre | 0 | 80 | no: repeat of dense-pre-L4-s0 |" in (
        out / "report.md"
    ).read_text()
    assert {i.run for i in analysis.issues if i.kind == "repeated_run"} == {r[0] for r in repeats}


def test_a_finished_run_beats_an_unfinished_one_of_as_many_steps(tmp_path):
    from moda_lab.analysis.local_runs import load_sweep_dir
    from moda_lab.analysis.repeats import split_repeats

    root = tmp_path / "sweep"
    root.mkdir()
    _write(tmp_path / "1", fx.RunSpec("moda", "pre", 3, status="interrupted"), last=200).rename(root / "a-first")
    _write(tmp_path / "2", fx.RunSpec("moda", "pre", 3), last=200).rename(root / "b-second")
    counted, repeats = split_repeats(load_sweep_dir(root))
    assert [r.run for r in counted] == ["b-second"] and [r.record.run for r in repeats] == ["a-first"]


def test_malformed_run_files_are_one_line_issues_not_crashes(tmp_path):
    from moda_lab.analysis import analyze, load_sweep_dir

    root = tmp_path / "sweep"
    _write(root, fx.RunSpec("dense", "pre", 0), last=200)
    bad = _write(root, fx.RunSpec("dense", "pre", 2), last=70)
    with open(bad / "metrics.jsonl", "a") as f:  # steps that are no step: a string, null, a list, an overflow
        f.write('{"step": "x", "train/loss": 1}\n{"step": null}\n[1, 2]\n{"step": 1e999}\n')
    (bad / "meta.json").write_text("{cut")
    (bad / "config.yaml").write_text(": : [")
    listed = _write(root, fx.RunSpec("moda", "pre", 0), last=200)
    (listed / "config.yaml").write_text("- a\n- list\n")
    analysis = analyze(load_sweep_dir(root))
    kinds = [(i.run, i.kind) for i in analysis.issues]
    assert kinds.count(("dense-pre-L4-s2", "bad_line")) == 4
    assert {("dense-pre-L4-s2", "bad_meta"), ("dense-pre-L4-s2", "bad_config"), ("moda-pre-L4-s0", "bad_config")} <= set(kinds)
    assert all("\n" not in i.as_line() for i in analysis.issues)
    assert analysis.summary.set_index("run").loc["dense-pre-L4-s2", "last_step"] == 70
