"""The wide stream's combine kernel (moda_kernels/widecombine) against its reference, and its op in the
Hyper-Connections and mHC models (moda_lab/model/mixers/wide_combine.py)."""

from __future__ import annotations

import pytest
import torch
from flow_checks import assert_compiles_to_one_graph, assert_triton_backend_matches_naive, compile_for_sm90, tiny

from moda_kernels.widecombine import (
    fits,
    naive_wide_combine,
    naive_wide_combine_bwd,
    wide_combine_backward,
    wide_combine_forward,
)
from moda_lab.model import MixerConfig

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the Triton interpreter (tests/conftest.py)

# (lead, n, D, norm, gain): widths that are not powers of two, a row count that ends mid-block and one that spans
# several backward programs (130 rows), one to four copies, no rows, DeepNorm's gain
CASES = [((2, 7), 4, 40, True, 1.0), ((130,), 3, 33, True, 1.0), ((5,), 4, 384, False, 1.0),
         ((9,), 1, 16, True, 1.0), ((3, 2), 2, 100, True, 2.2), ((0, 4), 4, 8, True, 1.0),
         ((4,), 4, 24, False, 0.5), ((3,), 2, 7, False, 1.0)]


def random_inputs(lead, n, D, norm, seed, y_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, D, generator=gen)
    y = torch.randn(*lead, D, generator=gen).to(y_dtype)
    res = torch.randn(*lead, n, n, generator=gen)
    post = torch.randn(*lead, n, generator=gen)
    weight = 1 + 0.3 * torch.randn(D, generator=gen) if norm else None
    dout = torch.randn(*lead, n, D, generator=gen)
    move = lambda t: None if t is None else t.to(KERNEL_DEVICE)  # noqa: E731
    return tuple(map(move, (x, y, res, post, weight, dout)))


@pytest.mark.parametrize("lead,n,D,norm,gain", CASES,
                         ids=[f"R{'x'.join(map(str, c[0]))}-n{c[1]}-D{c[2]}-{'norm' if c[3] else 'plain'}-g{c[4]}"
                              for c in CASES])
def test_kernels_match_the_reference(lead, n, D, norm, gain):
    """Forward (new copies, the copies' rstd) and backward (d x, d y, d res, d post, d weight) against
    naive.py, the gradients against autograd through the reference in fp64; shapes and dtypes included."""
    x, y, res, post, weight, dout = random_inputs(lead, n, D, norm, seed=n * 1000 + D)
    out, rstd = wide_combine_forward(x, y, res, post, weight, gain, 1e-6)
    torch.testing.assert_close(out, naive_wide_combine(x, y, res, post, weight, gain, 1e-6), atol=1e-5, rtol=1e-5)
    if norm:
        c = naive_wide_combine(x, y, res, post, None, gain, 1e-6)
        torch.testing.assert_close(rstd, c.square().mean(-1).add(1e-6).rsqrt(), atol=1e-6, rtol=1e-5)
    got = wide_combine_backward(dout, x, y, res, post, weight, rstd, gain)
    for a, b in zip(got, naive_wide_combine_bwd(dout, x, y, res, post, weight, gain, 1e-6)):
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_output_keeps_its_dtype_and_the_math_stays_fp32():
    """Under autocast the sublayer's output y is bf16 and the copies fp32: d y comes back in bf16, the rest
    in fp32, all from fp32 arithmetic (the reference upcasts y the same way)."""
    x, y, res, post, weight, dout = random_inputs((6,), 4, 48, True, seed=3, y_dtype=torch.bfloat16)
    out, rstd = wide_combine_forward(x, y, res, post, weight, 1.0, 1e-6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_wide_combine(x, y, res, post, weight, 1.0, 1e-6), atol=1e-5, rtol=1e-5)
    got = wide_combine_backward(dout, x, y, res, post, weight, rstd, 1.0)
    ref = naive_wide_combine_bwd(dout, x, y, res, post, weight, 1.0, 1e-6)
    assert [g.dtype for g in got] == [torch.float32, torch.bfloat16, torch.float32, torch.float32, torch.float32]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-2 if a.dtype == torch.bfloat16 else 1e-5, rtol=1e-2)


def test_ops_pass_torch_opcheck():
    """The custom ops' fakes give the real outputs' shapes, dtypes and strides (torch.compile traces them) and
    the autograd registration is consistent, with the norm and without it (weight None, d weight empty)."""
    from moda_lab.model.mixers.wide_combine import wide_combine, wide_combine_bwd

    x, y, res, post, weight, _ = random_inputs((2, 5), 3, 40, True, seed=0)
    for w in (weight, None):
        leaves = [t.clone().requires_grad_() for t in (x, y, res, post)]
        w = None if w is None else w.clone().requires_grad_()
        torch.library.opcheck(wide_combine, (*leaves, w, 1.3, 1e-6))
        out, rstd = (t.detach() for t in wide_combine(*leaves, w, 1.3, 1e-6))
        torch.library.opcheck(wide_combine_bwd, (torch.randn_like(out), x, y, res, post,
                                                 None if w is None else w.detach(), rstd, 1.3))


def test_shapes_beyond_the_named_tiles_do_not_take_the_kernel():
    """At most four copies (the kernels' named tiles) of width at most 2048; the kernels refuse the rest by name."""
    assert fits(4, 384) and fits(4, 2048) and fits(1, 1)
    assert not fits(5, 64) and not fits(4, 2049) and not fits(0, 64)
    x, y, res, post, weight, _ = random_inputs((2,), 5, 16, True, seed=0)
    with pytest.raises(ValueError, match="copies of 5 x 16 do not fit"):
        wide_combine_forward(x, y, res, post, weight, 1.0, 1e-6)


