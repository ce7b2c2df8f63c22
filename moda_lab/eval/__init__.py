"""Downstream evaluation of moda-lab checkpoints: an lm-eval model ("moda"), the paper's 10 tasks over local
JSONL, per-domain perplexity, and the run/sweep hooks. Entry points: ``python -m moda_lab.eval`` (Hydra) and
``python -m moda_lab.eval.cli`` (lm-eval's own CLI). No Hydra in the library modules.

Importing moda_lab.eval.lm registers the model with lm-eval; it is imported lazily so that config checks stay
cheap.
"""

from __future__ import annotations

from .evaluate import (
    RESULTS_FILE,
    EvalConfig,
    EvalConfigError,
    eval_config_from_dict,
    evaluate_checkpoint,
    evaluation_name,
    results_dir,
    samples_file,
)
from .hook import evaluate_run
from .tasks import TASK_FIELDS

__all__ = [
    "RESULTS_FILE",
    "TASK_FIELDS",
    "EvalConfig",
    "EvalConfigError",
    "eval_config_from_dict",
    "evaluate_checkpoint",
    "evaluate_run",
    "evaluation_name",
    "results_dir",
    "samples_file",
]
