"""The Block contract for depth flow (issue 30): options per variant, old saved configs, per-token stream reads."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_cfg
from moda_lab.config import ConfigError, run_config_from_dict
from moda_lab.model import DEPTH_MIXERS, GPT, MixerConfig, ModelConfig
from moda_lab.model.depth import DepthStream, new_stream_buffers
from moda_lab.model.mixers.moda import ModaOptions
from moda_lab.rundir import upgrade_config

OLD_FLAT = {"depth_kv": False, "ffn_kv": False, "attn_kv": False}  # every saved mixer had these before


def test_mixer_config_builds_the_named_variants_options():
    opts = MixerConfig("moda", depth_kv=True)
    assert type(opts) is ModaOptions and opts == ModaOptions(depth_kv=True)
    assert type(MixerConfig("dense")) is MixerConfig and MixerConfig() == MixerConfig("residual")
    assert opts.label() == "moda(depth_kv=True)" and MixerConfig("dense").label() == "dense"
    with pytest.raises(ValueError, match=r"^model.mixer.name='dense' takes MixerConfig, not ModaOptions$"):
        ModaOptions(name="dense", depth_kv=True)


@pytest.mark.parametrize("name", ["residual", "dense", "depth_attn"])
def test_old_saved_configs_with_flat_switches_still_load(name):
    old = {"name": name, **OLD_FLAT}
    assert ModelConfig(mixer=old).mixer == MixerConfig(name)  # checkpoints, Hugging Face config.json
    assert upgrade_config({"model": {"d_model": 8, "init_rng": "sequential", "mixer": old}})["model"]["mixer"] == {
        "name": name
    }  # run dirs and wandb runs for the analysis: one cell with today's runs of the variant
    cfg = compose_cfg([f"model={name}"])
    cfg["model"]["mixer"] = old  # a run dir's config.yaml (eval's attention stats rebuild the run from it)
    assert run_config_from_dict(cfg).model.mixer == MixerConfig(name)
    with pytest.raises(ConfigError, match=r"^unknown config key 'model.mixer.ffn_kv'; known keys: \['name'\]$"):
        cfg["model"]["mixer"] = {**old, "ffn_kv": True}  # a switch that was on never meant anything here
        run_config_from_dict(cfg)


def test_old_moda_configs_keep_their_switches():
    old = {"name": "moda", "depth_kv": True, "ffn_kv": False, "attn_kv": False}
    assert ModelConfig(mixer=old).mixer == ModaOptions(depth_kv=True)
    assert upgrade_config({"model": {"mixer": old}})["model"]["mixer"] == old


def test_every_registered_variant_has_default_options_or_says_which_it_needs():
    for name, cls in DEPTH_MIXERS.items():
        assert cls.Options.__dataclass_fields__["name"].default in (name, "residual")
        try:
            MixerConfig(name)
        except ValueError as err:
            assert f"model.mixer.name={name!r}" in str(err)


def _stream(B=2, T=3, n=4, D=5, dtype=torch.float32):
    data, grad, token = new_stream_buffers(1, n, B, T, (D,), "cpu", dtype)
    return DepthStream(data, grad, token)


def test_per_token_mix_and_dots_match_autograd_on_stacked_slots():
    """mix_tokens and dots read the slots in place; their gradients (w, q and every slot's writer) equal plain
    autograd over a stacked copy."""
    torch.manual_seed(0)
    B, T, n, D = 2, 3, 4, 5
    xs = [torch.randn(B, T, D, requires_grad=True) for _ in range(n)]
    w = torch.randn(B, T, n, requires_grad=True)
    q = torch.randn(B, T, D, requires_grad=True)
    gm, gd = torch.randn(B, T, D), torch.randn(B, T, n)

    stream = _stream(B, T, n, D)
    for x in xs:
        stream.put(2.0 * x)  # through an op, as a layer's output would be
    out = (stream.mix_tokens(w) * gm).sum() + (stream.dots(q) * gd).sum()
    got = torch.autograd.grad(out, [*xs, w, q])

    h = torch.stack([2.0 * x for x in xs], dim=2)  # [B, T, n, D]
    ref_out = ((h * w.unsqueeze(-1)).sum(2) * gm).sum() + ((h * q.unsqueeze(2)).sum(-1) * gd).sum()
    want = torch.autograd.grad(ref_out, [*xs, w, q])
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_per_token_reads_compile_to_one_graph():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    B, T, n, D = 2, 3, 3, 4
    xs = [torch.randn(B, T, D, requires_grad=True) for _ in range(n)]
    q = torch.randn(B, T, D, requires_grad=True)

    def f(data, grad, token, xs, q):
        stream = DepthStream(data, grad, token)
        for x in xs:
            stream.put(x * 1.5)
        return stream.mix_tokens(torch.softmax(stream.dots(q), -1)).square().sum()

    eager = torch.autograd.grad(f(*new_stream_buffers(1, n, B, T, (D,), "cpu", torch.float32), xs, q), [*xs, q])
    torch._dynamo.reset()
    counters.clear()
    loss = torch.compile(f, fullgraph=True)(*new_stream_buffers(1, n, B, T, (D,), "cpu", torch.float32), xs, q)
    compiled = torch.autograd.grad(loss, [*xs, q])
    assert dict(counters["graph_break"]) == {}
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_variant_built_from_options_runs():
    model = GPT(ModelConfig(vocab_size=32, n_layers=2, d_model=16, n_heads=2, n_kv_heads=1, max_seq_len=8,
                            mixer=MixerConfig("moda", ffn_kv=True)))
    assert model(torch.randint(0, 32, (1, 5))).shape == (1, 5, 32)


def test_the_analysis_labels_variants_from_their_options():
    from moda_lab.analysis.records import variant_of

    def cfg(**mixer):
        return {"model": {"mixer": mixer}}

    assert variant_of(cfg(name="moda", depth_kv=True, ffn_kv=True, attn_kv=False)) == "moda +ffn_kv"
    assert variant_of(cfg(name="residual")) == variant_of(cfg(name="residual", depth_kv=False)) == "residual"
    default = {"lambda_own": 0.5, "lambda_first": 0.5, "learnable": True}
    assert variant_of(cfg(name="value_residual", **default)) == "value_residual"
    assert variant_of(cfg(name="value_residual", **{**default, "learnable": False})) == (
        "value_residual learnable=False"
    )


@pytest.mark.parametrize("opts", [MixerConfig("dense"), MixerConfig("moda", ffn_kv=True),
                                  MixerConfig("hyper_connections", expansion=2)], ids=lambda o: o.name)
def test_options_survive_pickle_copy_and_replace(opts):
    import copy
    import dataclasses
    import pickle

    assert pickle.loads(pickle.dumps(opts)) == opts and copy.deepcopy(opts) == opts
    cfg = ModelConfig(mixer=opts)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert MixerConfig.from_dict(dataclasses.asdict(opts)) == opts  # as saved in a config and loaded back
    if opts.name == "hyper_connections":
        assert dataclasses.replace(opts, dynamic=False) == MixerConfig("hyper_connections", expansion=2, dynamic=False)


def test_per_token_reads_are_seen_by_the_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    B, T, n, D = 2, 3, 4, 5
    xs = [torch.randn(B, T, D, requires_grad=True) for _ in range(n)]
    w, q = torch.randn(B, T, n, requires_grad=True), torch.randn(B, T, D, requires_grad=True)
    stream = _stream(B, T, n, D)
    for x in xs:
        stream.put(x)
    with FlopCounterMode(display=False) as fwd:
        out = stream.mix_tokens(w).sum() + stream.dots(q).sum()
    assert fwd.get_total_flops() == 2 * (2 * B * T * n * D)
    with FlopCounterMode(display=False) as bwd:
        out.backward()
    assert bwd.get_total_flops() == 2 * (4 * B * T * n * D)
