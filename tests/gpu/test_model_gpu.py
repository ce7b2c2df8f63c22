"""The model on a GPU: triton backend vs the fp32 reference in bf16 autocast, every variant; compile traces."""

from __future__ import annotations

import pytest
import torch

from moda_lab.model import GPT, ModelConfig
from variants import PER_MIXER, VARIANTS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

MIXERS = {**PER_MIXER, "moda": VARIANTS["moda"]}


def build(mixer: str, backend: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8192, n_layers=8, d_model=384, n_heads=6, n_kv_heads=2, max_seq_len=1024,
                      mixer=MIXERS[mixer], norm="post", attn_backend=backend)
    return GPT(cfg).cuda()


def loss_and_grads(model: GPT, x, y):
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, y)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten().float() for p in model.parameters()])


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_triton_backend_matches_reference_in_bf16(mixer):
    model = build(mixer, "triton")
    idx = torch.randint(0, 8192, (4, 1001), device="cuda")  # T = 1000, not a block multiple
    x, y = idx[:, :-1], idx[:, 1:]
    loss_t, g_t = loss_and_grads(model, x, y)
    model.set_backend("naive")  # fp32 attention math on the same bf16 projections
    loss_n, g_n = loss_and_grads(model, x, y)
    assert abs(loss_t.item() - loss_n.item()) < 2e-3 * loss_n.item()
    rel = (g_t - g_n).norm() / g_n.norm()
    assert rel < 2e-2, f"gradient relative error {rel:.2e}"


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_whole_model_compile_is_one_graph_and_matches_eager(mixer):
    from torch._dynamo.utils import counters

    model = build(mixer, "triton")
    idx = torch.randint(0, 8192, (2, 257), device="cuda")
    x, y = idx[:, :-1], idx[:, 1:]
    loss_e, g_e = loss_and_grads(model, x, y)
    torch._dynamo.reset()
    counters.clear()
    model.compile(fullgraph=True)
    for _ in range(2):
        loss_c, g_c = loss_and_grads(model, x, y)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert abs(loss_c.item() - loss_e.item()) < 1e-3 * loss_e.item()
    rel = (g_c - g_e).norm() / g_e.norm()
    assert rel < 1e-2, f"compiled vs eager gradient relative error {rel:.2e}"
