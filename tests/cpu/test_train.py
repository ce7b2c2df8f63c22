"""Training runs: logged metrics, exact resume (step, optimizer, schedule, data order), protected run dirs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from helpers import tiny_cfg
from moda_lab.config import ConfigError
from moda_lab.train.task import train

FAST = ["trainer.lr=0.02", "trainer.warmup_steps=2"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["optimizer_states"][0], ckpt["global_step"]


@pytest.fixture(scope="module")
def straight(tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    cfg = tiny_cfg(
        tiny_corpus, tmp, ["model=moda", "trainer.max_steps=12", "trainer.ckpt_every=6", "trainer.val_every=6", *FAST]
    )
    train(cfg, tmp / "run")
    return tmp / "run"


def test_run_dir_is_self_describing(straight):
    assert yaml.safe_load((straight / "config.yaml").read_text())["model"]["mixer"]["name"] == "moda"
    meta = json.loads((straight / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["wandb_id"] and meta["global_step"] == 12
    assert meta["attn_backend"] == "naive" and meta["compiled"] is False  # the backend that ran, logged once
    assert meta["kernel_dispatch"] == {"backend": "naive", "requested": "auto", "via_env": False}
    assert (straight / "env" / "pip-freeze-1.txt").read_text().count("torch==") == 1
    r = rows(straight)
    assert r[0]["model/params"] > 0 and r[0]["model/flops_per_token"] > 0
    val = [x for x in r if "val/loss" in x]
    assert [x["step"] for x in val] == [0, 6, 12]
    assert val[-1]["val/loss"] < val[0]["val/loss"] - 0.5
    assert all("val/prose/bpb" in x and "val/code/ppl" in x for x in val)
    train_rows = [x for x in r if "train/loss" in x]
    assert train_rows[-1]["tokens"] == 12 * 4 * 32
    assert all(k in train_rows[-1] for k in ("train/lr", "train/grad_norm", "perf/tokens_per_s"))


def train_until_crash(cfg: dict, run_dir, step: int, monkeypatch) -> None:
    """Train run_dir until a simulated crash at optimizer step `step`; the next train() call resumes it."""
    import moda_lab.train.task as task

    original = task._StepMetric.on_train_batch_end

    def crash(self, trainer, *args):
        if trainer.global_step == step:
            raise RuntimeError("simulated crash")
        original(self, trainer, *args)

    with monkeypatch.context() as patch:
        patch.setattr(task._StepMetric, "on_train_batch_end", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(cfg, run_dir)


def comparable_rows(run_dir):
    """metrics.jsonl without its wall-clock measurements (time, throughput), the only fields that may differ."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in rows(run_dir)]


def test_resume_after_crash_matches_uninterrupted_run(straight, tiny_corpus, tmp_path, monkeypatch, recwarn):
    """Crash after the step-6 checkpoint (rows up to step 8 written), relaunch: weights, optimizer moments, lr
    schedule, data order and metrics.jsonl must continue exactly, as in the run that was never interrupted."""
    cfg = tiny_cfg(
        tiny_corpus,
        tmp_path,
        ["model=moda", "trainer.max_steps=12", "trainer.ckpt_every=6", "trainer.val_every=6", *FAST],
    )
    train_until_crash(cfg, tmp_path / "run", 9, monkeypatch)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["status"] == "failed"
    assert weights(tmp_path / "run")[2] == 6
    assert max(r["step"] for r in rows(tmp_path / "run")) == 8
    train(cfg, tmp_path / "run")
    state, opt, step = weights(tmp_path / "run")
    ref_state, ref_opt, ref_step = weights(straight)
    assert step == ref_step == 12
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], atol=1e-5, rtol=1e-4, msg=k)
    for i, s in ref_opt["state"].items():
        torch.testing.assert_close(opt["state"][i]["exp_avg_sq"], s["exp_avg_sq"], atol=1e-8, rtol=1e-4)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["launches"] == 2 and meta["status"] == "finished"
    steps = [x["step"] for x in rows(tmp_path / "run") if "val/loss" in x]
    assert steps == [0, 6, 12]  # no second step-0 validation on resume
    assert comparable_rows(tmp_path / "run") == comparable_rows(straight)  # rows 7-8 logged once, not twice
    assert not [w for w in recwarn if "not resumable" in str(w.message)]  # the loader's position is in the state


