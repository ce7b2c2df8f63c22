"""Attention Residuals (Kimi Team, "Attention Residuals", arXiv 2603.15031): each sublayer's input is a softmax
attention over depth, the embeddings and earlier sublayers' outputs, instead of the fixed residual sum.

Notation (paper Sec. 3; "layer" there is one sublayer: an attention or an FFN, so a block of the decoder holds
two, i = 2 l + {0: attention, 1: FFN}, i = 0 .. 2L-1):

Full AttnRes (Sec. 3.1, Eqs. 2-4). Values v_0 = embeddings, v_{i+1} = f_i(h_i) (sublayer i's output). Sublayer i
reads

    h_i = sum_{j<=i} alpha_{j->i} v_j,   alpha_{j->i} = exp(q_i . k_j) / sum_{j'<=i} exp(q_i . k_j')
    q_i = w_i                  (a learned pseudo-query in R^D, one per sublayer; not a projection of the input)
    k_j = RMSNorm_i(v_j)       (keys are the values, RMS-normalised with sublayer i's own gain, so a source of
                                large magnitude cannot dominate the softmax by its norm; no 1/sqrt(D) scale)

Block AttnRes (Sec. 3.2, Fig. 2). The 2L sublayers are cut into blocks of S consecutive sublayers; inside a block
the outputs are summed as in the residual stream, and the attention runs over block representations only:

    b_0 = embeddings,  b_n = sum_{i in block n} f_i(h_i)  (a completed block),
    b_n^i = sum of the outputs of block n's sublayers before i  (the partial sum, absent at a block's start),
    h_i = softmax-attention of w_i over [b_0, ..., b_{n-1}, b_n^i]   (keys RMSNorm_i of each, as above).

Fig. 2 counts S in sublayers and cuts only before attention sublayers (S even); any S >= 1 is allowed here, and
S = 1 (every sublayer output its own block) is Full AttnRes. The output head reads one more AttnRes, with its
own pseudo-query and norm, over every block (b_0 .. b_N, the last one partial or complete): the paper's final
output "aggregates all N block representations" (Sec. 3.2; the released Kimi models name it the output AttnRes).

Initialisation (Sec. 3, and the ablations: needed for stable training): every pseudo-query starts at zero, so
every read starts as the uniform average of its sources; the key norms' gains start at one.

Norm placements (norms.py) keep their roles: pre-norm normalises what a sublayer reads (f_i(norm(h_i))),
reordered what it returns (norm(f_i(h_i))), post-norm the partial sum after every add (b_n^{i+1} =
norm(b_n^i + f_i(h_i))), and, the head having no norm of its own then, the output AttnRes (the model's last
combine). The paper trains pre-norm models only.

The sources live in the forward's depth stream (depth.py), one hidden-state slot per completed block: a slot is
written once and read in place by every later reader, whose backward adds its slot gradients into the stream's
gradient buffer (no re-stacked history, no Python list of tensors in the graph). The partial sum b_n^i is an
ordinary tensor: it changes after every sublayer. A read is one op (moda_kernels/attnres): Triton kernels when
the attention backend runs fused kernels (one pass over the sources each way), else the fp32 reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from moda_kernels.attnres import (
    attnres_read_backward,
    attnres_read_forward,
    backward_reads_forward,
    naive_attnres_read,
    naive_attnres_read_bwd,
)

from ..layers import RMSNorm
from .base import DepthMixer, MixerConfig, StreamSpec, register_mixer

Tensor = torch.Tensor


@torch.library.custom_op("moda_lab::depth_attnres", mutates_args=())
def depth_attnres(data: Tensor, grad: Tensor, last: Tensor | None, query: Tensor, gain: Tensor, n: int,
                  eps: float, after: Tensor, kernel: bool, keep: bool) -> tuple[Tensor, Tensor, Tensor]:
    """AttnRes read over the first n hidden-state slots of the stream and ``last``: (out [B, T, D] in the stream's
    dtype, lse, lo), by the Triton kernel (``kernel``) or the fp32 reference. With ``keep`` (the kernel's one-pass
    schedule: moda_kernels.attnres.backward_reads_forward) lse is its softmax log-sum-exp [B, T] in fp32 and lo
    out's rounding residual, like out, which the backward takes back with out; else both are empty (the two-pass
    backward and the reference recompute). ``keep`` is an argument, not decided inside, so that it is part of the
    traced graph and of every compile cache's key (moda_kernels/attnres)."""
    h = data[0, :, :, :n]
    if kernel:
        out, lse, lo = attnres_read_forward(h, last, query, gain, eps)
        if keep:
            return out.contiguous(), lse, lo
        # else lse and lo ([B, T, D]) would be saved for a backward that does not read them
    else:
        out = naive_attnres_read(h, last, query, gain, eps)
    return out.contiguous(), data.new_empty(0, dtype=torch.float32), data.new_empty(0)


