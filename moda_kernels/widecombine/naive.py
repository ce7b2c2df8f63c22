"""Reference of the wide stream's combine, as Hyper-Connections and mHC write a sublayer's output into the n
copies (moda_lab/model/mixers/hyper_connections.py, ``WideStreamMixer.combine``):

    c_j = gain * sum_i res[.., j, i] x_i + post[.., j] y          x [.., n, D], y [.., D], res [.., n, n], post [.., n]
    out_j = RMSNorm(c_j; weight, eps)    where the placement normalises the combined stream (post-norm, DeepNorm)
    out_j = c_j                          otherwise (weight None)

in fp32 whatever the inputs' dtypes (fp64 for the gradient reference, naive_wide_combine_bwd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_wide_combine(x: torch.Tensor, y: torch.Tensor, res: torch.Tensor, post: torch.Tensor,
                       weight: torch.Tensor | None, gain: float, eps: float) -> torch.Tensor:
    """[.., n, D] fp32 (fp64 for fp64 x): the copies mixed by res, plus the output y weighted by post, each copy
    normalised over D (scaled by ``weight``) unless ``weight`` is None."""
    dt = torch.promote_types(x.dtype, torch.float32)
    c = gain * torch.einsum("...ji,...id->...jd", res.to(dt), x.to(dt)) + post.to(dt)[..., None] * y.to(dt)[..., None, :]
    if weight is None:
        return c
    return F.rms_norm(c, c.shape[-1:], weight.to(dt), eps)


def naive_wide_combine_bwd(dout: torch.Tensor, x: torch.Tensor, y: torch.Tensor, res: torch.Tensor,
                           post: torch.Tensor, weight: torch.Tensor | None, gain: float, eps: float):
    """(d x, d y, d res, d post, d weight) given dout = d loss / d naive_wide_combine(...), each in its input's
    dtype (fp64 math); d weight is None without a norm."""
    with torch.enable_grad():
        inputs = [x, y, res, post] + ([] if weight is None else [weight])
        leaves = [t.detach().double().requires_grad_() for t in inputs]
        out = naive_wide_combine(*leaves[:4], leaves[4] if weight is not None else None, gain, eps)
        grads = torch.autograd.grad(out, leaves, dout.double())
    grads = [g.to(t.dtype) for g, t in zip(grads, inputs)]
    return (*grads[:4], grads[4] if weight is not None else None)
