"""GroupedMuon (moda_lab/train/muon.py) against torch.optim.Muon, the reference it batches."""

from __future__ import annotations

import copy

import pytest
import torch

from moda_lab.train.muon import GroupedMuon, newton_schulz

# Shapes of every kind the Table 6 models have: square, wide, tall, and two of a shape (one batch).
SHAPES = [(24, 24), (16, 24), (48, 16), (16, 24), (48, 16), (8, 40)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.1) for s in SHAPES]


def _run(cls, params, steps: int, **kw) -> torch.optim.Optimizer:
    opt = cls(params, **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt


@pytest.mark.parametrize("kw", [
    {"lr": 0.02, "weight_decay": 0.1, "nesterov": True, "adjust_lr_fn": "match_rms_adamw"},
    {"lr": 0.05, "weight_decay": 0.0, "nesterov": False, "adjust_lr_fn": "original"},
    {"lr": 0.01, "weight_decay": 0.01, "nesterov": True, "adjust_lr_fn": None, "momentum": 0.9, "ns_steps": 3},
], ids=["moonlight", "keller", "other"])
def test_grouped_steps_equal_torch_muon(kw):
    start = _params()
    want_p = [p.detach().clone().requires_grad_() for p in start]
    got_p = [p.detach().clone().requires_grad_() for p in start]
    want = _run(torch.optim.Muon, want_p, 4, **kw)
    got = _run(GroupedMuon, got_p, 4, **kw)
    for s, w, g in zip(start, want_p, got_p):
        step_w, step_g = w.detach() - s.detach(), g.detach() - s.detach()
        assert step_w.abs().max() > 1e-3  # the parameters moved
        # The same bf16 iterations, batched: equal to bf16 rounding of the orthogonalised update (2^-8 relative).
        torch.testing.assert_close(step_g, step_w, atol=4e-3 * step_w.abs().max().item(), rtol=0)
    for w, g in zip(want_p, got_p):
        torch.testing.assert_close(got.state[g]["momentum_buffer"], want.state[w]["momentum_buffer"])


def test_bf16_parameters_step_as_with_torch_muon():
    """bf16 parameters (trainer.precision=bf16-true): the same steps bit for bit on CPU, weight decay included."""
    start = [p.detach().bfloat16() for p in _params()]
    want_p = [torch.nn.Parameter(p.clone()) for p in start]
    got_p = [torch.nn.Parameter(p.clone()) for p in start]
    gen = torch.Generator().manual_seed(1)
    opts = (torch.optim.Muon(want_p, lr=0.02, weight_decay=0.1), GroupedMuon(got_p, lr=0.02, weight_decay=0.1))
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen).bfloat16() for p in start]
        for params, opt in zip((want_p, got_p), opts):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for w, g in zip(want_p, got_p):
        assert torch.equal(w, g)


def test_a_wrong_momentum_rule_is_caught():
    """The comparison above can fail: nesterov off against on moves the parameters apart far beyond its bound."""
    start = _params()
    a = [p.detach().clone().requires_grad_() for p in start]
    b = [p.detach().clone().requires_grad_() for p in start]
    _run(torch.optim.Muon, a, 4, lr=0.02, nesterov=True, adjust_lr_fn="match_rms_adamw")
    _run(GroupedMuon, b, 4, lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw")
    gaps = [((y - s) - (x - s)).abs().max() / (x - s).abs().max() for s, x, y in zip(start, a, b)]
    assert max(gaps) > 0.05


def test_the_state_loads_into_torch_muon_and_back():
    params = _params()
    opt = _run(GroupedMuon, params, 2, lr=0.02)
    other = torch.optim.Muon(params, lr=0.02)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    back = GroupedMuon(params, lr=0.02)
    back.load_state_dict(other.state_dict())
    for p in params:
        torch.testing.assert_close(back.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_newton_schulz_orthogonalises_each_matrix_on_its_own():
    """Each matrix of a batch comes out near-orthogonal (singular values in the quintic's ~(0.5, 1.5) band), and
    equal to its result alone: no matrix leaks into another."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 16, 40, generator=gen)
    x[1] *= 100.0
    out = newton_schulz(x, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    sv = torch.linalg.svdvals(out.float())
    assert sv.min() > 0.4 and sv.max() < 1.6
    alone = newton_schulz(x[1:2], (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torch.testing.assert_close(out[1:2].float(), alone.float())
    tall = newton_schulz(x.mT, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torch.testing.assert_close(tall.float(), out.mT.float())
