"""Fault probes of the training entry point (issue 32): each fault ends in one line naming the key or file, exit
status 2 where run.py reports it, and nothing written or lost; meta.json's status always says what happened."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers import CONF, ROOT, tiny_cfg
from moda_lab.config import ConfigError
from moda_lab.rundir import RunDirLocked, RunLock
from moda_lab.train.divergence import DivergedError
from moda_lab.train.task import RunDirWriteError, train

FAST = ["trainer.lr=0.02", "trainer.warmup_steps=2"]
SHORT = ["trainer.max_steps=8", "trainer.val_every=4", "trainer.ckpt_every=4", *FAST]


def run_py(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def files(path) -> dict:
    """Every file under path with its bytes: what a refused launch must leave as it was."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def meta(run_dir) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def ckpt_step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the command line: typos, device, run dir, refused before Hydra writes anything -----------------------------


def test_experiment_typo_exits_2_in_one_line_and_writes_nothing(tmp_path):
    proc = run_py([f"run_root={tmp_path / 'runs'}", "experiment=depth_flw"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        "config error: experiment=depth_flw is not allowed; choose one of "
        "['depth_flow', 'depth_flow_catalogue', 'table3_switches', 'table6_24l', 'table6_48l']\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override", ["norm=pr", "data=defalt", "trainer=gppu", "logger=wandbb", "eval=x", "hydra/launcher=jobllib",
                 "+experiment=depth_flw"]
)
def test_every_group_typo_is_refused(override, tmp_path, monkeypatch):
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    group = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{group}=\w+ is not allowed; choose one of \["):
        check_command_line([f"run_root={tmp_path / 'runs'}", override], CONF)
    assert list(tmp_path.iterdir()) == []


def test_a_typo_in_one_job_of_a_sweep_names_the_job(tmp_path, monkeypatch):
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^experiment=depth_flw is not allowed; .* \(job model=moda,experiment=depth_"):
        check_command_line(["-m", f"run_root={tmp_path}", "model=moda,dense", "experiment=depth_flow,depth_flw"], CONF)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the probe needs a machine without a GPU")
def test_gpu_trainer_without_gpu_exits_2_naming_the_switch(tmp_path):
    from moda_lab.train.preflight import check_command_line

    proc = run_py([f"run_root={tmp_path / 'runs'}", "trainer=gpu"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        "config error: trainer.accelerator='gpu' needs a CUDA GPU and this machine shows none "
        "(torch.cuda.is_available() is False); allowed here: trainer=cpu or trainer.accelerator=cpu\n"
    )
    assert list(tmp_path.iterdir()) == []
    for args in (["trainer.accelerator=cuda"], ["trainer=ddp"]):
        with pytest.raises(ConfigError, match=r"needs a CUDA GPU .* allowed here: trainer=cpu"):
            check_command_line([f"run_root={tmp_path / 'runs'}", *args], CONF)


def test_second_launch_of_a_running_run_dir_exits_2_naming_pid_and_host(tmp_path):
    run_dir = tmp_path / "runs" / "default" / "default"
    run_dir.mkdir(parents=True)
    holder = {"pid": os.getppid(), "host": platform.node(), "since": "2026-01-01T00:00:00"}  # alive: our parent
    (run_dir / ".lock").write_text(json.dumps(holder))
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = files(tmp_path)
    proc = run_py([f"run_root={tmp_path / 'runs'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {run_dir} is in use by pid {os.getppid()} on host {platform.node()!r} (since 2026-01-01T00:00:00);"
        f" wait for it to end, or delete {run_dir / '.lock'} if that launch is gone\n"
    )
    assert files(tmp_path) == before  # not even Hydra's .hydra/ was rewritten


def test_train_refuses_a_locked_run_dir_and_takes_over_a_stale_lock(tiny_corpus, tmp_path, caplog):
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["trainer.max_steps=2", "trainer.val_every=2", "trainer.ckpt_every=2"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": platform.node()}))
    before = files(run_dir)
    with pytest.raises(RunDirLocked, match=rf"^{run_dir} is in use by pid {os.getppid()} on host"):
        train(cfg, run_dir)  # the race preflight cannot see: two launches past it at once
    assert files(run_dir) == before

    (run_dir / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": platform.node()}))
    train(cfg, run_dir)
    assert "taking over the lock of pid" in caplog.text
    assert meta(run_dir)["status"] == "finished" and not (run_dir / ".lock").exists()  # released at the end


def test_lock_on_another_host_is_refused(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunDirLocked, match=r"in use by pid 1 on host 'elsewhere'"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "elsewhere"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_unwritable_run_root_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import run  # noqa: F401 - the entry point registers the run_name resolver of hydra.run.dir
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    with pytest.raises(RunDirWriteError, match=rf"^cannot write {ro}/default/default: {ro} is read-only .* "
                                               rf"nothing was written; set run_root= .*\(now run_root='{ro}'\)$"):
        check_command_line([f"run_root={ro}"], CONF)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^run_root='.*file/runs': .*file is not a directory"):
        check_command_line([f"run_root={tmp_path / 'file' / 'runs'}"], CONF)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"] and not any(ro.iterdir())


# --- faults during training: status and checkpoints stay true --------------------------------------------------


def test_disk_full_mid_run_ends_in_one_error_naming_the_file_and_what_was_kept(tiny_corpus, tmp_path, monkeypatch):
    from moda_lab.rundir import RunDir

    cfg = tiny_cfg(tiny_corpus, tmp_path, SHORT)
    run_dir = tmp_path / "run"
    original = RunDir.log_metrics

    def full_disk(self, step, tokens, metrics):
        if step >= 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.metrics_path))
        original(self, step, tokens, metrics)

    monkeypatch.setattr(RunDir, "log_metrics", full_disk)
    with pytest.raises(RunDirWriteError) as err:
        train(cfg, run_dir)
    assert str(err.value) == (
        f"cannot write {run_dir / 'metrics.jsonl'}: No space left on device; kept {run_dir / 'checkpoints' / 'last.ckpt'}"
        " (step 4); relaunching the same command resumes there"
    )
    assert meta(run_dir)["status"] == "failed" and ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 4
    assert not (run_dir / ".lock").exists()


def test_meta_json_is_rewritten_in_place_when_the_disk_is_full(tmp_path, monkeypatch):
    from pathlib import Path

    from moda_lab.rundir import RunDir

    rundir = RunDir(tmp_path)
    rundir.write_meta(status="running", note="x" * 40)
    original = Path.write_text

    def full(self, *args, **kwargs):
        if self.suffix == ".tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    rundir.write_meta(status="failed")
    assert rundir.read_meta() == {"status": "failed", "note": "x" * 40}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_nan_loss_is_skipped_then_the_run_stops_as_diverged_keeping_the_good_checkpoint(
    tiny_corpus, tmp_path, monkeypatch
):
    from moda_lab.train.module import LMModule

    cfg = tiny_cfg(tiny_corpus, tmp_path, [*SHORT, "trainer.max_steps=16", "trainer.max_skipped_steps=3"])
    run_dir = tmp_path / "run"
    original = LMModule.training_step

    def nan_from_step_6(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 6 else loss

    monkeypatch.setattr(LMModule, "training_step", nan_from_step_6)
    with pytest.raises(DivergedError) as err:
        train(cfg, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert str(err.value) == (
        "training diverged at step 10: loss nan on more than trainer.max_skipped_steps=3 steps in a row; kept the "
        f"last good checkpoint {last} (step 4); lower trainer.lr or raise trainer.warmup_steps"
    )
    assert meta(run_dir)["status"] == "diverged" and meta(run_dir)["global_step"] == 10
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step_000004.ckpt"]  # no step 8


def test_huge_lr_diverges_and_checkpoints_no_broken_weights(tiny_corpus, tmp_path):
    cfg = tiny_cfg(tiny_corpus, tmp_path, [*SHORT, "trainer.lr=1e6", "trainer.max_skipped_steps=2"])
    with pytest.raises(DivergedError, match=r"^training diverged at step \d+: .*; no checkpoint was kept; lower"):
        train(cfg, tmp_path / "run")
    assert meta(tmp_path / "run")["status"] == "diverged"
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize(
    "bad", ["trainer.max_skipped_steps=-1", "trainer.divergence_factor=1", "trainer.divergence_factor=nan"]
)
def test_divergence_keys_are_validated(bad, tiny_corpus, tmp_path):
    from moda_lab.config import run_config_from_dict

    cfg = tiny_cfg(tiny_corpus, tmp_path, [bad])
    with pytest.raises(ConfigError, match=rf"^{bad.split('=')[0]}=.* is out of range; allowed: "):
        run_config_from_dict(cfg)


def test_ctrl_c_saves_the_step_marks_interrupted_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    import moda_lab.train.task as task

    cfg = tiny_cfg(tiny_corpus, tmp_path, SHORT)
    run_dir = tmp_path / "run"
    original = task._StepMetric.on_train_batch_end

    def ctrl_c_at_step_5(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(task._StepMetric, "on_train_batch_end", ctrl_c_at_step_5)
        with pytest.raises(KeyboardInterrupt, match=rf"^saved {run_dir}/checkpoints/last.ckpt at step 5; relaunch"):
            train(cfg, run_dir)
    assert meta(run_dir)["status"] == "interrupted"
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    train(cfg, run_dir)
    assert meta(run_dir)["status"] == "finished" and ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 8


def test_finished_run_with_damaged_final_checkpoints_trains_the_missing_steps(tiny_corpus, tmp_path, caplog):
    cfg = tiny_cfg(tiny_corpus, tmp_path, SHORT)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    ckpts = run_dir / "checkpoints"
    assert meta(run_dir)["status"] == "finished" and sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt", "step_000004.ckpt", "step_000008.ckpt"
    ]
    for name in ("last.ckpt", "step_000008.ckpt"):
        (ckpts / name).write_bytes(b"damaged")
    train(cfg, run_dir)
    assert "meta.json says finished at step 8, but the newest intact checkpoint is step 4" in caplog.text
    assert meta(run_dir)["status"] == "finished" and ckpt_step(ckpts / "last.ckpt") == 8
    assert meta(run_dir)["launches"] == 2


def test_rejected_wandb_key_falls_back_to_offline(tiny_corpus, tmp_path, monkeypatch, caplog):
    import wandb

    from moda_lab.config import run_config_from_dict
    from moda_lab.rundir import RunDir
    from moda_lab.train.task import _wandb_logger

    def reject(**kwargs):
        raise wandb.errors.AuthenticationError("API key must be 40 characters long, yours was 5")

    monkeypatch.setattr(wandb, "init", reject)
    monkeypatch.setenv("WANDB_API_KEY", "bogus")
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["logger.wandb.enabled=true", "logger.wandb.mode=auto"])
    logger = _wandb_logger(run_config_from_dict(cfg), RunDir(tmp_path / "run"), {"wandb_id": "abc"}, cfg)
    assert logger._wandb_init["mode"] == "offline"
    assert "W&B refused the online run (AuthenticationError: API key must be 40 characters" in caplog.text
    assert "logging offline to" in caplog.text


def test_run_outputs_are_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["exports/model/config.json", "out/x.png", "runs/default/x/meta.json", "lightning_logs/v0/x"]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == paths


@pytest.mark.slow
def test_run_py_with_a_huge_lr_exits_2_as_diverged(tiny_corpus, tmp_path):
    from helpers import TINY

    args = [*TINY, f"data.corpus_dir={tiny_corpus}", f"data.cache_dir={tmp_path / 'cache'}",
            f"run_root={tmp_path / 'runs'}", *SHORT, "trainer.lr=1e6", "trainer.max_skipped_steps=1"]
    proc = run_py(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step ") and "trainer.max_skipped_steps=1" in last
    (run_dir,) = (tmp_path / "runs" / "default").iterdir()
    assert meta(run_dir)["status"] == "diverged" and not list((run_dir / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_run_py_ctrl_c_exits_130_after_saving_the_step(tiny_corpus, tmp_path):
    import time

    from helpers import TINY

    args = [*TINY, f"data.corpus_dir={tiny_corpus}", f"data.cache_dir={tmp_path / 'cache'}",
            f"run_root={tmp_path / 'runs'}", *FAST, "trainer.max_steps=100000", "trainer.val_every=1000",
            "trainer.ckpt_every=1000"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "default"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        rows = [line for p in metrics.glob("*/metrics.jsonl") for line in p.read_text().splitlines()]
        if any('"train/loss"' in line for line in rows):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    (run_dir,) = metrics.iterdir()
    step = ckpt_step(run_dir / "checkpoints" / "last.ckpt")
    assert err.strip().splitlines()[-1] == (
        f"interrupted: saved {run_dir / 'checkpoints' / 'last.ckpt'} at step {step}; relaunching the same command "
        "resumes there"
    )
    assert meta(run_dir)["status"] == "interrupted" and step >= 2 and not (run_dir / ".lock").exists()


def test_lock_works_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # the temp file is gone
    lock.release()
    assert list(tmp_path.iterdir()) == []
