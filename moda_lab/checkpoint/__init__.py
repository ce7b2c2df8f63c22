"""Checkpoints: load a model from a Lightning .ckpt, a run dir or an exported folder; export a Hugging Face folder.

``python -m moda_lab.checkpoint.export <checkpoint or run dir> <out folder>`` writes the folder (folder.py);
configuration_moda.py and modeling_moda.py are the ``trust_remote_code`` classes copied into it.
"""

from .folder import export
from .load import (
    CheckpointError,
    checkpoint_tokenizer,
    load_checkpoint,
    load_model,
    read_folder_config,
    resolve_checkpoint,
    run_checkpoint,
)

__all__ = [
    "CheckpointError",
    "checkpoint_tokenizer",
    "export",
    "load_checkpoint",
    "load_model",
    "read_folder_config",
    "resolve_checkpoint",
    "run_checkpoint",
]
