"""One training run from a resolved config: data -> run dir -> Lightning fit (resuming) -> logs. No Hydra here."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch

from moda_kernels.dispatch import BACKEND_ENV, choose_backend, interpreter

from ..config import ConfigError, RunConfig, run_config_from_dict
from ..data import PackedData
from ..errors import UsageError
from ..model.backends import dispatch_record
from ..rundata import load_data
from ..rundir import RunDir, RunLock, tokens_per_step
from .checkpointing import AtomicCheckpointIO, StepCheckpoint, checkpoint_step, resume_checkpoint
from .compile_cache import CompileCache
from .console import StepProgressBar, quiet_console
from .datamodule import PackedDataModule
from .divergence import DivergedError, DivergenceGuard
from .interrupt import GracefulInterrupt
from .jsonl_logger import JSONLLogger
from .module import LMModule

log = logging.getLogger(__name__)


def check_accelerator(accelerator: str, cudagraphs: bool = False, attn_backend: str = "auto") -> None:
    """trainer.accelerator=gpu|cuda (trainer=gpu and trainer=ddp set it) needs a visible CUDA GPU: without one,
    fail before any work instead of training on the CPU at a fraction of the speed. So does trainer.cudagraphs
    (with accelerator=auto the run would otherwise go to the CPU, where there are no CUDA graphs), and so does
    model.attn_backend=triton outside Triton's interpreter."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} needs a CUDA GPU and this machine shows none "
            "(torch.cuda.is_available() is False); allowed here: trainer=cpu or trainer.accelerator=cpu"
        )
    if cudagraphs and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.cudagraphs=true needs a CUDA GPU and this machine shows none (torch.cuda.is_available() is "
            "False); allowed here: trainer.cudagraphs=false"
        )
    on_cpu = accelerator == "cpu" or not torch.cuda.is_available()
    if on_cpu and not interpreter():
        try:
            choice = choose_backend(attn_backend)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if choice.name == "triton":
            key = f"{BACKEND_ENV}=triton" if choice.via_env else "model.attn_backend='triton'"
            raise ConfigError(
                f"{key} runs Triton kernels, which need a CUDA GPU, and this run trains on the CPU "
                f"(trainer.accelerator={accelerator!r}, torch.cuda.is_available() is {torch.cuda.is_available()}); "
                "allowed here: model.attn_backend=auto, naive or sdpa (or TRITON_INTERPRET=1, Triton's slow "
                "interpreter)"
            )


def compile_options(cudagraphs: bool) -> dict:
    """torch.compile's arguments for the training step (GPT.compile): the whole model as one graph, in torch's
    default mode, or with trainer.cudagraphs as CUDA graphs (mode "reduce-overhead": each step replays the
    captured kernels, without the per-layer host work of launching them)."""
    return {"fullgraph": True, "mode": "reduce-overhead"} if cudagraphs else {"fullgraph": True}


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
        import wandb
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as err:
        raise RuntimeError(f"logger.wandb.enabled=true needs wandb installed ({err}); or set it to false") from err

    def make(mode: str) -> WandbLogger:
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

    wandb_logger = make(mode)
    if mode != "online":
        return wandb_logger
    try:
        wandb_logger.experiment  # noqa: B018 - wandb.init now: a rejected key is known before training, not mid-run
    except wandb.errors.Error as err:  # AuthenticationError (a bad WANDB_API_KEY), unreachable servers, no key
        why = " ".join(str(err).split())[:200]
        log.warning(
            "logger.wandb: W&B refused the online run (%s: %s); logging offline to %s/wandb instead "
            "(`wandb sync` uploads it later)", type(err).__name__, why, rundir.path,
        )
        wandb.finish()
        wandb_logger = make("offline")
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
        # Validation under no_grad, not inference_mode: the step-0 trainer.validate and the validations inside fit
        # then hand the compiled model tensors with the same dispatch keys, so they share one graph (with
        # inference_mode the second was traced and compiled again).
        "inference_mode": False,
        "enable_model_summary": False,
        "plugins": [AtomicCheckpointIO()],
        # ResumableSampler shards by rank itself; Lightning's DistributedSampler wrapper would shard it again.
        "use_distributed_sampler": False,
    }


# Environment faults that end a run with one line instead of a traceback: nothing in the config is wrong, the
# machine cannot take the run's files.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class RunDirWriteError(UsageError):
    """The run dir cannot be written (full disk, read-only or foreign file system)."""


def _write_fault(err: OSError, rundir: RunDir) -> RunDirWriteError:
    path = err.filename or rundir.path
    resume = resume_checkpoint(rundir.ckpt_dir, set_aside=False) if rundir.ckpt_dir.is_dir() else None
    kept = (
        f"kept {resume[0]} (step {resume[1]}); relaunching the same command resumes there"
        if resume
        else "no checkpoint was written"
    )
    return RunDirWriteError(f"cannot write {path}: {os.strerror(err.errno)}; {kept}")


