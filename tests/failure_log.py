"""A pytest hook that writes each failure's report to a file the moment the test fails.

pytest prints the errors of failed tests only when the whole run ends; a run cut short (a GPU lease that ends, a
``timeout``) leaves just "FF". With MODA_TEST_FAILURES=<file>, every failed phase of a test (setup, call or
teardown) is appended to that file at once: its node id, the phase and the short traceback."""

from __future__ import annotations

import os


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("MODA_TEST_FAILURES")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
