"""One kernel dispatch: which code computes an attention call, decided in one place from shape, dtype and device.

Three decisions, each a pure function of plain values (tested on CPU at GPU shapes, tests/cpu/test_dispatch.py):

* ``choose_backend``: the model's attention backend (naive | sdpa | triton) from the configured name, once when
  the model is built.
* ``kernel_plan``: per call of the Triton backend, a ``KernelPlan``: which implementation runs the sequence part
  (``seq_impl``: the fused Triton kernel, or an aten attention op in the hybrid schedule, moda/hybrid.py) and
  whether the fused kernel runs its depth phase as its own launch (``split``).
* ``interpreter`` / ``pin_configs``: how the Triton kernels are compiled and tuned (CPU interpreter tiles; one
  pinned config instead of autotuning).

Every environment switch and every threshold behind these decisions is defined here and read nowhere else
(docs/KERNELS.md lists them for users). The machine facts that the plan needs beyond shape and dtype (compute
capability, cuDNN, forced implementation, interpreter) come in as a small frozen ``Machine``; ``machine_of``
reads them for a device, so that ``kernel_plan(..., machine=Machine(...))`` is testable anywhere.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# --- environment switches (the only place they are read) --------------------------------------------------

BACKEND_ENV = "MODA_LAB_ATTN_BACKEND"  # naive | sdpa | triton | auto: overrides model.attn_backend
SEQ_IMPL_ENV = "MODA_SEQ_IMPL"  # auto | fused | cudnn | flash | cpu: forces every call's sequence implementation
PIN_CONFIGS_ENV = "MODA_PIN_CONFIGS"  # 1: the autotuner keeps only the first fitting config (fast GPU tests)
INTERPRET_ENV = "TRITON_INTERPRET"  # Triton's own switch: kernels run on the CPU through its interpreter
WIDE_COMBINE_ENV = "MODA_WIDE_COMBINE"  # 1: HC's and mHC's combine through its Triton op (off: measured slower)
ENV_SWITCHES = (BACKEND_ENV, SEQ_IMPL_ENV, PIN_CONFIGS_ENV, INTERPRET_ENV, WIDE_COMBINE_ENV)

# --- thresholds ---------------------------------------------------------------------------------------------

# Sequence length from which a call WITH depth keys takes the hybrid schedule. Measured on the H200
# (experiments/bench/TRAINING.md): at T = 1024 the fused kernel's sequence part is as fast as cuDNN's and the
# hybrid's extra host work (aten call, LSE layout changes) made the host-bound compiled training step of MoDA
# depth-K/V slower (110.4 vs 96.0 ms); from T = 4096 on the hybrid is faster (kernel bench: 1.93 vs 2.76 ms
# fwd+bwd at 4K, 20.2 vs 25.2 ms at 16K). Sequence-only calls take the aten op at every T.
HYBRID_MIN_T = 4096
# Sequence length from which the fused kernel runs a MoDA call's depth phase as its own launch (the "split"
# schedule) instead of inside the sequence pass; measured on H100, see experiments/bench/NOTES.md.
SPLIT_MIN_T = 8192
# What the aten attention ops (cuDNN, flash) take: head dims that are multiples of 8 up to 128, on sm >= 80.
ATEN_MAX_HEAD_DIM = 128
ATEN_HEAD_DIM_MULTIPLE = 8
ATEN_MIN_SM = 8

# --- names --------------------------------------------------------------------------------------------------

BACKENDS = ("auto", "naive", "sdpa", "triton")  # model.attn_backend's choices
SEQ_IMPLS = ("fused", "cudnn", "flash", "cpu")  # fused = the Triton kernel does the sequence part too
ATEN_SEQ_IMPLS = ("cudnn", "flash", "cpu")


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def interpreter(env: Mapping[str, str] | None = None) -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET`` set, not 0)."""
    return _env(env).get(INTERPRET_ENV, "0") not in ("", "0")


def pin_configs(env: Mapping[str, str] | None = None) -> bool:
    """``MODA_PIN_CONFIGS=1``: each launch keeps the first config that fits, no autotuning."""
    return _env(env).get(PIN_CONFIGS_ENV) == "1"


def wide_combine_kernel(env: Mapping[str, str] | None = None) -> bool:
    """``MODA_WIDE_COMBINE=1``: Hyper-Connections' and mHC's combine runs the Triton op (moda_kernels/widecombine)
    where the backend runs fused kernels. Off by default: on the H100 it measured slower than the compiled ops it
    replaces (experiments/bench/results/wide_combine_h100.md, 2026-12-07: 166 vs 129 ms a 24-layer step under
    post-norm, 106 vs 79 under pre-norm, against a floor of 35 ms). The kernels were rewritten since (one tile a
    copy, no copy-axis layout changes) and are not yet timed."""
    return _env(env).get(WIDE_COMBINE_ENV) == "1"


def forced_seq_impl(env: Mapping[str, str] | None = None) -> str:
    """``MODA_SEQ_IMPL`` (default auto), checked against the implementations."""
    forced = _env(env).get(SEQ_IMPL_ENV, "auto")
    if forced not in ("auto",) + SEQ_IMPLS:
        raise ValueError(f"{SEQ_IMPL_ENV}={forced!r} is not one of {('auto',) + SEQ_IMPLS}")
    return forced


