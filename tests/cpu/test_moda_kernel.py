"""MoDA Triton kernel vs the fp32 reference, on CPU through the Triton interpreter.

Covers every mode (sequence-only, depth-only, MoDA) x causal/non-causal x G in {1, 2, 4} with T not a
multiple of the tile and L in {1, 3, 5}; output and ALL gradients are compared to ``naive_moda_attn``.
fp32 only: the interpreter's bf16 ``tl.dot`` is not faithful. Shapes stay tiny (the interpreter runs
every tile op through numpy).
"""

import os

# Must be set before Triton (or the kernels) are imported; tests/conftest.py may set it as well.
os.environ["TRITON_INTERPRET"] = "1"

import itertools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from moda_inputs import moda_inputs  # noqa: E402
from moda_kernels.moda import moda_attn, naive_moda_attn  # noqa: E402

ATOL = 2e-5


def _check(inputs, causal, scale=None, seed=0):
    present = [t for t in inputs if t is not None]
    out = moda_attn(*inputs, causal=causal, scale=scale)
    ref = naive_moda_attn(*inputs, causal=causal, scale=scale)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    grads = torch.autograd.grad(out, present, do)
    grads_ref = torch.autograd.grad(ref, present, do)
    names = [n for n, t in zip(("dq", "dk", "dv", "dk_depth", "dv_depth"), inputs) if t is not None]
    for name, g, gr, t in zip(names, grads, grads_ref, present):
        assert g.shape == t.shape, name
        torch.testing.assert_close(g, gr, atol=ATOL, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


# The grid: mode x causal x G, with T (never a multiple of the 16/32-row tiles) and L cycling.
_TS = itertools.cycle([37, 21, 40, 9, 29])
_LS = itertools.cycle([1, 3, 5])
GRID = []
for mode, causal, G in itertools.product(("seq", "depth", "moda"), (True, False), (1, 2, 4)):
    T, L = next(_TS), next(_LS)
    Hk = 2 if G < 4 else 1
    GRID.append((mode, 1 + (G == 2), T, G * Hk, Hk, 16, L if mode != "seq" else 0, causal))


def _case_id(case):
    mode, B, T, Hq, Hk, d, L, causal = case
    return f"{mode}-B{B}-T{T}-Hq{Hq}-Hk{Hk}-d{d}-L{L}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("case", GRID, ids=[_case_id(c) for c in GRID])
def test_matches_reference(case):
    mode, B, T, Hq, Hk, d, L, causal = case
    _check(moda_inputs(B, T, Hq, Hk, d, max(L, 1), mode, seed=hash(_case_id(case)) % 1000), causal)


EXTRA = [
    # Prefix views of a deeper buffer (the model's layout), d = 32, batch 2.
    ("moda", 2, 19, 4, 2, 32, 3, True, dict(depth_prefix_of=8)),
    ("depth", 1, 26, 8, 2, 16, 5, False, dict(depth_prefix_of=6)),
    # k_depth and v_depth views of different buffers / of one buffer.
    ("moda", 1, 33, 2, 1, 16, 5, True, dict(split_depth=False)),
    # Large group G = 16, 32 and a single token.
    ("moda", 1, 7, 16, 1, 16, 3, True, {}),
    ("moda", 1, 5, 32, 1, 16, 1, False, {}),
    ("moda", 1, 1, 4, 2, 16, 3, True, {}),
]


@pytest.mark.parametrize("case", EXTRA, ids=[_case_id(c[:8]) + "-" + "-".join(f"{k}{v}" for k, v in c[8].items()) for c in EXTRA])
def test_layouts_and_groups(case):
    mode, B, T, Hq, Hk, d, L, causal, kw = case
    _check(moda_inputs(B, T, Hq, Hk, d, L, mode, seed=7, **kw), causal)


def test_custom_scale_and_strided_qkv():
    """q/k/v as slices of a fused [B, T, 3, H, d] projection (non-contiguous, last dim dense)."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(1, 23, 3, 4, 16, generator=gen)
    q, k, v = (qkv[:, :, i] for i in range(3))
    kd = torch.randn(1, 23, 2, 4, 16, generator=gen)
    vd = torch.randn(1, 23, 2, 4, 16, generator=gen)
    inputs = [t.clone().requires_grad_() if t.is_contiguous() else t.detach().requires_grad_() for t in (q, k, v, kd, vd)]
    assert not inputs[0].is_contiguous()
    _check(inputs, causal=True, scale=0.3)


def test_torch_compile_traces_custom_op():
    """The custom ops have fake implementations, so torch.compile traces them without a graph break."""
    inputs = moda_inputs(1, 12, 4, 2, 16, 3, "moda", seed=11)

    def f(q, k, v, kd, vd):
        return moda_attn(q, k, v, kd, vd, causal=True).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), f(*inputs), atol=ATOL, rtol=1e-4)


def test_depth_only_ignores_causal_flag():
    """Depth slots are never causally masked: depth-only output does not depend on `causal`."""
    inputs = moda_inputs(1, 11, 2, 1, 16, 3, "depth", seed=5)
    torch.testing.assert_close(moda_attn(*inputs, causal=True), moda_attn(*inputs, causal=False))


def _valid():
    return (torch.randn(1, 8, 4, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16),
            torch.randn(1, 8, 3, 2, 16), torch.randn(1, 8, 3, 2, 16))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: (a[0], a[1], None, a[3], a[4]), "both k and v"),
        (lambda a: (a[0], a[1], a[2], a[3], None), "both k_depth and v_depth"),
        (lambda a: (a[0], None, None, None, None), "got neither"),
        (lambda a: (a[0][..., :3, :], a[1], a[2], a[3], a[4]), "multiple of KV heads"),
        (lambda a: (a[0], a[1][:, :7], a[2], a[3], a[4]), "k must be"),
        (lambda a: (a[0], a[1], a[2][:, :, :1], a[3], a[4]), "v must have"),
        (lambda a: (a[0], a[1], a[2], a[3][:, :, :, :1], a[4][:, :, :, :1]), "KV heads but k has"),
        (lambda a: (a[0], a[1], a[2], a[3], a[4][:, :, :2]), "v_depth must have"),
        (lambda a: (a[0], a[1], a[2], a[3][:, :, :0], a[4][:, :, :0]), "L >= 1"),
        (lambda a: tuple(torch.randn(*t.shape[:-1], 24) for t in a), "head dim"),
        (lambda a: (torch.randn(1, 8, 66, 16), a[1], a[2], a[3], a[4]), "GQA group G=Hq/Hk=33"),
        (lambda a: tuple(t.double() for t in a), "dtype"),
        (lambda a: (a[0].half(), a[1], a[2], a[3], a[4]), "share q's dtype"),
        (lambda a: (a[0], a[1], a[2], a[3].to("meta"), a[4]), "device"),
        (lambda a: (a[0].transpose(1, 3).contiguous().transpose(1, 3), a[1], a[2], a[3], a[4]), r"q must have .*stride"),
        (lambda a: (a[0], a[1], a[2], a[3].transpose(3, 4).contiguous().transpose(3, 4), a[4]), "k_depth must have"),
        (lambda a: (a[0], a[1], a[2], torch.randn(1, 8, 3, 2, 32)[..., :16], a[4]), r"stride\(-2\)"),
    ],
    ids=["only-k", "only-kdepth", "neither", "heads-mismatch", "k-shape", "v-shape", "depth-heads", "vdepth-shape",
         "L0", "head-dim", "group-6", "float64", "mixed-dtype", "mixed-device", "q-last-dim-strided",
         "kdepth-last-dim-strided", "kdepth-heads-not-dense"],
)
def test_validation_errors(mutate, match):
    with pytest.raises(ValueError, match=match):
        moda_attn(*mutate(_valid()))


def test_bad_scale_and_causal():
    a = _valid()
    with pytest.raises(ValueError, match="scale"):
        moda_attn(*a, scale=-1.0)
    with pytest.raises(ValueError, match="causal"):
        moda_attn(*a, causal=1)


def test_cpu_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        moda_attn(*_valid())


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_split_schedule_matches_reference(monkeypatch, causal):
    """The long-T schedule (depth pass, then the sequence pass resuming its softmax) is exact too."""
    from moda_kernels import dispatch

    monkeypatch.setattr(dispatch, "SPLIT_MIN_T", 0)
    _check(moda_inputs(1, 27, 8, 2, 16, 3, "moda", seed=13), causal)


def test_smem_pruner_drops_configs_that_overflow_hopper_and_never_empties():
    """d=128 with depth: BLOCK_M=128 forward tiles need ~544 KiB (GPU run 3) and must be pruned, leaving a
    fitting config; each launch keeps only the configs tagged with its mode (sequence-only, depth-only,
    MoDA), fallbacks only when none fits. (Bytes: experiments/bench/NOTES.md.)"""
    import triton

    from moda_kernels.moda.shared import SMEM_LIMIT, make_prune, smem_estimate

    entries = [(128, 64, 64, 8, 3, "seq,moda"), (64, 64, 64, 4, 3, "seq,depth,moda"), (64, 64, 32, 4, 3, "fallback"),
               (64, 32, 16, 4, 1, "fallback")]
    cfgs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_DN": dn}, num_warps=w, num_stages=s)
            for bm, bn, dn, w, s, _ in entries]
    prune = make_prune("fwd", [frozenset(e[-1].split(",")) for e in entries])
    q16 = torch.empty(1, dtype=torch.bfloat16)
    kept = prune(cfgs, {"Q": q16}, G=8, HEAD_D=128, HAS_SEQ=True, HAS_DEPTH=True)
    assert kept == [cfgs[2], cfgs[3]]
    assert smem_estimate("fwd", cfgs[0], 8, 128, 2, True, True) > SMEM_LIMIT
    assert prune(cfgs, {"Q": q16}, G=8, HEAD_D=64, HAS_SEQ=True, HAS_DEPTH=False) == cfgs[:2]
    assert prune(cfgs, {"Q": q16}, G=8, HEAD_D=64, HAS_SEQ=False, HAS_DEPTH=True) == cfgs[1:2]
    # Nothing fits at all: the smallest config is kept rather than an empty list.
    assert prune(cfgs[:1], {"Q": torch.empty(1)}, G=8, HEAD_D=128, HAS_SEQ=True, HAS_DEPTH=True) == cfgs[:1]


@pytest.mark.parametrize("mode", ["seq", "moda"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_deterministic_backward_matches_reference_and_repeats_bitwise(mode, causal):
    """The backward uses no atomics: under torch.use_deterministic_algorithms it runs unchanged, matches the
    reference, and repeats bit for bit (a stride-0 dO too)."""
    torch.use_deterministic_algorithms(True)
    try:
        inputs = moda_inputs(2, 23, 4, 2, 16, 3, mode, seed=5)
        _check(inputs, causal)
        present = [t for t in inputs if t is not None]
        do = torch.randn(23, 4, 16).expand(2, 23, 4, 16)  # a stride-0 dO too
        g1 = torch.autograd.grad(moda_attn(*inputs, causal=causal), present, do)
        g2 = torch.autograd.grad(moda_attn(*inputs, causal=causal), present, do)
        for a, b in zip(g1, g2):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("G", [3, 6])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_sequence_only_folds_any_group(G, causal):
    """Sequence-only attention folds non-power-of-two groups (Table 6's 6 query / 2 KV heads: G=3) in one call."""
    _check(moda_inputs(2, 19, G * 2, 2, 16, 1, "seq", seed=G), causal)


@pytest.mark.parametrize("mode,G,causal", [("moda", 3, True), ("moda", 3, False), ("depth", 3, True),
                                           ("moda", 5, True), ("moda", 6, True), ("depth", 12, False)])
def test_depth_modes_fold_any_group(mode, G, causal):
    """Groups that are not powers of two with depth keys: the depth phase folds with padding rows (masked, never
    loaded or stored) in its own launch, the sequence phase folds densely; output and every gradient exact."""
    _check(moda_inputs(2, 21, G * 2 if G < 12 else G, 2 if G < 12 else 1, 16, 3, mode, seed=G), causal)


@pytest.mark.parametrize("mode,split", [("moda", False), ("moda", True), ("depth", False)],
                         ids=["moda", "moda-split", "depth"])
def test_backward_adds_depth_gradients_into_given_buffers(monkeypatch, mode, split):
    """moda_attn_backward with dk_depth_acc / dv_depth_acc (prefix views of one [2, B, T, S, Hk, d] buffer, the
    model's depth stream layout): the depth gradients are ADDED to what the buffer holds, slots past the
    prefix are untouched, the other gradients are those of the reference."""
    from moda_kernels import dispatch
    from moda_kernels.moda import moda_attn_backward, moda_attn_forward, naive_moda_attn_bwd

    monkeypatch.setattr(dispatch, "SPLIT_MIN_T", 0 if split else 1 << 30)
    B, T, Hq, Hk, d, L, S = 2, 21, 4, 2, 16, 3, 5
    gen = torch.Generator().manual_seed(17)
    q = torch.randn(B, T, Hq, d, generator=gen)
    k, v = (torch.randn(B, T, Hk, d, generator=gen) for _ in range(2)) if mode == "moda" else (None, None)
    data = torch.randn(2, B, T, S, Hk, d, generator=gen)
    grad = torch.randn(2, B, T, S, Hk, d, generator=gen)
    before = grad.clone()
    kd, vd = data[0, :, :, :L], data[1, :, :, :L]
    o, lse = moda_attn_forward(q, k, v, kd, vd)
    do = torch.randn(B, T, Hq, d, generator=gen)
    got = moda_attn_backward(do, q, k, v, kd, vd, o, lse, dk_depth_acc=grad[0, :, :, :L], dv_depth_acc=grad[1, :, :, :L])
    ref = naive_moda_attn_bwd(do, q, k, v, kd, vd)
    assert got[3] is None and got[4] is None
    for g, r in zip(got[:3], ref[:3]):
        if r is not None:
            torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(grad[0, :, :, :L], before[0, :, :, :L] + ref[3], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(grad[1, :, :, :L], before[1, :, :, :L] + ref[4], atol=ATOL, rtol=1e-4)
    assert torch.equal(grad[:, :, :, L:], before[:, :, :, L:])


def test_backward_accumulation_buffers_are_validated():
    from moda_kernels.moda import moda_attn_backward

    q, k, v, kd, vd = _valid()
    o, lse = torch.zeros_like(q), torch.zeros(2, 16)
    with pytest.raises(ValueError, match="both dk_depth_acc and dv_depth_acc"):
        moda_attn_backward(q, q, k, v, kd, vd, o, lse, dk_depth_acc=torch.zeros_like(kd))
    with pytest.raises(ValueError, match="dv_depth_acc must match k_depth's shape"):
        moda_attn_backward(q, q, k, v, kd, vd, o, lse, dk_depth_acc=torch.zeros_like(kd), dv_depth_acc=kd[:, :, :1])
    with pytest.raises(ValueError, match="one stride layout"):
        moda_attn_backward(q, q, k, v, kd, vd, o, lse, dk_depth_acc=torch.zeros_like(kd),
                           dv_depth_acc=torch.zeros(1, 8, 4, 2, 16)[:, :, :3])


def test_autotuning_cannot_add_twice_into_the_depth_gradient_buffer():
    """On a GPU the dQ kernel is benchmarked over several configs on the real arguments; with ACC each trial would
    add its depth gradients into the buffer once more (seen on an H200: gradients 36x too large). The autotuner
    must restore DKD/DVD after every trial."""
    from moda_kernels.moda.triton_bwd import _moda_bwd_dq_kernel

    assert {"DKD", "DVD"} <= set(_moda_bwd_dq_kernel.restore_value)


@pytest.mark.parametrize("B,T,n,S,D", [(2, 7, 3, 5, 48), (1, 19, 1, 1, 20), (3, 5, 6, 9, 384)])
def test_dwa_kernels_match_reference(B, T, n, S, D):
    """DenseFormer's mix over a prefix view of a [B, T, S, D] history (Triton interpreter, fp32): forward, dalpha,
    and the history gradient ADDED into a buffer (slots past the prefix untouched)."""
    from moda_kernels.dwa import dwa_mix_backward, dwa_mix_forward, naive_dwa_mix, naive_dwa_mix_bwd

    gen = torch.Generator().manual_seed(B * 100 + T)
    hist = torch.randn(B, T, S, D, generator=gen)
    alpha = torch.randn(n, generator=gen)
    h = hist[:, :, :n]
    torch.testing.assert_close(dwa_mix_forward(h, alpha), naive_dwa_mix(h, alpha), atol=ATOL, rtol=1e-5)
    # The reference against autograd of the plain formula.
    hr, ar = h.clone().requires_grad_(), alpha.clone().requires_grad_()
    g = torch.randn(B, T, D, generator=gen)
    torch.autograd.backward(torch.einsum("btjd,j->btd", hr, ar), g)
    acc_ref = torch.randn(B, T, S, D, generator=gen)
    acc = acc_ref.clone()
    da_ref = naive_dwa_mix_bwd(g, h, alpha, acc_ref[:, :, :n])
    torch.testing.assert_close(da_ref, ar.grad, atol=1e-4, rtol=1e-5)
    before = acc.clone()
    da = dwa_mix_backward(g, h, alpha, acc[:, :, :n])
    torch.testing.assert_close(da, ar.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(acc[:, :, :n], before[:, :, :n] + hr.grad, atol=ATOL, rtol=1e-5)
    assert torch.equal(acc[:, :, n:], before[:, :, n:])
