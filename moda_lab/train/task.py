"""One training run from a resolved config: data -> run dir -> Lightning fit (resuming) -> logs. No Hydra here."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
import torch

from ..config import RunConfig, run_config_from_dict
from ..rundata import load_data
from ..rundir import RunDir, tokens_per_step
from .checkpointing import AtomicCheckpointIO, StepCheckpoint, resume_checkpoint
from .console import StepProgressBar, quiet_console
from .datamodule import PackedDataModule
from .jsonl_logger import JSONLLogger
from .module import LMModule

log = logging.getLogger(__name__)


class _StepMetric(L.Callback):
    """Exposes the optimizer step to ModelCheckpoint (monitor='train/step', keep the newest k)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/step", float(trainer.global_step), logger=False, on_step=True, on_epoch=False)


def _wandb_logger(run: RunConfig, rundir: RunDir, meta: dict, resolved: dict):
    w = run.logger.wandb
    mode = w.run_mode
    if mode is None:
        return None
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as err:
        raise RuntimeError(f"logger.wandb.enabled=true needs wandb installed ({err}); or set it to false") from err
    wandb_logger = WandbLogger(
        project=w.project,
        entity=w.entity,
        name=f"{rundir.path.parent.name}/{rundir.path.name}",
        id=meta["wandb_id"],
        save_dir=str(rundir.path),
        mode=mode,
        resume="allow",
        config=resolved,
    )
    # Lightning passes anonymous=None, which wandb 0.31 reports as a deprecated setting on every run.
    wandb_logger._wandb_init.pop("anonymous", None)
    return wandb_logger


def _trainer_kwargs(run: RunConfig) -> dict:
    t = run.trainer
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    strategy = t.strategy
    if strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from ..model.gpt import Block

        strategy = FSDPStrategy(auto_wrap_policy={Block})
    return {
        "max_steps": t.max_steps,
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": strategy,
        "precision": precision,
        "accumulate_grad_batches": t.accumulate,
        "gradient_clip_val": t.grad_clip or None,
        "val_check_interval": t.val_every * t.accumulate,  # counted in batches; val_every is in optimizer steps
        "check_val_every_n_epoch": None,
        "log_every_n_steps": t.log_every,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "plugins": [AtomicCheckpointIO()],
        # ResumableSampler shards by rank itself; Lightning's DistributedSampler wrapper would shard it again.
        "use_distributed_sampler": False,
    }


def train(resolved: dict, run_dir: str | Path) -> dict:
    """Train (or resume) the run described by the resolved config dict in run_dir; returns final metrics."""
    run = run_config_from_dict(resolved)
    quiet_console()
    if run.trainer.threads:
        torch.set_num_threads(run.trainer.threads)
    data = load_data(run)  # data errors surface before anything else is printed or written
    L.seed_everything(run.seed, workers=True)
    rundir = RunDir(run_dir)
    done = rundir.read_meta()
    # DDP children (LOCAL_RANK > 0) re-enter here: only the launching process writes the run dir.
    rank0 = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    meta = rundir.open(resolved) if rank0 else done
    resume = resume_checkpoint(rundir.ckpt_dir, set_aside=rank0)
    if done.get("status") == "finished" and done.get("global_step", -1) >= run.trainer.max_steps and resume:
        log.info("%s already trained to step %d: nothing to do", rundir.path, done["global_step"])
        rundir.write_meta(status="finished", finished=done.get("finished"))
        return {}
    wandb_logger = None
    try:
        module = LMModule(
            run.model,
            run.trainer,
            data.domains,
            {d: s["bytes"] / s["tokens"] for d, s in data.meta["val"].items()},
            (data.root / "tokenizer.json").read_text(),
        )
        if run.trainer.compile:
            module.model.compile(fullgraph=True)  # in place: state_dict keys stay those of the eager model
        t = run.trainer
        dm = PackedDataModule(
            data, run.data.seq_len, t.batch_size, run.data.val_windows, run.seed, run.data.num_workers, t.accumulate
        )
        loggers = [JSONLLogger(rundir)]
        wandb_logger = _wandb_logger(run, rundir, meta, resolved)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
        ckpt = StepCheckpoint(
            run.trainer.ckpt_every,
            dirpath=rundir.ckpt_dir,
            filename="step_{train/step:06.0f}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=run.trainer.keep_checkpoints,
            monitor="train/step",
            mode="max",
        )
        trainer = L.Trainer(
            **_trainer_kwargs(run),
            callbacks=[_StepMetric(), ckpt, StepProgressBar(refresh_rate=max(1, run.trainer.log_every // 2))],
            logger=loggers,
            default_root_dir=str(rundir.path),
        )
        module.tokens_per_step = tokens_per_step(t.batch_size, t.accumulate, run.data.seq_len, trainer.world_size)
        loggers[0].bind(trainer, module.tokens_per_step)
        if rank0:
            # What actually runs (model.attn_backend=auto resolves per machine; trainer.devices=-1 to a process
            # count, from which RunDir.tokens_at derives tokens), next to what was asked for.
            rundir.write_meta(
                attn_backend=module.model.backend, compiled=run.trainer.compile, world_size=trainer.world_size
            )
        restored = resume[1] if resume else -1
        dropped = rundir.drop_metrics_after(restored) if rank0 else 0
        if dropped:
            why = f"after step {restored}, where this launch resumes" if resume else "with no intact checkpoint"
            log.warning("metrics.jsonl: dropped %d row(s) logged %s; they are logged again", dropped, why)
        if resume is None:
            model_stats = {
                "model/params": module.model.num_params(),
                "model/params_embedding": module.model.tok_emb.weight.numel(),
                "model/flops_per_token": module.flops_per_token,
            }
            for lg in loggers:
                lg.log_metrics(model_stats, step=0)
            trainer.validate(module, datamodule=dm, verbose=False)  # val loss at step 0: the curve's start
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume[0]) if resume else None)
        if trainer.global_step % t.val_every:  # the loop validates every val_every steps: the final step too
            trainer.validate(module, datamodule=dm, verbose=False)
        final = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero:
            rundir.write_meta(
                status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), global_step=trainer.global_step
            )
        return final
    except BaseException:
        if rank0:
            rundir.write_meta(status="failed")
        raise
    finally:
        if wandb_logger is not None:
            import wandb

            wandb.finish()  # multirun jobs share a process: never let one run's wandb state bleed into the next
        _end_distributed()


def _end_distributed() -> None:
    """The next multirun job starts its own DDP group: drop this one and its rendezvous port."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        if os.environ.get("LOCAL_RANK", "0") == "0":
            for key in ("MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
                os.environ.pop(key, None)
