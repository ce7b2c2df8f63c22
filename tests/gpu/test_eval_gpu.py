"""Scoring on a GPU: batch_size=auto picks a batch that fits, and the triton backend scores like the CPU reference."""

from __future__ import annotations

import pytest
import torch

from moda_lab.model import GPT, ModelConfig
from variants import VARIANTS

lm_eval = pytest.importorskip("lm_eval")
from moda_lab.eval.lm import auto_batch_size, score_continuations  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def build(backend: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=8192,
        n_layers=4,
        d_model=256,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=512,
        mixer=VARIANTS["moda"],
        norm="post",
        attn_backend=backend,
    )
    return GPT(cfg).eval()


def test_auto_batch_size_fits_and_is_a_power_of_two():
    model = build("triton").cuda()
    size = auto_batch_size(model, 512, "cuda", cap=64)
    assert size & (size - 1) == 0 and 1 <= size <= 64
    with torch.no_grad():
        model(torch.zeros(size, 512, dtype=torch.long, device="cuda"))  # the chosen batch runs


def test_triton_scores_match_the_cpu_reference():
    g = torch.Generator().manual_seed(0)
    pairs = [
        (
            torch.randint(0, 8192, (n_ctx,), generator=g).tolist(),
            torch.randint(0, 8192, (n_cont,), generator=g).tolist(),
        )
        for n_ctx, n_cont in [(5, 3), (300, 40), (700, 20), (10, 600)]  # the last two are truncated to the window
    ]
    ref = score_continuations(build("naive"), pairs, batch_size=2, device="cpu")
    got = score_continuations(build("triton").cuda(), pairs, batch_size=2, device="cuda")
    for (r, _), (s, _) in zip(ref, got):
        assert s == pytest.approx(r, rel=1e-4, abs=1e-2)


def test_bf16_scoring_is_close_to_the_fp32_cpu_reference():
    """The rows' after-fit eval path on the GPU: eval.precision=auto is bf16 autocast there, widths bucketed to 64
    (several widths, so several autotuned kernel shapes), the head on the scored positions only."""
    from moda_lab.eval.lm import resolve_precision

    assert resolve_precision("auto", "cuda") == "bf16"
    g = torch.Generator().manual_seed(1)
    pairs = [
        (torch.randint(0, 8192, (n_ctx,), generator=g).tolist(), torch.randint(0, 8192, (n_cont,), generator=g).tolist())
        for n_ctx, n_cont in [(5, 3), (63, 1), (64, 2), (130, 7), (300, 40), (511, 1)]
    ]
    ref = score_continuations(build("naive"), pairs, batch_size=2, device="cpu")
    got = score_continuations(build("triton").cuda(), pairs, batch_size=2, device="cuda", precision="bf16")
    for (r, _), (s, _) in zip(ref, got):
        assert s == pytest.approx(r, rel=5e-3, abs=0.2)  # bf16 autocast on CPU is within 1e-4 of fp32 here


def test_attention_statistics_on_the_gpu_match_the_cpu():
    """The rows' after-fit attention step (eval.attention_windows) on CUDA: the same masses as on the CPU."""
    import numpy as np

    from moda_lab.eval.attention_stats import attention_stats

    g = np.random.default_rng(0)
    windows = {"a": [g.integers(0, 8192, 512) for _ in range(2)], "b": [g.integers(0, 8192, 300)]}
    ref = attention_stats(build("naive"), windows)
    got = attention_stats(build("triton").cuda(), windows)
    assert got[["domain", "layer", "head"]].equals(ref[["domain", "layer", "head"]])
    for col in ("depth_mass", "sink_mass"):
        assert np.allclose(got[col], ref[col], atol=1e-4), col
    assert (got.loc[got["layer"] > 0, "depth_mass"] > 0).all()
