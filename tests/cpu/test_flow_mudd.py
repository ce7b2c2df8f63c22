"""MUDDFormer (arXiv 2502.12170) against a plain-PyTorch reference written from the paper's equations.

The reference keeps the history of hidden states as a Python list, stacks it for every connection and mixes it
with one einsum; the model reads the same states in place from the depth stream through its own op. The plain
decoder pieces (attention, FFN, norms, head) are tests/flow_checks.py's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flow_checks import (
    assert_cached_generation_matches_uncached,
    assert_compiles_to_one_graph,
    assert_matches_reference,
    counted_forward_flops,
    randomize,
    ref_attention,
    ref_ffn,
    ref_head,
    ref_norm,
    tiny,
)

from moda_lab.model import GPT, MixerConfig
from moda_lab.model.mixers.mudd import MUDDOptions

NORMS = ["pre", "post", "reordered"]
WAYS = ["qkvr", "r"]


def rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def block(P, pre, cfg, q, k, v, r):
    """X^A = R + MHA(Norm(Q), Norm(K), Norm(V)); out = X^A + FFN(Norm(X^A)) (multiway), the norms where the
    placement puts them."""
    na, nf = pre + "attn_norm.norm.weight", pre + "ffn_norm.norm.weight"

    def attn(xq, xk, xv):
        return ref_attention(P, pre + "attn.", cfg, xq, xk, xv)

    if cfg.norm == "pre":
        nk = pre + "mixer.kv_norms.0.norm.weight"  # separate K and V norms where K and V are their own streams
        nv = pre + "mixer.kv_norms.1.norm.weight"
        nk, nv = (n if n in P else na for n in (nk, nv))
        a = r + attn(ref_norm(P, na, q), ref_norm(P, nk, k), ref_norm(P, nv, v))
        return a + ref_ffn(P, pre + "ffn.", ref_norm(P, nf, a))
    if cfg.norm == "post":
        a = ref_norm(P, na, r + attn(q, k, v))
        return ref_norm(P, nf, a + ref_ffn(P, pre + "ffn.", a))
    a = r + ref_norm(P, na, attn(q, k, v))  # reordered
    return a + ref_norm(P, nf, ref_ffn(P, pre + "ffn.", a))


def reference(cfg):
    def logits(P, idx):
        xs = [P["tok_emb.weight"][idx]]  # X_0
        ins = [xs[0]] * 4  # Q, K, V, R of block 0
        for i in range(cfg.n_layers):
            pre = f"blocks.{i}."
            xs.append(block(P, pre, cfg, *ins))  # X_{i+1}
            # A_i = GELU(RMSNorm(X_{i+1}) W1) W2 + a_i (dynamic dense), one row of weights per way
            w1, w2, a = P[pre + "mixer.gen.w1.weight"], P[pre + "mixer.gen.w2.weight"], P[pre + "mixer.gen.static"]
            a = a.view(-1, i + 2)  # a_i, one row per way
            A = (F.gelu(rms(xs[-1]) @ w1.T) @ w2.T).unflatten(-1, a.shape) + a  # [B, T, C, i+2]
            mixes = torch.einsum("btcj,btjd->btcd", A, torch.stack(xs, 2))  # Xbar^c = sum_j A[c, j] X_j
            ins = list(mixes.unbind(2)) if A.shape[2] == 4 else [mixes[:, :, 0]] * 4
        return ref_head(P, cfg, ins[3])  # the last connection's residual stream

    return logits


def mudd(ways: str = "qkvr", **kw) -> MUDDOptions:
    return MixerConfig("mudd", ways=ways, **kw)


def random_mudd(cfg) -> GPT:
    """Every parameter random (flow_checks.randomize), the connections near a trained model's: static weights
    about the identity, per-token parts of spread ~0.25. (Connection weights of several units amplify rounding:
    both fp32 computations then drift from an fp64 one by more than 1e-5, equally.)"""
    model = randomize(GPT(cfg))
    with torch.no_grad():
        for b in model.blocks:
            b.mixer.gen.w2.weight.mul_(0.25)
            b.mixer.gen.static.view(b.mixer.gen.ways, -1)[:, -1] += 1.0
    return model


# --- the model against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("ways", WAYS)
@pytest.mark.parametrize("norm", NORMS)
def test_forward_and_every_gradient_match_the_reference(norm, ways):
    cfg = tiny(mudd(ways), norm, tie_embeddings=norm != "post")
    assert_matches_reference(random_mudd(cfg), reference(cfg))


def test_connection_shapes_and_initialisation():
    """Four ways but in the last connection (the residual only), i + 2 inputs, a_i = e_last, K_i widths."""
    model = GPT(tiny(mudd()))
    assert [(b.mixer.gen.ways, b.mixer.gen.inputs) for b in model.blocks] == [(4, 2), (4, 3), (1, 4)]
    assert [b.mixer.gen.static.tolist() for b in model.blocks] == [[0, 1] * 4, [0, 0, 1] * 4, [0, 0, 0, 1]]
    assert [b.mixer.gen.w1.out_features for b in model.blocks] == [64, 64, 64]  # rounded up past 64
    exact = GPT(tiny(mudd(hidden_round=0)))
    assert [b.mixer.gen.w1.out_features for b in exact.blocks] == [4 * 2, 4 * 3, 1 * 4 * 4]  # K_i = C(i+2), x4 last


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_static_connection_weights_are_not_decayed(optimizer):
    """a_i is a vector to the optimizer, like DenseFormer's alpha: weight decay would pull the identity to 0."""
    from moda_lab.config import TrainerConfig
    from moda_lab.train.optim import build_optimizer

    model = GPT(tiny(mudd()))
    opt = build_optimizer(model, TrainerConfig(optimizer=optimizer, weight_decay=0.1))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert {decay[id(b.mixer.gen.static)] for b in model.blocks} == {0.0}
    assert {decay[id(b.mixer.gen.w1.weight)] for b in model.blocks} == {0.1}


