"""lm-eval's own CLI with the moda model and the local tasks registered.

    python -m moda_lab.eval.cli --model moda --model_args checkpoint=runs/x/checkpoints/last.ckpt \\
        --tasks moda_piqa,moda_arc_easy --batch_size 8 --device cpu --data_dir ../shared/data/eval \\
        --output_path out/

Every lm-eval option works; added here: ``--data_dir`` (the directory of <task>.jsonl, default $MODA_EVAL_DATA
or <repo>/../shared/data/eval), ``--include_path`` defaulting to the moda task YAMLs, ``--device``
defaulting to ``auto`` (cuda when available, else cpu; lm-eval's own default is cuda), and, for ``--model
moda``, ``--batch_size`` defaulting to eval.batch_size's default, 8 (lm-eval's own, 1, took hours for three tasks
on a CPU); other models keep lm-eval's 1 (an export under ``--model hf`` runs inputs longer than its context one
row at a time, docs/HF_EXPORT.md). A bad ``--model_args``, ``--tasks``, ``--limit`` or ``--device``, or a bad task
file, prints one line and exits with status 2 (lm-eval's own tasks of the moda tasks' names download their data: the
wrapper runs offline, so it points at the moda_ ones).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

BATCH_FLAGS = ("--batch_size", "-b")
TASK_FLAGS = ("--tasks", "-t")
LIMIT_FLAGS = ("--limit", "-L")
MODEL_ARGS_FLAGS = ("--model_args", "-a")
# What argparse takes as a value, not an option, after a flag (lm-eval defines no option that looks like one).
NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}  # as datasets reads HF_DATASETS_OFFLINE


def split_data_dir(args: list[str]) -> tuple[list[str], str | None]:
    """(lm-eval's own arguments, the --data_dir value or None)."""
    args, found = list(args), None
    for flag in ("--data_dir", "--data-dir"):
        if flag in args:
            i = args.index(flag)
            if i + 1 >= len(args):
                raise SystemExit(f"{flag} needs a directory")
            found = args[i + 1]
            del args[i : i + 2]
    return args, found


def _is_value(arg: str) -> bool:
    return not arg.startswith("-") or bool(NEGATIVE_NUMBER.match(arg))


def flag_occurrences(args: list[str], flags: str | tuple[str, ...]) -> list[list[str]]:
    """The values given to each occurrence of flag (``--flag a b`` or ``--flag=a``), as argparse reads them: a
    negative number (``--limit -1``) is a value."""
    flags = (flags,) if isinstance(flags, str) else flags
    out = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and name in flags:
            out.append([value])
        elif arg in flags:
            out.append(list(itertools.takewhile(_is_value, args[i + 1 :])))
    return out


def flag_values(args: list[str], flags: str | tuple[str, ...]) -> list[str]:
    """The values given to flag (``--flag a b``, ``--flag a,b`` or ``--flag=a``), split at commas."""
    return [v for values in flag_occurrences(args, flags) for value in values for v in value.split(",") if v]


def hf_offline() -> bool:
    """Whether datasets may not download (main sets HF_DATASETS_OFFLINE=1 unless it is set)."""
    return os.environ.get("HF_DATASETS_OFFLINE", "").upper() in OFFLINE_VALUES


def offline_note() -> str:
    return (
        f"the Hugging Face Hub is off here (HF_DATASETS_OFFLINE={os.environ.get('HF_DATASETS_OFFLINE')}; "
        "HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 with network access lets lm-eval download)"
    )


def moda_tasks() -> list[str]:
    """The lm-eval names of the moda tasks, and the tag selecting all ten."""
    from .tasks import PAPER_TAG, TASK_FIELDS, lm_eval_name

    return [lm_eval_name(t) for t in TASK_FIELDS] + [PAPER_TAG]


def check_args(args: list[str]) -> None:
    """What lm-eval would answer with a traceback (an unknown moda_ task, lm-eval's own copy of a moda task that
    must download offline, --limit -1, a --model_args that is not JSON, a CUDA --device without a GPU) or take
    silently (--limit 0 or 1.5: all examples, or one): a UsageError naming the flag and what is allowed."""
    from .device import check_device
    from .evaluate import EvalConfigError
    from .tasks import TASK_FIELDS, TASK_PREFIX, lm_eval_name

    known = moda_tasks()
    tasks = flag_values(args, TASK_FLAGS)
    unknown = [t for t in tasks if t.startswith(TASK_PREFIX) and t not in known]
    if unknown:
        raise EvalConfigError(f"--tasks: unknown task(s) {unknown}; the moda tasks are {known}")
    stock = [t for t in tasks if t in TASK_FIELDS]  # lm-eval's own task of the same name reads the Hugging Face Hub
    if stock and hf_offline():
        raise EvalConfigError(
            f"--tasks: {stock} are lm-eval's own tasks, which download their data, and {offline_note()}; use "
            f"{[lm_eval_name(t) for t in stock]}, the same tasks over local files (--data_dir); the moda tasks are "
            f"{known}"
        )
    for value in flag_values(args, LIMIT_FLAGS):
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not (0 < limit < 1 or (limit >= 1 and limit.is_integer())):
            raise EvalConfigError(
                f"--limit {value}: give a positive number of examples per task (a whole number), or a fraction < 1 "
                "of each task's examples"
            )
    for values in flag_occurrences(args, MODEL_ARGS_FLAGS):
        first = values[0] if values else ""
        try:  # as lm-eval reads it: the first value as JSON, else key=value pairs, unless it holds a brace
            parsed = json.loads(first)
        except json.JSONDecodeError as err:
            if "{" in first:
                raise EvalConfigError(
                    f"--model_args {first}: not valid JSON ({err}); give a JSON object in single quotes, e.g. "
                    """'{"checkpoint": "runs/x/model=moda,norm=post"}', or key=value pairs: checkpoint=runs/x"""
                ) from None
            parsed = dict(kv.partition("=")[::2] for kv in first.split(",") if kv)
        if isinstance(parsed, dict) and "device" in parsed:
            # lm-eval passes its own --device (ours: auto) to every model beside model_args: a TypeError otherwise
            raise EvalConfigError(
                f"--model_args device={parsed['device']}: give the device as --device {parsed['device']} instead "
                "(lm-eval passes its --device to every model, and the two would clash)"
            )
    for values in flag_occurrences(args, "--device"):
        for value in values[:1]:
            check_device(value, "--device", EvalConfigError)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, data_dir = split_data_dir(sys.argv[1:] if argv is None else argv)
    if data_dir is not None:
        os.environ["MODA_EVAL_DATA"] = str(Path(data_dir).resolve())
    from lm_eval.__main__ import cli_evaluate

    import moda_lab.eval.lm  # noqa: F401 - registers --model moda

    from ..errors import exit_on_usage_error
    from .evaluate import EvalConfig, EvalConfigError
    from .tasks import TASK_DIR, TASK_PREFIX

    if not flag_occurrences(args, "--include_path"):
        args += ["--include_path", str(TASK_DIR)]
    if not flag_occurrences(args, "--device"):  # lm-eval's own default is cuda, which fails on a CPU-only machine
        args += ["--device", "auto"]
    batch_given = any(a.split("=")[0] in BATCH_FLAGS or "batch_size" in a for a in args)
    if flag_values(args, "--model") == ["moda"] and not batch_given:  # lm-eval's 1: hours on a CPU
        args += ["--batch_size", str(EvalConfig.batch_size)]
    sys.argv = ["lm-eval", *args]
    # A bad --model_args (a missing or unreadable checkpoint, an unknown key) or task file: one line, exit 2.
    with exit_on_usage_error("eval error"):
        check_args(args)
        try:
            cli_evaluate()
        except ConnectionError as err:  # a task of lm-eval's own whose data is not in the local cache
            others = [t for t in flag_values(args, TASK_FLAGS) if not t.startswith(TASK_PREFIX)]
            if not others or not hf_offline():
                raise
            raise EvalConfigError(
                f"--tasks {','.join(others)}: lm-eval cannot load its data ({err}): {offline_note()}. The moda "
                f"tasks read local files: {moda_tasks()}"
            ) from None


if __name__ == "__main__":
    main()
