"""lm-eval's own CLI with the moda model and the local tasks registered.

    python -m moda_lab.eval.cli --model moda --model_args checkpoint=runs/x/checkpoints/last.ckpt \\
        --tasks moda_piqa,moda_arc_easy --batch_size 8 --device cpu --data_dir ../shared/data/eval \\
        --output_path out/

Every lm-eval option works; added here: ``--data_dir`` (the directory of <task>.jsonl, default $MODA_EVAL_DATA
or <repo>/../shared/data/eval), ``--include_path`` defaulting to the moda task YAMLs, ``--device``
defaulting to ``auto`` (cuda when available, else cpu; lm-eval's own default is cuda), and, for ``--model
moda``, ``--batch_size`` defaulting to eval.batch_size's default, 8 (lm-eval's own, 1, took hours for three tasks
on a CPU); other models keep lm-eval's 1 (an export under ``--model hf`` runs inputs longer than its context one
row at a time, docs/HF_EXPORT.md). A bad ``--model_args`` or task file prints one line and exits with status 2.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

BATCH_FLAGS = ("--batch_size", "-b")


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


def flag_values(args: list[str], flag: str) -> list[str]:
    """The values given to flag (``--flag a b``, ``--flag a,b`` or ``--flag=a``), split at commas."""
    out = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            out += arg.split("=", 1)[1].split(",")
        elif arg == flag:
            for value in itertools.takewhile(lambda a: not a.startswith("-"), args[i + 1 :]):
                out += value.split(",")
    return [v for v in out if v]


def check_args(args: list[str]) -> None:
    """What lm-eval would answer with a traceback (an unknown moda_ task) or take silently (--limit 0, all
    examples): a UsageError naming the flag and what is allowed."""
    from .evaluate import EvalConfigError
    from .tasks import PAPER_TAG, TASK_FIELDS, TASK_PREFIX, lm_eval_name

    known = [lm_eval_name(t) for t in TASK_FIELDS] + [PAPER_TAG]
    unknown = [t for t in flag_values(args, "--tasks") if t.startswith(TASK_PREFIX) and t not in known]
    if unknown:
        raise EvalConfigError(f"--tasks: unknown task(s) {unknown}; the moda tasks are {known}")
    for value in flag_values(args, "--limit"):
        try:
            ok = float(value) > 0
        except ValueError:
            ok = False
        if not ok:
            raise EvalConfigError(f"--limit {value}: give a positive number of examples per task (or a fraction < 1)")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, data_dir = split_data_dir(sys.argv[1:] if argv is None else argv)
    if data_dir is not None:
        os.environ["MODA_EVAL_DATA"] = str(Path(data_dir).resolve())
    from lm_eval.__main__ import cli_evaluate

    import moda_lab.eval.lm  # noqa: F401 - registers --model moda

    from ..errors import exit_on_usage_error
    from .evaluate import EvalConfig
    from .tasks import TASK_DIR

    if "--include_path" not in args:
        args += ["--include_path", str(TASK_DIR)]
    if "--device" not in args:  # lm-eval's own default is cuda, which fails on a CPU-only machine
        args += ["--device", "auto"]
    batch_given = any(a.split("=")[0] in BATCH_FLAGS or "batch_size" in a for a in args)
    if flag_values(args, "--model") == ["moda"] and not batch_given:  # lm-eval's 1: hours on a CPU
        args += ["--batch_size", str(EvalConfig.batch_size)]
    sys.argv = ["lm-eval", *args]
    # A bad --model_args (a missing or unreadable checkpoint, an unknown key) or task file: one line, exit 2.
    with exit_on_usage_error("eval error"):
        check_args(args)
        cli_evaluate()


if __name__ == "__main__":
    main()
