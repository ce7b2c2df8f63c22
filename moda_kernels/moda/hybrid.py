"""Hybrid schedule of MoDA attention: the sequence part by torch's fastest attention, the depth part by Triton.

MoDA's one softmax over [sequence | depth] keys splits exactly into two partial attentions joined by their
log-sum-exps. The forward runs causal sequence attention with an aten SDPA op that returns its LSE (cuDNN or
flash on CUDA; the CPU flash op under the interpreter), then the Triton depth launch resumes that softmax from
(O_seq, LSE_seq) (the kernel's HAS_INIT state) and writes the merged O and LSE. The backward calls the aten
sequence backward with the MERGED O and LSE, as ring attention does with flash-attention's backward: its
recomputed probabilities are then the global softmax weights, so dq_seq, dk and dv are exact. The Triton
depth dQ launch starts from dq_seq (HAS_INIT) and adds the depth part, writing dK_depth and dV_depth.

LSE layouts: aten ops use natural-log [B, Hq, T] (cuDNN: [B, Hq, T, 1]); the kernels use log2 units in the
GQA-folded order [B * Hk, T * G] (row t * G + g of KV head hk is query head hk * G + g at token t).

Which implementation runs the sequence part is ``seq_impl``'s choice (``MODA_SEQ_IMPL`` overrides it).
"""

from __future__ import annotations

import os

import torch

from ._validate import running_in_interpreter
from .shared import LOG2E

aten = torch.ops.aten
ENV = "MODA_SEQ_IMPL"
IMPLS = ("fused", "cudnn", "flash", "cpu")

# The aux outputs (cum_seq_q/k, philox seed/offset) of each op's forward, per device: the backwards want them
# back, and without dropout their values are never read. Kept from the last forward of that op and device.
_AUX: dict[tuple[str, torch.device], tuple] = {}
# Implementations whose op refused fewer KV than query heads on this machine: they get expanded K/V.
_EXPAND_GQA: set[str] = set()


# Sequence length from which a call WITH depth keys takes the hybrid schedule. Measured on the H200
# (experiments/bench/TRAINING.md): at T = 1024 the fused kernel's sequence part is as fast as cuDNN's and the
# hybrid's extra host work (aten call, LSE layout changes) made the host-bound compiled training step of
# MoDA depth-K/V slower (110.4 vs 96.0 ms); from T = 4096 on the hybrid is faster (kernel bench: 1.93 vs 2.76 ms
# fwd+bwd at 4K, 20.2 vs 25.2 ms at 16K). Sequence-only calls take the aten op at every T.
HYBRID_MIN_T = 4096
_CAPABLE: dict[int, bool] = {}  # CUDA device index -> sm >= 80 (cached: asked on every call)


def seq_impl(q: torch.Tensor, has_seq: bool, has_depth: bool = False) -> str:
    """The implementation of a call's sequence part: 'fused' (the Triton kernel does it all) or an aten op.

    Rule (measured, see HYBRID_MIN_T): on CUDA (sm >= 80), fp16/bf16 with a head dim of at most 128, the sequence
    part goes to cuDNN (flash where cuDNN is unavailable), except calls with depth keys below HYBRID_MIN_T;
    fp32 (the exact test path) and the CPU interpreter run fused. ``MODA_SEQ_IMPL`` = fused | cudnn | flash | cpu
    forces one for every call that has sequence keys.
    """
    forced = os.environ.get(ENV, "auto")
    if forced not in IMPLS + ("auto",):
        raise ValueError(f"{ENV}={forced!r} is not one of {('auto',) + IMPLS}")
    if not has_seq:
        return "fused"
    if forced != "auto":
        return forced
    if q.device.type != "cuda" or running_in_interpreter() or q.dtype == torch.float32:
        return "fused"
    if q.shape[-1] % 8 or q.shape[-1] > 128 or (has_depth and q.shape[1] < HYBRID_MIN_T):
        return "fused"
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index)[0] >= 8
    if not _CAPABLE[index]:
        return "fused"
    return "cudnn" if torch.backends.cudnn.is_available() else "flash"


