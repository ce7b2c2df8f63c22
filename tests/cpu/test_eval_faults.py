"""Evaluation faults an audit found past the one-line convention (docs/FAILURES.md, "Evaluation and export"):

- a task file shorter than its full split, scored and logged as the full task (it is a partial evaluation now, as
  under eval.limit: kept out of metrics.jsonl, marked in the analysis; every evaluation records eval/<task>/n);
- a CUDA device on a machine without one (eval.device, run.py's eval.after_fit pre-check, --device) ending in
  torch's AssertionError;
- a gold label out of range (lm-eval's IndexError);
- the lm-eval CLI's ``--limit -1`` (islice's ValueError) and ``--limit 1.5`` (silently one example), a
  ``--model_args`` that is not JSON (lm-eval's ValueError) and ``--tasks copa``, lm-eval's own downloading task
  (a ConnectionError offline).

In-process on a tiny random checkpoint (no training), as tests/cpu/test_probes_eval.py does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from fixtures.eval_runs import copy_run, file_tree, hydra_eval, usage_error, write_tiny_eval_run
from fixtures.eval_tasks import TINY_RUN, write_eval_fixtures, write_tiny_text_corpus

from helpers import CONF

pytest.importorskip("lm_eval")

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A run dir holding a random tiny model's checkpoints (last.ckpt at step 10), and copa/piqa files of 4."""
    return write_tiny_eval_run(tmp_path_factory.mktemp("faults"))


def _eval_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine shows no CUDA GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- #4: a task file shorter than its full split is a partial evaluation --------------------------------------


def test_a_short_task_file_is_a_partial_evaluation_warned_and_kept_out_of_metrics(tiny, monkeypatch, capsys):
    run = copy_run(tiny, "short_file")
    hydra_eval(monkeypatch, f"checkpoint={run}", "tasks=[copa]", f"data_dir={tiny['data']}", "device=cpu")
    logged = capsys.readouterr().out  # Hydra's job logging writes to stdout
    copa = tiny["data"] / "copa.jsonl"
    assert f"{copa} holds 4 examples, fewer than the 100 of the full copa split" in logged
    assert "task files with fewer examples than the full split (copa 4 of 100): a partial evaluation" in logged
    assert _eval_rows(run) == []  # never reported as the full task
    (path,) = (run / "eval" / "last").glob("*/results.json")
    moda = json.loads(path.read_text())["moda"]
    assert moda["partial_tasks"] == {"copa": {"file": str(copa), "examples": 4, "full": 100}}
    assert moda["metrics"]["eval/copa/n"] == 4


def test_a_partial_evaluation_is_not_reused_once_its_task_file_changed(tiny, tmp_path, monkeypatch):
    """The after-fit hook reuses an evaluation folder of the same settings; its name hashes the data dir's path,
    so a short file replaced by a longer one at that path must be evaluated again, not reported as done."""
    from moda_lab.eval.evaluate import eval_config_from_dict
    from moda_lab.eval.hook import existing_results
    from moda_lab.load import run_checkpoint

    run = copy_run(tiny, "partial_reuse")
    data = write_eval_fixtures(tmp_path / "data", tasks=("copa",), n=4)
    hydra_eval(monkeypatch, f"checkpoint={run}", "tasks=[copa]", f"data_dir={data}", "device=cpu")
    cfg = eval_config_from_dict({"tasks": ["copa"], "data_dir": str(data), "device": "cpu"})
    ckpt, step = run_checkpoint(run)
    assert existing_results(ckpt, step, cfg)["moda"]["partial_tasks"]["copa"]["examples"] == 4  # unchanged: reused
    write_eval_fixtures(data, tasks=("copa",), n=6)
    assert existing_results(ckpt, step, cfg) is None
    (data / "copa.jsonl").unlink()
    assert existing_results(ckpt, step, cfg) is None  # evaluating again then names the missing file


def test_every_evaluation_records_how_many_examples_each_task_scored(tiny, monkeypatch):
    from moda_lab.eval.tasks import SPLIT_SIZES

    for task in ("piqa", "copa"):  # the fixture's 4 examples stand for the full splits: a full evaluation
        monkeypatch.setitem(SPLIT_SIZES, task, 4)
    run = copy_run(tiny, "full_files")
    hydra_eval(monkeypatch, f"checkpoint={run}", "tasks=[piqa,copa]", f"data_dir={tiny['data']}", "device=cpu")
    (row,) = _eval_rows(run)
    assert row["eval/piqa/n"] == row["eval/copa/n"] == 4 and "eval/copa/acc" in row
    (path,) = (run / "eval" / "last").glob("*/results.json")
    assert json.loads(path.read_text())["moda"]["partial_tasks"] == {}


