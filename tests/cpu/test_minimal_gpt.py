"""bench_train.py's minimal_gpt row (experiments/bench/minimal_gpt.py, issue 29) is moda-lab's residual written
plainly: same parameters and FLOPs at the paper's Table 6 shape, the same loss from the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend

from experiments.bench.minimal_gpt import MinimalConfig, MinimalGPT
from moda_lab.model import GPT, MixerConfig, ModelConfig

# experiment=table6_24l's model: width 384, 6 query / 2 KV heads, 24 layers, T=1024, SwiGLU 1536, vocab 50,304.
TABLE6 = dict(vocab_size=50304, n_layers=24, d_model=384, n_heads=6, n_kv_heads=2, ffn_hidden=1536, max_seq_len=1024)
BENCH_TRAIN = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "bench_train.py"
TINY = dict(vocab_size=97, n_layers=3, d_model=48, n_heads=6, n_kv_heads=2, ffn_hidden=64, max_seq_len=32)


def _bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH_TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _minimal_state(gpt: GPT) -> dict[str, torch.Tensor]:
    """moda-lab's state_dict under the minimal model's names (its K/V projection and norms sit one level up)."""
    return {k.replace(".attn.kv.", ".attn.").replace("_norm.norm.", "_norm."): v for k, v in gpt.state_dict().items()}


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_table6_shape_same_params_and_flops(norm: str) -> None:
    cfg = ModelConfig(**TABLE6, norm=norm)
    with torch.device("meta"):  # shapes only
        residual, minimal = GPT(cfg), MinimalGPT(MinimalConfig.like(cfg))
    assert minimal.num_params() == residual.num_params()
    assert residual.num_params() == (71_243_136 if norm == "pre" else 71_242_752)  # pre-norm's final norm: +384
    # moda-lab's count walks the modules; the minimal one is a closed form over the shapes.
    assert minimal.flops_per_token(1024) == residual.flops_per_token(1024) == 540_573_696


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_same_weights_same_loss(norm: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY, norm=norm, attn_backend="sdpa")
    residual = GPT(cfg)
    minimal = MinimalGPT(MinimalConfig.like(cfg))
    minimal.load_state_dict(_minimal_state(residual), strict=True)
    data = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len + 1))
    x, y = data[:, :-1], data[:, 1:]
    want, got = residual(x, y), minimal(x, y)
    assert torch.isfinite(want) and torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.backward()
    assert all(torch.isfinite(p.grad).all() for p in minimal.parameters())


def test_minimal_refuses_other_norm_placements() -> None:
    with pytest.raises(ValueError, match="norm='reordered'"):
        MinimalConfig.like(ModelConfig(**TINY, norm="reordered"))


def test_bench_builds_the_minimal_row_and_its_ratio() -> None:
    bench = _bench_train()
    cfg = ModelConfig(**TINY, norm="post")
    minimal = bench.build_model(bench.BENCH_VARIANTS["minimal_gpt"], cfg)
    plain = bench.build_model(bench.BENCH_VARIANTS["minimal_gpt_no_qk_norm"], cfg)
    assert minimal.cfg.qk_norm and not plain.cfg.qk_norm
    assert minimal.num_params() - plain.num_params() == cfg.n_layers * 2 * cfg.hd  # the q and k norm gains
    assert minimal.sdpa_kernel(2, torch.bfloat16, torch.device("cpu")) in SDPBackend.__members__
    assert isinstance(bench.build_model(bench.BENCH_VARIANTS["residual"], cfg), GPT)
    assert bench.BENCH_VARIANTS["residual"] == MixerConfig("residual")
    shape = {"width": 384, "layers": 24, "T": 1024}
    common = {**shape, "B": 64, "backend": "sdpa", "params_M": 71.24, "gflops_per_token": 0.541, "tokens_per_s": 1.0,
              "mfu": None, "mem_GiB": 1.0}
    rows = [{**common, "variant": "minimal_gpt", "step_ms": 100.0}]
    bench.add_overheads(rows)
    assert "overhead_vs_residual" not in rows[0]  # no residual row yet
    rows.append({**common, "variant": "residual", "step_ms": 106.0})
    bench.add_overheads(rows)
    assert rows[0]["overhead_vs_residual"] == pytest.approx(100 / 106 - 1)
    assert rows[1]["overhead_vs_residual"] == 0.0
    text = bench.table({}, rows)
    assert "| minimal_gpt | sdpa | 384 | 24 | 1024 |" in text and "| -5.7% |" in text
    assert "residual / minimal_gpt step time at width 384, 24 layers, T=1024: 1.060" in text
