"""The decoder on CPU: every variant x norm builds, trains, overfits; MoDA matches a per-token loop."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moda_kernels.moda.naive import naive_moda_attn
from moda_lab.model import DEPTH_MIXERS, GPT, NORM_PLACEMENTS, MixerConfig, ModelConfig
from moda_lab.model.depth import DepthStream, new_stream_buffers
from variants import VARIANTS

CASES = [(m, n) for m in VARIANTS for n in NORM_PLACEMENTS]


def tiny(mixer: str, norm: str, **kw) -> ModelConfig:
    base = dict(vocab_size=64, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=32, attn_backend="naive")
    return ModelConfig(mixer=VARIANTS[mixer], norm=norm, **{**base, **kw})


def test_variants_cover_every_registered_mixer():
    assert {m.name for m in VARIANTS.values()} == set(DEPTH_MIXERS)


def test_config_choices_are_the_registries():
    for key, registry, bad in (
        ("model.mixer.name", DEPTH_MIXERS, lambda: MixerConfig("no_such")),
        ("model.norm", NORM_PLACEMENTS, lambda: ModelConfig(norm="no_such")),
    ):
        with pytest.raises(ValueError, match=rf"^{key}='no_such' is not allowed; choose one of {re.escape(str(list(registry)))}$"):
            bad()


@pytest.mark.parametrize("mixer,norm", CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_forward_backward_and_overfit(mixer, norm):
    torch.manual_seed(0)
    model = GPT(tiny(mixer, norm))
    idx = torch.randint(0, 64, (2, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    assert model(x).shape == (2, 16, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        if first is None:
            first = loss.item()
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, f"parameters without gradient: {missing}"
        opt.step()
    assert first > 3.5  # ~ln(64) at init
    assert loss.item() < 0.3, f"{mixer}/{norm} did not overfit one batch: {first:.2f} -> {loss.item():.2f}"


def loop_reference(q, k, v, kd, vd):
    """MoDA one query at a time: softmax over [k[:t+1] | kd[t]] of the query's KV head."""
    B, T, Hq, d = q.shape
    Hk = k.shape[2]
    out = torch.empty(B, T, Hq, d, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hk)
            for t in range(T):
                keys = torch.cat([k[b, : t + 1, hk], kd[b, t, :, hk]]).double()
                vals = torch.cat([v[b, : t + 1, hk], vd[b, t, :, hk]]).double()
                p = torch.softmax(keys @ q[b, t, h].double() / math.sqrt(d), dim=0)
                out[b, t, h] = p @ vals
    return out


@pytest.mark.parametrize("G,L", [(1, 1), (2, 3), (4, 5)])
def test_naive_moda_matches_per_token_loop(G, L):
    torch.manual_seed(G * 10 + L)
    B, T, Hk, d = 2, 9, 2, 8
    q = torch.randn(B, T, Hk * G, d)
    k, v = torch.randn(B, T, Hk, d), torch.randn(B, T, Hk, d)
    kd, vd = torch.randn(B, T, L, Hk, d), torch.randn(B, T, L, Hk, d)
    torch.testing.assert_close(
        naive_moda_attn(q, k, v, kd, vd).double(), loop_reference(q, k, v, kd, vd), atol=1e-5, rtol=1e-5
    )


def _toy_depth_net(layers, stream_of, x0, ws):
    """A stack of MoDA-style layers: each attends over its own K/V and all earlier layers' K/V, then writes its
    own; ``stream_of`` is None (reference: torch.stack of the earlier K/V, plain autograd) or a DepthStream."""
    Hk = 2
    x, ks, vs, stream = x0, [], [], stream_of
    for layer in range(layers):
        w = ws[layer]
        q, k, v = x @ w, (x[:, :, :Hk] @ w).contiguous(), (x[:, :, Hk : 2 * Hk] @ w.t()).contiguous()
        if stream is None:
            kd, vd = (torch.stack(ks, 2), torch.stack(vs, 2)) if ks else (None, None)
            out = naive_moda_attn(q, k, v, kd, vd)
            ks.append(k)
            vs.append(v)
        else:
            out = stream.attend(q, k, v, causal=True, kernel=False) if stream.size else naive_moda_attn(q, k, v)
            stream.put(k, v)
        x = x + out
    return x.pow(2).sum()


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_depth_stream_gradients_match_stacking(compiled):
    """The preallocated stream (in-place writes, gradients added in place by each reader's backward, order
    carried by tokens) gives stacking's loss and gradients, eagerly and under torch.compile (one graph)."""
    torch.manual_seed(0)
    B, T, Hk, G, d, layers = 2, 9, 2, 2, 16, 4
    ws = [(0.2 * torch.randn(d, d)).requires_grad_() for _ in range(layers)]
    x0 = torch.randn(B, T, Hk * G, d)
    ref = _toy_depth_net(layers, None, x0, ws)
    grads_ref = torch.autograd.grad(ref, ws)

    def net(data, grad, token):
        return _toy_depth_net(layers, DepthStream(data, grad, token), x0, ws)

    run = torch.compile(net, fullgraph=True) if compiled else net
    for _ in range(2):  # fresh buffers every forward, as GPT.forward allocates them
        loss = run(*new_stream_buffers(2, layers, B, T, (Hk, d), "cpu", torch.float32))
        grads = torch.autograd.grad(loss, ws)
        torch.testing.assert_close(loss, ref)
        for g, gr in zip(grads, grads_ref):
            torch.testing.assert_close(g, gr, atol=1e-4, rtol=1e-4)  # fp32 sums in another order