def test_the_analysis_marks_a_short_task_file_like_a_limit(tmp_path):
    from fixtures import analysis_sweep as fx

    from moda_lab.analysis.local_runs import EVAL_PARTIAL_DATA, load_sweep_dir
    from moda_lab.analysis.mcnemar import final_samples
    from moda_lab.analysis.tables import EVAL_EXAMPLES, SHORT_FILES, paper_table
    from moda_lab.analysis.tidy import run_summary, tidy_table

    full_spec, short_spec = fx.RunSpec("dense", "pre", 0), fx.RunSpec("moda", "pre", 0)
    fx.write_run_dir(tmp_path, full_spec, fx.metrics_rows(full_spec))
    rows = fx.metrics_rows(short_spec)
    evals = rows.pop()  # evaluated on a short copa file: not in metrics.jsonl, in its results only
    short_run = fx.write_run_dir(tmp_path, short_spec, rows)
    step, metrics = evals["step"], {k: v for k, v in evals.items() if k.startswith("eval/")}
    partial = {"copa": {"file": "/data/copa.jsonl", "examples": 4, "full": 100}}
    results = {"moda": {"step": step, "metrics": metrics, "eval_config": {"limit": None}, "partial_tasks": partial}}
    folder = short_run / "eval" / "last" / f"step{step}_4tasks_0123abcd"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "samples_copa.jsonl").write_text('{"doc_id": 0, "target": 0, "acc": 1.0, "pred": 0}\n')

    records = {r.run: r for r in load_sweep_dir(tmp_path)}
    hist = records[short_run.name].history.set_index("step")
    assert hist.loc[step, EVAL_PARTIAL_DATA] == 1 and hist.loc[step, "eval/piqa/acc"] == metrics["eval/piqa/acc"]
    table = paper_table(run_summary(tidy_table(records.values())), "downstream")
    assert dict(zip(table["model"], table[EVAL_EXAMPLES])) == {"dense": "all", "moda": SHORT_FILES}
    assert final_samples(short_run, step) == {}  # paired tests read full evaluations alone, as for eval.limit


# --- #11: a CUDA device on a machine without one ------------------------------------------------------------


def test_eval_device_cuda_without_a_gpu_is_one_line(tiny, monkeypatch, capsys, no_cuda):
    before = file_tree(tiny["tmp"])
    line = usage_error(capsys, lambda: hydra_eval(
        monkeypatch, f"checkpoint={tiny['run']}", "tasks=[copa]", "limit=5", f"data_dir={tiny['data']}", "device=cuda"
    ))
    assert line == (
        "eval error: eval.device='cuda' needs a CUDA GPU and this machine shows none (torch.cuda.is_available() is "
        "False); allowed here: eval.device=cpu or eval.device=auto"
    )
    assert file_tree(tiny["tmp"]) == before


def test_run_py_refuses_eval_device_cuda_before_training(tiny, tmp_path, monkeypatch, no_cuda):
    """run.py's pre-check (every job, before Hydra makes a run dir) and its own pre-check before training."""
    from moda_lab.config import ConfigError
    from moda_lab.eval import EvalConfigError, eval_config_from_dict
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    corpus = write_tiny_text_corpus(tmp_path / "corpus")
    args = [*TINY_RUN, f"data.corpus_dir={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
            f"run_root={tmp_path / 'runs'}", "eval.after_fit=true", "eval.tasks=[copa]",
            f"eval.data_dir={tiny['data']}", "eval.device=cuda"]
    with pytest.raises(ConfigError, match=r"^eval.device='cuda' needs a CUDA GPU and this machine shows none"):
        check_command_line(args, CONF)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(EvalConfigError, match=r"^eval.device='cuda:1' needs a CUDA GPU"):
        eval_config_from_dict({"after_fit": True, "tasks": ["copa"], "data_dir": str(tiny["data"]), "device": "cuda:1"})


def test_a_cuda_index_past_the_gpus_is_refused(monkeypatch):
    from moda_lab.errors import UsageError
    from moda_lab.eval.device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1", "eval.device")
    with pytest.raises(UsageError, match=r"^eval.device='cuda:2' names GPU 2, but this machine shows 2; allowed"):
        check_device("cuda:2", "eval.device")


