"""LightningModule: next-token loss, the optimizer and schedule of optim.py, throughput and MFU logging."""

from __future__ import annotations

import dataclasses
import math
import time

import lightning as L
import torch

from ..config import TrainerConfig
from ..model import GPT, ModelConfig
from .optim import build_optimizer, build_schedule
from .perf import peak_flops

LN2 = math.log(2.0)


class LMModule(L.LightningModule):
    def __init__(
        self,
        model_cfg: ModelConfig,
        trainer_cfg: TrainerConfig,
        val_domains: list[str],
        bytes_per_token: dict[str, float],
        tokenizer_json: str | None = None,
    ):
        super().__init__()
        # The checkpoint's hyper_parameters hold plain dicts (checkpoint.load rebuilds the model from model_cfg
        # without unpickling this package's classes): the one dataclass -> dict conversion.
        self.save_hyperparameters(
            {
                "model_cfg": dataclasses.asdict(model_cfg),
                "trainer_cfg": dataclasses.asdict(trainer_cfg),
                "val_domains": val_domains,
                "bytes_per_token": bytes_per_token,
            }
        )
        self.tokenizer_json = tokenizer_json
        self.model = GPT(model_cfg)
        self.tcfg = trainer_cfg
        self.val_domains = val_domains
        self.bytes_per_token = bytes_per_token
        self.tokens_per_step = 0  # set by train() once the world size is known (moda_lab.rundir.tokens_per_step)
        self._t_last: float | None = None  # time and step of the previous throughput sample
        self._step_last = 0
        self.flops_per_token = self.model.flops_per_token(self.model.cfg.max_seq_len)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Self-contained checkpoints: evaluation needs the exact tokenizer the model was trained with.
        checkpoint["tokenizer"] = self.tokenizer_json

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(x, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_start(self) -> None:
        # The first sample measures from here, so a resumed run logs the same keys as an uninterrupted one.
        self._t_last, self._step_last = time.perf_counter(), self.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.global_step
        if step % self.tcfg.log_every or (batch_idx + 1) % self.tcfg.accumulate:
            return
        now = time.perf_counter()
        if self._t_last is not None and step > self._step_last:
            tok_s = self.tokens_per_step * (step - self._step_last) / (now - self._t_last)
            self.log("perf/tokens_per_s", tok_s, on_step=True, on_epoch=False, prog_bar=True)
            peak = peak_flops(self.device)
            if peak:
                world = self.trainer.world_size
                self.log("perf/mfu", tok_s * self.flops_per_token / (peak * world), on_step=True, on_epoch=False)
            if self.device.type == "cuda":  # what this run holds of the GPU: sizes several runs sharing one
                self.log("perf/max_reserved_gib", torch.cuda.max_memory_reserved(self.device) / 2**30,
                         on_step=True, on_epoch=False)
        self._t_last, self._step_last = now, step
        self.log("train/tokens", float(step * self.tokens_per_step), on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step % self.tcfg.log_every == 0:
            norms = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
            if not norms:  # a step the divergence guard skipped (moda_lab.train.divergence)
                return
            self.log("train/grad_norm", torch.stack(norms).norm(), on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        loss = self.model(x, y)
        domain = self.val_domains[dataloader_idx]
        self.log(f"val/{domain}/loss", loss, add_dataloader_idx=False, batch_size=x.shape[0], sync_dist=True)
        return loss

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        losses = [metrics[f"val/{d}/loss"] for d in self.val_domains if f"val/{d}/loss" in metrics]
        if not losses:
            return
        for d in self.val_domains:
            key = f"val/{d}/loss"
            if key in metrics:
                self.log(f"val/{d}/ppl", torch.exp(metrics[key]))
                self.log(f"val/{d}/bpb", metrics[key] / LN2 / self.bytes_per_token[d])
        mean = torch.stack(losses).mean()
        self.log("val/loss", mean, prog_bar=True)
        self.log("val/ppl", torch.exp(mean))

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.tcfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": build_schedule(opt, self.tcfg), "interval": "step"}}
