"""Eval fixtures shared by test_eval.py and test_eval_real_data.py: one tiny trained run, built once per session."""

from __future__ import annotations

import sys

import pytest
from fixtures.eval_tasks import TINY_RUN, write_eval_fixtures, write_tiny_text_corpus

from helpers import compose_cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A trained 2-layer MoDA run dir (10 steps), its corpus and the eval fixtures; built once."""
    from moda_lab.train.task import train

    tmp = tmp_path_factory.mktemp("evalrun")
    corpus = write_tiny_text_corpus(tmp / "corpus")
    overrides = [*TINY_RUN, f"data.corpus_dir={corpus}", f"data.cache_dir={tmp / 'cache'}"]
    run_dir = tmp / "run"
    train(compose_cfg(overrides), run_dir)
    return {
        "tmp": tmp,
        "run_dir": run_dir,
        "ckpt": run_dir / "checkpoints" / "last.ckpt",
        "corpus": corpus,
        "overrides": overrides,
        "data": write_eval_fixtures(tmp / "evaldata"),
    }


@pytest.fixture(scope="session")
def lm(tiny_run):
    """The tiny run's checkpoint as an lm-eval model on CPU."""
    pytest.importorskip("lm_eval")
    from moda_lab.eval.lm import ModaLM

    return ModaLM(checkpoint=tiny_run["ckpt"], batch_size=3, device="cpu")


@pytest.fixture(autouse=True)
def close_figures():
    """Tests that draw a figure to inspect it (plot_* return it open, as pyplot does) close it afterwards: pyplot
    keeps every figure until it is closed, and warns past 20."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