def test_the_moda_model_refuses_a_cuda_device_before_loading(tiny, no_cuda):
    from moda_lab.errors import UsageError
    from moda_lab.eval.lm import ModaLM

    with pytest.raises(UsageError, match=r"^device='cuda' needs a CUDA GPU .*; allowed here: device=cpu or device=auto"):
        ModaLM(checkpoint=tiny["tmp"] / "not_loaded.ckpt", device="cuda")


# --- #12: a gold answer out of range ------------------------------------------------------------------------

BAD_GOLD = {
    "copa": ({"label": 7}, "label=7 is out of range; task 'copa' allows 0 or 1 (the gold one of choice1, choice2)"),
    "piqa": ({"label": -1}, "label=-1 is out of range; task 'piqa' allows 0 or 1"),
    "boolq": ({"label": 2}, "label=2 is out of range; task 'boolq' allows 0 or 1"),
    "hellaswag": ({"label": "4"}, "label='4' is out of range; task 'hellaswag' allows 0..3"),
    "winogrande": ({"answer": "3"}, "answer='3' is out of range; task 'winogrande' allows '1' or '2'"),
    "mmlu": ({"answer": 4}, "answer=4 is out of range; task 'mmlu' allows 0..3"),
    "arc_easy": ({"answerKey": "E"}, "answerKey='E' is out of range; task 'arc_easy' allows one of the choice labels"),
    "openbookqa": ({"answerKey": "F"}, "answerKey='F' is out of range; task 'openbookqa' allows one of the choice"),
}


@pytest.mark.parametrize("task", sorted(BAD_GOLD))
def test_a_gold_answer_out_of_range_names_the_file_line_and_range(task, tmp_path):
    from moda_lab.eval.tasks import TaskDataError
    from moda_lab.eval.tasks.utils import load_local

    write_eval_fixtures(tmp_path, tasks=(task,), n=3)
    path = tmp_path / f"{task}.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    change, expected = BAD_GOLD[task]
    rows[1].update(change)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskDataError) as err:
        load_local(task, str(tmp_path))
    assert str(err.value).startswith(f"{path}:2: {expected}"), err.value


def test_copa_label_7_is_one_line(tiny, monkeypatch, capsys):
    bad = tiny["tmp"] / "bad_label"
    write_eval_fixtures(bad, tasks=("copa",), n=3)
    rows = [{**json.loads(x), "label": 7} for x in (bad / "copa.jsonl").read_text().splitlines()]
    (bad / "copa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = file_tree(tiny["tmp"])
    line = usage_error(capsys, lambda: hydra_eval(
        monkeypatch, f"checkpoint={tiny['run']}", "tasks=[copa]", f"data_dir={bad}", "device=cpu"
    ))
    assert line == (
        f"eval error: {bad / 'copa.jsonl'}:1: label=7 is out of range; task 'copa' allows 0 or 1 (the gold one of "
        "choice1, choice2)"
    )
    assert file_tree(tiny["tmp"]) == before


# --- #13-15: the lm-eval CLI's flags ------------------------------------------------------------------------


@pytest.fixture
def cli(tiny, monkeypatch):
    """moda_lab.eval.cli.main with lm-eval's own run replaced: returns the command lines lm-eval would have run."""
    import lm_eval.__main__

    from moda_lab.eval.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["lm-eval"])
    started: list[list[str]] = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: started.append(list(sys.argv)))

    def call(*args: str) -> list[list[str]]:
        main(["--model", "moda", "--model_args", f"checkpoint={tiny['run']}", *args])
        return started

    return call


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--limit", "-1"], "eval error: --limit -1: give a positive number of examples per task (a whole number), "
                            "or a fraction < 1 of each task's examples"),
        (["-L", "-3"], "eval error: --limit -3: give a positive number"),
        (["-L", "-0.5"], "eval error: --limit -0.5: give a positive number"),
        (["--limit", "inf"], "eval error: --limit inf: give a positive number"),
    ],
    ids=["negative", "short-flag", "negative-fraction", "inf"],
)
def test_lm_eval_cli_bad_limit_is_one_line(cli, capsys, args, expected):
    line = usage_error(capsys, lambda: cli("--tasks", "moda_copa", *args))
    assert line.startswith(expected), line


