"""Hugging Face configuration of a moda-lab decoder (``trust_remote_code``; copied into every exported folder).

The keys are moda_lab.model.ModelConfig's, one to one (``mixer`` as a dict); the Hugging Face names that
generic tools read (hidden_size, num_hidden_layers, max_position_embeddings, tie_word_embeddings, ...) are
aliases of them. This code imports moda_lab: the package must be installed where the folder is loaded
(``pip install moda-lab``, or ``pip install -e .`` in a checkout). Written for transformers 5.x (tested with
the version pinned in moda-lab's ``hf`` extra).
"""

from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

try:
    from moda_lab.model import ModelConfig
    from moda_lab.model.config import MixerConfig
except ImportError as err:  # pragma: no cover - the folder is useless without the workbench
    raise ImportError(
        "this model folder holds a moda-lab (Mixture-of-Depths Attention) decoder; its remote code imports the "
        f"moda_lab package: install moda-lab (pip install -e <moda-lab checkout>) ({err})"
    ) from err


class MoDAConfig(PretrainedConfig):
    """ModelConfig as a Hugging Face config; ``moda_config()`` gives back the frozen dataclass."""

    model_type = "moda"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "max_seq_len",
        "tie_word_embeddings": "tie_embeddings",
        "rms_norm_eps": "norm_eps",
        "initializer_range": "init_std",
    }

    # ModelConfig's fields and defaults (moda_config() reads every ModelConfig field, so keys added there
    # travel through config.json even before they are listed here).
    vocab_size: int = 4096
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None
    ffn_hidden: int | None = None
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    qk_norm: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    init_rng: str = "sequential"
    attn_backend: str = "auto"
    mixer: dict | None = None  # MixerConfig as a dict: name and the variant's options
    norm: str = "pre"
    # Special tokens (the training tokenizer's EOS doubles as BOS and padding, GPT-2 style).
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    training_step: int | None = None  # the optimizer step the weights come from

    def moda_config(self) -> ModelConfig:
        """The workbench's ModelConfig (validated: a bad key raises ValueError naming it)."""
        keys = [f.name for f in dataclasses.fields(ModelConfig) if hasattr(self, f.name)]
        kwargs = {k: getattr(self, k) for k in keys}
        kwargs["mixer"] = MixerConfig.from_dict(self.mixer or {})
        return ModelConfig(**kwargs)
