"""Manifold-constrained Hyper-Connections (mHC, arXiv 2512.24880) against a reference from the paper's equations."""

from __future__ import annotations

import pytest
import torch
from flow_checks import (
    assert_cached_generation_matches_uncached,
    assert_compiles_to_one_graph,
    assert_matches_reference,
    assert_triton_backend_matches_naive,
    counted_forward_flops,
    randomize,
    ref_attention,
    ref_ffn,
    ref_head,
    ref_norm,
    tiny,
)

from moda_lab.model import GPT, MixerConfig

NORMS = ["pre", "post", "reordered"]


def mhc(n=3, iters=20):
    return MixerConfig("mhc", expansion=n, sinkhorn_iters=iters)


def reference(cfg):
    """Eqs. 7-9: x' = RMSNorm(vec(x_l)); H_pre = sigmoid(a_pre x' phi_pre + b_pre), H_post = 2 sigmoid(...),
    H_res = Sinkhorn-Knopp(a_res mat(x' phi_res) + b_res) with M0 = exp(.), M <- T_r(T_c(M)) t_max times;
    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l). The copies are handled one by one."""
    n, iters, norm = cfg.mixer.expansion, cfg.mixer.sinkhorn_iters, cfg.norm

    def mappings(P, pre, H):
        flat = ref_norm(P, pre + "norm_weight", H.reshape(*H.shape[:2], -1))
        z = flat @ P[pre + "phi.weight"].T
        a, b = P[pre + "alpha"], P[pre + "bias"]
        h_pre = torch.sigmoid(a[0] * z[..., :n] + b[:n])
        h_post = 2 * torch.sigmoid(a[1] * z[..., n : 2 * n] + b[n : 2 * n])
        M = torch.exp(a[2] * z[..., 2 * n :] + b[2 * n :]).reshape(*H.shape[:2], n, n)
        for _ in range(iters):
            M = M / M.sum(-2, keepdim=True)
            M = M / M.sum(-1, keepdim=True)
        return h_pre, h_post, M

    def sublayer(P, pre, name, H, f):
        h_pre, h_post, h_res = mappings(P, pre, H)
        h = sum(h_pre[..., i, None] * H[:, :, i] for i in range(n))
        w = name + ".norm.weight"
        y = f(ref_norm(P, w, h)) if norm == "pre" else f(h)
        if norm == "reordered":
            y = ref_norm(P, w, y)
        new = [sum(h_res[..., i, j, None] * H[:, :, j] for j in range(n)) + h_post[..., i, None] * y for i in range(n)]
        H = torch.stack(new, dim=2)
        return ref_norm(P, w, H) if norm == "post" else H

    def logits(P, idx):
        H = torch.stack([P["tok_emb.weight"][idx]] * n, dim=2)
        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}."
            H = sublayer(P, b + "mixer.attn_hc.", b + "attn_norm", H,
                         lambda h, b=b: ref_attention(P, b + "attn.", cfg, h, h, h))
            H = sublayer(P, b + "mixer.ffn_hc.", b + "ffn_norm", H, lambda h, b=b: ref_ffn(P, b + "ffn.", h))
        return ref_head(P, cfg, H.sum(2))

    return logits


@pytest.mark.parametrize("norm", NORMS)
def test_forward_and_every_gradient_match_the_reference(norm):
    cfg = tiny(mhc(3), norm)
    torch.manual_seed(0)
    # Spread 0.1 as for Hyper-Connections: n copies grow the stream, and fp32 rounding with it.
    assert_matches_reference(randomize(GPT(cfg), scale=0.1), reference(cfg))


@pytest.mark.parametrize("scale,iters", [(0.0, 20), (0.1, 200)], ids=["init-t20", "spread0.1-t200"])
def test_the_mixing_matrix_is_doubly_stochastic(scale, iters):
    """H_res >= 0 with rows and columns summing to 1 (1e-5): at init with the paper's 20 rounds; on random weights
    (logits spread ~1) Sinkhorn-Knopp needs more rounds to get there (20 leave ~1e-3 on such peaked matrices)."""
    torch.manual_seed(0)
    model = GPT(tiny(mhc(4, iters)))
    if scale:
        randomize(model, scale=scale)
    H = torch.randn(2, 7, 4, 32)
    for block in model.blocks:
        for conn in (block.mixer.attn_hc, block.mixer.ffn_hc):
            c = conn(H)
            assert (c.res >= 0).all() and (c.pre >= 0).all() and (c.post >= 0).all() and (c.post <= 2).all()
            torch.testing.assert_close(c.res.sum(-1), torch.ones(2, 7, 4), atol=1e-5, rtol=0)
            torch.testing.assert_close(c.res.sum(-2), torch.ones(2, 7, 4), atol=1e-5, rtol=0)


