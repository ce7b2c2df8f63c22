"""The depth stream: K/V that earlier layers wrote for a token, read under later layers' attention softmax.

MoDA (arXiv 2603.15619) and depth attention read, at a layer, every K/V slot that earlier layers wrote for the
same token. One forward owns two preallocated buffers of shape [2, B, T, S, Hk, d] (k at index 0, v at 1;
token-major, so data[0, :, :, :n] is the kernel's [B, T*n, Hk, d] depth stream viewed 5-D, without a copy):

* ``data``: slot s is written once, by ``put``, then read in place (prefix views) by every later reader;
* ``grad``: each reader's backward ADDS its depth gradient into grad[:, :, :, :n] in place (the kernel's
  read-add-write epilogue), and a slot's writer takes its gradient from there once every reader is done.

Neither pass stacks or sums the growing prefix per layer (O(L^2) copies and adds). Both buffers live outside
autograd, and custom ops (put and its gradient's take; the readers attend and mix, each with its backward op)
carry the order instead, through one-element "token" tensors: a put returns a token, a reader takes the newest
token, a reader's backward hands its token gradient on only after its accumulation, and a writer's backward
reads its slot only once that token gradient has arrived (the tokens of all later puts and readers flow into
it). Tokens are not zero-size: Inductor drops the producers of zero-element tensors from the dependency graph,
and then reorders the reads before the accumulations. The ops are declared functional (``mutates_args=()``)
although they write into the buffers: each write touches only memory that no op has read yet and no later op reads
under another version (a slot not yet visible, or gradient slots still being summed by their readers), so
AOTAutograd has nothing to version or copy, and torch.compile traces a whole model with them: no graph break,
one graph for all layers.

The buffers are allocated inside the forward (GPT._hidden, so inside the compiled step) by one opaque op,
``depth_buffers``. Two reasons. (1) CUDA graphs (torch.compile's reduce-overhead mode): a graph input that is
not a parameter or buffer of the model is copied into the graph's own memory on every replay, so buffers made
outside the step would cost a copy of both per step and twice their memory; made inside, they live in the
graph's memory pool at fixed addresses. (2) No compiler pass may treat them as fresh allocations to recompute:
the backward must read the very buffers the forward wrote, and ``aten.empty`` and ``aten.zeros`` are on the
min-cut partitioner's list of ops it may recompute in the backward; an op it does not know is saved, never
recomputed (functorch's default ``ban_recompute_not_in_allowlist``; tests/cpu/test_cudagraphs.py checks).

``depth_attn`` is the model's one autograd path over the MoDA kernel: without a stream (``kernel_attn``) it is
plain attention, so every Triton attention call of the model shares one forward/backward pair of ops.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from moda_kernels.dwa import dwa_mix_backward, dwa_mix_forward, naive_dwa_mix, naive_dwa_mix_bwd
from moda_kernels.moda import moda_attn_backward, moda_attn_forward, naive_moda_attn, naive_moda_attn_bwd

Tensor = torch.Tensor


# --- write a slot; read its gradient ---------------------------------------------------------------------


@torch.library.custom_op("moda_lab::depth_put", mutates_args=())
def depth_put(data: Tensor, grad: Tensor, k: Tensor, v: Tensor | None, slot: int, after: Tensor) -> Tensor:
    """Write k (and v) [B, T, *feature] into slot ``slot`` of part 0 (and 1) of data; returns the token later
    readers take. One part (v None) is a stream of hidden states (DWA); two are K/V slots."""
    # Through .data: the buffer's version counter must not move, since readers saved it for their backward
    # (the slots they read are never written again).
    buf = data.data
    buf[0, :, :, slot].copy_(k)
    if v is not None:
        buf[1, :, :, slot].copy_(v)
    return after.new_zeros(1)


@depth_put.register_fake
def _depth_put_fake(data, grad, k, v, slot, after):
    return after.new_zeros(1)


def _put_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.slot, ctx.has_v = inputs[4], inputs[3] is not None


def _put_backward(ctx, dtoken):
    (grad,) = ctx.saved_tensors
    dk, dv, dafter = depth_take(grad, ctx.slot, dtoken)
    return None, None, dk, dv if ctx.has_v else None, None, dafter


depth_put.register_autograd(_put_backward, setup_context=_put_setup)


@torch.library.custom_op("moda_lab::depth_take", mutates_args=())
def depth_take(grad: Tensor, slot: int, after: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The summed gradient of slot ``slot`` (part 0, and part 1 or an empty tensor), read after ``after``; and
    the token handed on."""
    second = grad[1, :, :, slot].clone() if grad.shape[0] > 1 else grad.new_empty(0)
    return grad[0, :, :, slot].clone(), second, after.new_zeros(1)


