"""Load a trained model from a Lightning .ckpt, a run directory, or an exported folder.

An exported folder (moda_lab.hf.export) is a Hugging Face folder: config.json (the ModelConfig's keys plus the Hugging
Face ones), model.safetensors (GPT's state_dict under the prefix ``model.``) and tokenizer.json. Folders
written before the Hugging Face export (config.json = the bare ModelConfig plus ``_step``, unprefixed weights)
load too. Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .errors import UsageError
from .model import GPT, ModelConfig
from .rundir import RunDir

log = logging.getLogger(__name__)


class CheckpointError(UsageError):
    """A checkpoint is missing, unreadable, not from moda-lab, or does not fit its config."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, an exported folder (config.json), or a run dir: its newest intact checkpoint (run_checkpoint)."""
    p = Path(path)
    if p.is_dir():
        return p if (p / "config.json").is_file() else run_checkpoint(p)[0]
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {p} does not exist; give a .ckpt file, a run dir or an exported folder (config.json)"
        )
    return p


def run_checkpoint(run_dir: str | Path) -> tuple[Path, int]:
    """(path, global step) of the checkpoint a run dir's training would resume from: last.ckpt, or, when that is
    missing, unreadable or older, the newest step_*.ckpt that loads, with one warning saying why.

    train.checkpointing.resume_checkpoint decides, read-only here (nothing is renamed or copied); its own
    warnings, worded for resuming, are held back.
    """
    rundir = RunDir(run_dir)
    if not rundir.ckpt_dir.is_dir():
        raise CheckpointError(
            f"{rundir.path} is neither an exported model folder (config.json) nor a run dir (checkpoints/)"
        )
    from .train import checkpointing  # here: it imports Lightning

    train_log = logging.getLogger(checkpointing.__name__)
    disabled, train_log.disabled = train_log.disabled, True
    try:
        found = checkpointing.resume_checkpoint(rundir.ckpt_dir, set_aside=False)
    finally:
        train_log.disabled = disabled
    if found is None:
        files = sorted(p.name for p in rundir.ckpt_dir.glob("*.ckpt"))
        held = f"none of {', '.join(files)} loads" if files else "no .ckpt file in it"
        raise CheckpointError(f"{rundir.ckpt_dir} holds no intact checkpoint ({held}); train the run first")
    ckpt, step = found
    last = rundir.ckpt_dir / "last.ckpt"
    if ckpt != last:
        last_step, why = checkpointing.checkpoint_step(last) if last.is_file() else (None, "missing")
        why = why if last_step is None else f"step {last_step}, older"
        log.warning("using %s (step %d), the newest intact checkpoint: %s is passed over (%s)", ckpt, step, last, why)
    return ckpt, step


def _read_ckpt(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, pickle garbage, ...
        first = str(err).split(". ")[0].splitlines()[0] if str(err) else ""  # torch's advice paragraph is dropped
        hint = ""
        if RunDir.of_checkpoint(path) is not None:
            hint = f"; give the run dir {path.parent.parent} to use its newest intact checkpoint"
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a complete torch checkpoint, truncated or another file "
            f"({type(err).__name__}: {first}){hint}"
        ) from err
    if not isinstance(ckpt, dict) or "model_cfg" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path} is not a moda-lab training checkpoint (no hyper_parameters.model_cfg)")
    return ckpt


def _build(cfg: dict, state: dict, source: Path, backend: str | None) -> GPT:
    try:
        model_cfg = ModelConfig(**cfg)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model config: {err}") from err
    if backend is not None:
        model_cfg = dataclasses.replace(model_cfg, attn_backend=backend)
    model = GPT(model_cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if model_cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]  # exported without the alias
    unexpected = [k for k in state if k not in own]
    shape_errors = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or shape_errors:
        raise CheckpointError(
            f"{source}: weights do not match its config ({model_cfg.mixer.name}, {model_cfg.n_layers} layers): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {shape_errors[:5]}"
        )
    model.load_state_dict(state, strict=False)  # keys and shapes checked above; the tied head may be absent
    return model.eval()


WEIGHT_PREFIX = "model."  # MoDAForCausalLM.model is the GPT; an exported state_dict carries its prefix
MODEL_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def read_folder_config(folder: Path) -> tuple[dict, int | None]:
    """(ModelConfig dict, training step) from an exported folder's config.json, either format."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if raw.get("model_type") == "moda":  # a Hugging Face config: the ModelConfig's keys are top-level keys
        return {k: raw[k] for k in MODEL_CONFIG_KEYS if k in raw}, raw.get("training_step")
    step = raw.pop("_step", None)
    return raw, step


def load_checkpoint(path: str | Path, backend: str | None = None) -> tuple[GPT, dict, dict]:
    """(model on CPU in eval mode, model config dict, extras: step, tokenizer json)."""
    src = resolve_checkpoint(path)
    if src.is_dir():
        cfg, step = read_folder_config(src)
        from safetensors.torch import load_file

        try:
            state = load_file(str(src / "model.safetensors"))
        except Exception as err:
            raise CheckpointError(f"cannot read {src / 'model.safetensors'}: {err}") from err
        if all(k.startswith(WEIGHT_PREFIX) for k in state):  # the Hugging Face wrapper holds GPT as .model
            state = {k.removeprefix(WEIGHT_PREFIX): v for k, v in state.items()}
        tok = src / "tokenizer.json"
        extras = {"step": step, "tokenizer": tok.read_text() if tok.is_file() else None}
        return _build(cfg, state, src, backend), cfg, extras
    ckpt = _read_ckpt(src)
    cfg = ckpt["hyper_parameters"]["model_cfg"]
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    extras = {"step": ckpt.get("global_step"), "tokenizer": ckpt.get("tokenizer")}
    return _build(cfg, state, src, backend), cfg, extras


def load_model(path: str | Path, backend: str | None = None) -> tuple[GPT, dict]:
    model, cfg, _ = load_checkpoint(path, backend)
    return model, cfg


def checkpoint_tokenizer(extras: dict, source: str | Path) -> Tokenizer:
    """The training tokenizer from load_checkpoint's extras (stored inside .ckpt files and exported folders)."""
    if not extras["tokenizer"]:
        raise CheckpointError(f"{source} carries no tokenizer; scoring text needs the training tokenizer")
    return Tokenizer.from_str(extras["tokenizer"])
