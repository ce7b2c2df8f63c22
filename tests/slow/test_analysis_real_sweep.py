"""The analysis on a tiny REAL sweep: `run.py -m model=moda,dense norm=post` with offline wandb, then the CLI,
then attention inspection of the trained MoDA checkpoint (Lightning .ckpt with its tokenizer inside)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_sweep(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import TINY

    tmp = tmp_path_factory.mktemp("real")
    overrides = [o for o in TINY if not o.startswith("logger.")] + [
        f"data.corpus_dir={tiny_corpus}",
        f"data.cache_dir={tmp / 'cache'}",
        f"run_root={tmp / 'runs'}",
        "name=analysis",
        "trainer=smoke",
        "trainer.max_steps=8",
        "trainer.val_every=4",
        "trainer.ckpt_every=8",
        "trainer.warmup_steps=2",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, str(REPO / "run.py"), "-m", "model=moda,dense", "norm=post", *overrides]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "analysis"


def test_cli_on_real_sweep(real_sweep: Path, tmp_path: Path, capsys):
    from moda_lab.analysis.__main__ import main

    # 8 steps of a tiny model move the val loss by ~0.005 nats: the default training check (min_drop=0.05 over the
    # second half) calls that not trained, rightly; this test is about loading, so any fall counts here.
    assert main([f"sweep_dir={real_sweep}", f"out={tmp_path}", "min_drop=0"]) == 0
    assert "2 runs loaded, 2 complete; 0 issues" in capsys.readouterr().out
    runs = pd.read_csv(tmp_path / "runs.csv").set_index("model")
    assert runs["trained"].all() and (runs["val_drop"] > 0).all() and (runs["val_drop_from"] == 4).all()
    assert set(runs.index) == {"moda", "dense"} and (runs["last_step"] == 8).all()
    assert runs.loc["moda", "model/params"] > runs.loc["dense", "model/params"]  # MoDA's extra K/V projections
    tidy = pd.read_csv(tmp_path / "tidy.csv")
    val = tidy.dropna(subset=["val/loss"])
    assert (val["flops"] == val["tokens"] * val["model/flops_per_token"]).all()
    table = pd.read_csv(tmp_path / "tables" / "table3_main.csv")
    assert len(table) == 2 and (table["seeds"] == 1).all()
    assert (tmp_path / "figures" / "val_loss_vs_flops.png").stat().st_size > 0


def test_offline_wandb_of_real_runs_matches_metrics_jsonl(real_sweep: Path):
    from moda_lab.analysis import load_offline_dir, load_runs, load_sweep_dir

    local = {r.meta["wandb_id"]: r for r in load_sweep_dir(real_sweep)}
    offline = load_offline_dir(real_sweep)
    assert len(offline) == 2
    # Loading both sources does not double-count: the wandb id in meta.json matches the offline run's id.
    assert len(load_runs(real_sweep, wandb_offline=real_sweep)) == 2
    for rec in offline:
        run_id = Path(rec.path).name.rsplit("-", 1)[-1]
        jsonl = local[run_id].history["val/loss"].dropna().to_numpy()
        # Values in order: Lightning's wandb steps (trainer/global_step) may differ by one from metrics.jsonl's.
        assert rec.history["val/loss"].dropna().to_numpy() == pytest.approx(jsonl, rel=1e-6)
        assert rec.status == "finished"
        assert rec.history["model/flops_per_token"].notna().all()
        assert rec.history["tokens"].iloc[-1] == local[run_id].history["tokens"].iloc[-1]


def test_attention_inspection_of_real_checkpoint(real_sweep: Path):
    from moda_lab.analysis import attention_summary, inspect_checkpoint

    moda_dir = next(p for p in real_sweep.iterdir() if p.name.startswith("model=moda"))
    inspection = inspect_checkpoint(moda_dir / "checkpoints" / "last.ckpt", "def main():\n    return 0\n")
    slots = [m.shape[-1] - m.shape[-2] for m in inspection.maps]
    assert len(slots) == 3 and slots[0] == 0 and slots[2] > slots[1] > 0
    summary = attention_summary(inspection.maps)
    assert ((summary["depth_mass"] > 0) == (summary["depth_slots"] > 0)).all()


def test_cli_attention_inspection(real_sweep: Path, tmp_path: Path, capsys):
    from moda_lab.analysis.__main__ import main

    moda_dir = next(p for p in real_sweep.iterdir() if p.name.startswith("model=moda"))
    assert main([f"ckpt={moda_dir}", "text=def main(): return 0", f"out={tmp_path}"]) == 0
    written = {p.name for p in (tmp_path / "attention").iterdir()}
    assert {"attention_layer02.png", "attention_summary.png", "attention_summary.csv"} <= written
    summary = pd.read_csv(tmp_path / "attention" / "attention_summary.csv")
    assert sorted(summary["layer"].unique()) == [0, 1, 2] and summary["sink_mass"].between(0, 1).all()
    assert "attention_summary.csv" in capsys.readouterr().out
