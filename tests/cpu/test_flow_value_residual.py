"""Value residual learning (ResFormer, arXiv 2410.17897) against a reference written from the paper."""

from __future__ import annotations

import pytest
import torch
from flow_checks import (
    assert_cached_generation_matches_uncached,
    assert_compiles_to_one_graph,
    assert_matches_reference,
    counted_forward_flops,
    randomize,
    ref_attention,
    ref_ffn,
    ref_head,
    ref_sublayer,
    tiny,
)

from moda_lab.model import GPT, MixerConfig

NORMS = ["pre", "post", "reordered"]


def reference(cfg):
    """ResFormer: U_n = A_n (lambda_1 V_n + lambda_2 V_1) for n > 1; V_1 the first layer's values, per token."""

    def logits(P, idx):
        x = P["tok_emb.weight"][idx]
        first = {}

        def values(n):
            def mix(v):
                if n == 0:
                    first["v"] = v
                    return v
                lam = P[f"blocks.{n}.mixer.lambdas"] if cfg.mixer.learnable else torch.tensor(
                    [cfg.mixer.lambda_own, cfg.mixer.lambda_first])
                return lam[0] * v + lam[1] * first["v"]

            return mix

        for n in range(cfg.n_layers):
            pre = f"blocks.{n}."
            x = ref_sublayer(P, pre + "attn_norm", cfg.norm, x,
                             lambda h, n=n, pre=pre: ref_attention(P, pre + "attn.", cfg, h, h, h, values(n)))
            x = ref_sublayer(P, pre + "ffn_norm", cfg.norm, x, lambda h, pre=pre: ref_ffn(P, pre + "ffn.", h))
        return ref_head(P, cfg, x)

    return logits


@pytest.mark.parametrize("learnable", [True, False], ids=["learned", "fixed"])
@pytest.mark.parametrize("norm", NORMS)
def test_forward_and_every_gradient_match_the_reference(norm, learnable):
    cfg = tiny(MixerConfig("value_residual", learnable=learnable, lambda_own=0.7, lambda_first=0.4), norm)
    torch.manual_seed(0)
    assert_matches_reference(randomize(GPT(cfg)), reference(cfg))


@pytest.mark.parametrize("norm", NORMS)
def test_lambdas_one_zero_are_the_residual_model(norm):
    torch.manual_seed(0)
    base = randomize(GPT(tiny(MixerConfig("residual"), norm)))
    torch.manual_seed(0)
    vr = GPT(tiny(MixerConfig("value_residual", lambda_own=1.0, lambda_first=0.0, learnable=False), norm))
    vr.load_state_dict(base.state_dict())  # fixed lambdas are not state: the same keys
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(vr(idx), base(idx), rtol=0, atol=0)


def test_params_and_flops_are_counted():
    L, Hk, d = 3, 2, 8
    res, vr = GPT(tiny(MixerConfig("residual"))), GPT(tiny(MixerConfig("value_residual")))
    assert vr.num_params() - res.num_params() == 2 * (L - 1)  # (lambda_1, lambda_2) per layer after the first
    fixed = GPT(tiny(MixerConfig("value_residual", learnable=False)))
    assert fixed.num_params() == res.num_params() and list(fixed.state_dict()) == list(res.state_dict())
    # Independent count: the counter sees the same matmuls as the residual's; the mix is 2 multiply-adds per
    # value element (Hk * d per token) in every layer after the first.
    extra = 2 * 2 * Hk * d * (L - 1)
    assert counted_forward_flops(vr) == counted_forward_flops(res)
    assert vr.forward_flops_per_token(16) - res.forward_flops_per_token(16) == extra


@pytest.mark.parametrize("norm", NORMS)
def test_cached_greedy_generation_equals_uncached(norm):
    assert_cached_generation_matches_uncached(tiny(MixerConfig("value_residual"), norm))


@pytest.mark.slow
def test_compiles_to_one_graph():
    assert_compiles_to_one_graph(tiny(MixerConfig("value_residual"), "post"))