# --- identities -----------------------------------------------------------------------------------------


def _copy_shared(src: GPT, dst: GPT) -> None:
    """dst's parameters that src has too take src's values; the others are the connections'."""
    shared = {k: v for k, v in src.state_dict().items() if k in dst.state_dict()}
    missing, _ = dst.load_state_dict(shared, strict=False)
    assert missing and all(".mixer." in k for k in missing), missing


@pytest.mark.parametrize("ways", WAYS)
@pytest.mark.parametrize("norm", NORMS)
def test_at_initialisation_it_is_the_residual_model(norm, ways):
    """W2 = 0 and a_i = (0, .., 0, 1): every mix is the newest state, so with the residual model's weights
    (random here; the K and V norms take the attention norm's) MUDD gives the residual model's logits."""
    res = randomize(GPT(tiny(MixerConfig("residual"), norm)))
    model = GPT(tiny(mudd(ways), norm))
    _copy_shared(res, model)
    with torch.no_grad():
        for b in model.blocks:
            for n in b.mixer.kv_norms or []:
                n.norm.weight.copy_(b.attn_norm.norm.weight)
    idx = torch.randint(0, 64, (2, 11))
    torch.testing.assert_close(model(idx), res(idx), atol=1e-6, rtol=1e-6)


def test_one_static_way_is_denseformer():
    """ways="r" with W2 = 0 (no dynamic part) and a_i = DenseFormer's alpha_i is the dense (DWA) model."""
    dense = randomize(GPT(tiny(MixerConfig("dense"), "pre")))
    model = GPT(tiny(mudd("r"), "pre"))
    _copy_shared(dense, model)
    with torch.no_grad():
        for b, d in zip(model.blocks, dense.blocks):
            b.mixer.gen.static.copy_(d.mixer.alpha)
            b.mixer.gen.w1.weight.normal_()  # the generator's hidden layer is irrelevant while W2 = 0
    idx = torch.randint(0, 64, (2, 11))
    torch.testing.assert_close(model(idx), dense(idx), atol=1e-6, rtol=1e-6)


def test_connection_weights_are_per_token():
    """A token's connection weights depend on its own state only (A_i[t] from X_{i+1}[t])."""
    gen = random_mudd(tiny(mudd())).blocks[0].mixer.gen
    x = torch.randn(1, 8, 32)
    x2 = x.clone()
    x2[0, 5] += 1.0
    changed = (gen(x) - gen(x2)).abs().amax(dim=(2, 3))[0] > 0
    assert changed.tolist() == [t == 5 for t in range(8)]


