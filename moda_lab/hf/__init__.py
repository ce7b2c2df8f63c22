"""Hugging Face export: a moda-lab checkpoint as a transformers folder (``trust_remote_code``).

``python -m moda_lab.hf <checkpoint or run dir> <out folder>`` writes the folder (export.py);
configuration_moda.py and modeling_moda.py are the ``trust_remote_code`` classes copied into it. Loading a
checkpoint into the workbench (.ckpt, run dir or exported folder) is moda_lab.load.
"""

from .export import export

__all__ = ["export"]