@depth_take.register_fake
def _depth_take_fake(grad, slot, after):
    shape = grad.shape[1:3] + grad.shape[4:]
    second = grad.new_empty(shape) if grad.shape[0] > 1 else grad.new_empty(0)
    return grad.new_empty(shape), second, after.new_zeros(1)


# --- DenseFormer's depth-weighted average over hidden-state slots 0..n-1 ----------------------------------


@torch.library.custom_op("moda_lab::depth_mix", mutates_args=())
def depth_mix(data: Tensor, grad: Tensor, alpha: Tensor, n: int, after: Tensor, kernel: bool) -> Tensor:
    """sum_j alpha[j] data[0, :, :, j] over the first n slots: [B, T, D]."""
    h = data[0, :, :, :n]
    return (dwa_mix_forward(h, alpha) if kernel else naive_dwa_mix(h, alpha)).contiguous()


@depth_mix.register_fake
def _depth_mix_fake(data, grad, alpha, n, after, kernel):
    return data.new_empty(data.shape[1:3] + data.shape[4:])


@torch.library.custom_op("moda_lab::depth_mix_bwd", mutates_args=())
def depth_mix_bwd(g: Tensor, data: Tensor, grad: Tensor, alpha: Tensor, n: int, kernel: bool) -> tuple[Tensor, Tensor]:
    """(dalpha, token): adds alpha[j] g into grad[0, :, :, j] for j < n in place (see depth_attn_bwd)."""
    h, dh = data[0, :, :, :n], grad.data[0, :, :, :n]
    dalpha = dwa_mix_backward(g, h, alpha, dh) if kernel else naive_dwa_mix_bwd(g, h, alpha, dh)
    return dalpha, alpha.new_zeros(1)


@depth_mix_bwd.register_fake
def _depth_mix_bwd_fake(g, data, grad, alpha, n, kernel):
    return alpha.new_empty(alpha.shape), alpha.new_zeros(1)


def _mix_setup(ctx, inputs, output):
    data, grad, alpha, n, after, kernel = inputs
    ctx.save_for_backward(data, grad, alpha)
    ctx.n, ctx.kernel = n, kernel


def _mix_backward(ctx, g):
    data, grad, alpha = ctx.saved_tensors
    dalpha, dafter = depth_mix_bwd(g, data, grad, alpha, ctx.n, ctx.kernel)
    return None, None, dalpha, None, dafter, None


depth_mix.register_autograd(_mix_backward, setup_context=_mix_setup)


# --- per-token reads of hidden-state slots 0..n-1 (Attention Residuals, MUDDFormer) ------------------------
#
# For a token, with X_j = data[0, b, t, j] [D] the slots written so far:
#     depth_mix_tokens:  out[b, t] = sum_j w[b, t, j] X_j      (per-token weights w [B, T, n])
#     depth_dots:        s[b, t, j] = <q[b, t], X_j>           (per-token scores against a query q [B, T, D])
# Each backward adds its slot gradient (w_j g, or ds_j q) into grad[0, :, :, j] in place, as depth_mix_bwd does,
# and the other gradient is the other op's forward (dw = dots of g; dq = mix of ds). fp32 math. Their FLOPs are
# registered, so torch.utils.flop_counter counts them (2 B T n D each forward, twice that backward).


def _tokens_mix(h: Tensor, w: Tensor) -> Tensor:
    return torch.einsum("btjd,btj->btd", h.float(), w.float())


def _tokens_dots(h: Tensor, q: Tensor) -> Tensor:
    return torch.einsum("btjd,btd->btj", h.float(), q.float())


@torch.library.custom_op("moda_lab::depth_mix_tokens", mutates_args=())
def depth_mix_tokens(data: Tensor, grad: Tensor, w: Tensor, n: int, after: Tensor) -> Tensor:
    """sum_j w[:, :, j] data[0, :, :, j] over the first n slots: [B, T, D] in data's dtype."""
    return _tokens_mix(data[0, :, :, :n], w).to(data.dtype)


