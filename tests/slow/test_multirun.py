"""The product's main command, end to end: 8-run Hydra multirun, offline wandb, resumable relaunch."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import TINY, run_main

pytestmark = pytest.mark.slow


def launch(overrides: list[str], tmp_path) -> subprocess.CompletedProcess:
    return run_main(["-m", "model=residual,dense,depth_attn,moda", "norm=pre,post", "trainer=smoke", *overrides], tmp_path)


def test_multirun_trains_eight_logged_checkpointed_runs(tiny_corpus, tmp_path):
    overrides = [o for o in TINY if not o.startswith("logger.")] + [
        f"data.corpus_dir={tiny_corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run_root={tmp_path / 'runs'}",
        "trainer.max_steps=16",
        "trainer.val_every=8",
        "trainer.ckpt_every=8",
        "trainer.lr=0.02",
        "trainer.warmup_steps=2",
    ]
    launch(overrides, tmp_path)
    sweep = tmp_path / "runs" / "default"
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 8, [p.name for p in runs]
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        assert meta["status"] == "finished", run.name
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
        val = [json.loads(x)["val/loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if "val/loss" in x]
        assert len(val) == 3 and val[-1] < val[0] - 0.5, (run.name, val)
        offline = list((run / "wandb").glob("offline-run-*"))
        # One wandb run per job, with the id stored in meta.json: jobs did not bleed into each other.
        assert len(offline) == 1 and offline[0].name.endswith(meta["wandb_id"]), (run.name, offline)

    # Relaunching the identical command finds every run trained: nothing trains again and nothing is written (a
    # launch with nothing to do is not counted in meta.json either).
    before = {r.name: {f: (r / f).read_bytes() for f in ("meta.json", "config.yaml", "metrics.jsonl")} for r in runs}
    launch(overrides, tmp_path)
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        assert meta["launches"] == 1 and meta["status"] == "finished"
        assert {f: (run / f).read_bytes() for f in before[run.name]} == before[run.name]
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # the same wandb run resumed
