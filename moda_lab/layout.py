"""Saved configs in today's layout: the one upgrade rule that run dirs, checkpoints and the model config share
(moda_lab.rundir.upgrade_config applies it with the others). No imports: every layer can use it."""

from __future__ import annotations

# Keys every saved model.mixer had before each depth-flow variant got its own options (issue 30): MoDA's
# switches, false for every other variant.
LEGACY_MIXER_SWITCHES = ("depth_kv", "ffn_kv", "attn_kv")


def upgrade_mixer_options(mixer: dict) -> dict:
    """A saved ``model.mixer`` in today's layout: a variant other than MoDA drops the MoDA switches that every
    mixer config carried, false, before each variant had its own options (so old and new runs of a variant
    have one config)."""
    if mixer.get("name", "residual") == "moda":
        return mixer
    return {k: v for k, v in mixer.items() if not (k in LEGACY_MIXER_SWITCHES and v is False)}
