"""hydra/launcher=parallel: sweep jobs run at the same time (joblib workers), each in its own run dir, and a
relaunch resumes them (the way several Table 6 runs share one GPU, experiments/gpu/sweep.sh PARALLEL=3)."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import TINY, run_main

pytestmark = pytest.mark.slow


def launch(overrides: list[str], tmp_path) -> subprocess.CompletedProcess:
    return run_main(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "model=residual,moda",
                     "trainer=smoke", *overrides], tmp_path)


def test_parallel_jobs_overlap_and_resume(tiny_corpus, tmp_path):
    overrides = [o for o in TINY if not o.startswith("logger.")] + [
        f"data.corpus_dir={tiny_corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run_root={tmp_path / 'runs'}",
        "trainer.max_steps=16",
        "trainer.val_every=8",
        "trainer.ckpt_every=8",
    ]
    launch(overrides, tmp_path)
    runs = sorted(p for p in (tmp_path / "runs" / "default").iterdir() if p.is_dir())
    assert [r.name.split(",")[0] for r in runs] == ["model=moda", "model=residual"]
    spans = []
    for run in runs:
        assert json.loads((run / "meta.json").read_text())["status"] == "finished", run.name
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 16 and (run / "config.yaml").is_file()
        spans.append((rows[0]["time"], rows[-1]["time"]))
    # Both jobs were training at the same time: each one's first logged row comes before the other's last.
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans

    sizes = {r.name: (r / "metrics.jsonl").stat().st_size for r in runs}
    proc = launch(overrides, tmp_path)
    out = proc.stdout + proc.stderr
    assert out.count("nothing to do") == 2, out[-2000:]
    assert {r.name: (r / "metrics.jsonl").stat().st_size for r in runs} == sizes
