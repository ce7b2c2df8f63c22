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

Which implementation runs the sequence part is the call's plan (moda_kernels/dispatch.py ``kernel_plan``).

GQA: every op takes fewer KV than query heads natively (torch >= 2.5: cuDNN, flash and the CPU flash op
all fold the group). Should an op refuse them anyway, that one call retries with K/V expanded to the query
heads (and sums dK/dV back per KV head); nothing is remembered, so no call depends on an earlier failure.
"""

from __future__ import annotations

import torch

from .shared import LOG2E

aten = torch.ops.aten


def _no_dropout_aux(impl: str, device: torch.device) -> tuple:
    """The aux arguments (cum_seq_q/k, philox seed/offset) of a backward whose forward ran without dropout, built
    as that forward builds them: no cumulative sequence lengths (dense batches), and a seed and offset that only
    dropout reads (cuDNN: zeros of shape [1] on the device; flash: empty CPU scalars). Nothing of a forward is
    kept: a tensor held between forward and backward outside the graph's outputs breaks CUDA-graph capture
    (torch.compile's reduce-overhead mode refuses memory of its pool that no output tracks)."""
    if impl == "cudnn":
        seed_offset = torch.zeros(2, dtype=torch.long, device=device)  # one allocation and fill for both
        return None, None, seed_offset[:1], seed_offset[1:]
    if impl == "flash":
        return None, None, torch.empty((), dtype=torch.long), torch.empty((), dtype=torch.long)
    return ()  # the CPU op has no aux arguments


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


def _expanded(x: torch.Tensor, G: int) -> torch.Tensor:
    """[B, Hk, T, d] -> [B, Hk * G, T, d]: each KV head repeated for its G query heads."""
    return x.repeat_interleave(G, dim=1)


def _refused_gqa(err: RuntimeError, G: int) -> bool:
    """Whether an op's error may be its refusal of fewer KV than query heads: worth one expanded retry."""
    return G > 1 and not isinstance(err, torch.OutOfMemoryError)


def _seq_forward_op(impl, qt, kt, vt, causal, scale):
    """(O, LSE) of one aten op, dropout 0 (its other outputs are dropped: _no_dropout_aux)."""
    if impl == "cudnn":
        return aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, True, 0.0, causal, False, scale=scale)[:2]
    if impl == "flash":
        return aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, causal, False, scale=scale)[:2]
    if impl == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, 0.0, causal, scale=scale)
    raise ValueError(f"no aten sequence attention named {impl!r}")


def _seq_backward_op(impl, aux, dot, qt, kt, vt, ot, lse_nat, causal, scale):
    T = qt.shape[2]
    if impl == "cudnn":
        cq, ck, seed, offset = aux
        return aten._scaled_dot_product_cudnn_attention_backward(
            dot, qt, kt, vt, ot, lse_nat.unsqueeze(-1), seed, offset, None, cq, ck, T, T, 0.0, causal, scale=scale)
    if impl == "flash":
        cq, ck, seed, offset = aux
        return aten._scaled_dot_product_flash_attention_backward(
            dot, qt, kt, vt, ot, lse_nat, cq, ck, T, T, 0.0, causal, seed, offset, scale=scale)
    if impl == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dot, qt, kt, vt, ot, lse_nat, 0.0, causal, scale=scale)
    raise ValueError(f"no aten sequence attention named {impl!r}")


def seq_forward(impl: str, q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-only attention by an aten op: O [B, T, Hq, d] contiguous, LSE natural-log [B, Hq, T]."""
    G = q.shape[2] // k.shape[2]
    qt, kt, vt = _bhtd(q), _bhtd(k), _bhtd(v)
    try:
        out, lse = _seq_forward_op(impl, qt, kt, vt, causal, scale)
    except RuntimeError as err:
        if not _refused_gqa(err, G):
            raise
        out, lse = _seq_forward_op(impl, qt, _expanded(kt, G), _expanded(vt, G), causal, scale)
    B, Hq, T = q.shape[0], q.shape[2], q.shape[1]
    return _btgd(out), lse.reshape(B, Hq, T)


def seq_backward(impl: str, do, q, k, v, o, lse_nat, causal: bool, scale: float):
    """(dq [B, T, Hq, d] contiguous, dk, dv [B, T, Hk, d]) of the sequence part, given the MERGED O and its
    natural-log LSE [B, Hq, T]: the op's probabilities are then exp(s - lse), the global softmax weights."""
    Hk = k.shape[2]
    G = q.shape[2] // Hk
    aux = _no_dropout_aux(impl, q.device)
    qt, kt, vt, dot, ot = _bhtd(q), _bhtd(k), _bhtd(v), _bhtd(do), _bhtd(o)
    try:
        dq, dk, dv = _seq_backward_op(impl, aux, dot, qt, kt, vt, ot, lse_nat, causal, scale)
    except RuntimeError as err:
        if not _refused_gqa(err, G):
            raise
        dq, dk, dv = _seq_backward_op(impl, aux, dot, qt, _expanded(kt, G), _expanded(vt, G), ot, lse_nat, causal,
                                      scale)
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
