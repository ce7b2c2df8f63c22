"""The hybrid schedule (moda_kernels/moda/hybrid.py) on CPU: the sequence part by aten's CPU flash op with its
log-sum-exp, the depth part by the Triton kernel under the interpreter, merged by LSE; output and every
gradient vs the fp32 reference. The CUDA ops (cuDNN, flash) take the same code path and are tested at real
sizes in tests/gpu/test_moda_kernel_gpu.py."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from moda_inputs import moda_inputs  # noqa: E402
from moda_kernels.dispatch import SEQ_IMPL_ENV  # noqa: E402
from moda_kernels.moda import hybrid, moda_attn, moda_attn_backward, moda_attn_forward, naive_moda_attn  # noqa: E402

ATOL = 2e-5


def _inputs(B, T, Hq, Hk, d, L, seed, lmax=None):
    """MoDA inputs with L depth slots (prefix views of lmax), or sequence-only inputs when L is 0."""
    return moda_inputs(B, T, Hq, Hk, d, L, "moda" if L else "seq", seed, depth_prefix_of=lmax)


CASES = [  # (B, T, Hq, Hk, d, L, causal): G in {1, 3, 4, 8}, T off every tile size, prefix views
    (1, 37, 4, 4, 16, 3, True),
    (2, 21, 6, 2, 32, 5, True),
    (1, 29, 8, 2, 16, 1, False),
    (2, 19, 8, 1, 16, 4, True),
    (1, 33, 6, 2, 16, 0, True),
    (2, 17, 4, 1, 32, 0, False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}-T{c[1]}-G{c[2] // c[3]}-L{c[5]}-{c[6]}" for c in CASES])
def test_hybrid_matches_reference(monkeypatch, case):
    monkeypatch.setenv(SEQ_IMPL_ENV, "cpu")
    B, T, Hq, Hk, d, L, causal = case
    inputs = _inputs(B, T, Hq, Hk, d, L, seed=sum(case[:6]), lmax=L + 2 if L else None)
    present = [t for t in inputs if t is not None]
    out = moda_attn(*inputs, causal=causal)
    ref = naive_moda_attn(*inputs, causal=causal)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    for g, gr in zip(torch.autograd.grad(out, present, do), torch.autograd.grad(ref, present, do)):
        torch.testing.assert_close(g, gr, atol=ATOL, rtol=1e-4)


def test_hybrid_lse_equals_fused_lse_and_backwards_are_interchangeable(monkeypatch):
    """Both schedules give one (O, LSE) in one layout, and either backward is exact for the other's forward."""
    q, k, v, kd, vd = (t.detach() for t in _inputs(2, 23, 6, 2, 16, 4, seed=3))
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for impl in ("fused", "cpu"):
        monkeypatch.setenv(SEQ_IMPL_ENV, impl)
        results[impl] = moda_attn_forward(q, k, v, kd, vd)
    torch.testing.assert_close(results["cpu"][0], results["fused"][0], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(results["cpu"][1], results["fused"][1], atol=ATOL, rtol=1e-4)
    grads = {}
    for fwd_impl, bwd_impl in (("fused", "cpu"), ("cpu", "fused"), ("cpu", "cpu")):
        monkeypatch.setenv(SEQ_IMPL_ENV, bwd_impl)
        o, lse = results[fwd_impl]
        grads[fwd_impl, bwd_impl] = moda_attn_backward(do, q, k, v, kd, vd, o, lse)
    for key in (("fused", "cpu"), ("cpu", "fused")):
        for g, gr in zip(grads[key], grads["cpu", "cpu"]):
            torch.testing.assert_close(g, gr, atol=ATOL, rtol=1e-4)


def test_hybrid_backward_adds_depth_gradients_into_given_buffers(monkeypatch):
    monkeypatch.setenv(SEQ_IMPL_ENV, "cpu")
    q, k, v, kd, vd = (t.detach() for t in _inputs(1, 19, 6, 2, 16, 3, seed=5, lmax=6))
    o, lse = moda_attn_forward(q, k, v, kd, vd)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    _, _, _, dkd, dvd = moda_attn_backward(do, q, k, v, kd, vd, o, lse)
    buf_k, buf_v = torch.ones(1, 19, 6, 2, 16), torch.full((1, 19, 6, 2, 16), 2.0)
    out = moda_attn_backward(do, q, k, v, kd, vd, o, lse, dk_depth_acc=buf_k[:, :, :3], dv_depth_acc=buf_v[:, :, :3])
    assert out[3] is None and out[4] is None
    torch.testing.assert_close(buf_k[:, :, :3], dkd + 1, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(buf_v[:, :, :3], dvd + 2, atol=ATOL, rtol=1e-4)
    assert (buf_k[:, :, 3:] == 1).all() and (buf_v[:, :, 3:] == 2).all()  # slots beyond the prefix untouched


def test_lse_fold_round_trip_and_layout():
    B, Hk, G, T = 2, 3, 4, 5
    lse = torch.randn(B, Hk * G, T)
    folded = hybrid.fold_lse(lse, Hk)
    assert folded.shape == (B * Hk, T * G)
    # Row t * G + g of KV head hk is query head hk * G + g at token t, in log2 units.
    assert torch.allclose(folded[1 * Hk + 2, 3 * G + 1], lse[1, 2 * G + 1, 3] * hybrid.LOG2E)
    torch.testing.assert_close(hybrid.unfold_lse(folded, B, Hk * G, T), lse)
    torch.testing.assert_close(hybrid.fold_lse(lse.unsqueeze(-1), Hk), folded)  # cuDNN's [B, H, T, 1]


def test_an_op_that_refuses_gqa_gets_expanded_heads_for_that_call_only(monkeypatch):
    """An op that refuses fewer KV than query heads gets them expanded in that call, forward and backward; the
    next call tries the native GQA call again (no process-wide state changes after an error)."""
    monkeypatch.setenv(SEQ_IMPL_ENV, "cpu")
    real_fwd, real_bwd = hybrid._seq_forward_op, hybrid._seq_backward_op
    calls = []

    def strict_fwd(impl, qt, kt, vt, causal, scale):
        calls.append(("fwd", kt.shape[1]))
        if kt.shape[1] != qt.shape[1]:
            raise RuntimeError("number of heads in key/value must equal the query's")
        return real_fwd(impl, qt, kt, vt, causal, scale)

    def strict_bwd(impl, aux, dot, qt, kt, vt, ot, lse, causal, scale):
        calls.append(("bwd", kt.shape[1]))
        if kt.shape[1] != qt.shape[1]:
            raise RuntimeError("number of heads in key/value must equal the query's")
        return real_bwd(impl, aux, dot, qt, kt, vt, ot, lse, causal, scale)

    monkeypatch.setattr(hybrid, "_seq_forward_op", strict_fwd)
    monkeypatch.setattr(hybrid, "_seq_backward_op", strict_bwd)
    inputs = _inputs(1, 13, 6, 2, 16, 2, seed=9)
    present = [t for t in inputs if t is not None]
    ref = naive_moda_attn(*inputs)
    gr = torch.autograd.grad(ref, present, torch.ones_like(ref))
    for _ in range(2):
        calls.clear()
        out = moda_attn(*inputs)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)
        g = torch.autograd.grad(out, present, torch.ones_like(out))
        assert calls == [("fwd", 2), ("fwd", 6), ("bwd", 2), ("bwd", 6)]  # native first in every call
        for a, b in zip(g, gr):  # dk / dv summed back over each KV head's query heads
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def test_other_errors_of_an_op_are_not_retried(monkeypatch):
    monkeypatch.setenv(SEQ_IMPL_ENV, "cpu")
    calls = []

    def broken(impl, qt, kt, vt, causal, scale):
        calls.append(kt.shape[1])
        raise RuntimeError("broken op")

    monkeypatch.setattr(hybrid, "_seq_forward_op", broken)
    q, k, v, _, _ = _inputs(1, 9, 4, 4, 16, 0, seed=2)  # G = 1: nothing to expand
    with pytest.raises(RuntimeError, match="broken op"):
        moda_attn(q, k, v)
    assert calls == [4]


def test_the_backward_keeps_nothing_of_its_forward():
    """No tensor of a forward is held for its backward outside the graph (CUDA-graph capture refuses memory that
    no output tracks: tests/gpu/test_cudagraphs_gpu.py): the backward builds the aux arguments of a forward without
    dropout as the aten forwards do."""
    assert not [name for name, value in vars(hybrid).items() if isinstance(value, dict) and not name.startswith("__")]
    cq, ck, seed, offset = hybrid._no_dropout_aux("cudnn", torch.device("cpu"))
    assert cq is None and ck is None and seed.shape == offset.shape == (1,) and seed.dtype == torch.long
    assert int(seed) == int(offset) == 0  # as cuDNN's forward makes them (at::zeros({1}, long))
    cq, ck, seed, offset = hybrid._no_dropout_aux("flash", torch.device("cpu"))
    assert cq is None and ck is None and seed.shape == offset.shape == () and seed.device.type == "cpu"
