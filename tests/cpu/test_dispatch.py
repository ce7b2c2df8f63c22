"""The one kernel dispatch (moda_kernels/dispatch.py): its decisions as pure functions at GPU shapes, dtypes and
devices (checked on CPU against the rule the kernels had before the dispatch existed), its switches read nowhere
else, and, under the Triton interpreter (fp32, small shapes), every path it dispatches to agreeing with the
fp32 reference in forward and backward."""

import dataclasses
import itertools
import os
import re
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from moda_inputs import moda_inputs  # noqa: E402
from moda_kernels import dispatch  # noqa: E402
from moda_kernels.dispatch import KernelPlan, Machine, choose_backend, kernel_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
H100 = Machine(capability=(9, 0), cudnn=True)


def legacy_plan(T, d, G, dtype, device_type, has_seq, has_depth, m: Machine) -> KernelPlan:
    """The rule as it stood in hybrid.seq_impl, function.SPLIT_MIN_T and moda_fwd's group check (the spec the
    dispatch must keep on GPU)."""
    if not has_seq:
        impl = "fused"
    elif m.forced != "auto":
        impl = m.forced
    elif device_type != "cuda" or m.interpreter or dtype == torch.float32:
        impl = "fused"
    elif d % 8 or d > 128 or (has_depth and T < 4096):
        impl = "fused"
    elif m.capability[0] < 8:
        impl = "fused"
    else:
        impl = "cudnn" if m.cudnn else "flash"
    split = impl == "fused" and has_seq and has_depth and (T >= 8192 or G & (G - 1) != 0)
    return KernelPlan(impl, split)


MACHINES = [
    H100,
    Machine(capability=(9, 0), cudnn=False),
    Machine(capability=(7, 5), cudnn=True),
    Machine(capability=(8, 0), cudnn=True, interpreter=True),
    Machine(capability=(9, 0), cudnn=True, forced="fused"),
    Machine(capability=(9, 0), cudnn=True, forced="flash"),
    Machine(forced="cpu", interpreter=True),
    Machine(interpreter=True),
]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: f"sm{m.capability}-cudnn{m.cudnn}-i{m.interpreter}-{m.forced}")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0), "cpu", torch.device("cpu")], ids=str)
def test_plan_equals_the_previous_rule_on_a_grid(machine, device):
    dev_type = torch.device(device).type
    if dev_type == "cpu" and machine.capability is not None:
        machine = dataclasses.replace(machine, capability=None, cudnn=False)
    grid = itertools.product(
        (1, 13, 1024, 4095, 4096, 8191, 8192, 65536),  # T around both thresholds
        (16, 24, 32, 64, 72, 128, 136, 256),  # d: multiples of 8 and not, up to and past 128
        (1, 2, 3, 4, 8),  # G, with a group that is not a power of two
        (torch.float16, torch.bfloat16, torch.float32),
        ((True, False), (True, True), (False, True)),  # sequence only, MoDA, depth only
    )
    for T, d, G, dtype, (has_seq, has_depth) in grid:
        got = kernel_plan((2, T, 2 * G, d), dtype, device, kv_heads=2, has_seq=has_seq, has_depth=has_depth,
                          machine=machine)
        want = legacy_plan(T, d, G, dtype, dev_type, has_seq, has_depth, machine)
        assert got == want, (T, d, G, dtype, has_seq, has_depth)


