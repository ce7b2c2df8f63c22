"""Preallocated depth stream: one buffer per forward, written slot by slot, read as growing prefix views.

Layout [B, T, S, ...]: token-major, so buf[:, :, :L] is the [B, T*L, ...] depth stream of the MoDA kernel
(kernels/moda) viewed 5-D, without a copy. Stacking the history anew at every layer would cost O(L^2) copies;
like DenseFormer's InPlaceSetSlice we write in place and keep autograd correct with a custom Function:
each write returns the prefix [0, slot] as a new autograd node whose backward splits the gradient
between the earlier prefix and the written value.
"""

from __future__ import annotations

import torch


class _WriteSlot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prefix, value, buf, slot):  # noqa: ARG004 - prefix only carries the autograd edge
        ctx.slot = slot
        # Write through a .data alias: earlier prefix views (saved for backward by their consumers) never see
        # a version bump, which is safe because slots below `slot` are never written again in this forward.
        data = buf.data
        data[:, :, slot].copy_(value.detach())
        return data[:, :, : slot + 1]

    @staticmethod
    def backward(ctx, grad):
        slot = ctx.slot
        grad_prefix = grad[:, :, :slot] if slot > 0 else None
        return grad_prefix, grad[:, :, slot], None, None


class DepthBuffer:
    """A [B, T, S, *feature] buffer filled in slot order; ``view`` is the filled prefix (differentiable).

    Allocated at the first write, with that value's dtype and device (bf16 under autocast).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.buf: torch.Tensor | None = None
        self.view: torch.Tensor | None = None
        self.size = 0

    # Runs eagerly under torch.compile: the in-place write through a .data alias is invisible to autograd by
    # design, which AOTAutograd refuses to trace ("non-differentiable view input mutations"). Compiled blocks
    # graph-break around it; the projections, norms and attention around it still compile.
    @torch.compiler.disable
    def write(self, value: torch.Tensor) -> torch.Tensor:
        """Append value [B, T, *feature] as the next slot; returns the prefix view [B, T, size, *feature]."""
        if self.buf is None:
            B, T, *feature = value.shape
            self.buf = value.new_empty(B, T, self.slots, *feature)
        if self.size >= self.slots:
            raise RuntimeError(f"depth buffer full: all {self.slots} slots are written")
        prefix = self.view if self.view is not None else value.new_empty(0)
        self.view = _WriteSlot.apply(prefix, value.to(self.buf.dtype), self.buf, self.size)
        self.size += 1
        return self.view