def test_initial_mappings():
    """At init (a = 0.01, phi small) the input is about the mean of the copies, each copy receives the output, and
    H_res is mostly the identity: 1 / (1 + 3 e^-2) = 0.711 on the diagonal for n = 4."""
    model = GPT(tiny(mhc(4)))
    c = model.blocks[1].mixer.attn_hc(torch.randn(1, 3, 4, 32))
    torch.testing.assert_close(c.pre, torch.full_like(c.pre, 0.25), atol=2e-3, rtol=0)
    torch.testing.assert_close(c.post, torch.ones_like(c.post), atol=4e-3, rtol=0)
    torch.testing.assert_close(c.res.diagonal(dim1=-2, dim2=-1), torch.full((1, 3, 4), 0.711), atol=2e-3, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_one_copy_without_dynamic_terms_is_the_residual_model(norm):
    """n = 1 and a = 0: H_res = 1 (a 1x1 doubly stochastic matrix), H_pre = sigmoid(20) = 1 in fp32, H_post = 1."""
    torch.manual_seed(0)
    base = randomize(GPT(tiny(MixerConfig("residual"), norm)))
    model = GPT(tiny(mhc(1), norm))
    model.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.attn_hc.alpha.zero_()
            block.mixer.ffn_hc.alpha.zero_()
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(model(idx), base(idx), rtol=0, atol=0)


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the Triton interpreter (tests/conftest.py)
SINKHORN_CASES = [(4, 20, (2, 7)), (3, 5, (37,)), (1, 3, (4,)), (5, 7, (3, 3)), (2, 1, (1,))]


@pytest.mark.parametrize("n,iters,lead", SINKHORN_CASES, ids=[f"n{n}-t{t}-R{'x'.join(map(str, r))}"
                                                               for n, t, r in SINKHORN_CASES])
def test_sinkhorn_kernel_matches_the_reference(n, iters, lead):
    """The Triton Sinkhorn-Knopp (interpreter on CPU, fp32) against moda_kernels/sinkhorn/naive.py: the matrices,
    and d logits against autograd through the reference in fp64, for peaked logits (spread 2) and any n (padded
    to a power of two) and token count (34 tokens fill one program and part of a second)."""
    from moda_kernels.sinkhorn import naive_sinkhorn, naive_sinkhorn_bwd, sinkhorn_backward, sinkhorn_forward

    gen = torch.Generator().manual_seed(n * 100 + iters)
    logits = (2 * torch.randn(*lead, n, n, generator=gen)).to(KERNEL_DEVICE)
    g = torch.randn(*lead, n, n, generator=gen).to(KERNEL_DEVICE)
    torch.testing.assert_close(sinkhorn_forward(logits, iters), naive_sinkhorn(logits, iters), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sinkhorn_backward(g, logits, iters), naive_sinkhorn_bwd(g, logits, iters),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_triton_backend_runs_sinkhorn_through_its_op(norm, monkeypatch):
    """attn_backend=triton routes every sublayer's Sinkhorn-Knopp through the Triton op (head dim 16: the attention
    kernel's smallest), with the naive backend's logits and every gradient."""
    import moda_lab.model.mixers.mhc as module

    calls = []
    real = module.sinkhorn_forward
    monkeypatch.setattr(module, "sinkhorn_forward", lambda *a: calls.append(a[0].shape) or real(*a))
    model = assert_triton_backend_matches_naive(tiny(mhc(3, 6), norm, d_model=64, attn_backend="triton"),
                                                KERNEL_DEVICE)
    assert calls == [(2, 8, 3, 3)] * (2 * model.cfg.n_layers)


@pytest.mark.slow
def test_compiles_to_one_graph_through_the_sinkhorn_op():
    """With the Triton backend the Sinkhorn op (and its backward op) is one node of the one graph."""
    torch._dynamo.reset()
    assert_compiles_to_one_graph(tiny(mhc(3, 4), "post", d_model=64, attn_backend="triton"))


def test_params_and_flops_are_counted():
    n, L, D = 3, 3, 32
    res, model = GPT(tiny(MixerConfig("residual"))), GPT(tiny(mhc(n)))
    phi = n * D * (2 * n + n * n)
    per_sublayer = n * D + phi + 3 + (2 * n + n * n)  # norm weight, phi, a, b
    assert model.num_params() - res.num_params() == 2 * L * per_sublayer
    # Independent count: the flop counter sees phi (a Linear), not the input, copy mix and output (broadcast
    # multiply-adds, counted by hand); the formula must add exactly both to the residual's.
    extra = model.forward_flops_per_token(16) - res.forward_flops_per_token(16)
    applied = 2 * n * D * (n + 2)
    assert counted_forward_flops(model) - counted_forward_flops(res) == 2 * L * 2 * phi
    assert extra == 2 * L * (2 * phi + applied)


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match=r"^model.mixer.sinkhorn_iters=0 is out of range; allowed: >= 1$"):
        mhc(3, 0)


@pytest.mark.parametrize("norm", NORMS)
def test_cached_greedy_generation_equals_uncached(norm):
    assert_cached_generation_matches_uncached(tiny(mhc(3), norm))


@pytest.mark.slow
def test_compiles_to_one_graph():
    assert_compiles_to_one_graph(tiny(mhc(3), "post"))
