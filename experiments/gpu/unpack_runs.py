"""Bring the finished runs of a GPU call's runs.tar.gz (experiments/gpu/table6.sh) into the committed results.

    .venv/bin/python experiments/gpu/unpack_runs.py /work/.device/3/runs.tar.gz [--into experiments/results]

A run dir is copied into <into>/runs_gpu/<sweep>/<run>/ when it finished training (meta.json status finished at its
config's max_steps); an unfinished one is listed and left out: it came back without checkpoints, so the next
session trains it from the start, and a partial copy in the repo would only be dropped then. A run already in
<into> as finished is kept as it is. Other files under a sweep (lr_choice.json) are copied when new.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from moda_lab.rundir import RunDir  # noqa: E402


def unpack(tarball: Path, into: Path) -> dict[str, list[str]]:
    """Copy what is finished; returns {"copied", "kept", "unfinished", "files"} lists of paths under runs_gpu."""
    report: dict[str, list[str]] = {"copied": [], "kept": [], "unfinished": [], "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        src_root = Path(tmp) / "runs_gpu"
        if not src_root.is_dir():
            raise SystemExit(f"{tarball}: no runs_gpu/ inside (not a table6.sh runs.tar.gz)")
        for meta in sorted(src_root.glob("*/*/meta.json")):
            src = meta.parent
            rel = src.relative_to(src_root.parent)
            dst = into / rel
            if not RunDir(src).trained():
                step = RunDir(src).read_meta().get("global_step")
                report["unfinished"].append(f"{rel} (step {step})")
            elif RunDir(dst).trained():
                report["kept"].append(str(rel))
            else:
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
                report["copied"].append(str(rel))
        for f in sorted(src_root.glob("*/*")):
            dst = into / f.relative_to(src_root.parent)
            if f.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst)
                report["files"].append(str(f.relative_to(src_root.parent)))
    return report


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tarball", type=Path)
    p.add_argument("--into", type=Path, default=ROOT / "experiments" / "results")
    args = p.parse_args(argv)
    if not args.tarball.is_file():
        raise SystemExit(f"{args.tarball}: no such file")
    report = unpack(args.tarball, args.into)
    for kind, paths in report.items():
        print(f"{kind}: {len(paths)}")
        for path in paths:
            print(f"  {path}")
    return report


if __name__ == "__main__":
    main()
