"""CLI: ``python -m moda_lab.hf <checkpoint or run dir> <out folder> [--dtype bfloat16] [--overwrite]``.

Writes a Hugging Face folder (see export.py) and prints its path; a non-empty out folder is refused (exit 2)
unless --overwrite. Load it with
``transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` (moda-lab installed).
"""

from __future__ import annotations

import argparse

from ..errors import exit_on_usage_error
from .export import DTYPES, export


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moda_lab.hf",
        description="Write a moda-lab checkpoint as a Hugging Face folder (trust_remote_code).",
    )
    parser.add_argument("checkpoint", help="a .ckpt file, a run dir (its checkpoints/last.ckpt) or an exported folder")
    parser.add_argument("out", help="the folder to write")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weight dtype (default float32)")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder, replacing its files of the same names"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_usage_error("export error"):
        print(export(args.checkpoint, args.out, dtype=args.dtype, overwrite=args.overwrite))


if __name__ == "__main__":
    main()