@depth_mix_tokens.register_fake
def _depth_mix_tokens_fake(data, grad, w, n, after):
    return data.new_empty(data.shape[1:3] + data.shape[4:])


@torch.library.custom_op("moda_lab::depth_dots", mutates_args=())
def depth_dots(data: Tensor, grad: Tensor, q: Tensor, n: int, after: Tensor) -> Tensor:
    """<q, data[0, :, :, j]> for the first n slots: [B, T, n] in q's dtype."""
    return _tokens_dots(data[0, :, :, :n], q).to(q.dtype)


@depth_dots.register_fake
def _depth_dots_fake(data, grad, q, n, after):
    return q.new_empty(q.shape[:2] + (n,))


@torch.library.custom_op("moda_lab::depth_tokens_bwd", mutates_args=())
def depth_tokens_bwd(g: Tensor, data: Tensor, grad: Tensor, other: Tensor, n: int, mix: bool) -> tuple[Tensor, Tensor]:
    """Backward of depth_mix_tokens (``mix``: g [B, T, D], other = w) or depth_dots (g [B, T, n], other = q):
    (gradient of ``other``, token); adds the slots' gradient into grad[0, :, :, :n] in place."""
    h, dh = data[0, :, :, :n], grad.data[0, :, :, :n]
    if mix:  # dX_j += w_j g; dw_j = <g, X_j>
        dh.add_((other.float().unsqueeze(-1) * g.float().unsqueeze(2)).to(dh.dtype))
        d_other = _tokens_dots(h, g)
    else:  # dX_j += ds_j q; dq = sum_j ds_j X_j
        dh.add_((g.float().unsqueeze(-1) * other.float().unsqueeze(2)).to(dh.dtype))
        d_other = _tokens_mix(h, g)
    return d_other.to(other.dtype), other.new_zeros(1)


@depth_tokens_bwd.register_fake
def _depth_tokens_bwd_fake(g, data, grad, other, n, mix):
    return other.new_empty(other.shape), other.new_zeros(1)


def _tokens_setup(ctx, inputs, output):
    data, grad, other, n, after = inputs
    ctx.save_for_backward(data, grad, other)
    ctx.n = n


def _tokens_backward(ctx, g, mix: bool):
    data, grad, other = ctx.saved_tensors
    d_other, dafter = depth_tokens_bwd(g, data, grad, other, ctx.n, mix)
    return None, None, d_other, None, dafter


depth_mix_tokens.register_autograd(lambda ctx, g: _tokens_backward(ctx, g, True), setup_context=_tokens_setup)
depth_dots.register_autograd(lambda ctx, g: _tokens_backward(ctx, g, False), setup_context=_tokens_setup)


def _tokens_flops(data_shape, n: int) -> int:
    """One multiply-add per slot element read: 2 B T n D (the backward does it twice: the slots' gradient and the
    other input's)."""
    _, B, T, _, *feature = data_shape
    return 2 * B * T * n * int(torch.Size(feature).numel())


@register_flop_formula(torch.ops.moda_lab.depth_mix_tokens)
def _depth_mix_tokens_flops(data, grad, w, n, *args, **kwargs) -> int:
    return _tokens_flops(data, n)


@register_flop_formula(torch.ops.moda_lab.depth_dots)
def _depth_dots_flops(data, grad, q, n, *args, **kwargs) -> int:
    return _tokens_flops(data, n)


@register_flop_formula(torch.ops.moda_lab.depth_tokens_bwd)
def _depth_tokens_bwd_flops(g, data, grad, other, n, *args, **kwargs) -> int:
    return 2 * _tokens_flops(data, n)


# --- attention over [sequence | depth slots 0..n-1]: the model's one autograd path over the MoDA kernel ----