@depth_attnres.register_fake
def _depth_attnres_fake(data, grad, last, query, gain, n, eps, after, kernel, keep):
    out = data.new_empty(data.shape[1:3] + data.shape[4:])
    if kernel and keep:
        return out, data.new_empty(data.shape[1:3], dtype=torch.float32), data.new_empty(out.shape)
    return out, data.new_empty(0, dtype=torch.float32), data.new_empty(0)


@torch.library.custom_op("moda_lab::depth_attnres_bwd", mutates_args=())
def depth_attnres_bwd(g: Tensor, data: Tensor, grad: Tensor, last: Tensor | None, query: Tensor, gain: Tensor,
                      n: int, eps: float, kernel: bool, out: Tensor | None, lse: Tensor | None,
                      lo: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dlast or empty, dquery, dgain, token): adds the n slots' gradients into grad[0, :, :, :n] in place (see
    depth.py's depth_attn_bwd); the token is handed to the slots' writers, which read grad after it. ``out``,
    ``lse`` and ``lo``: the kernel's forward outputs (None for the reference)."""
    h, dh = data[0, :, :, :n], grad.data[0, :, :, :n]  # .data: the writers saved grad; its version must not move
    if kernel:
        dlast, dquery, dgain = attnres_read_backward(g, h, last, query, gain, eps, dh, out, lse, lo)
    else:
        dlast, dquery, dgain = naive_attnres_read_bwd(g, h, last, query, gain, eps, dh)
    dlast = dlast.contiguous() if dlast is not None else g.new_empty(0)
    return dlast, dquery, dgain, g.new_zeros(1)


@depth_attnres_bwd.register_fake
def _depth_attnres_bwd_fake(g, data, grad, last, query, gain, n, eps, kernel, out, lse, lo):
    dlast = last.new_empty(last.shape) if last is not None else g.new_empty(0)
    return dlast, query.new_empty(query.shape), gain.new_empty(gain.shape), g.new_zeros(1)


def _attnres_setup(ctx, inputs, output):
    data, grad, last, query, gain, n, eps, after, kernel, keep = inputs
    out, lse, lo = output
    ctx.mark_non_differentiable(lse, lo)
    # The kernel's one-pass backward reads the forward's outputs; the two-pass kernels and the reference recompute.
    reads = kernel and keep
    ctx.save_for_backward(data, grad, last, query, gain, *((out, lse, lo) if reads else (None, None, None)))
    ctx.n, ctx.eps, ctx.kernel, ctx.has_last = n, eps, kernel, last is not None


def _attnres_backward(ctx, g, g_lse, g_lo):
    data, grad, last, query, gain, out, lse, lo = ctx.saved_tensors
    dlast, dquery, dgain, dafter = depth_attnres_bwd(g, data, grad, last, query, gain, ctx.n, ctx.eps, ctx.kernel,
                                                     out, lse, lo)
    return None, None, dlast if ctx.has_last else None, dquery, dgain, None, None, dafter, None, None


depth_attnres.register_autograd(_attnres_backward, setup_context=_attnres_setup)


def read_flops(d_model: int, sources: int) -> int:
    """Forward FLOPs per token of one read over ``sources``: the logits (q . k_j) and the weighted sum; the key
    norms and the softmax are not counted (norms are not counted anywhere in the model's FLOPs)."""
    return 4 * d_model * sources


def _op_flops(data, last, n: int, backward: bool) -> int:
    """The read's FLOPs over a [1, B, T, S, D] stream; the backward does twice the forward's multiply-adds."""
    B, T, D = data[1], data[2], data[-1]
    return B * T * read_flops(D, n + (last is not None)) * (2 if backward else 1)


@register_flop_formula(torch.ops.moda_lab.depth_attnres)
def _depth_attnres_flops(data, grad, last, query, gain, n, *args, **kwargs) -> int:
    return _op_flops(data, last, n, backward=False)


@register_flop_formula(torch.ops.moda_lab.depth_attnres_bwd)
def _depth_attnres_bwd_flops(g, data, grad, last, query, gain, n, *args, **kwargs) -> int:
    return _op_flops(data, last, n, backward=True)


