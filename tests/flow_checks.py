"""Checks every depth-flow variant's test runs against its paper (issue 30); shared by tests/cpu/test_flow_*.py.

A variant's test writes a plain-PyTorch reference of the method from the paper's equations, taking the model's
parameters (``dict(model.named_parameters())``) and the token ids, returning logits; ``assert_matches_reference``
compares the model's forward and every parameter's gradient with it (fp32, 1e-5).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from moda_lab.model import GPT, MixerConfig, ModelConfig
from moda_lab.model.decode import greedy_tokens

SHAPE = dict(vocab_size=64, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=24, attn_backend="naive")


def tiny(mixer: MixerConfig, norm: str = "pre", **kw) -> ModelConfig:
    return ModelConfig(mixer=mixer, norm=norm, **{**SHAPE, **kw})


def randomize(model: GPT, seed: int = 1, scale: float = 0.2) -> GPT:
    """Every parameter redrawn (vectors around 1, matrices around 0, spread ``scale``): identity-initialised
    mixing is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen) + (1.0 if p.dim() == 1 else 0.0))
    return model


def _atol(ref: torch.Tensor) -> float:
    return 1e-5 * max(1.0, ref.abs().max().item())


def assert_matches_reference(
    model: GPT, reference: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], seed: int = 0
) -> None:
    """The model's logits and the gradient of a cross-entropy loss for every parameter equal the reference's:
    1e-5 relative, and 1e-5 of the tensor's largest magnitude absolute (fp32 rounding grows with it, e.g. over
    the n copies a Hyper-Connections head sums)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 9), generator=gen)
    x, y = idx[:, :-1], idx[:, 1:]
    params = dict(model.named_parameters())
    got = model(x)
    want = reference(params, x)
    torch.testing.assert_close(got, want, atol=_atol(want), rtol=1e-5)
    names = list(params)
    g_got = torch.autograd.grad(F.cross_entropy(got.flatten(0, 1), y.flatten()), list(params.values()),
                                allow_unused=True)
    g_want = torch.autograd.grad(F.cross_entropy(want.flatten(0, 1), y.flatten()), list(params.values()),
                                 allow_unused=True)
    for name, a, b in zip(names, g_got, g_want):
        assert (a is None) == (b is None), f"{name}: gradient in one of model/reference only"
        if a is not None:
            torch.testing.assert_close(a, b, atol=_atol(b), rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def assert_cached_generation_matches_uncached(cfg: ModelConfig, steps: int = 10) -> None:
    torch.manual_seed(0)
    model = randomize(GPT(cfg)).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 5))
    ref = prompt
    with torch.no_grad():
        for _ in range(steps):
            ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row, want in zip(prompt.tolist(), ref[:, 5:].tolist()):
        assert list(itertools.islice(greedy_tokens(model, row), steps)) == want


def assert_triton_backend_matches_naive(cfg: ModelConfig, device: str) -> GPT:
    """A model with the fused kernels (``cfg.attn_backend`` triton; on CPU through the interpreter) against the
    same weights on the naive backend: the loss and every gradient, fp32, weights at spread 0.1. Returns the model,
    whose kernel calls the caller recorded during the first (fused) forward and backward."""
    torch.manual_seed(0)
    model = randomize(GPT(cfg), scale=0.1).to(device)
    idx = torch.randint(0, cfg.vocab_size, (2, 9)).to(device)
    loss = model(idx[:, :-1], idx[:, 1:])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model.set_backend("naive")
    ref = model(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(ref, list(model.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    return model


def assert_compiles_to_one_graph(cfg: ModelConfig, build: Callable[[ModelConfig], GPT] = GPT) -> None:
    """GPT.compile(fullgraph=True) on CPU: no graph break, one graph for two steps, same loss and gradients (by
    default at the model's own initial weights: Inductor's fused sums round differently, which random weights
    amplify; ``build`` makes the model, seeded, for weights that stay within 1e-5)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = build(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 9))
    ref = model(idx[:, :-1], idx[:, 1:])
    ref.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    torch._dynamo.reset()
    counters.clear()
    model.compile(fullgraph=True)
    for _ in range(2):
        model.zero_grad()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5)


def counted_forward_flops(model: GPT, T: int = 16) -> int:
    """Forward FLOPs per token as torch.utils.flop_counter counts them (matmuls, attention, registered ops)."""
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, model.cfg.vocab_size, (2, T)))
    return counter.get_total_flops() // (2 * T)


# --- the plain decoder the references build on (the baseline, not a method) ------------------------------
#
# P is dict(model.named_parameters()); every function takes plain tensors [B, T, D] and recomputes one part of
# the decoder from its definition: RMSNorm, RoPE (half-split), GQA causal softmax attention, SwiGLU.


def ref_norm(P: dict, name: str, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * P[name]


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    T, d = x.shape[1], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv  # [T, d/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def ref_attention(P: dict, pre: str, cfg: ModelConfig, xq, xk, xv, values=None) -> torch.Tensor:
    """Causal GQA attention of block prefix ``pre`` ("blocks.3.attn."); ``values`` maps the values [B, T, Hk, d]."""
    B, T, _ = xq.shape
    H, Hk, d = cfg.n_heads, cfg.n_kv_heads, cfg.hd
    wk, wv = P[pre + "kv.wkv.weight"].chunk(2, dim=0)
    q = (xq @ P[pre + "wq.weight"].T).view(B, T, H, d)
    k = (xk @ wk.T).view(B, T, Hk, d)
    v = (xv @ wv.T).view(B, T, Hk, d)
    if cfg.qk_norm:
        q, k = ref_norm(P, pre + "q_norm.weight", q), ref_norm(P, pre + "kv.k_norm.weight", k)
    q, k = _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta)
    if values is not None:
        v = values(v)
    k, v = k.repeat_interleave(H // Hk, dim=2), v.repeat_interleave(H // Hk, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q, k) / d**0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", s.softmax(-1), v).reshape(B, T, H * d)
    return out @ P[pre + "wo.weight"].T


def ref_ffn(P: dict, pre: str, h: torch.Tensor) -> torch.Tensor:
    gate, up = (h @ P[pre + "w13.weight"].T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ P[pre + "w2.weight"].T


def ref_sublayer(P: dict, name: str, norm: str, x: torch.Tensor, f) -> torch.Tensor:
    """x + f(norm(x)) (pre), norm(x + f(x)) (post), x + norm(f(x)) (reordered); ``name``: "blocks.0.attn_norm"."""
    w = name + ".norm.weight"
    if norm == "pre":
        return x + f(ref_norm(P, w, x))
    if norm == "post":
        return ref_norm(P, w, x + f(x))
    if norm == "reordered":
        return x + ref_norm(P, w, f(x))
    raise ValueError(f"no reference for norm={norm!r}")


def ref_head(P: dict, cfg: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    if cfg.norm in ("pre", "reordered"):
        x = ref_norm(P, "norm.weight", x)
    return x @ P["tok_emb.weight" if cfg.tie_embeddings else "lm_head.weight"].T


def compile_for_sm90(script: str, cache_dir) -> list[str]:
    """Runs ``script`` (Python that compiles kernels ahead of time, with sm90_aot.compile_sm90, and prints a line
    each) with the interpreter off and ptxas -v's report on, in a fresh Triton cache (ptxas runs every time);
    returns its lines, printed too. Skips where there is no ptxas."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root / "tests"), env.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    if "ptxas" in proc.stderr and proc.returncode:
        pytest.skip("no ptxas for ahead-of-time compilation here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    return proc.stdout.splitlines()
