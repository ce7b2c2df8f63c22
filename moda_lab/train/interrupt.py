"""Ctrl-C during training: finish the optimizer step under way, checkpoint it, stop; train() marks `interrupted`.

The first SIGINT only sets a flag (a KeyboardInterrupt raised mid-step could land between two parameter updates);
the step that is running completes, the run stops at its end and the final-step checkpoint (StepCheckpoint's
on_train_end) holds it, so relaunching the same command resumes there. A second Ctrl-C stops at once, as before
(Lightning's own KeyboardInterrupt handling): nothing is saved then beyond the last checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L

log = logging.getLogger(__name__)


class GracefulInterrupt(L.Callback):
    def __init__(self) -> None:
        self.requested = False  # Ctrl-C was pressed during fit
        self.stopped_at: int | None = None  # the optimizer step the run stopped after
        self.hard = False  # a KeyboardInterrupt reached Lightning (second Ctrl-C): stopped unsaved
        self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)  # the next Ctrl-C is hard
        log.warning("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again: stop unsaved)")

    @contextmanager
    def catching(self) -> Iterator[None]:
        """Around trainer.fit (not in its hooks: Lightning's signal connector snapshots every handler when fit
        starts and puts them back at its teardown, which would leave this one installed)."""
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            yield
            return
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._previous)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid optimizer step
        # DDP: every rank got the signal, maybe a step apart; all stop after the same step.
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self.requested = True
            self.stopped_at = trainer.global_step
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.hard = self.hard or isinstance(exception, KeyboardInterrupt)  # Lightning turns it into exit(1)