class DepthQuery(nn.Module):
    """One AttnRes read: a zero-initialised pseudo-query w and the key RMSNorm (gain starts at one)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d_model))
        self.key_norm = RMSNorm(d_model, eps=eps)

    def forward(self, stream, last: Tensor | None, kernel: bool = False) -> Tensor:
        """Attend over the stream's written slots and ``last`` [B, T, D] (the partial block sum, or None), with
        the Triton kernel (``kernel``) or the fp32 reference."""
        keep = kernel and backward_reads_forward(stream.data.shape[-1])
        out, _, _ = depth_attnres(stream.data, stream.grad, last, self.query, self.key_norm.weight, stream.size,
                                  self.key_norm.eps, stream.token, kernel, keep)
        return out


@dataclass(frozen=True)
class AttnResOptions(MixerConfig):
    """``block_size``: sublayers per block (Fig. 2's block_size: attention and FFN count one each); 1 is Full
    AttnRes, larger is Block AttnRes (the paper's N blocks of a 2L-sublayer model: block_size = 2L / N)."""

    name: str = "attnres"
    block_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ValueError(f"model.mixer.block_size must be >= 1 (1: Full AttnRes), got {self.block_size}")


def _slots(n_layers: int, block_size: int) -> int:
    """Completed blocks a forward writes: b_0 (the embeddings) and one per boundary after sublayer 0."""
    return 1 + (2 * n_layers - 1) // block_size


@register_mixer("attnres")
class AttnResMixer(DepthMixer):
    """Attention Residuals: the stream state between sublayers is the partial block sum b_n^i (None right after
    a block boundary, whose sum went to the depth stream); every sublayer reads a DepthQuery over the stream's
    completed blocks and that partial sum, and the last sublayer's combine is the output AttnRes."""

    Options = AttnResOptions
    def __init__(self, cfg, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn_read = DepthQuery(cfg.d_model, cfg.norm_eps)
        self.ffn_read = DepthQuery(cfg.d_model, cfg.norm_eps)
        last = layer == cfg.n_layers - 1
        self.out_read = DepthQuery(cfg.d_model, cfg.norm_eps) if last else None

    @staticmethod
    def stream_spec(cfg) -> StreamSpec:
        return StreamSpec(1, _slots(cfg.n_layers, cfg.mixer.block_size), (cfg.d_model,), activations=False)

    def _closes_block(self, sublayer: str) -> bool:
        """Whether a block ends right after this layer's ``sublayer`` (not after the model's last one)."""
        after = 2 * self.layer + (1 if sublayer == "attn" else 2)  # sublayers done once it has run
        return after % self.cfg.mixer.block_size == 0 and after < 2 * self.cfg.n_layers

    def read(self, x, ctx):
        if self.layer == 0:
            ctx.stream.put(x)  # b_0: the embeddings, a block of their own
            return None
        return x

    def attn_inputs(self, x, skip, place, ctx):
        h = place.norm_input(self.attn_read(ctx.stream, x, ctx.attn.fused_kernels))
        return h, h, h

    def ffn_input(self, x, skip, place, ctx):
        return place.norm_input(self.ffn_read(ctx.stream, x, ctx.attn.fused_kernels))

    def skip(self, x, place, sublayer, ctx):
        return x if x is None or place.gain == 1.0 else place.gain * x

    def combine(self, skip, y, place, sublayer, ctx):
        x = place.norm_output(y)
        if skip is not None:
            x = skip + x  # b_n^{i+1} = b_n^i + f_i(h_i)
        if self.out_read is not None and sublayer == "ffn":
            # The model's last combine is the output AttnRes; post-norm's norm follows it, as it follows the last
            # add of a residual stream (the head reads it with no norm of its own).
            return place.norm_combined(self.out_read(ctx.stream, x, ctx.attn.fused_kernels))
        x = place.norm_combined(x)
        if self._closes_block(sublayer):
            ctx.stream.put(x)  # a completed block b_n
            return None
        return x

    def _sources(self, sublayer: int) -> int:
        """Sources of the read before sublayer ``sublayer`` (0 .. 2L; 2L: the output read)."""
        S = self.cfg.mixer.block_size
        return 1 + (sublayer - 1) // S + 1 if sublayer else 1

    def flops_per_token(self) -> int:
        reads = [2 * self.layer, 2 * self.layer + 1] + ([2 * self.cfg.n_layers] if self.out_read else [])
        return sum(read_flops(self.cfg.d_model, self._sources(i)) for i in reads)

    def flops_unseen_by_counter(self) -> int:
        return 0  # the reads are ops with a registered FLOP formula
