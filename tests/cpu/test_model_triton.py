"""The model's triton backend (Triton interpreter on CPU, fp32) against its naive backend, every variant."""

from __future__ import annotations

import pytest
import torch

from moda_lab.model import GPT, ModelConfig
from variants import PER_MIXER, VARIANTS


@pytest.mark.parametrize("mixer", list(PER_MIXER))
def test_triton_backend_matches_naive_loss_and_grads(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=32,
                      mixer=PER_MIXER[mixer], norm="post", attn_backend="triton")
    model = GPT(cfg)
    assert model.backend == "triton"
    idx = torch.randint(0, 64, (2, 13))  # T not a multiple of any block size
    x, y = idx[:, :-1], idx[:, 1:]
    loss = model(x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_backend("naive")
    ref = model(x, y)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.parametrize("mixer", [VARIANTS["residual"], VARIANTS["moda"]], ids=["residual", "moda"])
def test_triton_backend_folds_non_power_of_two_groups(mixer, monkeypatch):
    """Table 6's 6 query / 2 KV heads (G=3): the kernel folds G=3 in every mode (no padded query heads), one
    kernel call per layer, and loss and every gradient equal the naive backend's."""
    import moda_kernels.moda as moda
    import moda_lab.model.depth as depth

    calls = []
    real = depth.moda_attn_forward  # the model's one path over the kernel (depth.py's autograd op)
    monkeypatch.setattr(depth, "moda_attn_forward", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    monkeypatch.setattr(moda, "moda_attn", lambda *a, **kw: pytest.fail("the model bypassed depth.py's op"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layers=2, d_model=96, n_heads=6, n_kv_heads=2, max_seq_len=16,
                      mixer=mixer, norm="post", attn_backend="triton")
    model = GPT(cfg)
    idx = torch.randint(0, 64, (1, 10))
    loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert [s[2] for s in calls] == [6, 6], calls  # 6 query heads reach the kernel in every layer
    model.zero_grad()
    model.set_backend("naive")
    ref = model(idx[:, :-1], idx[:, 1:])
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-3, msg=n)