def test_lm_eval_cli_limit_is_a_whole_number_or_a_fraction(cli, capsys):
    """lm-eval reads --limit 1.5 as int(1.5) = 1 example; a fraction < 1 is its share of each task's examples."""
    line = usage_error(capsys, lambda: cli("--tasks", "moda_copa", "--limit", "1.5"))
    assert line.startswith("eval error: --limit 1.5: give a positive number of examples per task (a whole number)")
    started = cli("--tasks", "moda_copa", "--limit", "2")
    cli("--tasks", "moda_copa", "--limit", "0.5")
    assert [argv[argv.index("--limit") + 1] for argv in started] == ["2", "0.5"]


def test_lm_eval_cli_model_args_not_json_is_one_line(cli, capsys):
    from moda_lab.eval.cli import main

    line = usage_error(capsys, lambda: main(["--model", "moda", "--model_args", '{"checkpoint": ', "--tasks",
                                               "moda_copa"]))
    assert line.startswith('eval error: --model_args {"checkpoint": : not valid JSON (Expecting value'), line
    assert cli("--tasks", "moda_copa")  # key=value pairs go through


def test_lm_eval_cli_model_args_device_is_one_line_naming_device_flag(cli, capsys):
    """lm-eval passes --device to every model beside model_args: device= in both was its TypeError."""
    for model_args in ("checkpoint=x,device=cpu", '{"checkpoint": "x", "device": "cpu"}'):
        line = usage_error(capsys, lambda a=model_args: cli("--tasks", "moda_copa", "--model_args", a))
        assert line == (
            "eval error: --model_args device=cpu: give the device as --device cpu instead (lm-eval passes its "
            "--device to every model, and the two would clash)"
        )


def test_lm_eval_cli_device_cuda_without_a_gpu_is_one_line(cli, capsys, no_cuda):
    for args in (["--device", "cuda"], ["--device=cuda"]):
        line = usage_error(capsys, lambda args=args: cli("--tasks", "moda_copa", *args))
        assert line == (
            "eval error: --device='cuda' needs a CUDA GPU and this machine shows none (torch.cuda.is_available() is "
            "False); allowed here: --device=cpu or --device=auto"
        )
    (argv,) = cli("--tasks", "moda_copa", "--device=cpu")
    assert argv.count("--device") == 0 and "--device=cpu" in argv  # not overridden by the wrapper's default


def test_lm_eval_cli_refuses_lm_evals_downloading_copy_of_a_moda_task(cli, capsys):
    line = usage_error(capsys, lambda: cli("--tasks", "moda_piqa,copa"))
    assert line.startswith("eval error: --tasks: ['copa'] are lm-eval's own tasks, which download their data, and "
                           "the Hugging Face Hub is off here (HF_DATASETS_OFFLINE=1"), line
    assert "use ['moda_copa'], the same tasks over local files (--data_dir); the moda tasks are ['moda_piqa'" in line
    line = usage_error(capsys, lambda: cli("-t", "boolq"))
    assert "use ['moda_boolq']" in line
    assert cli("--tasks", "moda_copa")  # the moda tasks run


def test_lm_eval_cli_task_whose_data_is_not_offline_is_one_line(cli, capsys, monkeypatch):
    import lm_eval.__main__

    def offline() -> None:
        raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", offline)
    line = usage_error(capsys, lambda: cli("--tasks", "lambada_openai"))
    assert line.startswith(
        "eval error: --tasks lambada_openai: lm-eval cannot load its data (Couldn't reach 'EleutherAI/lambada_openai' "
        "on the Hub (OfflineModeIsEnabled)): the Hugging Face Hub is off here"
    ), line
    assert "The moda tasks read local files: ['moda_piqa'" in line


def test_a_perplexity_corpus_that_is_missing_or_empty_names_its_own_key(tmp_path):
    """eval.perplexity.domains=<a corpus dir> once got training's data.corpus_dir= in its message."""
    from moda_lab.eval.evaluate import EvalConfigError, eval_config_from_dict

    missing, empty = tmp_path / "nope", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalConfigError, match=rf"^eval.perplexity.domains='{missing}' does not exist or is not a dir"):
        eval_config_from_dict({"tasks": [], "perplexity": {"domains": str(missing)}})
    with pytest.raises(EvalConfigError, match=rf"^eval.perplexity.domains='{empty}' holds no text files"):
        eval_config_from_dict({"tasks": [], "perplexity": {"domains": str(empty)}})