@pytest.mark.parametrize("mixer", [MixerConfig("hyper_connections", expansion=3),
                                   MixerConfig("hyper_connections", expansion=4, dynamic=False),
                                   MixerConfig("mhc", expansion=2, sinkhorn_iters=4)], ids=["hc", "shc", "mhc"])
@pytest.mark.parametrize("norm", ["pre", "post", "reordered", "deepnorm"])
def test_triton_backend_combines_through_the_op(mixer, norm, monkeypatch):
    """attn_backend=triton routes every sublayer's combine through the op, with the placement's norm where it
    normalises the combined stream (post, deepnorm, with its gain) and none elsewhere; the loss and every gradient
    equal the naive backend's (fp32)."""
    import moda_lab.model.mixers.wide_combine as module

    monkeypatch.setenv("MODA_WIDE_COMBINE", "1")
    calls = []
    real = module.wide_combine_forward
    monkeypatch.setattr(module, "wide_combine_forward",
                        lambda x, y, res, post, weight, gain, eps: calls.append((weight is not None, gain))
                        or real(x, y, res, post, weight, gain, eps))
    model = assert_triton_backend_matches_naive(tiny(mixer, norm, d_model=64, attn_backend="triton"), KERNEL_DEVICE)
    assert len(calls) == 2 * model.cfg.n_layers
    assert {c[0] for c in calls} == {norm in ("post", "deepnorm")}
    assert {c[1] for c in calls} == {(2.0 * model.cfg.n_layers) ** 0.25 if norm == "deepnorm" else 1.0}


def test_the_op_is_off_unless_switched_on(monkeypatch):
    """By default (MODA_WIDE_COMBINE unset) the fused backend keeps the compiled ops: the op measured slower on
    an H100 (moda_kernels/dispatch.py, wide_combine_kernel)."""
    import moda_lab.model.mixers.wide_combine as module

    monkeypatch.delenv("MODA_WIDE_COMBINE", raising=False)
    calls = []
    monkeypatch.setattr(module, "wide_combine_forward", lambda *a: calls.append(a))
    assert_triton_backend_matches_naive(tiny(MixerConfig("hyper_connections", expansion=2), "post", d_model=64,
                                             attn_backend="triton"), KERNEL_DEVICE)
    assert calls == []


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="compiles a CPU model through the Triton interpreter")
def test_compiles_to_one_graph_through_the_op(monkeypatch):
    """With the Triton backend the combine op (and its backward op) is one node of the one graph."""
    monkeypatch.setenv("MODA_WIDE_COMBINE", "1")
    torch._dynamo.reset()
    assert_compiles_to_one_graph(tiny(MixerConfig("hyper_connections", expansion=3), "post", d_model=64,
                                      attn_backend="triton"))


_AOT = """
from sm90_aot import compile_sm90
from moda_kernels.widecombine import triton_kernels as K

INTS = {"R", "D"}
def arg_type(a):  # the copies fp32, the output bf16 (autocast), as in training
    return "fp32" if a in ("gain", "eps") else "i32" if a in INTS else "*bf16" if a in ("Y", "DY") else "*fp32"

for n, D in ((4, 384), (4, 1536)):  # the Table 6 width and the flow benchmark's widest
    for fn, backward in ((K._wide_combine_fwd_kernel, False), (K._wide_combine_bwd_kernel, True)):
        BLOCK_D, BLOCK_R, warps = K._tiles(D, backward)
        for norm in (False, True):
            constexprs = {"N": n, "BLOCK_R": BLOCK_R, "BLOCK_D": BLOCK_D, "HAS_NORM": norm}
            asm, regs, spills = compile_sm90(fn, constexprs, warps, arg_type,
                                             not_divisible={"gain", "eps", "R"})
            print(fn.__name__, f"n={n} D={D} norm={norm} warps={warps}", asm, "regs", regs, "spills", *spills)
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """Both kernels, with and without the norm, at their launch tiles for the Table 6 width (384) and a 1536-wide
    stream, compiled ahead of time for sm_90 (ptxas -v): no register spills."""
    lines = compile_for_sm90(_AOT, tmp_path)
    assert len(lines) == 8 and all("'cubin'" in line for line in lines), lines
    assert all(line.endswith("spills 0 0") for line in lines), lines


def test_bench_train_times_a_row_with_the_switch_on(monkeypatch):
    """bench_train.py's "<variant>@wide_combine" row runs the variant with MODA_WIDE_COMBINE=1 for that row only,
    beside the default row of the same run; an unknown variant or switch is an error that names it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_row("hyper_connections") == (bench.BENCH_VARIANTS["hyper_connections"], None)
    assert bench.parse_row("mhc@wide_combine") == (bench.BENCH_VARIANTS["mhc"], "MODA_WIDE_COMBINE")
    with pytest.raises(ValueError, match="unknown switch 'fast' in 'mhc@fast'"):
        bench.parse_row("mhc@fast")
    with pytest.raises(ValueError, match="unknown variant 'hc'"):
        bench.parse_row("hc@wide_combine")
    monkeypatch.delenv("MODA_WIDE_COMBINE", raising=False)
    import moda_kernels.dispatch as dispatch

    with bench.switched_on("MODA_WIDE_COMBINE"):
        assert dispatch.wide_combine_kernel()
    assert not dispatch.wide_combine_kernel()
    with bench.switched_on(None):
        assert not dispatch.wide_combine_kernel()
