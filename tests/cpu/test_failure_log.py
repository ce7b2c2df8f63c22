"""MODA_TEST_FAILURES: a failed test's error is in the file as soon as it fails, before the run ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_failure_is_written_when_it_happens(tmp_path):
    (tmp_path / "conftest.py").write_text("from failure_log import pytest_runtest_logreport  # noqa: F401\n")
    log = tmp_path / "failures.txt"
    # The second test reads the log while the run is still going: the first one's failure must be there already.
    (tmp_path / "test_probe.py").write_text(
        "import os\n"
        "def test_fails():\n"
        "    assert 1 + 1 == 3, 'arithmetic broke'\n"
        "def test_passes():\n"
        "    pass\n"
        "def test_sees_the_first_failure_logged():\n"
        "    assert 'arithmetic broke' in open(os.environ['MODA_TEST_FAILURES']).read()\n"
    )
    env = {**os.environ, "MODA_TEST_FAILURES": str(log), "PYTHONPATH": str(ROOT / "tests")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 failed, 2 passed" in run.stdout, run.stdout + run.stderr
    text = log.read_text()
    assert text.startswith("=== test_probe.py::test_fails (call)\n"), text
    assert "arithmetic broke" in text and "test_passes" not in text


def test_no_file_without_the_variable(tmp_path):
    (tmp_path / "conftest.py").write_text("from failure_log import pytest_runtest_logreport  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text("def test_fails():\n    assert False\n")
    env = {k: v for k, v in os.environ.items() if k != "MODA_TEST_FAILURES"}
    env["PYTHONPATH"] = str(ROOT / "tests")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 failed" in run.stdout, run.stdout + run.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["conftest.py", "test_probe.py"]