# --- the backend ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendChoice:
    """The model's attention backend: ``name`` runs; ``requested`` is what the config (or ``via_env``) asked."""

    name: str
    requested: str
    via_env: bool = False


def choose_backend(
    configured: str,
    *,
    cuda: bool | None = None,
    triton_installed: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> BackendChoice:
    """The backend for ``configured`` (or ``MODA_LAB_ATTN_BACKEND``); ``auto`` is triton on CUDA with Triton
    installed, else naive. ``cuda`` / ``triton_installed`` default to this machine's."""
    override = _env(env).get(BACKEND_ENV)
    requested = override if override is not None else configured
    if requested not in BACKENDS:
        key = BACKEND_ENV if override is not None else "model.attn_backend"
        raise ValueError(f"{key}: attention backend {requested!r} is not allowed; choose one of {list(BACKENDS)}")
    if triton_installed is None:
        triton_installed = importlib.util.find_spec("triton") is not None
    name = requested
    if name == "auto":
        cuda = torch.cuda.is_available() if cuda is None else cuda
        name = "triton" if cuda and triton_installed else "naive"
    elif name == "triton" and not triton_installed:
        raise ValueError("attention backend 'triton' needs Triton installed (pip install triton); or choose naive")
    return BackendChoice(name, requested, override is not None)


# --- the per-call kernel plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What a call's plan needs to know beyond shape and dtype. ``capability`` is the CUDA compute capability
    (None off CUDA); ``forced`` is MODA_SEQ_IMPL."""

    interpreter: bool = False
    capability: tuple[int, int] | None = None
    cudnn: bool = False
    forced: str = "auto"


_CAPABILITY: dict[int, tuple[int, int]] = {}  # CUDA device index -> capability (asked once per device)


def machine_of(device: torch.device | str, env: Mapping[str, str] | None = None) -> Machine:
    """This process's Machine for ``device``: the environment switches, and on CUDA the device's capability."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    capability = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _CAPABILITY:
            _CAPABILITY[index] = tuple(torch.cuda.get_device_capability(index))
        capability = _CAPABILITY[index]
    cudnn = device.type == "cuda" and torch.backends.cudnn.is_available()
    return Machine(interpreter(env), capability, cudnn, forced_seq_impl(env))


@dataclass(frozen=True)
class KernelPlan:
    """How one call runs: ``seq_impl`` computes the sequence part (``fused``: the Triton kernel does everything;
    else the aten op of the hybrid schedule, the depth part resumed in Triton); ``split``: the fused kernel
    runs the depth phase as its own launch before the sequence launch."""

    seq_impl: str
    split: bool = False

    def __str__(self) -> str:
        return self.seq_impl + ("+split" if self.split else "")


def fusable_group(G: int) -> bool:
    """One launch can run the sequence and the depth phase only for a power-of-two group: a depth phase folds
    whole tokens into row tiles, padding other groups to the next power of two (moda/shared.py row_group)."""
    return G & (G - 1) == 0


def kernel_plan(
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    kv_heads: int,
    has_seq: bool,
    has_depth: bool,
    machine: Machine | None = None,
) -> KernelPlan:
    """The plan of a call with q of ``shape`` [B, T, Hq, d] and ``kv_heads`` KV heads.

    Sequence part (measured, see HYBRID_MIN_T): on CUDA (sm >= 80), fp16/bf16 with a head dim that is a multiple
    of 8 up to 128, it goes to cuDNN (flash where cuDNN is unavailable), except calls with depth keys below
    HYBRID_MIN_T; fp32 (the exact test path) and the CPU interpreter run fused. ``MODA_SEQ_IMPL`` forces one
    implementation for every call that has sequence keys. Depth-only calls have no sequence part: fused.
    Schedule: a fused call with both key sets splits from SPLIT_MIN_T on, and always for a group that is not a
    power of two (only the depth launch then has padding rows).
    """
    device = device if isinstance(device, torch.device) else torch.device(device)
    machine = machine_of(device) if machine is None else machine
    _, T, Hq, d = shape
    G = Hq // kv_heads
    impl = "fused"
    if has_seq:
        if machine.forced != "auto":
            impl = machine.forced
        elif (
            device.type == "cuda"
            and not machine.interpreter
            and dtype != torch.float32
            and d % ATEN_HEAD_DIM_MULTIPLE == 0
            and d <= ATEN_MAX_HEAD_DIM
            and not (has_depth and T < HYBRID_MIN_T)
            and machine.capability is not None
            and machine.capability[0] >= ATEN_MIN_SM
        ):
            impl = "cudnn" if machine.cudnn else "flash"
    split = impl == "fused" and has_seq and has_depth and (T >= SPLIT_MIN_T or not fusable_group(G))
    return KernelPlan(impl, split)


def plan_of(q: torch.Tensor, k: torch.Tensor | None, k_depth: torch.Tensor | None) -> KernelPlan:
    """``kernel_plan`` of a call's tensors (q [B, T, Hq, d], k [B, T, Hk, d], k_depth [B, T, L, Hk, d]) on this
    machine."""
    kv_heads = k.shape[2] if k is not None else k_depth.shape[3]
    return kernel_plan(q.shape, q.dtype, q.device, kv_heads=kv_heads, has_seq=k is not None,
                       has_depth=k_depth is not None)
