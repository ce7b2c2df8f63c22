"""The paper's 10 downstream tasks (arXiv 2603.15619) as lm-eval task YAMLs over local JSONL files.

Each task reads ``<data_dir>/<name>.jsonl``, one example per line, with the fields of its Hugging Face source
(so a dataset dumped with ``datasets.Dataset.to_json`` works as is). The data dir comes from lm-eval task
metadata ``data_dir`` (set by moda_lab.eval), else the environment variable MODA_EVAL_DATA, else
``<repo>/../shared/data/eval``. lm-eval task names carry a ``moda_`` prefix so they never shadow the
harness's own (downloading) tasks; the tag ``moda_paper`` selects all ten.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import UsageError

TASK_DIR = Path(__file__).resolve().parent
DATA_ENV = "MODA_EVAL_DATA"
DEFAULT_DATA_DIR = TASK_DIR.parents[2].parent / "shared" / "data" / "eval"

# short name -> fields every JSONL line must carry (what the YAML and utils.py read)
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "piqa": ("goal", "sol1", "sol2", "label"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "openbookqa": ("question_stem", "choices", "answerKey"),
    "boolq": ("passage", "question", "label"),
    "sciq": ("support", "question", "distractor1", "distractor2", "distractor3", "correct_answer"),
    "arc_easy": ("question", "choices", "answerKey"),
    "arc_challenge": ("question", "choices", "answerKey"),
    "copa": ("premise", "choice1", "choice2", "question", "label"),
    "mmlu": ("question", "subject", "choices", "answer"),
}
# short name -> examples in the task's full evaluation split (the paper's; ../shared/data/eval/MANIFEST.md). A task
# file holding fewer is a subset: its scores are a partial evaluation, never reported as the full task (evaluate.py).
SPLIT_SIZES: dict[str, int] = {
    "piqa": 1838,  # validation
    "hellaswag": 10042,  # validation
    "winogrande": 1267,  # winogrande_xl validation (v1.1 dev)
    "openbookqa": 500,  # main test
    "boolq": 3270,  # validation
    "sciq": 1000,  # test
    "arc_easy": 2376,  # test
    "arc_challenge": 1172,  # test
    "copa": 100,  # SuperGLUE validation
    "mmlu": 14042,  # test, 57 subjects
}
TASK_PREFIX = "moda_"
PAPER_TAG = "moda_paper"


class TaskDataError(UsageError):
    """A task's <task>.jsonl is missing, holds a line that is not JSON, lacks a field the task reads or has a gold
    answer that is none of its choices, or is empty."""


def lm_eval_name(task: str) -> str:
    return TASK_PREFIX + task


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The eval data dir: explicit, else $MODA_EVAL_DATA, else <repo>/../shared/data/eval."""
    return Path(explicit or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def task_file(task: str, root: str | os.PathLike | None = None) -> Path:
    return data_dir(root) / f"{task}.jsonl"
