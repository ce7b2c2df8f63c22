"""Bring the finished runs of a GPU call's runs.tar.gz (experiments/gpu/table6.sh) into the committed results.

    .venv/bin/python experiments/gpu/unpack_runs.py /work/.device/3/runs.tar.gz [--into experiments/results]

The committed runs of a sweep are one archive, <into>/runs_gpu/<sweep>.tar.xz with its manifest <sweep>.sha256
(moda_lab.analysis.archive). Its runs are extracted (checked against the manifest), a run dir of the call is added
as <sweep>/<run>/ when it finished training (meta.json status finished at its config's max_steps), and the archive
and its manifest are packed again (deterministically: the same runs give the same bytes). An unfinished run is
listed and left out: it came back without checkpoints, so the next session trains it from the start, and a partial
copy in the repo would only be dropped then. A run already in the archive as finished is kept as it is. Other files
under a sweep are added when new; a JSON object already there (lr_choice.json, one entry per cell) takes the call's
entries over its own, since the call's driver chose them from every committed run plus its own. A sweep without an
archive gets one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from moda_lab.analysis.archive import open_archive, pack  # noqa: E402
from moda_lab.errors import exit_on_usage_error  # noqa: E402
from moda_lab.rundir import RunDir  # noqa: E402


def merge_sweep(src: Path, folder: Path, report: dict[str, list[str]]) -> bool:
    """Add ``src``'s finished runs and new files to ``folder`` (the sweep's committed runs); True if it changed."""
    changed = False
    for meta in sorted(src.glob("*/meta.json")):
        run = meta.parent
        rel = f"runs_gpu/{src.name}/{run.name}"
        dst = folder / run.name
        if not RunDir(run).trained():
            report["unfinished"].append(f"{rel} (step {RunDir(run).read_meta().get('global_step')})")
        elif RunDir(dst).trained():
            report["kept"].append(rel)
        else:
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
            report["copied"].append(rel)
            changed = True
    for f in sorted(src.glob("*")):
        if f.is_file() and merge_file(f, folder / f.name):
            report["files"].append(f"runs_gpu/{src.name}/{f.name}")
            changed = True
    return changed


def merge_file(src: Path, dst: Path) -> bool:
    """Bring a sweep-level file in: copied when new; a JSON object merged key by key, the call's entries first;
    any other file already there kept. True if ``dst`` changed."""
    if not dst.exists():
        shutil.copy2(src, dst)
        return True
    if src.suffix != ".json":
        return False
    old, new = json.loads(dst.read_text()), json.loads(src.read_text())
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return False
    merged = {**old, **new}
    if merged == old:
        return False
    dst.write_text(json.dumps(merged, indent=2))
    return True


def unpack(tarball: Path, into: Path) -> dict[str, list[str]]:
    """Add what is finished to each sweep's archive; returns {"copied", "kept", "unfinished", "files"} lists of
    paths as runs_gpu/<sweep>/<run>."""
    report: dict[str, list[str]] = {"copied": [], "kept": [], "unfinished": [], "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tarball) as tar:
            tar.extractall(Path(tmp) / "call", filter="data")
        src_root = Path(tmp) / "call" / "runs_gpu"
        if not src_root.is_dir():
            raise SystemExit(f"{tarball}: no runs_gpu/ inside (not a table6.sh runs.tar.gz)")
        for src in sorted(p for p in src_root.iterdir() if p.is_dir()):
            archive = into / "runs_gpu" / f"{src.name}.tar.xz"
            folder = Path(tmp) / "committed" / src.name
            if archive.exists():
                shutil.copytree(open_archive(archive), folder)
            else:
                folder.mkdir(parents=True)
            if merge_sweep(src, folder, report):
                pack(folder, archive)
    return report


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tarball", type=Path)
    p.add_argument("--into", type=Path, default=ROOT / "experiments" / "results")
    args = p.parse_args(argv)
    if not args.tarball.is_file():
        raise SystemExit(f"{args.tarball}: no such file")
    with exit_on_usage_error("unpack_runs"):  # an archive that fails its manifest: one line, exit 2
        report = unpack(args.tarball, args.into)
    for kind, paths in report.items():
        print(f"{kind}: {len(paths)}")
        for path in paths:
            print(f"  {path}")
    return report


if __name__ == "__main__":
    main()