def test_depth_stream_refuses_a_write_past_its_slots():
    stream = DepthStream(*new_stream_buffers(2, 1, 1, 2, (1, 4), "cpu", torch.float32))
    k = torch.randn(1, 2, 1, 4)
    stream.put(k, k)
    with pytest.raises(RuntimeError, match="depth stream full: all 1 slots"):
        stream.put(k, k)


@pytest.mark.parametrize("mixer", list(VARIANTS))
def test_moda_layers_see_exactly_their_depth_slots(mixer):
    model = GPT(tiny(mixer, "pre"))
    maps = model.attention_maps(torch.randint(0, 64, (1, 10)))
    spl = getattr(VARIANTS[mixer], "slots_per_layer", 0)  # a MoDA option; the other variants' attention has none
    assert [m.shape[-1] for m in maps] == [10 + layer * spl for layer in range(3)]
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
        assert m[..., :10].triu(1).abs().max() == 0  # no attention to future sequence slots


@pytest.mark.parametrize("mixer", list(VARIANTS))
def test_flops_formula_matches_flop_counter(mixer):
    model = GPT(tiny(mixer, "pre", tie_embeddings=False))
    T = 16
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 64, (2, T)))
    counted, formula = counter.get_total_flops(), 2 * T * model.forward_flops_per_token(T)
    # A mixer's own work such as DWA's weighted sum is broadcast multiply-adds, real work the counter (matmuls and
    # registered ops only) does not see.
    counted += 2 * T * sum(b.mixer.flops_unseen_by_counter() for b in model.blocks)
    # Exact, except that an einsum over a single depth slot lowers to an elementwise product, which the
    # counter skips (a layer reading one depth slot): < 0.1% here.
    assert abs(counted - formula) <= 1e-3 * formula, (counted, formula)
    if all(b.mixer.depth_slots() != 1 for b in model.blocks) and mixer != "depth_attn":
        assert counted == formula
    assert model.flops_per_token(T) == 3 * model.forward_flops_per_token(T)


def test_params_reported_per_variant_follow_table3_pattern():
    sizes = {m: GPT(tiny(m, "pre")).num_params() for m in VARIANTS}
    assert sizes["moda_depth_kv"] == sizes["residual"]  # depth K/V reuse the attention's K/V: no parameters
    per_layer_kv = 2 * 32 * 2 * 8 + 8  # K/V projection (D x 2*Hk*d) + its k-norm gain
    # One extra K/V projection per switch in every layer but the last (whose writes nobody reads).
    assert sizes["moda"] - sizes["residual"] == 2 * per_layer_kv
    assert sizes["moda_full"] - sizes["residual"] == 4 * per_layer_kv
    assert sizes["dense"] - sizes["residual"] == sum(range(2, 5))  # DWA weights alpha_{l, 0..l+1}


@pytest.mark.parametrize("mixer", ["residual", "moda_full"])
def test_backend_switch_keeps_state_dict_and_outputs(mixer):
    model = GPT(tiny(mixer, "post"))
    idx = torch.randint(0, 64, (2, 12))
    keys, ref = list(model.state_dict()), model(idx)
    model.set_backend("sdpa")
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(idx), ref, atol=1e-5, rtol=1e-5)


def test_backend_override_env(monkeypatch):
    monkeypatch.setenv("MODA_LAB_ATTN_BACKEND", "sdpa")
    assert GPT(tiny("moda", "pre", attn_backend="naive")).backend == "sdpa"


def test_bad_model_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model.n_heads=6 must be a multiple of model.n_kv_heads=4"):
        tiny("residual", "pre", n_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match=r"model.mixer.name='moda' needs at least one depth K/V source"):
        MixerConfig("moda")
    with pytest.raises(ValueError, match=r"^model.mixer.ffn_kv=True is not an option of model.mixer.name='dense'; "
                                         r"its options are \[\]$"):
        MixerConfig("dense", ffn_kv=True)
    with pytest.raises(ValueError, match=r"exceeds model.max_seq_len=32"):
        GPT(tiny("residual", "pre"))(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["residual", "dense", "depth_attn", "moda_full"])
def test_whole_model_compiles_to_one_graph_and_matches_eager(mixer):
    """GPT.compile(): every layer and the depth stream in ONE graph (no graph break, no recompile across layers
    or steps, counted by dynamo), same loss and gradients as eager, same state_dict keys."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = GPT(tiny(mixer, "post", n_layers=4))
    idx = torch.randint(0, 64, (2, 9))
    ref = model(idx[:, :-1], idx[:, 1:])
    ref.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    keys = list(model.state_dict())
    torch._dynamo.reset()
    counters.clear()
    model.compile(fullgraph=True)
    for _ in range(2):  # two training steps: the second must reuse the first step's graph
        model.zero_grad()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert counters["stats"].get("calls_captured", 0) > 0
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(loss, ref)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_rmsnorm_takes_the_fused_path_under_bf16_autocast():
    """Norm weights stay fp32 but are cast to the activations' dtype: fp32 results equal nn.RMSNorm exactly, and a
    bf16 autocast forward of a whole model raises no 'Mismatch dtype' (unfused rms_norm fallback) warning."""
    import warnings

    from moda_lab.model.layers import RMSNorm

    norm = RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = torch.nn.RMSNorm(32, eps=1e-6)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(norm(x), ref(x), rtol=0, atol=0)
    cfg = ModelConfig(vocab_size=64, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=16,
                      mixer=MixerConfig("moda", depth_kv=True, ffn_kv=True), norm="post", attn_backend="naive")
    model = GPT(cfg)
    idx = torch.randint(0, 64, (2, 9))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
    assert torch.isfinite(loss)
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]