ACCUM = ["trainer.accumulate=2", "trainer.batch_size=300", "trainer.max_steps=16", "trainer.val_every=4",
         "trainer.ckpt_every=4", *FAST]  # the tiny corpus's 4,758 windows: 15 batches of 300 a rank, epochs cut to 14


@pytest.mark.slow  # 7-20 s end to end; the fast tier covers the module with quicker tests
def test_accumulated_steps_never_span_epochs_and_resume_exactly(tiny_corpus, tmp_path, monkeypatch):
    """At accumulate=2, an epoch of an odd number of batches made Lightning step on its lone last batch: every later
    validation fell mid-step, the final one (step 16) never ran, and a run resumed there drifted by a batch (the
    Table 6 rows validated at 1101, 1201, ... 1501 of 1600). Epochs now hold whole steps: validations at every
    val_every, the last at max_steps, and a crash-resume across two epoch ends matches the uninterrupted run."""
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["model=moda", *ACCUM])
    train(cfg, tmp_path / "straight")
    val = [r["step"] for r in rows(tmp_path / "straight") if "val/loss" in r]
    assert val == [0, 4, 8, 12, 16]
    assert [r["tokens"] for r in rows(tmp_path / "straight") if "val/loss" in r][-1] == 16 * 2 * 300 * 32

    train_until_crash(cfg, tmp_path / "resumed", 10, monkeypatch)  # after the step-8 checkpoint, in epoch 2
    train(cfg, tmp_path / "resumed")
    assert comparable_rows(tmp_path / "resumed") == comparable_rows(tmp_path / "straight")
    state, _, step = weights(tmp_path / "resumed")
    ref_state, _, ref_step = weights(tmp_path / "straight")
    assert step == ref_step == 16
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], atol=1e-5, rtol=1e-4, msg=k)


def test_final_step_is_validated_when_val_every_does_not_divide_it(tiny_corpus, tmp_path):
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["trainer.max_steps=10", "trainer.val_every=4", *FAST])
    train(cfg, tmp_path / "run")
    assert [r["step"] for r in rows(tmp_path / "run") if "val/loss" in r] == [0, 4, 8, 10]


def test_resume_falls_back_to_newest_intact_checkpoint(straight, tmp_path, caplog):
    import shutil

    from moda_lab.train.checkpointing import resume_checkpoint

    ckpts = tmp_path / "checkpoints"
    shutil.copytree(straight / "checkpoints", ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_000006.ckpt", "step_000012.ckpt"]
    assert resume_checkpoint(ckpts) == (ckpts / "last.ckpt", 12)

    full = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(full[: len(full) // 2])  # torn
    (ckpts / "step_000012.ckpt.tmp").write_bytes(b"half a write")
    assert resume_checkpoint(ckpts) == (ckpts / "last.ckpt", 12)  # step 12 restored as last.ckpt
    assert (ckpts / "last.ckpt").read_bytes() == (ckpts / "step_000012.ckpt").read_bytes()
    assert (ckpts / "last.ckpt.corrupt").is_file() and not (ckpts / "step_000012.ckpt.tmp").exists()
    assert "last.ckpt is unreadable" in caplog.text and "resuming from" in caplog.text

    (ckpts / "last.ckpt").unlink()  # deleted by hand
    (ckpts / "step_000012.ckpt").write_bytes(b"garbage")
    assert resume_checkpoint(ckpts) == (ckpts / "last.ckpt", 6)
    for p in ckpts.glob("*.ckpt"):
        p.write_bytes(b"")
    assert resume_checkpoint(ckpts) is None  # nothing intact: start afresh, corrupt files kept aside
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt.corrupt",
        "step_000006.ckpt.corrupt",
        "step_000012.ckpt.corrupt",
    ]


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from moda_lab.train import checkpointing

    target = tmp_path / "last.ckpt"
    io = checkpointing.AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, target)

    def torn_save(obj, f):
        f.write(b"PK partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(checkpointing.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=False)["global_step"] == 1


def test_lightning_logs_print_once(monkeypatch):
    import logging

    from moda_lab.train.console import quiet_console

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.StreamHandler()])
    quiet_console()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        assert lg.propagate and not [h for h in lg.handlers if type(h) is logging.StreamHandler], name


