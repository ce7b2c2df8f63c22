"""Probes of the evaluation and export entry points (issue 32): every bad input prints one line naming the key or
file and what is allowed, exits 2 and writes nothing; a run dir whose last.ckpt is corrupt is evaluated at its
newest intact step checkpoint; evaluations are kept side by side with their per-example samples; the analysis
marks partial (eval.limit) evaluations.

The Hydra entry runs in-process (``moda_lab.eval.__main__.main`` reads sys.argv) on a tiny random checkpoint;
subprocesses only where the real exit status of a command line matters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.eval_runs import copy_run, file_tree, hydra_eval, usage_error, write_tiny_eval_run
from fixtures.eval_tasks import write_eval_fixtures

from helpers import ROOT

pytest.importorskip("lm_eval")

ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A run dir (checkpoints/step_5.ckpt, last.ckpt at step 10, meta.json) and two tasks of 4 examples each."""
    return write_tiny_eval_run(tmp_path_factory.mktemp("probes"))


# --- python -m moda_lab.eval: bad inputs --------------------------------------------------------------------


def _bad_checkpoints(tiny: dict) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint, what the line must say)."""
    tmp = tiny["tmp"] / "bad"
    (tmp / "empty_dir").mkdir(parents=True, exist_ok=True)
    (tmp / "run_no_ckpt" / "checkpoints").mkdir(parents=True, exist_ok=True)
    last = tiny["run"] / "checkpoints" / "last.ckpt"
    (tmp / "truncated.ckpt").write_bytes(last.read_bytes()[:5000])
    (tmp / "garbage.ckpt").write_bytes(b"not a checkpoint\n")
    return {
        "missing": (tmp / "nowhere.ckpt", f"checkpoint {tmp / 'nowhere.ckpt'} does not exist; give a .ckpt file"),
        "dir_without_checkpoint": (tmp / "empty_dir", f"{tmp / 'empty_dir'} is neither an exported model folder"),
        "run_dir_without_checkpoint": (
            tmp / "run_no_ckpt",
            f"{tmp / 'run_no_ckpt' / 'checkpoints'} holds no intact checkpoint (no .ckpt file in it)",
        ),
        "truncated": (tmp / "truncated.ckpt", f"cannot read checkpoint {tmp / 'truncated.ckpt'}: not a complete"),
        "garbage": (tmp / "garbage.ckpt", f"cannot read checkpoint {tmp / 'garbage.ckpt'}: not a complete"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "dir_without_checkpoint", "run_dir_without_checkpoint", "truncated", "garbage"]
)
def test_bad_checkpoint_is_one_line(tiny, monkeypatch, capsys, case):
    ckpt, expected = _bad_checkpoints(tiny)[case]
    before = file_tree(tiny["tmp"])
    line = usage_error(
        capsys, lambda: hydra_eval(monkeypatch, f"checkpoint={ckpt}", "tasks=[piqa]", f"data_dir={tiny['data']}")
    )
    assert line.startswith("eval error: ") and expected in line, line
    assert file_tree(tiny["tmp"]) == before


def _bad_task_files(tiny: dict) -> Path:
    bad = tiny["tmp"] / "bad_data"
    write_eval_fixtures(bad, tasks=("piqa", "copa"), n=2)
    with (bad / "piqa.jsonl").open("a") as f:
        f.write('{"goal": "cut"\n')  # line 3: a write cut short
    with (bad / "copa.jsonl").open("a") as f:
        f.write('{"premise": "The glass fell."}\n')  # line 3: fields missing
    return bad


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tasks=[lambada]"], "eval.tasks: unknown task(s) ['lambada']; available: ['piqa'"),
        (["tasks=[piqa]", "limit=0"], "eval.limit must be a positive integer or null, got 0"),
        (["tasks=[piqa]", "limit=-3"], "eval.limit must be a positive integer or null, got -3"),
        (["tasks=[piqa]", "batch_size=0"], "eval.batch_size must be a positive integer or auto, got 0"),
        (["tasks=[copa]", "data_dir={tmp}/no_such_dir"], "eval data missing: ['{tmp}/no_such_dir/copa.jsonl']"),
        (["tasks=[piqa]", "data_dir={bad}"], "{bad}/piqa.jsonl:3: not valid JSON"),
        (["tasks=[copa]", "data_dir={bad}"], "{bad}/copa.jsonl:3: missing field(s) ['choice1', 'choice2'"),
    ],
    ids=["unknown-task", "limit-0", "limit-negative", "batch-size-0", "missing-data-dir", "bad-json", "bad-fields"],
)
def test_bad_eval_setting_is_one_line(tiny, monkeypatch, capsys, args, expected):
    bad = _bad_task_files(tiny)
    fill = {"tmp": tiny["tmp"], "bad": bad}
    args = [a.format(**fill) for a in args]
    if not any(a.startswith("data_dir=") for a in args):
        args.append(f"data_dir={tiny['data']}")
    before = file_tree(tiny["tmp"])
    line = usage_error(capsys, lambda: hydra_eval(monkeypatch, f"checkpoint={tiny['run']}", "device=cpu", *args))
    assert expected.format(**fill) in line, line
    assert file_tree(tiny["tmp"]) == before


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("taks=[piqa]", "eval error: unknown key taks; the keys are ['after_fit', 'attention_windows', 'batch_size'"),
        ("tasks=[piqa", "eval error: cannot parse the command line (no viable alternative at input '[piqa')"),
    ],
    ids=["unknown-key", "bad-syntax"],
)
def test_bad_command_line_is_one_line(tiny, monkeypatch, capsys, arg, expected):
    before = file_tree(tiny["tmp"])
    line = usage_error(capsys, lambda: hydra_eval(monkeypatch, f"checkpoint={tiny['run']}", arg))
    assert line.startswith(expected), line
    assert file_tree(tiny["tmp"]) == before


def test_no_checkpoint_given_is_one_line(tiny, monkeypatch, capsys):
    line = usage_error(capsys, lambda: hydra_eval(monkeypatch, "tasks=[piqa]", f"data_dir={tiny['data']}"))
    assert line == "eval error: checkpoint= is required: a .ckpt file, a run dir or an exported model folder"


def test_the_real_command_line_exits_2(tiny):
    """The exit status and stderr of the real entry point (Hydra would print a traceback and exit 1)."""
    missing = tiny["tmp"] / "nowhere"
    cmd = [sys.executable, "-m", "moda_lab.eval", f"checkpoint={missing}", f"data_dir={tiny['data']}"]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.splitlines() == [f"eval error: checkpoint {missing} does not exist; give a .ckpt file, a run "
                                       "dir or an exported folder (config.json)"]


# --- corrupt last.ckpt: the newest intact step checkpoint ---------------------------------------------------


def test_corrupt_last_ckpt_falls_back_to_the_newest_intact_step(tiny, monkeypatch, capsys):
    run = copy_run(tiny, "torn_last")
    last = run / "checkpoints" / "last.ckpt"
    torn = last.read_bytes()[:3000]
    last.write_bytes(torn)
    hydra_eval(monkeypatch, f"checkpoint={run}", "tasks=[piqa]", f"data_dir={tiny['data']}", "device=cpu")
    logged = capsys.readouterr().out  # Hydra's job logging writes to stdout
    warning = f"using {run / 'checkpoints' / 'step_5.ckpt'} (step 5), the newest intact checkpoint: {last} is passed over"
    assert warning in logged and "resuming" not in logged
    (results,) = (run / "eval" / "step_5").glob("*/results.json")
    assert json.loads(results.read_text())["moda"]["step"] == 5
    assert last.read_bytes() == torn and sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt", "step_5.ckpt"]  # evaluation renames and copies nothing (training's resume does)
    # A torn file named explicitly stays an error, pointing at the run dir.
    from moda_lab.load import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match=f"give the run dir {run} to use its newest intact checkpoint"):
        load_checkpoint(last)


# --- evaluations side by side, with their samples -----------------------------------------------------------


def test_evaluations_are_kept_side_by_side_with_samples(tiny, monkeypatch):
    from moda_lab.eval.hook import evaluate_run
    from moda_lab.eval.tasks import SPLIT_SIZES

    for task in ("piqa", "copa"):  # the fixture's 4 examples stand for the full splits: a full evaluation
        monkeypatch.setitem(SPLIT_SIZES, task, 4)
    run = copy_run(tiny, "side_by_side")
    data = f"data_dir={tiny['data']}"
    hydra_eval(monkeypatch, f"checkpoint={run}", "tasks=[piqa,copa]", data, "device=cpu", "batch_size=3")
    (full,) = (run / "eval" / "last").glob("*/results.json")
    kept = full.read_bytes()
    hydra_eval(monkeypatch, f"checkpoint={run}", "tasks=[piqa]", data, "device=cpu", "limit=2")
    (partial,) = [p for p in (run / "eval" / "last").glob("*/results.json") if p != full]
    assert full.read_bytes() == kept
    assert full.parent.name.startswith("step10_2tasks_") and partial.parent.name.startswith("step10_1tasks_")
    assert partial.parent.name.endswith("_limit2")
    results = json.loads(full.read_text())
    for task in ("piqa", "copa"):
        lines = [json.loads(x) for x in (full.parent / f"samples_{task}.jsonl").read_text().splitlines()]
        assert [r["doc_id"] for r in lines] == [0, 1, 2, 3]
        for metric in ("acc", "acc_norm"):
            mean = sum(r[metric] for r in lines) / len(lines)
            assert mean == pytest.approx(results["results"][f"moda_{task}"][f"{metric},none"])
        assert all(r["pred"] in (0, 1) and r["target"] in (0, 1) and len(r["doc_hash"]) == 16 for r in lines)
        assert all(r["acc"] == float(r["pred"] == r["target"]) for r in lines)  # acc is the raw argmax's
    assert len((partial.parent / "samples_piqa.jsonl").read_text().splitlines()) == 2
    # Only the full evaluation is a row of the run's metrics.jsonl.
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["eval/piqa/acc"] == results["results"]["moda_piqa"]["acc,none"]
    # The after-fit hook finds either evaluation done (new layout) and evaluates nothing again.
    cfg = {"tasks": ["piqa", "copa"], "data_dir": str(tiny["data"]), "device": "cpu", "batch_size": 5}
    assert evaluate_run(run, cfg) == results
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_hook_reads_the_layout_before_evaluation_folders(tiny):
    from moda_lab.eval.hook import evaluate_run

    run = copy_run(tiny, "legacy")
    cfg = {"tasks": ["piqa"], "data_dir": str(tiny["data"]), "device": "cpu"}
    from moda_lab.eval import eval_config_from_dict

    legacy = {"results": {}, "moda": {"step": 10, "eval_config": dataclasses.asdict(eval_config_from_dict(cfg))}}
    (run / "eval" / "last").mkdir(parents=True)
    (run / "eval" / "last" / "results.json").write_text(json.dumps(legacy))
    before = file_tree(run)
    assert evaluate_run(run, cfg) == json.loads(json.dumps(legacy))
    assert file_tree(run) == before


# --- the analysis: both layouts, partial evaluations marked -------------------------------------------------


def test_analysis_marks_partial_evaluations(tmp_path):
    from fixtures import analysis_sweep as fx

    from moda_lab.analysis.local_runs import EVAL_LIMIT, load_sweep_dir
    from moda_lab.analysis.tables import EVAL_EXAMPLES, paper_table
    from moda_lab.analysis.tidy import run_summary, tidy_table

    full_spec, partial_spec = fx.RunSpec("dense", "pre", 0), fx.RunSpec("moda", "pre", 0)
    full_rows = fx.metrics_rows(full_spec)
    full_run = fx.write_run_dir(tmp_path, full_spec, full_rows)
    full_metrics = {k: v for k, v in full_rows[-1].items() if k.startswith("eval/")}
    rows = fx.metrics_rows(partial_spec)
    evals = rows.pop()  # this run's evaluation was a partial one: not in metrics.jsonl, in its results only
    partial_run = fx.write_run_dir(tmp_path, partial_spec, rows)
    step, metrics = evals["step"], {k: v for k, v in evals.items() if k.startswith("eval/")}
    partial = {"results": {}, "moda": {"step": step, "metrics": metrics, "eval_config": {"limit": 100}}}
    folder = partial_run / "eval" / "last" / f"step{step}_4tasks_0123abcd_limit100"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(partial))
    # The full run: a results.json of the layout before evaluation folders, and a later partial evaluation of
    # the same step, which must not replace it.
    legacy = {"results": {}, "moda": {"step": step, "metrics": full_metrics, "eval_config": {"limit": None}}}
    (full_run / "eval" / "last").mkdir(parents=True)
    (full_run / "eval" / "last" / "results.json").write_text(json.dumps(legacy))
    other = full_run / "eval" / "last" / f"step{step}_4tasks_4567cdef_limit10"
    other.mkdir()
    worse = {"moda": {"step": step, "metrics": {k: 0.0 for k in metrics}, "eval_config": {"limit": 10}}}
    (other / "results.json").write_text(json.dumps(worse))

    records = {r.run: r for r in load_sweep_dir(tmp_path)}
    hist = records[partial_run.name].history
    assert hist.set_index("step").loc[step, EVAL_LIMIT] == 100
    assert hist.set_index("step").loc[step, "eval/piqa/acc"] == metrics["eval/piqa/acc"]
    full_hist = records[full_run.name].history.set_index("step")
    assert full_hist.loc[step, EVAL_LIMIT] == 0
    assert full_hist.loc[step, "eval/piqa/acc"] == full_metrics["eval/piqa/acc"]
    table = paper_table(run_summary(tidy_table(records.values())), "downstream")
    marks = dict(zip(table["model"], table[EVAL_EXAMPLES]))
    assert marks == {"dense": "all", "moda": "first 100 per task"}


# --- the lm-eval CLI wrapper --------------------------------------------------------------------------------


@pytest.mark.slow  # 6-8 s end to end; the fast tier covers the module with quicker tests
def test_lm_eval_cli_bad_model_args_is_one_line(tiny):
    missing = tiny["tmp"] / "nowhere.ckpt"
    out_dir = tiny["tmp"] / "cli_out"
    cmd = [sys.executable, "-m", "moda_lab.eval.cli", "--model", "moda", "--model_args", f"checkpoint={missing}",
           "--tasks", "moda_piqa", "--data_dir", str(tiny["data"]), "--output_path", str(out_dir)]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    # lm-eval's own INFO lines come first; the error is one line, and no traceback.
    assert "Traceback" not in out.stderr and not out_dir.exists()
    assert out.stderr.splitlines()[-1] == (
        f"eval error: checkpoint {missing} does not exist; give a .ckpt file, a run dir or an exported folder "
        "(config.json)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tasks", "moda_piqa,moda_lambada"], "eval error: --tasks: unknown task(s) ['moda_lambada']"),
        (["--tasks", "moda_piqa", "--limit", "0"], "eval error: --limit 0: give a positive number"),
    ],
    ids=["unknown-task", "limit-0"],
)
def test_lm_eval_cli_bad_flags_are_one_line(tiny, monkeypatch, capsys, args, expected):
    import lm_eval.__main__

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: pytest.fail("lm-eval must not start"))
    from moda_lab.eval.cli import main

    line = usage_error(capsys, lambda: main(["--model", "moda", "--model_args", f"checkpoint={tiny['run']}", *args]))
    assert line.startswith(expected), line


def test_lm_eval_cli_batch_size_defaults_to_the_hydra_entrys(monkeypatch):
    import lm_eval.__main__

    from moda_lab.eval import EvalConfig
    from moda_lab.eval.cli import main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["lm-eval"])
    main(["--model", "moda", "--model_args", "checkpoint=x", "--tasks", "moda_piqa"])
    main(["--model", "moda", "--model_args", "checkpoint=x", "--tasks", "moda_piqa", "-b", "2"])
    main(["--model", "hf", "--model_args", "pretrained=x", "--tasks", "moda_piqa"])
    first, second, stock = seen
    assert first[first.index("--batch_size") + 1] == str(EvalConfig.batch_size) == "8"
    assert "--batch_size" not in second and second[second.index("-b") + 1] == "2"
    assert "--batch_size" not in stock  # lm-eval's 1: an export runs inputs past its context one row at a time


# --- export ---------------------------------------------------------------------------------------------------


def test_export_refuses_a_non_empty_folder(tiny):
    out = tiny["tmp"] / "export_here"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = file_tree(out)
    cmd = [sys.executable, "-m", "moda_lab.hf", str(tiny["run"] / "checkpoints" / "last.ckpt"), str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines() == [
        f"export error: export folder {out} is not empty; give a new or empty folder, or --overwrite to replace its files"
    ]
    assert file_tree(out) == before
    from moda_lab.hf import export

    export(tiny["run"], out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