PLAN_CASES = [  # (T, Hq, Hk, d, dtype, has_seq, has_depth, machine, device, plan)
    (2048, 16, 16, 64, torch.bfloat16, True, False, H100, "cuda", "cudnn"),  # sequence-only: aten at any T
    (1024, 64, 8, 64, torch.bfloat16, True, True, H100, "cuda", "fused"),  # Table 7: MoDA below HYBRID_MIN_T
    (4096, 16, 16, 64, torch.bfloat16, True, True, H100, "cuda:0", "cudnn"),  # MoDA from HYBRID_MIN_T on
    (4096, 16, 16, 64, torch.float16, True, True, Machine(capability=(8, 0)), "cuda", "flash"),  # no cuDNN
    (16384, 16, 16, 64, torch.float32, True, True, H100, "cuda", "fused+split"),  # fp32: exact path
    (4096, 16, 16, 64, torch.float32, True, True, H100, "cuda", "fused"),
    (1024, 6, 2, 64, torch.bfloat16, True, True, H100, "cuda", "fused+split"),  # Table 6's G=3 always splits
    (4096, 16, 16, 256, torch.bfloat16, True, True, H100, "cuda", "fused"),  # head dim past the aten ops'
    (4096, 16, 16, 64, torch.bfloat16, True, True, Machine(capability=(7, 0), cudnn=True), "cuda", "fused"),
    (8192, 16, 16, 64, torch.bfloat16, False, True, H100, "cuda", "fused"),  # depth only: no sequence part
    (64, 4, 2, 16, torch.float32, True, True, Machine(interpreter=True), "cpu", "fused"),
    (64, 4, 2, 16, torch.float32, True, False, Machine(interpreter=True, forced="cpu"), "cpu", "cpu"),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=[
    f"T{c[0]}-Hq{c[1]}-Hk{c[2]}-d{c[3]}-{str(c[4])[6:]}-{'seq' if c[5] else ''}{'depth' if c[6] else ''}-{c[8]}"
    for c in PLAN_CASES])
def test_plan_at_named_shapes(case):
    T, Hq, Hk, d, dtype, has_seq, has_depth, machine, device, want = case
    plan = kernel_plan((1, T, Hq, d), dtype, device, kv_heads=Hk, has_seq=has_seq, has_depth=has_depth,
                       machine=machine)
    assert str(plan) == want


