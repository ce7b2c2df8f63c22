"""A Lightning logger that appends every logged metric to the run dir's metrics.jsonl (analysis needs no server)."""

from __future__ import annotations

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from ..rundir import RunDir


class JSONLLogger(Logger):
    """One row per log call, written by RunDir.log_metrics: {"step", "tokens", "time", <metric>: value, ...}.

    bind() hands it the trainer (rows carry trainer.global_step, the optimizer steps done) and the tokens per
    optimizer step, both known only once the Trainer exists."""

    def __init__(self, rundir: RunDir) -> None:
        super().__init__()
        self.rundir = rundir
        self.trainer = None
        self.tokens_per_step = 0

    def bind(self, trainer, tokens_per_step: int) -> None:
        self.trainer, self.tokens_per_step = trainer, tokens_per_step

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The resolved config lives in config.yaml beside metrics.jsonl."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        # Lightning hands training metrics the index of the batch being finished (global_step - 1);
        # rows use optimizer steps completed, so "tokens" is exactly what the model has trained on.
        step = int(self.trainer.global_step if self.trainer is not None else step or 0)
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        self.rundir.log_metrics(step, step * self.tokens_per_step, metrics)
