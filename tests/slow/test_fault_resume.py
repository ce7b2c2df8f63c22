"""Kill -9 at random points, relaunch the same command each time: the run ends exactly as if never interrupted.

Each launch is the real entry point (run.py) in a subprocess. A wrapper slows checkpoint writes down (the bytes
go out in chunks) so that some kills land inside a write, leaving a torn temp file; others land after a number of
metrics rows drawn at random, so before the first checkpoint, between checkpoints and right after one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
import torch

from helpers import ROOT, TINY

pytestmark = pytest.mark.slow

# Runs run.py with torch.save writing in 8 chunks, 30 ms apart: checkpoint writes become ~0.25 s windows.
SLOW_SAVE = f"""
import io, runpy, sys, time, torch
_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    step = len(data) // 8 + 1
    for i in range(0, len(data), step):
        f.write(data[i : i + step])
        f.flush()
        time.sleep(0.03)
torch.save = slow_save
sys.argv = [{str(ROOT / "run.py")!r}, *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

STEPS, CKPT, VAL, LOG = 40, 10, 5, 5
VOLATILE = ("time", "perf/")  # wall-clock measurements: the only fields allowed to differ


def overrides(corpus, tmp, root: str) -> list[str]:
    return [
        *[o for o in TINY if not o.startswith("trainer.log_every")],
        f"data.corpus_dir={corpus}",
        f"data.cache_dir={tmp / 'cache'}",
        f"run_root={tmp / root}",
        f"trainer.max_steps={STEPS}",
        f"trainer.ckpt_every={CKPT}",
        f"trainer.val_every={VAL}",
        f"trainer.log_every={LOG}",
        "trainer.threads=1",
        "trainer.lr=0.02",
        "trainer.warmup_steps=2",
    ]


def launch(args: list[str], tmp) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, *args], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def run_dir(tmp, root: str):
    dirs = [p for p in (tmp / root / "default").iterdir() if p.is_dir()] if (tmp / root / "default").is_dir() else []
    return dirs[0] if dirs else None


def n_rows(rd) -> int:
    path = rd / "metrics.jsonl" if rd else None
    return len(path.read_text().splitlines()) if path and path.is_file() else 0


def kill_when(proc: subprocess.Popen, ready, timeout: float = 90.0) -> str:
    """SIGKILL proc as soon as ready() holds; 'finished' if it exited first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return "finished"
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return "killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    raise AssertionError("the run neither reached the kill point nor finished")


def comparable(rd) -> list[dict]:
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    return [{k: (v if not k.startswith(VOLATILE) else "*") for k, v in r.items()} for r in rows]


def final_state(rd) -> dict:
    ckpt = torch.load(rd / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    return {**ckpt["state_dict"], **{f"opt.{k}": v for k, v in _flat(ckpt["optimizer_states"][0]["state"])}}


def _flat(state: dict):
    for i, s in state.items():
        for k, v in s.items():
            yield f"{i}.{k}", v


def test_sigkill_anywhere_then_relaunch_matches_uninterrupted_run(tiny_corpus, tmp_path):
    rng = random.Random(14)
    ref = launch(overrides(tiny_corpus, tmp_path, "ref"), tmp_path)
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()[-3000:]
    ref_dir = run_dir(tmp_path, "ref")

    args = overrides(tiny_corpus, tmp_path, "faulty")

    def writing_checkpoint():
        """While this launch writes a checkpoint (a temp file it created and has started filling)."""
        t0 = time.time()

        def ready():
            rd = run_dir(tmp_path, "faulty")
            tmps = list((rd / "checkpoints").glob("*.tmp")) if rd else []
            try:
                return any(p.stat().st_mtime > t0 and p.stat().st_size > 0 for p in tmps)
            except FileNotFoundError:  # renamed into place meanwhile
                return False

        return ready

    def after_new_rows(k):
        """Once this launch has written k metrics rows (rows carry their wall-clock time)."""
        t0 = time.time()

        def ready():
            rd = run_dir(tmp_path, "faulty")
            path = rd / "metrics.jsonl" if rd else None
            if not (path and path.is_file()):
                return False
            lines = path.read_text().splitlines()
            return sum(1 for line in lines if line.endswith("}") and json.loads(line)["time"] > t0) >= k

        return ready

    def after_new_checkpoint():
        def names():
            rd = run_dir(tmp_path, "faulty")
            return {p.name for p in (rd / "checkpoints").glob("step_*.ckpt")} if rd else set()

        before = names()
        return lambda: bool(names() - before)

    def after_seconds(delay):
        t0 = time.monotonic()
        return lambda: time.monotonic() - t0 >= delay

    # Kill points, each made when its launch starts: a random row before the first checkpoint, inside checkpoint
    # writes (twice), after a random number of new rows, as soon as a step checkpoint appears, a random moment.
    kill_points = [
        ("before the first checkpoint", partial(after_new_rows, rng.randint(1, 4))),
        ("during a checkpoint write", writing_checkpoint),
        ("after random rows", partial(after_new_rows, rng.randint(3, 10))),
        ("during a checkpoint write", writing_checkpoint),
        ("right after a checkpoint", after_new_checkpoint),
        ("after random rows", partial(after_new_rows, rng.randint(3, 10))),
        ("after random seconds", partial(after_seconds, rng.uniform(0.5, 6.0))),
    ]
    outcomes = []
    for name, make_ready in kill_points:
        proc = launch(args, tmp_path)
        outcome = kill_when(proc, make_ready())
        rd = run_dir(tmp_path, "faulty")
        files = sorted(p.name for p in (rd / "checkpoints").iterdir()) if rd and (rd / "checkpoints").is_dir() else []
        outcomes.append((name, outcome, n_rows(rd), files))
        if name == "during a checkpoint write":
            assert any(f.endswith(".tmp") for f in files), outcomes  # the kill left a torn file behind
    print(*outcomes, sep="\n")
    assert sum(o[1] == "killed" for o in outcomes) >= 5, outcomes

    final = launch(args, tmp_path)
    assert final.wait(timeout=120) == 0, final.stderr.read().decode()[-3000:]
    rd = run_dir(tmp_path, "faulty")

    rows, ref_rows = comparable(rd), comparable(ref_dir)
    keys = [(r["step"], tuple(sorted(r))) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate metrics rows"
    assert rows == ref_rows
    state, ref_state = final_state(rd), final_state(ref_dir)
    assert state.keys() == ref_state.keys()
    for k in ref_state:
        assert torch.equal(state[k], ref_state[k]), k
    assert json.loads((rd / "meta.json").read_text())["status"] == "finished"
    assert not list((rd / "checkpoints").glob("*.tmp"))
