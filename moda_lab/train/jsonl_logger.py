"""A Lightning logger that appends every logged metric to <run_dir>/metrics.jsonl (analysis needs no server)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only


class JSONLLogger(Logger):
    """One JSON object per log call: {"step", "tokens", "time", <metric>: value, ...}. Appends on resume."""

    def __init__(self, path: str | Path, tokens_per_step: int) -> None:
        super().__init__()
        self.path = Path(path)
        self.tokens_per_step = tokens_per_step
        self.trainer = None  # when set, rows carry trainer.global_step (optimizer steps done)

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    def truncate_after(self, step: int) -> int:
        """Keep the rows of steps <= step (and drop a torn last line); returns how many rows were dropped.

        A resumed run logs every step after its checkpoint again, so the rows a killed launch wrote past it go.
        """
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the launch was killed while writing this row
                dropped += 1
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        return dropped

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The resolved config lives in config.yaml beside this file."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        # Lightning hands training metrics the index of the batch being finished (global_step - 1);
        # rows use optimizer steps completed, so "tokens" is exactly what the model has trained on.
        step = int(self.trainer.global_step if self.trainer is not None else step or 0)
        row = {"step": step, "tokens": step * self.tokens_per_step, "time": time.time()}
        for k, v in metrics.items():
            if k == "epoch":
                continue
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)  # keep NaN/inf visible without breaking JSON
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