def train(resolved: dict, run_dir: str | Path) -> dict:
    """Train (or resume) the run described by the resolved config dict in run_dir; returns final metrics.

    Holds the run dir's lock (RunLock) throughout. meta.json's status ends as finished (final checkpoint intact),
    diverged (DivergedError), interrupted (Ctrl-C: KeyboardInterrupt, after a checkpoint at the step it stopped)
    or failed; never running. A full or read-only disk raises RunDirWriteError naming the path and what was kept.
    """
    run = run_config_from_dict(resolved)
    quiet_console()
    if run.trainer.threads:
        torch.set_num_threads(run.trainer.threads)
    check_accelerator(run.trainer.accelerator, run.trainer.cudagraphs, run.model.attn_backend)
    if run.trainer.warmup_steps >= run.trainer.max_steps:
        log.warning(
            "trainer.warmup_steps=%d >= trainer.max_steps=%d: the lr never reaches trainer.lr=%g",
            run.trainer.warmup_steps, run.trainer.max_steps, run.trainer.lr,
        )
    data = load_data(run)  # data errors surface before anything else is printed or written
    L.seed_everything(run.seed, workers=True)
    rundir = RunDir(run_dir)
    # DDP children (LOCAL_RANK > 0) re-enter here: only the launching process writes the run dir.
    rank0 = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    lock = RunLock(rundir.path) if rank0 else None
    try:
        if lock is not None:
            lock.acquire()  # a second launch of this run dir stops here, having written nothing
        try:
            return _train(run, resolved, rundir, data, rank0)
        finally:
            if lock is not None:
                lock.release()
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise _write_fault(err, rundir) from err


def _status_after(err: BaseException, guard: GracefulInterrupt) -> str:
    if isinstance(err, KeyboardInterrupt) or guard.requested or guard.hard:
        return "interrupted"
    return "failed"


def _already_trained(run: RunConfig, resolved: dict, rundir: RunDir, done: dict) -> bool:
    """A finished run relaunched at its max_steps or fewer, with its final checkpoint intact: nothing to train, and
    nothing is written (config.yaml keeps the max_steps the run was trained to). A different run-defining config
    is refused as for any relaunch."""
    if done.get("status") != "finished" or done.get("global_step", -1) < run.trainer.max_steps:
        return False
    rundir.check_relaunch(resolved)
    last = rundir.last_ckpt  # damaged or missing: the launch below sets it aside and trains what is missing
    step = checkpoint_step(last)[0] if last is not None else None
    if step is None or step < done["global_step"]:
        return False
    log.info("%s already trained to step %d: nothing to do", rundir.path, done["global_step"])
    return True