def _bhtd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _btgd(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] from an aten op -> [B, T, H, d] contiguous (the kernels' layout, same strides as theirs)."""
    return x.transpose(1, 2).contiguous()


def fold_lse(lse: torch.Tensor, Hk: int) -> torch.Tensor:
    """Natural-log [B, Hq, T] (or [B, Hq, T, 1]) -> the kernels' log2 [B * Hk, T * G]."""
    B, Hq, T = lse.shape[:3]
    G = Hq // Hk
    out = lse.new_empty((B * Hk, T * G))
    torch.mul(lse.reshape(B, Hk, G, T).transpose(2, 3), LOG2E, out=out.view(B, Hk, T, G))  # one kernel
    return out


def unfold_lse(lse: torch.Tensor, B: int, Hq: int, T: int) -> torch.Tensor:
    """The kernels' log2 [B * Hk, T * G] -> natural-log [B, Hq, T], contiguous."""
    Hk = lse.shape[0] // B
    G = Hq // Hk
    out = lse.new_empty((B, Hq, T))
    torch.mul(lse.view(B, Hk, T, G).transpose(2, 3), 1.0 / LOG2E, out=out.view(B, Hk, G, T))  # one kernel
    return out


def _kv(impl: str, k: torch.Tensor, v: torch.Tensor, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    kt, vt = _bhtd(k), _bhtd(v)
    if G > 1 and impl in _EXPAND_GQA:
        kt, vt = kt.repeat_interleave(G, dim=1), vt.repeat_interleave(G, dim=1)
    return kt, vt


def _seq_forward_op(impl, qt, kt, vt, causal, scale):
    if impl == "cudnn":
        out, lse, cq, ck, _, _, seed, offset, _ = aten._scaled_dot_product_cudnn_attention(
            qt, kt, vt, None, True, 0.0, causal, False, scale=scale)
        return out, lse, (cq, ck, seed, offset)
    if impl == "flash":
        out, lse, cq, ck, _, _, seed, offset, _ = aten._scaled_dot_product_flash_attention(
            qt, kt, vt, 0.0, causal, False, scale=scale)
        return out, lse, (cq, ck, seed, offset)
    if impl == "cpu":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, 0.0, causal, scale=scale)
        return out, lse, ()
    raise ValueError(f"no aten sequence attention named {impl!r}")


def seq_forward(impl: str, q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-only attention by an aten op: O [B, T, Hq, d] contiguous, LSE natural-log [B, Hq, T]."""
    G = q.shape[2] // k.shape[2]
    kt, vt = _kv(impl, k, v, G)
    try:
        out, lse, aux = _seq_forward_op(impl, _bhtd(q), kt, vt, causal, scale)
    except RuntimeError as err:
        if G == 1 or impl in _EXPAND_GQA or isinstance(err, torch.OutOfMemoryError):
            raise
        _EXPAND_GQA.add(impl)  # this op wants as many KV as query heads here: expand from now on
        return seq_forward(impl, q, k, v, causal, scale)
    _AUX[impl, q.device] = aux
    B, Hq, T = q.shape[0], q.shape[2], q.shape[1]
    return _btgd(out), lse.reshape(B, Hq, T)


def seq_backward(impl: str, do, q, k, v, o, lse_nat, causal: bool, scale: float):
    """(dq [B, T, Hq, d] contiguous, dk, dv [B, T, Hk, d]) of the sequence part, given the MERGED O and its
    natural-log LSE [B, Hq, T]: the op's probabilities are then exp(s - lse), the global softmax weights."""
    B, T, Hq, _ = q.shape
    Hk = k.shape[2]
    G = Hq // Hk
    if (impl, q.device) not in _AUX:  # a backward without a forward of this op yet: one tiny call fills it
        seq_forward(impl, q[:, :1], k[:, :1], v[:, :1], causal, scale)
    aux = _AUX[impl, q.device]
    kt, vt = _kv(impl, k, v, G)
    qt, dot, ot = _bhtd(q), _bhtd(do), _bhtd(o)
    if impl == "cudnn":
        cq, ck, seed, offset = aux
        dq, dk, dv = aten._scaled_dot_product_cudnn_attention_backward(
            dot, qt, kt, vt, ot, lse_nat.unsqueeze(-1), seed, offset, None, cq, ck, T, T, 0.0, causal, scale=scale)
    elif impl == "flash":
        cq, ck, seed, offset = aux
        dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
            dot, qt, kt, vt, ot, lse_nat, cq, ck, T, T, 0.0, causal, seed, offset, scale=scale)
    elif impl == "cpu":
        dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dot, qt, kt, vt, ot, lse_nat, 0.0, causal, scale=scale)
    else:
        raise ValueError(f"no aten sequence attention named {impl!r}")
    if dk.shape[1] != Hk:  # expanded K/V: each KV head's gradient is the sum over its G query heads
        dk = dk.unflatten(1, (Hk, G)).sum(2)
        dv = dv.unflatten(1, (Hk, G)).sum(2)
    return _btgd(dq), _btgd(dk), _btgd(dv)


def hybrid_forward(impl, q, k, v, k_depth, v_depth, causal, scale):
    """(O, LSE in the kernels' layout) with the sequence part by ``impl`` and the depth part resumed in Triton."""
    from .triton_fwd import moda_fwd

    o_s, lse_s = seq_forward(impl, q, k, v, causal, scale)
    lse_f = fold_lse(lse_s, k.shape[2])
    if k_depth is None:
        return o_s, lse_f
    return moda_fwd(q, None, None, k_depth, v_depth, causal, scale, init=(o_s, lse_f))


def hybrid_backward(impl, do, q, k, v, k_depth, v_depth, o, lse, causal, scale, dkd_acc=None, dvd_acc=None):
    """(dq, dk, dv, dk_depth, dv_depth) for a merged (O, LSE); depth gradients as in ``moda_bwd``."""
    from .triton_bwd import moda_bwd

    B, T, Hq, _ = q.shape
    do = do.contiguous()
    dq_s, dk, dv = seq_backward(impl, do, q, k, v, o, unfold_lse(lse, B, Hq, T), causal, scale)
    if k_depth is None:
        return dq_s, dk, dv, None, None
    dq, _, _, dkd, dvd = moda_bwd(do, q, None, None, k_depth, v_depth, o, lse, causal, scale,
                                  dkd_acc=dkd_acc, dvd_acc=dvd_acc, dq_init=dq_s)
    return dq, dk, dv, dkd, dvd
