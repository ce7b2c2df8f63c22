"""Divergence guard: skip optimizer steps on a non-finite or spiking loss, stop a run that keeps diverging.

A step whose training loss or gradient norm is NaN/inf, or whose loss exceeds ``factor`` x the lowest training
loss so far, updates nothing: its gradients are dropped before the optimizer step (AdamW skips parameters without
a gradient, so weights and moments stay as they were; the lr schedule still advances). After ``max_skipped``
such steps in a row the run stops and train() marks it ``diverged``. Checkpoints are only written while the
weights are healthy (``healthy``): a diverged run keeps its last good checkpoint, never NaN weights.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from ..errors import UsageError

log = logging.getLogger(__name__)


class DivergedError(UsageError):
    """The training loss stayed non-finite (or kept spiking) for trainer.max_skipped_steps steps in a row."""


class DivergenceGuard(L.Callback):
    def __init__(self, max_skipped: int, factor: float) -> None:
        self.max_skipped, self.factor = max_skipped, factor
        self.min_loss = math.inf  # lowest accepted training loss (checkpointed: a resumed run keeps it)
        self.skipped_in_a_row = 0
        self.diverged_at: int | None = None  # the optimizer step at which the run was stopped
        self.last_bad = ""  # why the last step was skipped, for the final message
        self._loss: torch.Tensor | float = 0.0  # this optimizer step's loss, summed over its micro-batches

    # --- state carried by checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"min_loss": self.min_loss, "skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.min_loss = state.get("min_loss", math.inf)
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)

    # --- the check -------------------------------------------------------------------------------------------

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning hands each micro-batch's loss already divided by trainer.accumulate: the sum is the mean.
        self._loss = self._loss + loss.detach()  # one host sync per optimizer step, not per micro-batch

    def _why_bad(self, loss: float, grad_norm: float) -> str:
        if not math.isfinite(loss):
            return f"loss {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm {grad_norm}"
        if self.factor and loss > self.factor * self.min_loss:
            return f"loss {loss:.4g} > trainer.divergence_factor={self.factor:g} x the lowest {self.min_loss:.4g}"
        return ""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss, self._loss = float(self._loss), 0.0
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # fp16's GradScaler skips steps with inf gradients itself and lowers its scale from them: dropping those
        # gradients here would hide them from it, so under 16-mixed only the loss is checked.
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads and not scaled else 0.0
        why = self._why_bad(loss, grad_norm)
        # Every rank decides alike (DDP): one bad rank skips the step everywhere.
        bad = trainer.strategy.reduce_boolean_decision(bool(why), all=False)
        step = trainer.global_step + 1  # the step this update would make
        if not bad:
            self.min_loss = min(self.min_loss, loss)
            self.skipped_in_a_row = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # no update of this parameter or its moments
        self.skipped_in_a_row += 1
        self.last_bad = why or "a bad step on another rank"
        pl_module.log("train/skipped_steps", float(self.skipped_in_a_row), on_step=True, on_epoch=False)
        if self.skipped_in_a_row > self.max_skipped:
            self.diverged_at = step
            trainer.should_stop = True
            return
        log.warning(
            "step %d skipped (%s): %d of trainer.max_skipped_steps=%d in a row",
            step, self.last_bad, self.skipped_in_a_row, self.max_skipped,
        )

    def healthy(self, trainer, pl_module) -> bool:
        """Whether the weights may be checkpointed: the last step was not skipped, every weight is finite and so
        is the latest validation loss (an update can break the weights before the next training loss shows it)."""
        val = trainer.callback_metrics.get("val/loss")
        ok = (
            not self.skipped_in_a_row
            and self.diverged_at is None
            and (val is None or bool(torch.isfinite(val)))
            and all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
        )
        return trainer.strategy.reduce_boolean_decision(ok, all=True)  # sharded weights: every rank must agree
