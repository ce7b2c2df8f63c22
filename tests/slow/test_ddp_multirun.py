"""Lightning DDP (2 CPU processes, gloo) inside a Hydra multirun: each job trains once, the sweep is not re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, TINY

pytestmark = pytest.mark.slow


def test_ddp_jobs_in_multirun(tiny_corpus, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "model=residual,moda",
        "norm=post",
        "trainer=smoke",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=8",
        "trainer.val_every=4",
        *TINY,
        f"data.corpus_dir={tiny_corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run_root={tmp_path / 'runs'}",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert log.count("Launching 2 jobs locally") == 1  # children did not relaunch the sweep
    runs = sorted(p for p in (tmp_path / "runs" / "default").iterdir() if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        assert meta["status"] == "finished" and meta["launches"] == 1 and meta["global_step"] == 8
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if "train/loss" in r]
        assert train_rows[-1]["tokens"] == 8 * 4 * 32 * 2  # both ranks' batches count
        assert len([r for r in rows if "val/loss" in r]) == 3
