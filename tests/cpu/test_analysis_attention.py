"""Attention inspection: summaries on hand-made maps, heatmaps, and the real model's attention_maps()."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from moda_lab.analysis import (  # noqa: E402
    attention_summary,
    inspect_model,
    layer_summary,
    plot_attention_heatmaps,
    save_inspection,
    synthetic_attention_maps,
    validate_maps,
)


def test_summary_on_hand_made_map():
    T, S = 3, 2
    m = torch.zeros(1, 2, T, T + S)
    # head 0: everything on token 0; head 1: half on depth slots, half on the current token.
    m[0, 0, :, 0] = 1.0
    for t in range(T):
        m[0, 1, t, t] = 0.5
        m[0, 1, t, T:] = 0.25
    summary = attention_summary([m]).set_index("head")
    assert summary.loc[0, "depth_mass"] == 0.0 and summary.loc[0, "sink_mass"] == 1.0
    assert summary.loc[1, "depth_mass"] == pytest.approx(0.5)
    assert summary.loc[1, "sink_mass"] == 0.0  # t = 0 is excluded from the sink average
    assert (summary["depth_slots"] == S).all()
    per_layer = layer_summary(summary).iloc[0]
    assert per_layer["depth_mass"] == pytest.approx(0.25) and per_layer["depth_mass max"] == pytest.approx(0.5)


def test_validate_maps_catches_bad_maps():
    maps = synthetic_attention_maps(T=6, n_layers=3, n_heads=2, slots_per_layer=2)
    validate_maps(maps)
    assert [m.shape[-1] - m.shape[-2] for m in maps] == [0, 2, 4]
    leaky = maps[1].clone()
    leaky[..., 0, 1] += 0.5
    leaky[..., 0, 0] -= 0.5
    with pytest.raises(ValueError, match="future"):
        validate_maps([leaky])
    with pytest.raises(ValueError, match="sum"):
        validate_maps([maps[0] * 0.5])
    with pytest.raises(ValueError, match="expected"):
        validate_maps([maps[0][0]])


def test_heatmap_and_saved_files(tmp_path: Path):
    maps = synthetic_attention_maps(T=8, n_layers=2, n_heads=3, slots_per_layer=1)
    fig = plot_attention_heatmaps(maps, [f"t{i}" for i in range(8)], layer=1, heads=[0, 2])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["layer 1, head 0 (1 depth slots)", "layer 1, head 2 (1 depth slots)"]
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (8, 9) and float(image[0, 0]) == pytest.approx(float(maps[1][0, 0, 0, 0]))
    from moda_lab.analysis.attention import AttentionInspection

    written = save_inspection(AttentionInspection(maps, [f"t{i}" for i in range(8)], {}), tmp_path)
    assert {p.name for p in written} >= {"attention_layer01.png", "attention_summary.png", "attention_summary.csv"}


HAS_MODEL = importlib.util.find_spec("moda_lab.model") is not None


@pytest.mark.skipif(not HAS_MODEL, reason="moda_lab.model is not importable yet")
@pytest.mark.parametrize("switches", [{"depth_kv": True, "ffn_kv": True}, {}], ids=["moda-depth+ffn", "dense"])
def test_real_model_maps(switches: dict):
    from moda_lab.model.config import MixerConfig, ModelConfig
    from moda_lab.model.gpt import GPT

    name = "moda" if switches else "dense"
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=64, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, mixer=MixerConfig(name, **switches)
    )
    inspection = inspect_model(GPT(cfg), list(range(7)), [f"t{i}" for i in range(7)])
    slots = [m.shape[-1] - m.shape[-2] for m in inspection.maps]
    summary = attention_summary(inspection.maps)
    if switches:
        assert slots[0] == 0 and slots[-1] > slots[1] > 0
        assert (summary[summary["layer"] > 0]["depth_mass"] > 0).all()
    else:
        assert slots == [0, 0, 0] and (summary["depth_mass"] == 0).all()


HAS_CHECKPOINT = importlib.util.find_spec("moda_lab.load") is not None


@pytest.mark.skipif(not (HAS_MODEL and HAS_CHECKPOINT), reason="moda_lab.model / moda_lab.load not importable")
def test_inspect_checkpoint_from_exported_folder(tmp_path: Path):
    """An exported folder (config.json, model.safetensors, tokenizer.json) -> maps for a text, via load_model."""
    import dataclasses
    import json

    from safetensors.torch import save_file

    from moda_lab.analysis import inspect_checkpoint
    from moda_lab.data.tokenizer import train_tokenizer
    from moda_lab.model.config import MixerConfig, ModelConfig
    from moda_lab.model.gpt import GPT

    cfg = ModelConfig(
        vocab_size=300, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, mixer=MixerConfig("moda", depth_kv=True)
    )
    model = GPT(cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, 300).save(str(tmp_path / "tokenizer.json"))
    inspection = inspect_checkpoint(tmp_path, "the quick brown fox")
    T = len(inspection.tokens)
    assert T >= 2 and all(m.shape[-2] == T for m in inspection.maps)
    assert [m.shape[-1] - T for m in inspection.maps] == [0, 1, 2]  # one depth slot per earlier layer (depth_kv)
    assert inspection.config["mixer"]["name"] == "moda"
