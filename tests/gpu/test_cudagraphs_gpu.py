"""The compiled step as CUDA graphs (trainer.cudagraphs, torch.compile mode reduce-overhead) on a GPU: Inductor
captures it (no skip), replays it, and computes what the default mode computes."""

from __future__ import annotations

import pytest
import torch

from moda_lab.model import GPT, ModelConfig
from variants import VARIANTS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def build(name: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8192, n_layers=8, d_model=384, n_heads=6, n_kv_heads=2, max_seq_len=1024,
                      mixer=VARIANTS[name], norm="post", attn_backend="triton")
    return GPT(cfg).cuda()


def step(model: GPT, x, y):
    model.zero_grad(set_to_none=True)  # no gradient of the previous replay is added into
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, y)
    loss.backward()
    # Copies: the next replay overwrites the graph's outputs (loss) and the gradients it produced.
    return loss.detach().clone(), torch.cat([p.grad.flatten().float() for p in model.parameters()])


@pytest.mark.parametrize("name", ["residual", "moda_depth_kv", "moda", "dense"])
def test_reduce_overhead_captures_the_step_and_matches_the_default_mode(name):
    from torch._dynamo.utils import counters

    idx = torch.randint(0, 8192, (2, 257), device="cuda")
    x, y = idx[:, :-1], idx[:, 1:]
    results = {}
    for mode in ("default", "reduce-overhead"):
        model = build(name)
        torch._dynamo.reset()
        counters.clear()
        model.compile(fullgraph=True, **({} if mode == "default" else {"mode": mode}))
        results[mode] = [step(model, x, y) for _ in range(4)]  # warm-up, capture, two replays
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 1
    assert counters["inductor"]["cudagraph_skips"] == 0, "Inductor skipped CUDA graphs (TORCH_LOGS=cudagraphs says why)"
    (loss_d, g_d), (loss_c, g_c) = results["default"][-1], results["reduce-overhead"][-1]
    assert abs(loss_c.item() - loss_d.item()) < 1e-3 * loss_d.item()
    rel = (g_c - g_d).norm() / g_d.norm()
    assert rel < 1e-2, f"CUDA graphs vs default mode gradient relative error {rel:.2e}"
    loss_r, g_r = results["reduce-overhead"][2]  # the first replay equals the second
    assert abs(loss_r.item() - loss_c.item()) < 1e-4 * loss_c.item()
    assert (g_r - g_c).norm() / g_c.norm() < 1e-3
    # Copied into the graphs' static buffers each replay: idx and targets (forward) and the loss's incoming
    # gradient (backward); 3 for every variant on the H100 (2026-12-07), so no depth-stream buffer is among them.
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] <= 3
