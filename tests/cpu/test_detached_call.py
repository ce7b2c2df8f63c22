"""experiments/gpu/detached.sh on a stand-in repo: the command outlives the call that started it (the device tool
kills a finished call's process group), a later call waits for it and brings back what it wrote, and no call
starts it twice on one machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Writes a first row at once and a second after 3 s, as a benchmark writes its table row by row; counts its starts.
COMMAND = ('echo start >> "$JOB_OUT/starts.txt"; echo row1 > "$JOB_OUT/bench.md"; sleep 3; '
           'echo row2 >> "$JOB_OUT/bench.md"; echo finished')


def test_command_outlives_its_call_and_later_calls_collect(tmp_path):
    repo = tmp_path / "repo"
    (repo / "experiments" / "gpu").mkdir(parents=True)
    for name in ("detached.sh", "env.sh"):
        shutil.copy(ROOT / "experiments" / "gpu" / name, repo / "experiments" / "gpu" / name)
    env = {**os.environ, "DETACHED_DIR": str(tmp_path / "job"), "PYTHONPATH": "",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def call(out: str, wait_s: int, new_session: bool = False) -> tuple[subprocess.Popen, str]:
        (tmp_path / out).mkdir()
        proc = subprocess.Popen(["bash", "experiments/gpu/detached.sh", COMMAND], cwd=repo,
                                env={**env, "OUT": str(tmp_path / out), "WAIT_S": str(wait_s)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=new_session)
        return proc, proc.communicate(timeout=60)[0]

    first, log = call("out1", 1, new_session=True)
    assert "started" in log and "still running" in log
    assert _out(tmp_path / "out1", "bench.md") == "row1\n"  # what it had written when the call ended
    try:
        os.killpg(first.pid, signal.SIGKILL)  # what the device tool does to a finished call
    except ProcessLookupError:
        pass
    _, log = call("out2", 30)
    assert "running since" in log and "finished" in log
    assert _out(tmp_path / "out2", "bench.md") == "row1\nrow2\n"
    assert "finished" in (tmp_path / "out2" / "detached.log").read_text()
    _, log = call("out3", 5)
    assert "collecting only" in log
    assert _out(tmp_path / "out3", "starts.txt") == "start\n"  # started once on this machine


def _out(out: Path, name: str) -> str:
    """A file the command wrote, which comes back inside out.tar.gz."""
    with tarfile.open(out / "out.tar.gz") as tar:
        return tar.extractfile(f"out/{name}").read().decode()
