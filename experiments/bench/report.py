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
