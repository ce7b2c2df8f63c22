"""Check Lightning DDP under a Hydra multirun on a multi-GPU node: two jobs, each on all GPUs, no re-run sweep.

python experiments/ddp_check.py  (needs >= 2 GPUs; writes runs/ddp_check/... and prints a verdict)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "model=residual,moda",
        "norm=post",
        "trainer=ddp",
        "name=ddp_check",
        f"run_root={root}",
        "trainer.max_steps=60",
        "trainer.val_every=30",
        "trainer.ckpt_every=30",
        "trainer.batch_size=8",
        "logger.wandb.enabled=false",
        *sys.argv[2:],
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    sweep = root / "ddp_check"
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    ok = len(runs) == 2
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        val = [r["val/loss"] for r in rows if "val/loss" in r]
        train = [r for r in rows if "train/loss" in r]
        print(
            f"{run.name}: status={meta['status']} launches={meta['launches']} step={meta.get('global_step')} "
            f"tokens={train[-1]['tokens']} val={val}"
        )
        ok &= meta["status"] == "finished" and meta["launches"] == 1 and val[-1] < val[0]
    stray = [p for p in sweep.iterdir() if p.is_dir() and p not in runs]
    print("DDP multirun check:", "PASS" if ok and not stray else "FAIL")


if __name__ == "__main__":
    main()