def test_relaunch_with_other_model_refuses_and_keeps_files(straight, tiny_corpus, tmp_path):
    ckpt = straight / "checkpoints" / "last.ckpt"
    before = (ckpt.stat().st_mtime_ns, (straight / "metrics.jsonl").read_text())
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["model=moda", "model.d_model=64"])
    with pytest.raises(
        ConfigError,
        match=r"already holds a run with a different config \(model.d_model: 32 -> 64, trainer.lr: 0.02 -> 0.0015",
    ):
        train(cfg, straight)
    assert (ckpt.stat().st_mtime_ns, (straight / "metrics.jsonl").read_text()) == before


def _copy_run(run_dir, tmp_path):
    import shutil

    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def _files(run_dir) -> dict:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("max_steps", [6, 12])
def test_relaunch_of_a_finished_run_writes_nothing(straight, tiny_corpus, tmp_path, max_steps, caplog):
    """"Nothing to do" leaves every file as it was: config.yaml keeps the max_steps the run was trained to (a
    relaunch with fewer steps once rewrote it, and the analysis then filed the run under the smaller budget)."""
    caplog.set_level("INFO", logger="moda_lab")
    run_dir = _copy_run(straight, tmp_path)
    before = _files(run_dir)
    overrides = ["model=moda", f"trainer.max_steps={max_steps}", "trainer.ckpt_every=6", "trainer.val_every=6", *FAST]
    assert train(tiny_cfg(tiny_corpus, tmp_path, overrides), run_dir) == {}
    assert "already trained to step 12: nothing to do" in caplog.text
    assert _files(run_dir) == before


@pytest.mark.parametrize(
    "name, text, why",
    [
        ("meta.json", '{"status": "fini', "Unterminated string"),
        ("meta.json", "", "Expecting value"),
        ("meta.json", "[1, 2]", "it holds a list, not a mapping"),
        ("config.yaml", "model: [moda", "expected ',' or ']'"),
        ("config.yaml", "", "it is empty"),
    ],
)
def test_a_damaged_run_file_is_named_and_nothing_is_written(straight, tiny_corpus, tmp_path, name, text, why):
    from moda_lab.rundir import DamagedRunFile

    run_dir = _copy_run(straight, tmp_path)
    (run_dir / name).write_text(text)
    before = _files(run_dir)
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["model=moda", "trainer.max_steps=18", "trainer.ckpt_every=6", "trainer.val_every=6", *FAST])
    with pytest.raises(DamagedRunFile, match=rf"^{run_dir / name} is damaged \(.*{why}.*\); nothing was written; "):
        train(cfg, run_dir)
    assert _files(run_dir) == before


@pytest.mark.parametrize("world", [1, 3])
def test_sampler_resumes_at_any_batch_across_epochs(world):
    """Position k batches in (epochs of 2 batches of 4 per rank, partial batches dropped) continues with batch k."""
    from torch.utils.data import BatchSampler

    from moda_lab.train.datamodule import ResumableSampler

    def batches(sampler, epochs):
        return [b for _ in range(epochs) for b in BatchSampler(sampler, 4, drop_last=True)]

    for rank in range(world):
        full = batches(ResumableSampler(10 * world + 1, seed=3, rank=rank, world=world), 3)
        assert len(full) == 6
        for k in range(6):
            s = ResumableSampler(10 * world + 1, seed=3, rank=rank, world=world)
            s.seek(4 * k, 4)
            assert batches(s, 3)[0] == full[k], (rank, k)


@pytest.mark.slow  # a compiled run, ~20 s on two cores
def test_compiled_validation_is_traced_once(tiny_corpus, tmp_path):
    """The step-0 validation (trainer.validate) and the validations inside fit share one compiled graph: with
    Lightning's inference_mode they were traced twice (their inputs' dispatch keys differed)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_cfg(tiny_corpus, tmp_path, ["model=residual", "model.n_layers=1", "trainer.compile=true",
                                           "trainer.max_steps=4", "trainer.val_every=2", "trainer.ckpt_every=2", *FAST])
    train(cfg, tmp_path / "run")
    assert sum(1 for r in rows(tmp_path / "run") if "val/loss" in r) == 3  # steps 0, 2 and 4
    assert counters["stats"]["unique_graphs"] == 2  # the training step and the validation forward
