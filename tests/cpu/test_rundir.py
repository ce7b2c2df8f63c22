"""Run dirs: one list of run-independent keys behind both the run dir names and the relaunch check, run dirs
written before the norm moved into the model config, tokens per step, the metrics.jsonl rows."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import CONF, compose_cfg, job_run_dir
from moda_lab.config import ConfigError
from moda_lab.rundir import (
    RUN_INDEPENDENT_KEYS,
    RunDir,
    check_resume_compatible,
    flatten_config,
    run_independent,
    run_name,
    tokens_per_step,
    upgrade_config,
)

BASE = ["model=moda", "data.corpus_dir=data/corpus", "norm=post"]  # corpus_dir pinned: it follows default_corpus_dir


def _changed(value: object) -> str:
    """A Hydra override value different from value (validity does not matter here: nothing is built)."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int):
        return str(2 * value + 1)
    return "changed"


def _run_independent_leaves() -> list[str]:
    """Every config key RUN_INDEPENDENT_KEYS covers in the composed config (prefixes expanded)."""
    flat = flatten_config(compose_cfg(BASE))
    return sorted(k for k in flat if run_independent(k))


@pytest.mark.parametrize("key", _run_independent_leaves())
def test_run_independent_keys_neither_name_the_run_dir_nor_block_a_relaunch(key):
    """The two uses of the list cannot drift apart: a key changed on a relaunch lands in the same run dir (up to
    the run root and sweep name, which are its parents) and resumes there."""
    old = compose_cfg(BASE)
    override = f"{key}={_changed(flatten_config(old)[key])}"
    assert job_run_dir([*BASE, override]).name == job_run_dir(BASE).name
    check_resume_compatible(old, compose_cfg([*BASE, override]), CONF)


def test_every_run_independent_key_exists():
    flat = flatten_config(compose_cfg(BASE))
    for key in RUN_INDEPENDENT_KEYS:
        if key == "experiment":  # a group: its files set keys (name above all), it is no key itself
            continue
        assert any(k == key or (key.endswith(".") and k.startswith(key)) for k in flat), key


@pytest.mark.parametrize("override", ["trainer.lr=0.01", "norm=pre", "model=dense", "data.seq_len=64", "seed=1"])
def test_run_defining_keys_name_another_run_dir_and_refuse_a_relaunch(override):
    assert job_run_dir([*BASE, override]) != job_run_dir(BASE)
    with pytest.raises(ConfigError, match="already holds a run with a different config"):
        check_resume_compatible(compose_cfg(BASE), compose_cfg([*BASE, override]), CONF)


def test_run_names_are_hydras_override_dirname_of_the_run_defining_overrides():
    assert run_name([]) == "default"
    assert run_name(["norm=post", "model=moda", "trainer.max_steps=5", "logger.wandb.enabled=false"]) == (
        "model=moda,norm=post"
    )
    assert run_name(["data.corpus_dir=a/b", "+model.foo=1"]) == "+model.foo=1,data.corpus_dir=a_b"
    long = [f"data.corpus_dir={'x' * 130}", "model=moda"]
    assert run_name(long) == run_name(long) and run_name(long).startswith("model=moda,") and len(run_name(long)) < 40


def test_a_run_dir_from_before_the_norm_moved_resumes_and_is_read_in_todays_layout(tmp_path, monkeypatch):
    """config.yaml of earlier versions holds `norm: {placement: ...}` (experiments/results/ has such run dirs)."""
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    cmd = [f"run_root={tmp_path / 'runs'}", *BASE]
    new = compose_cfg(cmd)
    legacy = {**new, "model": {k: v for k, v in new["model"].items() if k != "norm"}, "norm": {"placement": "post"}}
    assert upgrade_config(legacy) == new
    rundir = RunDir(job_run_dir(cmd))
    rundir.path.mkdir(parents=True)
    rundir.config_path.write_text(yaml.safe_dump(legacy))
    assert rundir.read_config() == new
    check_command_line(cmd, CONF)  # the same command resumes it
    with pytest.raises(ConfigError, match=r"model.norm: 'post' -> 'pre'"):
        check_resume_compatible(rundir.read_config(), compose_cfg([*cmd[:-1], "norm=pre"]), rundir.path)


def test_tokens_per_step_never_negative(tmp_path):
    assert tokens_per_step(4, 2, 32, 3) == 768
    with pytest.raises(ValueError, match=r"world_size=-1 is out of range"):
        tokens_per_step(4, 2, 32, -1)
    rundir = RunDir(tmp_path)
    cfg = {"trainer": {"batch_size": 4, "accumulate": 2, "devices": -1}, "data": {"seq_len": 32}}
    rundir.config_path.write_text(yaml.safe_dump(cfg))
    assert rundir.tokens_at(10) is None  # trainer=ddp (devices=-1) in a run dir without its world size
    rundir.write_meta(world_size=2)
    assert rundir.tokens_at(10) == 10 * 4 * 2 * 32 * 2
    rundir.log_metrics(10, 123, {"val/loss": 1.0})
    assert rundir.tokens_at(10) == 123  # what the run logged wins


def test_metrics_rows_are_appended_and_dropped_in_one_place(tmp_path):
    rundir = RunDir(tmp_path)
    rundir.log_metrics(0, 0, {"model/params": 10})
    rundir.log_metrics(5, 50, {"train/loss": float("nan")})
    with rundir.metrics_path.open("a") as f:
        f.write('{"step": 7, "tok')  # a launch killed mid-write
    rows = list(rundir.metric_rows())
    assert [r["step"] for r in rows] == [0, 5] and rows[1]["train/loss"] == "nan"
    assert set(rows[0]) == {"step", "tokens", "time", "model/params"}
    assert rundir.drop_metrics_after(0) == 1  # the torn line goes too, but it was no row
    assert [json.loads(x)["step"] for x in rundir.metrics_path.read_text().splitlines()] == [0]


def test_a_damaged_metrics_line_is_named_not_counted_as_a_row_past_the_checkpoint(tmp_path, caplog):
    rundir = RunDir(tmp_path)
    rundir.log_metrics(0, 0, {"val/loss": 9.0})
    with rundir.metrics_path.open("a") as f:
        f.write('{"step": 5, "tr\n')  # a hand edit, a bad disk block: not the last line
    rundir.log_metrics(10, 100, {"val/loss": 8.0})
    rundir.log_metrics(15, 150, {"val/loss": 7.0})
    assert rundir.drop_metrics_after(10) == 1
    assert f"{rundir.metrics_path}: dropped unreadable line(s) [2] (not JSON rows)" in caplog.text
    assert [r["step"] for r in rundir.metric_rows()] == [0, 10]
