"""GroupedMuon (the optimizer trainer.optimizer=muon builds) against torch.optim.Muon on a GPU, at the Table 6
rows' matrix shapes: cuBLAS's batched and single GEMMs may round bf16 differently, within bf16 rounding."""

from __future__ import annotations

import pytest
import torch

from moda_lab.train.muon import GroupedMuon

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# The four shapes of the Table 6 models' hidden matrices, two of each (one batch per shape).
SHAPES = [(384, 384), (256, 384), (3072, 384), (384, 1536)] * 2


def test_grouped_muon_steps_as_torch_muon_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(0)
    start = [torch.randn(s, device="cuda", generator=gen) * 0.02 for s in SHAPES]
    want = [torch.nn.Parameter(p.clone()) for p in start]
    got = [torch.nn.Parameter(p.clone()) for p in start]
    kw = {"lr": 3e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True, "adjust_lr_fn": "match_rms_adamw"}
    opts = torch.optim.Muon(want, **kw), GroupedMuon(got, **kw)
    for _ in range(3):
        grads = [torch.randn(s, device="cuda", generator=gen) for s in SHAPES]
        for params, opt in zip((want, got), opts):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for s, w, g in zip(start, want, got):
        step_w, step_g = (w.detach() - s), (g.detach() - s)
        torch.testing.assert_close(step_g, step_w, atol=4e-3 * step_w.abs().max().item(), rtol=0)
