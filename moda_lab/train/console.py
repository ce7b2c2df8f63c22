"""One clean console line per event: Lightning's logs through the app's handlers, known library noise filtered,
and a progress bar over the run's optimizer steps."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import TQDMProgressBar

# Library messages that say nothing about this run (versions pinned in pyproject.toml).
_NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6's pytree helper on torch 2.13
    r"Checkpoint directory .* exists and is not empty",  # every resume; resume_checkpoint reports what it uses
)
_NOISE_LOGS = ("💡 Tip:",)  # Lightning's advertisement for litlogger, once per Trainer


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE_LOGS)


def quiet_console() -> None:
    """Route Lightning's loggers through the root handlers (Hydra's console and run.log) exactly once, and drop
    the messages listed above. Idempotent."""
    root_has_handlers = logging.getLogger().hasHandlers()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        if root_has_handlers:
            # Lightning adds its own console handler on import and still propagates to the root: every INFO line
            # would print twice (once bare, once in the app's format).
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
                lg.removeHandler(h)
            lg.propagate = True
        if not any(isinstance(f, _DropNoise) for f in lg.filters):
            lg.addFilter(_DropNoise())
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # filters do not inherit
    if not any(isinstance(f, _DropNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_DropNoise())
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class StepProgressBar(TQDMProgressBar):
    """One training bar over optimizer steps (``global_step / max_steps``) for the whole run.

    Lightning's bar counts the batches of the current epoch and gets its total at epoch start, which a run resumed
    mid-epoch never sees (``105/?``, with a rate computed from zero); this one starts at the restored step.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step
        bar.set_description("train step")

    def on_train_epoch_start(self, trainer, *_) -> None:
        """The bar spans epochs."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if bar.disable or step == bar.n:
            return
        if step % self.refresh_rate == 0 or step >= trainer.max_steps:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