def test_plan_is_a_small_frozen_value():
    plan = KernelPlan("cudnn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seq_impl = "fused"
    assert plan == KernelPlan("cudnn", False) and hash(plan) == hash(KernelPlan("cudnn"))


def test_machine_reads_the_switches(monkeypatch):
    monkeypatch.delenv(dispatch.SEQ_IMPL_ENV, raising=False)
    assert dispatch.machine_of("cpu") == Machine(interpreter=True)  # conftest/this file: TRITON_INTERPRET=1
    monkeypatch.setenv(dispatch.SEQ_IMPL_ENV, "flash")
    assert dispatch.machine_of(torch.device("cpu")).forced == "flash"
    monkeypatch.setenv(dispatch.SEQ_IMPL_ENV, "cudnnn")
    with pytest.raises(ValueError, match="MODA_SEQ_IMPL='cudnnn' is not one of"):
        dispatch.machine_of("cpu")
    assert dispatch.interpreter({"TRITON_INTERPRET": "1"}) and not dispatch.interpreter({"TRITON_INTERPRET": "0"})
    assert not dispatch.interpreter({}) and not dispatch.interpreter({"TRITON_INTERPRET": ""})
    assert dispatch.pin_configs({"MODA_PIN_CONFIGS": "1"}) and not dispatch.pin_configs({})


def test_a_forced_implementation_applies_to_calls_with_sequence_keys_only():
    forced = Machine(forced="cudnn", interpreter=True)
    shape = (1, 4, 2, 16)
    assert kernel_plan(shape, torch.float32, "cpu", kv_heads=2, has_seq=True, has_depth=True,
                       machine=forced) == KernelPlan("cudnn")
    assert kernel_plan(shape, torch.float32, "cpu", kv_heads=2, has_seq=False, has_depth=True,
                       machine=forced) == KernelPlan("fused")


@pytest.mark.parametrize("configured,cuda,triton,want", [
    ("auto", True, True, "triton"),
    ("auto", True, False, "naive"),
    ("auto", False, True, "naive"),
    ("sdpa", True, True, "sdpa"),
    ("naive", True, True, "naive"),
    ("triton", False, True, "triton"),  # explicit: the kernels' own checks say where they cannot run
])
def test_choose_backend(configured, cuda, triton, want):
    choice = choose_backend(configured, cuda=cuda, triton_installed=triton, env={})
    assert choice == dispatch.BackendChoice(want, configured, False)


def test_backend_env_override_and_errors():
    assert choose_backend("auto", cuda=True, triton_installed=True, env={"MODA_LAB_ATTN_BACKEND": "sdpa"}) == \
        dispatch.BackendChoice("sdpa", "sdpa", True)
    with pytest.raises(ValueError, match="MODA_LAB_ATTN_BACKEND: attention backend 'fast' is not allowed"):
        choose_backend("auto", env={"MODA_LAB_ATTN_BACKEND": "fast"})
    with pytest.raises(ValueError, match="model.attn_backend: attention backend 'fast' is not allowed"):
        choose_backend("fast", env={})
    with pytest.raises(ValueError, match="needs Triton installed"):
        choose_backend("triton", triton_installed=False, env={})


def test_every_switch_and_threshold_is_read_only_in_dispatch():
    """No other kernel or model module reads the environment, spells a switch's name as a string (messages may
    mention one) or defines a threshold of its own."""
    patterns = [r"os\.environ", r"getenv", r"\b(HYBRID_MIN_T|SPLIT_MIN_T|[A-Z_]*MIN_T)\s*=(?!=)"]
    patterns += [rf"[\"']{name}[\"']" for name in dispatch.ENV_SWITCHES]
    offenders = []
    for path in [*(ROOT / "moda_kernels").rglob("*.py"), *(ROOT / "moda_lab" / "model").rglob("*.py")]:
        if path.name != "dispatch.py":
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {p}" for p in patterns if re.search(p, text)]
    assert not offenders


def test_dispatch_record_names_backend_and_plans():
    from moda_lab.model.backends import dispatch_record, resolve_backend

    shape = dict(seq_len=64, n_heads=4, n_kv_heads=2, head_dim=16, device="cpu")
    assert dispatch_record(resolve_backend("triton"), precision="32-true", **shape) == {
        "backend": "triton", "requested": "triton", "via_env": False, "seq_only": "fused", "with_depth": "fused"}
    assert dispatch_record(resolve_backend("naive"), precision="32-true", **shape) == {
        "backend": "naive", "requested": "naive", "via_env": False}


# --- the dispatched paths under the interpreter --------------------------------------------------------------

ATOL = 2e-5
PATHS = [  # (id, mode, env MODA_SEQ_IMPL, SPLIT_MIN_T, (B, T, Hq, Hk, d, L), the plan it must take)
    ("fused-moda", "moda", None, None, (1, 19, 4, 2, 16, 3), "fused"),
    ("split-moda", "moda", None, 0, (2, 21, 4, 2, 16, 2), "fused+split"),
    ("split-G3", "moda", None, None, (1, 13, 6, 2, 16, 2), "fused+split"),
    ("fused-seq", "seq", None, 0, (1, 17, 8, 2, 32, 0), "fused"),
    ("fused-depth", "depth", None, 0, (1, 11, 4, 1, 16, 3), "fused"),
    ("hybrid-moda", "moda", "cpu", None, (1, 15, 6, 2, 16, 2), "cpu"),
    ("hybrid-seq", "seq", "cpu", None, (2, 9, 4, 4, 16, 0), "cpu"),
]


def _spy(monkeypatch):
    """Record which launch function each dispatched call reaches, with its schedule."""
    from moda_kernels.moda import function

    seen = []
    real_fwd, real_hyb = function.moda_fwd, function.hybrid_forward

    def fwd(*a, split=False, **kw):
        seen.append("fused+split" if split else "fused")
        return real_fwd(*a, split=split, **kw)

    def hyb(impl, *a, **kw):
        seen.append(impl)
        return real_hyb(impl, *a, **kw)

    monkeypatch.setattr(function, "moda_fwd", fwd)
    monkeypatch.setattr(function, "hybrid_forward", hyb)
    return seen


def _setup(monkeypatch, env, split_min_t):
    if env is None:
        monkeypatch.delenv(dispatch.SEQ_IMPL_ENV, raising=False)
    else:
        monkeypatch.setenv(dispatch.SEQ_IMPL_ENV, env)
    if split_min_t is not None:
        monkeypatch.setattr(dispatch, "SPLIT_MIN_T", split_min_t)


@pytest.mark.parametrize("path", PATHS, ids=[p[0] for p in PATHS])
def test_dispatched_kernel_paths_match_reference(monkeypatch, path):
    """moda_attn (the kernel package's API) on each path: the plan says which, the spy sees it run, output and
    every gradient equal the fp32 reference."""
    from moda_kernels.moda import moda_attn, naive_moda_attn

    _, mode, env, split_min_t, dims, want = path
    _setup(monkeypatch, env, split_min_t)
    seen = _spy(monkeypatch)
    inputs = moda_inputs(*dims, mode, sum(dims))
    q, k, _, kd, _ = inputs
    assert str(dispatch.plan_of(q, k, kd)) == want
    present = [t for t in inputs if t is not None]
    out = moda_attn(*inputs)
    assert seen == [want]
    ref = naive_moda_attn(*inputs)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    for g, gr in zip(torch.autograd.grad(out, present, do), torch.autograd.grad(ref, present, do)):
        torch.testing.assert_close(g, gr, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("path", [p for p in PATHS if p[1] == "moda"], ids=lambda p: p[0])
def test_dispatched_model_paths_match_reference(monkeypatch, path):
    """The model's one autograd path (depth.py's op): plain attention and attention over a depth stream whose
    gradients land in its buffer, on the path the plan picks."""
    from moda_kernels.moda import naive_moda_attn
    from moda_lab.model.depth import DepthStream, kernel_attn, new_stream_buffers

    _, _, env, split_min_t, (B, T, Hq, Hk, d, L), want = path
    _setup(monkeypatch, env, split_min_t)
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(B, T, Hq, d, generator=gen, requires_grad=True)
    k, v = (torch.randn(B, T, Hk, d, generator=gen, requires_grad=True) for _ in range(2))
    slots = [(torch.randn(B, T, Hk, d, generator=gen, requires_grad=True),
              torch.randn(B, T, Hk, d, generator=gen, requires_grad=True)) for _ in range(L)]
    do = torch.randn(B, T, Hq, d, generator=gen)
    leaves = [q, k, v, *itertools.chain(*slots)]

    stream = DepthStream(*new_stream_buffers(2, L + 1, B, T, (Hk, d), "cpu", torch.float32))
    for ks, vs in slots:
        stream.put(ks, vs)
    seen = _spy(monkeypatch)
    out = stream.attend(q, k, v, causal=True, kernel=True)
    assert seen == [want]
    got = torch.autograd.grad(out, leaves, do)
    kd = torch.stack([s[0] for s in slots], 2)
    vd = torch.stack([s[1] for s in slots], 2)
    ref = naive_moda_attn(q, k, v, kd, vd)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)
    for g, gr in zip(got, torch.autograd.grad(ref, leaves, do)):
        torch.testing.assert_close(g, gr, atol=ATOL, rtol=1e-4)

    plain = kernel_attn(q, k, v, causal=True)
    ref = naive_moda_attn(q, k, v)
    torch.testing.assert_close(plain, ref, atol=ATOL, rtol=1e-4)
    for g, gr in zip(torch.autograd.grad(plain, [q, k, v], do), torch.autograd.grad(ref, [q, k, v], do)):
        torch.testing.assert_close(g, gr, atol=ATOL, rtol=1e-4)


def test_model_kernel_path_compiles_without_a_graph_break():
    """Plain attention through depth.py's op (no stream: data, grad and token None) has a fake implementation
    too, so torch.compile traces it whole, forward and backward."""
    from moda_lab.model.depth import kernel_attn

    q, k, v, _, _ = moda_inputs(1, 12, 4, 2, 16, 0, "seq", seed=5)

    def f(q, k, v):
        return kernel_attn(q, k, v, causal=True).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v), [q, k, v])
    want = torch.autograd.grad(f(q, k, v), [q, k, v])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=1e-4)
