"""Hugging Face configuration of a moda-lab decoder (``trust_remote_code``; copied into every exported folder).

The keys are moda_lab.model.ModelConfig's, one to one, read from its dataclass fields when this module is
imported (a nested config such as ``mixer`` is a dict here), so each name and default is defined once, in
ModelConfig. The Hugging Face names that generic tools read (hidden_size, num_hidden_layers,
max_position_embeddings, tie_word_embeddings, ...) are aliases of them. ``n_positions`` is the longest input
the model scores (lm-eval reads it as its context; see modeling_moda for inputs longer than max_seq_len).
This code imports moda_lab: the package must be installed where the folder is loaded (``pip install
moda-lab``, or ``pip install -e .`` in a checkout). Written for transformers 5.x (tested with the version
pinned in moda-lab's dependencies).
"""

from __future__ import annotations

import dataclasses
import typing

from transformers import PretrainedConfig

try:
    from moda_lab.model import ModelConfig
except ImportError as err:  # pragma: no cover - the folder is useless without the workbench
    raise ImportError(
        "this model folder holds a moda-lab (Mixture-of-Depths Attention) decoder; its remote code imports the "
        f"moda_lab package: install moda-lab (pip install -e <moda-lab checkout>) ({err})"
    ) from err


def _plain(value: object) -> object:
    """A ModelConfig default as config.json holds it: nested dataclasses as dicts."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _model_config_fields() -> dict[str, object]:
    """ModelConfig's fields as class attributes of the Hugging Face config: each default, or a dataclasses.field
    whose factory copies it where it is a dict or list (a dataclass refuses a mutable default)."""
    out = {}
    for f in dataclasses.fields(ModelConfig):
        if f.default is not dataclasses.MISSING:
            default = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _plain(f.default_factory())
        else:  # a required ModelConfig key: config.json must carry it
            default = None
        if isinstance(default, (dict, list)):
            out[f.name] = dataclasses.field(default_factory=lambda d=default: _plain_copy(d))
        else:
            out[f.name] = default
    return out


def _plain_copy(value: object) -> object:
    """A deep copy of a JSON-like default, so that no two configs share one dict."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def _moda_config(self) -> ModelConfig:
    """The workbench's ModelConfig (validated: a bad key raises ValueError naming it). ModelConfig builds its
    nested configs from their dicts, as it does for training checkpoints."""
    return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})


_FIELDS = _model_config_fields()
_EXTRA = {  # the Hugging Face keys that are not ModelConfig's
    "n_positions": None,  # the longest input scored; None: max_seq_len
    # Special tokens (the training tokenizer's EOS doubles as BOS and padding, GPT-2 style).
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "training_step": None,  # the optimizer step the weights come from
}

# transformers turns every PretrainedConfig subclass into a dataclass of its annotated class attributes when the
# class is created, so the fields are laid out in the namespace the class is built from.
MoDAConfig = type(
    "MoDAConfig",
    (PretrainedConfig,),
    {
        "__module__": __name__,
        "__qualname__": "MoDAConfig",
        "__doc__": "ModelConfig as a Hugging Face config; ``moda_config()`` gives back the frozen dataclass.",
        "__annotations__": {name: typing.Any for name in [*_FIELDS, *_EXTRA]},
        "model_type": "moda",
        "attribute_map": {
            "hidden_size": "d_model",
            "num_hidden_layers": "n_layers",
            "num_attention_heads": "n_heads",
            "num_key_value_heads": "n_kv_heads",
            "max_position_embeddings": "max_seq_len",
            "tie_word_embeddings": "tie_embeddings",
            "rms_norm_eps": "norm_eps",
            "initializer_range": "init_std",
        },
        **_FIELDS,
        **_EXTRA,
        "moda_config": _moda_config,
    },
)
