"""Export a checkpoint as a Hugging Face folder that transformers, lm-eval's ``hf`` model and moda-lab load.

The folder holds:

* ``config.json``: the ModelConfig's keys plus what transformers reads (model_type ``moda``, architectures,
  ``auto_map`` to the two code files, dtype, special token ids, ``training_step``) and ``n_positions``, the
  longest input scored (see SCORED_INPUT);
* ``model.safetensors``: MoDAForCausalLM's state_dict (GPT's under ``model.``; a tied head is stored once);
* ``tokenizer.json`` (the training tokenizer) with ``tokenizer_config.json`` and ``special_tokens_map.json``
  so ``AutoTokenizer`` loads it as a fast tokenizer (EOS = BOS = PAD = ``<|endoftext|>``, no BOS added);
* ``generation_config.json`` (greedy, EOS);
* ``configuration_moda.py`` and ``modeling_moda.py``: the ``trust_remote_code`` classes, which import moda_lab.

Writing it needs neither transformers nor a GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..data.tokenizer import EOS
from ..errors import UsageError, dir_write_problem
from ..load import WEIGHT_PREFIX, CheckpointError, load_checkpoint, resolve_checkpoint

CODE_FILES = ("configuration_moda.py", "modeling_moda.py")
# The longest input the folder's model scores: config.json's n_positions and the tokenizer's model_max_length,
# which lm-eval's hf model reads as its context (max_length). Inputs past max_seq_len run in windows of
# max_seq_len (modeling_moda), so a continuation longer than the model's context, as PIQA's long solutions are,
# is scored as moda_lab's own lm-eval model scores it instead of failing lm-eval's check that a continuation fits
# in max_length. 2048 is lm-eval's own default context.
SCORED_INPUT = 2048
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HERE = Path(__file__).resolve().parent


def scored_input(max_seq_len: int) -> int:
    """n_positions of an export: SCORED_INPUT, or the model's context where that is longer."""
    return max(max_seq_len, SCORED_INPUT)


def config_json(cfg: dict, n_positions: int, step: int | None, dtype: str, eos: int | None) -> dict:
    """config.json of an export: ModelConfig's keys (cfg, a dict) plus the Hugging Face ones."""
    return {
        "model_type": "moda",
        "architectures": ["MoDAForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_moda.MoDAConfig",
            "AutoModelForCausalLM": "modeling_moda.MoDAForCausalLM",
        },
        **cfg,
        "n_positions": n_positions,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "dtype": dtype,
        "training_step": step,
    }


def tokenizer_files(max_len: int) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json of an export."""
    specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        # tokenizers' own decode, exactly: no "clean up" of spaces before punctuation.
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": specials}


def export(path: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the Hugging Face folder of a checkpoint (.ckpt, run dir or exported folder) into out_dir.

    out_dir must not exist or be empty, unless overwrite (its files of the same names are then replaced).
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise UsageError(f"dtype={dtype!r} is not supported; choose one of {list(DTYPES)}")
    out = Path(out_dir)
    src = resolve_checkpoint(path)
    if src.is_dir() and src.resolve() == out.resolve():
        raise CheckpointError(f"{src} is the exported folder itself; export it into another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"export folder {out} is a file; give a folder that does not exist or is empty")
    problem = dir_write_problem(out)
    if problem:  # a file above it, a read-only folder
        raise UsageError(f"export folder {out}: {problem}; give a new or empty folder this user can write")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"export folder {out} is not empty; give a new or empty folder, or --overwrite to replace its files"
        )
    model, cfg, extras = load_checkpoint(src)
    if not extras["tokenizer"]:
        raise CheckpointError(f"{path} carries no tokenizer; a Hugging Face folder needs one")
    tok = Tokenizer.from_str(extras["tokenizer"])
    eos = tok.token_to_id(EOS)
    if eos is None:
        raise CheckpointError(f"the tokenizer of {path} has no {EOS!r} token")
    out.mkdir(parents=True, exist_ok=True)
    state = {WEIGHT_PREFIX + k: v.to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop(WEIGHT_PREFIX + "lm_head.weight")  # shared with tok_emb.weight; safetensors refuses aliases
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = config_json(cfg, scored_input(model.cfg.max_seq_len), extras["step"], dtype, eos)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (out / "tokenizer.json").write_text(extras["tokenizer"])
    for name, content in tokenizer_files(scored_input(model.cfg.max_seq_len)).items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    for name in CODE_FILES:
        shutil.copyfile(HERE / name, out / name)
    return out
