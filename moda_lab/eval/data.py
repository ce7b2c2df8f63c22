"""Fetch the eval data: ``python -m moda_lab.eval.data fetch OUT [--tasks piqa,boolq] [--overwrite]``.

Writes ``OUT/<task>.jsonl`` for the paper's ten tasks from the Hugging Face hub (``datasets.load_dataset``), in
the layout moda_lab.eval.tasks reads (that of ../shared/data/eval): one JSON object per line, the hub row's
fields and values unchanged, except BoolQ's ``answer`` (bool) -> ``label`` (int). The datasets are those lm-eval
0.4.13's own tasks read (BoolQ: Google's release rather than SuperGLUE's copy), all plain data files (no loading
script), at the splits lm-eval scores.

Every split is downloaded, converted and counted against its official size before anything is written; a count
that differs, a row without a field its task reads, or a hub that cannot be reached prints one line and exits 2
with OUT as it was. Then each file is written to a hidden temp file in OUT and renamed over ``<task>.jsonl``, so
a file there is always complete. A task whose file already exists is kept (not downloaded) unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, exit_on_usage_error
from .tasks import DATA_ENV, TASK_FIELDS, task_file

OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")  # either set to 1: datasets never asks the hub


@dataclass(frozen=True)
class Source:
    """The arguments of ``datasets.load_dataset(path, name, split=split)``."""

    path: str
    name: str | None
    split: str

    def __str__(self) -> str:
        return f"{self.path}{'/' + self.name if self.name else ''} {self.split}"


SOURCES: dict[str, Source] = {
    "piqa": Source("baber/piqa", None, "validation"),  # ybisk/piqa is a loading script, which datasets >= 4 refuses
    "hellaswag": Source("Rowan/hellaswag", None, "validation"),
    "winogrande": Source("allenai/winogrande", "winogrande_xl", "validation"),
    "openbookqa": Source("allenai/openbookqa", "main", "test"),
    "boolq": Source("google/boolq", None, "validation"),
    "sciq": Source("allenai/sciq", None, "test"),
    "arc_easy": Source("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": Source("allenai/ai2_arc", "ARC-Challenge", "test"),
    "copa": Source("aps/super_glue", "copa", "validation"),
    "mmlu": Source("cais/mmlu", "all", "test"),
}

# the official size of each split; a fetched split of another size is refused
OFFICIAL_ROWS: dict[str, int] = {
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "openbookqa": 500,
    "boolq": 3270,
    "sciq": 1000,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "copa": 100,
    "mmlu": 14042,
}


def _boolq(row: dict) -> dict:
    # google/boolq: question, answer (bool), passage -> the layout of the SuperGLUE task: label 1 = true, 0 = false
    return {"question": row["question"], "passage": row["passage"], "label": int(row["answer"])}


CONVERT: dict[str, Callable[[dict], dict]] = {"boolq": _boolq}  # any other task: the hub row as it is


def load_split(source: Source) -> Iterable[dict]:
    """The split's rows from the hub (or the datasets cache); tests replace this function."""
    import datasets

    return datasets.load_dataset(source.path, source.name, split=source.split)


def convert(task: str, hub_rows: Iterable[dict]) -> list[dict]:
    """The hub rows in the local layout; refused when the count or a field the task reads is not what it must be."""
    source = SOURCES[task]
    rows = [CONVERT.get(task, dict)(row) for row in hub_rows]
    if len(rows) != OFFICIAL_ROWS[task]:
        raise UsageError(
            f"{task}: {source} has {len(rows)} rows, expected {OFFICIAL_ROWS[task]} (the official split size); "
            "nothing was written"
        )
    need = TASK_FIELDS[task]
    for i, row in enumerate(rows):
        missing = [k for k in need if k not in row]
        if missing:
            raise UsageError(
                f"{task}: {source} row {i} lacks field(s) {missing}; task {task!r} reads {list(need)}; nothing was written"
            )
    return rows


def download(task: str) -> list[dict]:
    """One task's converted rows; a hub that cannot be reached (or a dataset it lacks) is one UsageError line."""
    source = SOURCES[task]
    print(f"{task}: loading {source}", flush=True)
    try:
        hub_rows = load_split(source)
    except OSError as err:  # ConnectionError offline, FileNotFoundError for a dataset or config the hub lacks
        first = (str(err).splitlines() or [""])[0]
        env = ", ".join(f"{k}={os.environ[k]}" if k in os.environ else f"{k} unset" for k in OFFLINE_ENV)
        raise UsageError(
            f"{task}: cannot load {source} from the Hugging Face hub ({type(err).__name__}: {first}); it needs "
            f"network access to huggingface.co (or a mirror in HF_ENDPOINT) with {' and '.join(OFFLINE_ENV)} "
            f"unset or 0 (now {env}); nothing was written"
        ) from None
    return convert(task, hub_rows)


def parse_tasks(text: str | None) -> list[str]:
    """``--tasks piqa,boolq`` as a list in the order given; None: all ten."""
    if text is None:
        return list(TASK_FIELDS)
    tasks = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in tasks if t not in TASK_FIELDS]
    if unknown or not tasks:
        raise UsageError(f"--tasks {text!r}: unknown task(s) {unknown}; choose from {list(TASK_FIELDS)}")
    return tasks


@dataclass
class Fetched:
    task: str
    rows: int
    status: str  # written, replaced or kept
    path: Path


def _jsonl_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def fetch(out: str | os.PathLike, tasks: list[str] | None = None, overwrite: bool = False) -> list[Fetched]:
    """Write OUT/<task>.jsonl for each task (default all): every split fetched and checked before any is written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is not a directory; give the directory to write <task>.jsonl into")
    tasks = list(TASK_FIELDS) if tasks is None else tasks
    kept = [t for t in tasks if task_file(t, out).is_file() and not overwrite]
    fetched = {t: download(t) for t in tasks if t not in kept}

    created = not out.exists()
    temps = {t: out / f".{t}.jsonl.partial" for t in fetched}  # hidden: never read as a task file
    report = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for task, rows in fetched.items():
            with temps[task].open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        for task in tasks:  # only now is a task file replaced, each by one rename
            path = task_file(task, out)
            if task in kept:
                report.append(Fetched(task, _jsonl_rows(path), "kept", path))
                continue
            status = "replaced" if path.exists() else "written"
            os.replace(temps[task], path)
            report.append(Fetched(task, len(fetched[task]), status, path))
    except OSError as err:  # a read-only or full disk: the files already in OUT are complete and kept
        raise UsageError(f"cannot write {out}: {err}; the task files already there are kept as they were") from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return report


def table(report: list[Fetched]) -> str:
    head = ("task", "rows", "status", "source", "file")
    lines = [head] + [(r.task, str(r.rows), r.status, str(SOURCES[r.task]), str(r.path)) for r in report]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moda_lab.eval.data",
        description="Write the paper's ten eval tasks as <task>.jsonl from the Hugging Face hub.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("fetch", help="download, convert, check and write the task files")
    cmd.add_argument("out", help=f"the data dir to write (then point eval.data_dir or ${DATA_ENV} at it)")
    cmd.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASK_FIELDS)} (default: all)")
    cmd.add_argument("--overwrite", action="store_true", help="replace task files already in OUT (default: keep)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_usage_error("eval data error"):
        report = fetch(args.out, parse_tasks(args.tasks), overwrite=args.overwrite)
    print(table(report))


if __name__ == "__main__":
    main()
