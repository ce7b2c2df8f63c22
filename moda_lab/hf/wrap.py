"""The workbench's GPT and tokenizer as transformers objects in memory: the exported folder without the folder.

moda_lab.eval.lm hands them to lm-eval's HFLM, so a checkpoint evaluated in memory runs the same classes, config
and tokenizer settings as its export under lm-eval's stock hf model. Needs transformers (the folder's writer,
export.py, does not).
"""

from __future__ import annotations

import dataclasses

from tokenizers import Tokenizer

from ..data.tokenizer import EOS
from ..model import GPT
from .export import config_json, scored_input, tokenizer_files


def wrap(model: GPT, tokenizer: Tokenizer, step: int | None = None):
    """(MoDAForCausalLM over ``model``, its weights and device kept; PreTrainedTokenizerFast over ``tokenizer``)."""
    from transformers import PreTrainedTokenizerFast

    from .configuration_moda import MoDAConfig
    from .modeling_moda import MoDAForCausalLM

    eos = tokenizer.token_to_id(EOS)
    n_positions = scored_input(model.cfg.max_seq_len)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config = config_json(dataclasses.asdict(model.cfg), n_positions, step, dtype, eos)
    for key in ("model_type", "architectures", "auto_map"):  # the class says these; they name files of a folder
        config.pop(key)
    hf_model = MoDAForCausalLM(MoDAConfig(**config), model=model).to(next(model.parameters()).device)
    settings = tokenizer_files(n_positions)["tokenizer_config.json"]
    settings.pop("tokenizer_class")
    return hf_model.eval(), PreTrainedTokenizerFast(tokenizer_object=tokenizer, **settings)