@pytest.mark.parametrize("prefetch", [False, True], ids=["", "prefetch"])
@pytest.mark.parametrize("C,D", [(4, 32), (1, 48), (3, 40)], ids=["C4-D32", "C1-D48", "C3-D40"])
def test_mix_kernel_matches_the_reference(C, D, prefetch, monkeypatch):
    """The Triton passes (interpreted on CPU) read a prefix view of a larger history like the fp32 reference:
    the mix, dw, and the slots' gradient added in place, with and without PREFETCH. B*T = 14 fills no token
    tile; D = 40 no feature tile."""
    from moda_kernels.mudd import mudd_mix_backward, mudd_mix_forward, naive_mudd_mix, naive_mudd_mix_bwd
    from moda_kernels.mudd import triton_kernels as K

    monkeypatch.setattr(K, "PREFETCH_UNTUNED", prefetch)
    torch.manual_seed(0)
    B, T, S, n = 2, 7, 5, 4
    h = torch.randn(B, T, S, D)[:, :, :n]
    w, g = torch.randn(B, T, C, n), torch.randn(B, T, C, D)
    start = torch.randn(B, T, S, D)
    dh, dh_ref = start.clone(), start.clone()
    torch.testing.assert_close(mudd_mix_forward(h, w), naive_mudd_mix(h, w), atol=1e-5, rtol=1e-5)
    dw = mudd_mix_backward(g, h, w, dh[:, :, :n])
    torch.testing.assert_close(dw, naive_mudd_mix_bwd(g, h, w, dh_ref[:, :, :n]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dh, dh_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(dh[:, :, n:], start[:, :, n:])  # slots past the prefix untouched


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_triton_backend_runs_the_mix_kernel_and_matches(norm, monkeypatch):
    """attn_backend=triton routes every connection's mix through its kernel (head dim 16: the attention kernel's
    smallest); logits and every gradient as the naive path's."""
    import moda_lab.model.mixers.mudd as module

    calls = []
    fwd, bwd = module.mudd_mix_forward, module.mudd_mix_backward
    monkeypatch.setattr(module, "mudd_mix_forward", lambda h, w: calls.append(("fwd", w.shape[2])) or fwd(h, w))
    monkeypatch.setattr(module, "mudd_mix_backward", lambda g, h, w, dh: calls.append(("bwd", h.shape[2])) or bwd(
        g, h, w, dh))
    model = random_mudd(tiny(mudd(), norm, d_model=64, attn_backend="triton"))
    idx = torch.randint(0, 64, (2, 9))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert calls == [("fwd", 4), ("fwd", 4), ("fwd", 1), ("bwd", 4), ("bwd", 3), ("bwd", 2)]  # ways; slots read
    calls.clear()
    model.set_backend("naive")
    ref = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    want = torch.autograd.grad(ref, list(model.parameters()))
    assert calls == []
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for (name, _), x, y in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


# --- size and cost ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ways", WAYS)
@pytest.mark.parametrize("norm", NORMS)
def test_params_and_flops_are_counted(norm, ways):
    """model/params: the residual model's plus, per block i, W1 (D x K_i), W2 (K_i x C_i(i+2)) and a_i, and the
    pre-norm K and V norms of every block that reads four streams. model/flops_per_token (forward): the residual
    model's plus 2 per generator weight and 2 C_i (i+2) D for the mixes; torch's FLOP counter sees the generator's
    matmuls but not the mix (a custom op without a formula, as every stream read but attention)."""
    D, L, T = 32, 3, 16
    model = GPT(tiny(mudd(ways), norm, tie_embeddings=False))
    res = GPT(tiny(MixerConfig("residual"), norm, tie_embeddings=False))
    extra_params = extra_flops = mix_flops = 0
    for i in range(L):
        last = i == L - 1
        C = 4 if ways == "qkvr" and not last else 1
        K = (C * (i + 2) * (4 if last else 1) // 64 + 1) * 64
        extra_params += D * K + K * C * (i + 2) + C * (i + 2)
        mix_flops += 2 * C * (i + 2) * D
        extra_flops += 2 * (D * K + K * C * (i + 2))
    if ways == "qkvr" and norm == "pre":
        extra_params += (L - 1) * 2 * D
    assert model.num_params() == res.num_params() + extra_params
    assert model.forward_flops_per_token(T) == res.forward_flops_per_token(T) + extra_flops + mix_flops
    assert counted_forward_flops(model, T) + mix_flops == model.forward_flops_per_token(T)
    assert model.flops_per_token(T) == 3 * model.forward_flops_per_token(T)


# --- options, generation, compilation -------------------------------------------------------------------


def test_options_name_the_bad_key():
    with pytest.raises(ValueError, match=r"^model.mixer.ways='qk' is not allowed; choose one of \['qkvr', 'r'\]$"):
        mudd("qk")
    with pytest.raises(ValueError, match=r"^model.mixer.hidden_round must be >= 0, got -1$"):
        mudd(hidden_round=-1)
    with pytest.raises(ValueError, match=r"^model.mixer.last_hidden_mult must be >= 1, got 0$"):
        mudd(last_hidden_mult=0)
    assert mudd(hidden_round=0, last_hidden_mult=1).hidden(4, 3, last=True) == 12
    assert mudd(hidden_round=0).hidden(1, 3, last=True) == 12
    assert mudd().label() == "mudd" and mudd("r").label() == "mudd(ways=r)"


@pytest.mark.parametrize("ways", WAYS)
@pytest.mark.parametrize("norm", NORMS)
def test_cached_greedy_generation_matches_uncached(norm, ways):
    assert_cached_generation_matches_uncached(tiny(mudd(ways), norm))


@pytest.mark.slow
def test_compiles_to_one_graph_and_matches_eager():
    """GPT.compile(fullgraph=True): every connection's mix and its in-place gradient in one graph (no break, no
    recompile on the second step), the eager loss and gradients, with the connection weights of random_mudd,
    whose rounding stays within 1e-5."""
    assert_compiles_to_one_graph(tiny(mudd(), "pre"), build=random_mudd)
