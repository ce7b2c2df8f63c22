"""lm-eval's own CLI with the moda model and the local tasks registered.

    python -m moda_lab.eval.cli --model moda --model_args checkpoint=runs/x/checkpoints/last.ckpt \\
        --tasks moda_piqa,moda_arc_easy --batch_size 8 --device cpu --data_dir ../shared/data/eval \\
        --output_path out/

Every lm-eval option works; added here: ``--data_dir`` (the directory of <task>.jsonl, default $MODA_EVAL_DATA
or <repo>/../shared/data/eval), ``--include_path`` defaulting to the moda task YAMLs, and ``--device``
defaulting to ``auto`` (cuda when available, else cpu; lm-eval's own default is cuda).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


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


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, data_dir = split_data_dir(sys.argv[1:] if argv is None else argv)
    if data_dir is not None:
        os.environ["MODA_EVAL_DATA"] = str(Path(data_dir).resolve())
    from lm_eval.__main__ import cli_evaluate

    import moda_lab.eval.lm  # noqa: F401 - registers --model moda

    from .tasks import TASK_DIR

    if "--include_path" not in args:
        args += ["--include_path", str(TASK_DIR)]
    if "--device" not in args:  # lm-eval's own default is cuda, which fails on a CPU-only machine
        args += ["--device", "auto"]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
