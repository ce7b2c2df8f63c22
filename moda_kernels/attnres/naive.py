"""Reference of one Attention Residuals read (arXiv 2603.15031, Eqs. 2-4) over a depth-stream prefix.

Sources: the n slots of h [B, T, n, D] (a prefix view of the stream) and, optionally, ``last`` [B, T, D]; with
u = query * gain (the pseudo-query times the key norm's gain) and s_j = rsqrt(mean_d v_j^2 + eps):

    logit_j = s_j (u . v_j),   alpha = softmax_j(logit),   out = sum_j alpha_j v_j                 (forward)
    da_j = G . v_j,   ds_j = alpha_j (da_j - sum_j' alpha_j' da_j'),   c_j = s_j ds_j,
    dv_j = alpha_j G + c_j u - (c_j s_j logit_j / D) v_j,   du = sum_{b,t,j} c_j v_j               (backward)

dv of the slots is added into the stream's gradient buffer (dh_acc, same shape as h) in place; dquery = du * gain
and dgain = du * query. The slots and ``last`` are kept as separate source groups (never concatenated, so a read
does not copy the stream), and every reduction over D is a contraction.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _groups(h: Tensor, last: Tensor | None) -> list[Tensor]:
    """The sources as [B, T, n_g, D] views in the math dtype (fp32, or fp64 for fp64 inputs)."""
    acc = torch.promote_types(h.dtype, torch.float32)
    return [h.to(acc)] if last is None else [h.to(acc), last.to(acc).unsqueeze(2)]


def _split(t: Tensor, groups: list[Tensor]) -> tuple[Tensor, ...]:
    """A [B, T, m] tensor cut into one [B, T, n_g] piece per source group."""
    return t.split([v.shape[2] for v in groups], dim=-1)


def _softmax_stats(groups: list[Tensor], u: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(alpha, logits, s), each [B, T, m] over all m sources."""
    D = groups[0].shape[-1]
    s = torch.cat([torch.rsqrt(torch.einsum("btjd,btjd->btj", v, v) / D + eps) for v in groups], dim=-1)
    logits = torch.cat([torch.einsum("btjd,d->btj", v, u) for v in groups], dim=-1) * s
    return torch.softmax(logits, dim=-1), logits, s


def naive_attnres_read(h: Tensor, last: Tensor | None, query: Tensor, gain: Tensor, eps: float) -> Tensor:
    """h [B, T, n, D], last [B, T, D] or None, query and gain [D] -> out [B, T, D] in h's dtype."""
    groups = _groups(h, last)
    u = query.to(groups[0].dtype) * gain.to(groups[0].dtype)
    alpha, _, _ = _softmax_stats(groups, u, eps)
    out = sum(torch.einsum("btj,btjd->btd", a, v) for a, v in zip(_split(alpha, groups), groups))
    return out.to(h.dtype)


def _add_source_grads(dv: Tensor, a: Tensor, c: Tensor, e: Tensor, G: Tensor, u: Tensor, v: Tensor) -> None:
    """dv += a G + c u + e v in place: a, c, e [B, T, n, 1], G [B, T, D], u [D], v and dv [B, T, n, D]."""
    dv.addcmul_(a, G.unsqueeze(2)).addcmul_(c, u).addcmul_(e, v)


def naive_attnres_read_bwd(g: Tensor, h: Tensor, last: Tensor | None, query: Tensor, gain: Tensor, eps: float,
                           dh_acc: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
    """Adds the slots' gradients into dh_acc (shaped like h) in place; returns (dlast or None, dquery, dgain)."""
    groups = _groups(h, last)
    G = g.to(groups[0].dtype)
    D = G.shape[-1]
    u = query.to(G.dtype) * gain.to(G.dtype)
    alpha, logits, s = _softmax_stats(groups, u, eps)
    da = torch.cat([torch.einsum("btd,btjd->btj", G, v) for v in groups], dim=-1)
    ds = alpha * (da - (alpha * da).sum(-1, keepdim=True))
    c = s * ds
    e = (c * s * logits / D).neg_()  # the coefficient of v_j in dv_j
    du = sum(torch.einsum("btj,btjd->d", cg, v) for cg, v in zip(_split(c, groups), groups))
    a, c, e = (t.unsqueeze(-1) for t in (alpha, c, e))  # [B, T, m, 1]
    n = h.shape[2]
    _add_source_grads(dh_acc, a[:, :, :n], c[:, :, :n], e[:, :, :n], G, u, groups[0])
    dlast = None
    if last is not None:
        dl = torch.zeros_like(groups[1])
        _add_source_grads(dl, a[:, :, n:], c[:, :, n:], e[:, :, n:], G, u, groups[1])
        dlast = dl[:, :, 0].to(last.dtype)
    return dlast, (du * gain.to(du.dtype)).to(query.dtype), (du * query.to(du.dtype)).to(gain.dtype)
