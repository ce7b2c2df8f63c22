"""Shared test setup: CPU-only, offline, Triton in interpreter mode; tiny corpus and configs."""

from __future__ import annotations

import os

# One intra-op thread (before torch is imported; subprocesses inherit it): the tests' tensors are tiny, a second
# thread adds nothing, and on a shared 2-core machine each op waiting for a descheduled one made a 1 s test take
# 20-50 s. Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402 - importing torch does not import triton

# Before anything imports triton: without a GPU, kernels run on CPU through the interpreter (fp32 only there).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from failure_log import pytest_runtest_logreport  # noqa: E402, F401 - the hook: MODA_TEST_FAILURES=<file>


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Two small real-text domains (stdlib prose and code), a few hundred KB."""
    from helpers import write_tiny_corpus  # imported here: helpers needs hydra, tests/gpu only torch and triton

    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))