def _views(buf: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return buf[0, :, :, :n], buf[1, :, :, :n]


@torch.library.custom_op("moda_lab::depth_attn", mutates_args=())
def depth_attn(
    q: Tensor,
    k: Tensor | None,
    v: Tensor | None,
    data: Tensor | None,
    grad: Tensor | None,
    n: int,
    after: Tensor | None,
    causal: bool,
    kernel: bool,
) -> tuple[Tensor, Tensor]:
    """MoDA attention of q over k, v and the first n depth slots of ``data`` (no depth keys without a stream:
    data, grad and after None); (O, LSE) with ``kernel`` (the Triton kernels, as moda_kernels/dispatch.py
    plans the call), else (O, empty) from the fp32 reference."""
    kd, vd = _views(data, n) if data is not None else (None, None)
    if kernel:
        return moda_attn_forward(q, k, v, kd, vd, causal=causal)
    # Outputs must have the strides the fake implementation promises (contiguous).
    return naive_moda_attn(q, k, v, kd, vd, causal=causal).contiguous(), q.new_empty(0)


@depth_attn.register_fake
def _depth_attn_fake(q, k, v, data, grad, n, after, causal, kernel):
    if not kernel:
        return q.new_empty(q.shape), q.new_empty(0)
    B, T, Hq, _ = q.shape
    Hk = data.shape[4] if data is not None else k.shape[2]
    return q.new_empty(q.shape), q.new_empty((B * Hk, T * (Hq // Hk)), dtype=torch.float32)


@torch.library.custom_op("moda_lab::depth_attn_bwd", mutates_args=())
def depth_attn_bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor | None,
    v: Tensor | None,
    data: Tensor | None,
    grad: Tensor | None,
    o: Tensor,
    lse: Tensor,
    n: int,
    causal: bool,
    kernel: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, token): adds the depth gradients into grad[:, :, :, :n] in place; the token is handed to
    the slots' writers, which read grad after it. Absent k, v get empty gradients (custom ops return no None)."""
    kd, vd = _views(data, n) if data is not None else (None, None)
    # .data: the writers saved grad; its version counter must not move
    gk, gv = _views(grad.data, n) if data is not None else (None, None)
    if kernel:
        dq, dk, dv, _, _ = moda_attn_backward(
            do, q, k, v, kd, vd, o, lse, causal=causal, dk_depth_acc=gk, dv_depth_acc=gv
        )
    else:
        dq, dk, dv, dkd, dvd = naive_moda_attn_bwd(do, q, k, v, kd, vd, causal=causal)
        if gk is not None:
            gk.add_(dkd)
            gv.add_(dvd)
    # Fresh empties: custom ops may not return one tensor twice.
    return tuple(t.contiguous() if t is not None else q.new_empty(0) for t in (dq, dk, dv)) + (_token_for(q, data),)


@depth_attn_bwd.register_fake
def _depth_attn_bwd_fake(do, q, k, v, data, grad, o, lse, n, causal, kernel):
    like = [q.new_empty(t.shape) if t is not None else q.new_empty(0) for t in (k, v)]
    return q.new_empty(q.shape), *like, _token_for(q, data)


def _token_for(q: Tensor, data: Tensor | None) -> Tensor:
    """The token a reader's backward hands the stream's writers; without a stream (plain attention, the residual's
    every layer) nobody waits for it: an empty tensor, no fill kernel."""
    return q.new_zeros(1) if data is not None else q.new_empty(0)


def _attn_setup(ctx, inputs, output):
    q, k, v, data, grad, n, after, causal, kernel = inputs
    ctx.save_for_backward(q, k, v, data, grad, *output)
    ctx.n, ctx.causal, ctx.kernel, ctx.has_seq, ctx.has_after = n, causal, kernel, k is not None, after is not None


def _attn_backward(ctx, do, dlse):
    q, k, v, data, grad, o, lse = ctx.saved_tensors
    dq, dk, dv, dafter = depth_attn_bwd(do, q, k, v, data, grad, o, lse, ctx.n, ctx.causal, ctx.kernel)
    if not ctx.has_seq:
        dk = dv = None
    return dq, dk, dv, None, None, None, dafter if ctx.has_after else None, None, None


depth_attn.register_autograd(_attn_backward, setup_context=_attn_setup)


def kernel_attn(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """q [B, T, Hq, d] over k, v [B, T, Hk, d] with the Triton kernels, no depth stream: the same op (and
    autograd) as stream attention, so that the model has one path over the kernel."""
    out, _ = depth_attn(q, k, v, None, None, 0, None, causal, True)
    return out


def _attn_flops(q, k, n, backward: bool) -> int:
    """QK^T and PV over the T sequence keys (full, un-masked count, as GPT.forward_flops_per_token) and the n
    depth slots; the backward does twice the forward's matmul work."""
    B, T, Hq, d = q
    keys = (k[1] if k is not None else 0) + n
    return 4 * B * T * Hq * d * keys * (2 if backward else 1)


@register_flop_formula(torch.ops.moda_lab.depth_attn)
def _depth_attn_flops(q, k, v, data, grad, n, *args, **kwargs) -> int:
    return _attn_flops(q, k, n, backward=False)


@register_flop_formula(torch.ops.moda_lab.depth_attn_bwd)
def _depth_attn_bwd_flops(do, q, k, v, data, grad, o, lse, n, *args, **kwargs) -> int:
    return _attn_flops(q, k, n, backward=True)


# --- the per-forward stream ------------------------------------------------------------------------------


@torch.library.custom_op("moda_lab::depth_buffers", mutates_args=())
def depth_buffers(shape: list[int], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(data, grad, token) of a stream of ``shape``: data uninitialised (every slot is written before it is read),
    grad zeroed (readers add into it), the first token. One opaque op, so that no compiler pass recomputes or
    reuses the buffers (see the top)."""
    data = torch.empty(shape, device=device, dtype=dtype)
    grad = torch.zeros(shape, device=device, dtype=dtype)
    return data, grad, torch.zeros(1, device=device, dtype=dtype)


@depth_buffers.register_fake
def _depth_buffers_fake(shape, device, dtype):
    return (torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype),
            torch.empty(1, device=device, dtype=dtype))


def new_stream_buffers(parts: int, slots: int, B: int, T: int, feature: tuple[int, ...], device, dtype):
    """(data, grad, token) of a stream [parts, B, T, slots, *feature]: fresh buffers for one forward, made by
    ``depth_buffers`` (inside a compiled step, or eagerly)."""
    return depth_buffers([parts, B, T, slots, *feature], torch.device(device), dtype)


class DepthStream:
    """One forward's depth stream: ``put`` appends a slot (K/V, or a hidden state), ``attend`` runs attention over
    the K/V slots written so far, ``mix`` the depth-weighted average of the hidden states written so far,
    ``mix_tokens`` and ``dots`` per-token weighted sums of and scores against them."""

    def __init__(self, data: Tensor, grad: Tensor, token: Tensor) -> None:
        self.data, self.grad, self.token = data, grad, token
        self.slots, self.n_kv = data.shape[3], data.shape[4]
        self.size = 0

    def put(self, k: Tensor, v: Tensor | None = None) -> None:
        """Append k (and v) [B, T, *feature] as the next slot."""
        if self.size >= self.slots:
            raise RuntimeError(f"depth stream full: all {self.slots} slots are written")
        if (v is not None) != (self.data.shape[0] == 2):
            raise ValueError(f"a stream of {self.data.shape[0]} part(s) takes {self.data.shape[0]} tensor(s) per slot")
        dtype = self.data.dtype
        self.token = depth_put(
            self.data, self.grad, k.to(dtype), v.to(dtype) if v is not None else None, self.size, self.token
        )
        self.size += 1

    def views(self) -> tuple[Tensor, Tensor]:
        """The written K/V slots as [B, T, n, Hk, d] views (no gradient: inspection and decoding)."""
        return _views(self.data, self.size)

    def attend(self, q: Tensor, k: Tensor | None, v: Tensor | None, *, causal: bool, kernel: bool) -> Tensor:
        """q [B, T, Hq, d] over the causal sequence k, v [B, T, Hk, d] (or none) and every slot written so far,
        with the Triton kernels (``kernel``) or the fp32 reference."""
        out, _ = depth_attn(q, k, v, self.data, self.grad, self.size, self.token, causal, kernel)
        return out

    def mix(self, alpha: Tensor, *, kernel: bool) -> Tensor:
        """sum_j alpha[j] X_j over the hidden states written so far (alpha [size]): [B, T, D]."""
        return depth_mix(self.data, self.grad, alpha, self.size, self.token, kernel)

    def mix_tokens(self, w: Tensor) -> Tensor:
        """sum_j w[b, t, j] X_j[b, t] over the hidden states written so far, per-token weights w [B, T, size]:
        [B, T, D] (fp32 math, no kernel yet)."""
        return depth_mix_tokens(self.data, self.grad, w, self.size, self.token)

    def dots(self, q: Tensor) -> Tensor:
        """<q[b, t], X_j[b, t]> for every hidden state written so far, q [B, T, D]: scores [B, T, size]."""
        return depth_dots(self.data, self.grad, q, self.size, self.token)
