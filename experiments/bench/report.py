"""What every small benchmark here ends with: print its Markdown table, write it to ``out`` and a JSON copy
(environment and rows) beside it."""

from __future__ import annotations

import json
from pathlib import Path


def save_table(out: Path, text: str, env: dict, rows: list[dict]) -> None:
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))


def save_rows(out: Path, title: str, env: dict, headers: list[str], cells, rows: list[dict]) -> None:
    """save_table of a titled table: its environment as a JSON line, then one row per dict, ``cells(row)`` giving
    that row's column texts under ``headers``."""
    lines = [f"# {title}", "", json.dumps(env), "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    save_table(out, "\n".join(lines) + "\n", env, rows)