def _train(run: RunConfig, resolved: dict, rundir: RunDir, data: PackedData, rank0: bool) -> dict:
    done = rundir.read_meta()
    if _already_trained(run, resolved, rundir, done):  # writes nothing, on any rank
        return {}
    meta = rundir.open(resolved) if rank0 else done
    wandb_logger = None
    interrupt = GracefulInterrupt()
    try:
        resume = resume_checkpoint(rundir.ckpt_dir, set_aside=rank0)
        if done.get("status") == "finished" and done.get("global_step", -1) >= run.trainer.max_steps:
            at = f"step {resume[1]} ({resume[0].name})" if resume else "no intact checkpoint"
            log.warning(
                "%s: meta.json says finished at step %d, but the newest intact checkpoint is %s; training the "
                "missing steps again", rundir.path, done["global_step"], at,
            )
        module = LMModule(
            run.model,
            run.trainer,
            data.domains,
            {d: s["bytes"] / s["tokens"] for d, s in data.meta["val"].items()},
            (data.root / "tokenizer.json").read_text(),
        )
        if run.trainer.compile:
            # In place: state_dict keys stay those of the eager model.
            module.model.compile(**compile_options(run.trainer.cudagraphs))
        t = run.trainer
        compile_cache = _compile_cache(run, module, rundir, rank0)
        dm = PackedDataModule(
            data, run.data.seq_len, t.batch_size, run.data.val_windows, run.seed, run.data.num_workers, t.accumulate
        )
        loggers = [JSONLLogger(rundir)]
        wandb_logger = _wandb_logger(run, rundir, meta, resolved)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
        guard = DivergenceGuard(t.max_skipped_steps, t.divergence_factor)
        ckpt = StepCheckpoint(
            run.trainer.ckpt_every,
            healthy=guard.healthy,
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
            callbacks=[
                _StepMetric(),
                guard,
                interrupt,
                ckpt,
                StepProgressBar(refresh_rate=max(1, run.trainer.log_every // 2)),
                *([compile_cache] if compile_cache else []),
            ],
            logger=loggers,
            default_root_dir=str(rundir.path),
        )
        module.tokens_per_step = tokens_per_step(t.batch_size, t.accumulate, run.data.seq_len, trainer.world_size)
        loggers[0].bind(trainer, module.tokens_per_step)
        if rank0:
            # What actually runs (model.attn_backend=auto resolves per machine; trainer.devices=-1 to a process
            # count, from which RunDir.tokens_at derives tokens), next to what was asked for.
            kernels = dispatch_record(
                module.model.attn_backend, seq_len=run.data.seq_len, n_heads=run.model.n_heads,
                n_kv_heads=run.model.n_kv_heads, head_dim=run.model.hd, precision=str(trainer.precision),
                device=trainer.strategy.root_device,
            )
            log.info("attention dispatch: %s", kernels)
            rundir.write_meta(
                attn_backend=module.model.backend, kernel_dispatch=kernels, compiled=run.trainer.compile,
                world_size=trainer.world_size,
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
        with interrupt.catching():
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume[0]) if resume else None)
        if guard.diverged_at is not None:
            raise _diverged(guard, rundir)
        if interrupt.requested:
            raise KeyboardInterrupt(_interrupted(rundir))
        if trainer.global_step % t.val_every:  # the loop validates every val_every steps: the final step too
            trainer.validate(module, datamodule=dm, verbose=False)
        final = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero:
            _check_final_checkpoint(rundir, trainer.global_step)
            rundir.write_meta(
                status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), global_step=trainer.global_step
            )
        return final
    except DivergedError:
        if rank0:
            rundir.write_meta(status="diverged", global_step=guard.diverged_at)
        raise
    except BaseException as err:
        if rank0:
            rundir.write_meta(status=_status_after(err, interrupt))
        raise
    finally:
        if wandb_logger is not None:
            import wandb

            wandb.finish()  # multirun jobs share a process: never let one run's wandb state bleed into the next
        _end_distributed()


def _compile_cache(run: RunConfig, module: LMModule, rundir: RunDir, rank0: bool) -> CompileCache | None:
    """trainer.compile_cache: the callback that carries the compile's artifacts, keyed by what the compiled graphs
    are traced from (the model, the attention backend it resolved to, the batch shape); rank zero writes the file
    and meta.json's ``compile_cache`` record, every rank loads."""
    t = run.trainer
    if t.compile_cache is None:  # set only with trainer.compile (TrainerConfig refuses it otherwise)
        return None
    graphs = {
        "model": dataclasses.asdict(run.model),
        "attn_backend": module.model.backend,
        "seq_len": run.data.seq_len,
        "batch_size": t.batch_size,
        "compile": compile_options(t.cudagraphs),  # CUDA graphs or not: other graphs
    }
    report = (lambda record: rundir.write_meta(compile_cache=record)) if rank0 else None
    return CompileCache(t.compile_cache, graphs, save=rank0, report=report)


def _diverged(guard: DivergenceGuard, rundir: RunDir) -> DivergedError:
    resume = resume_checkpoint(rundir.ckpt_dir, set_aside=False)
    kept = f"kept the last good checkpoint {resume[0]} (step {resume[1]})" if resume else "no checkpoint was kept"
    return DivergedError(
        f"training diverged at step {guard.diverged_at}: {guard.last_bad} on more than "
        f"trainer.max_skipped_steps={guard.max_skipped} steps in a row; {kept}; lower trainer.lr or raise "
        "trainer.warmup_steps"
    )


def _interrupted(rundir: RunDir) -> str:
    resume = resume_checkpoint(rundir.ckpt_dir, set_aside=False)
    if resume is None:
        return f"{rundir.path}: stopped before any checkpoint; relaunching the same command starts afresh"
    return f"saved {resume[0]} at step {resume[1]}; relaunching the same command resumes there"


def _check_final_checkpoint(rundir: RunDir, step: int) -> None:
    """`finished` only with an intact last.ckpt at the final step (a save that failed silently leaves none)."""
    last = rundir.ckpt_dir / "last.ckpt"
    got, why = checkpoint_step(last) if last.is_file() else (None, "missing")
    if got != step:
        raise RuntimeError(f"{last} does not hold the final step {step} ({why or f'step {got}'})")


def _end_distributed() -> None:
    """The next multirun job starts its own DDP group: drop this one and its rendezvous port."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        if os.environ.get("LOCAL_RANK", "0") == "0":
            for key in ("MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
                os.environ.pop(key, None)
