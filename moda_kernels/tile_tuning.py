"""Autotuning of the depth-stream kernels that walk a prefix of slots per token tile (AttnRes, MUDD).

Each such kernel loads one [BLOCK_T, BLOCK_D] tile of a slot per loop step. What keeps it below the GPU's
bandwidth is how many bytes are in flight: tokens a program (BLOCK_T), programs an SM (its registers and warps),
and PREFETCH (the next slot's load issued before the current one is used). Which balance is fastest depends on
the GPU and the shape, so on a GPU the kernels are autotuned over those three, per key; under the Triton
interpreter (which cannot benchmark several configs) and with MODA_PIN_CONFIGS=1 each runs its pinned choice.

A candidate's size is its share of the tile per thread (BLOCK_T x the elements a token holds, over 32 x warps);
each kernel gives the most a thread may hold without register spills (ptxas -v, checked for sm_90 by its test)
and the candidates are those within it and above an eighth of it: the three largest BLOCK_T per warp count and
PREFETCH setting.
"""

from __future__ import annotations

import triton
from triton.runtime.autotuner import Autotuner

from .dispatch import interpreter, pin_configs

CANDIDATES = [triton.Config({"BLOCK_T": bt, "PREFETCH": pf}, num_warps=w)
              for pf in (False, True) for w in (8, 4) for bt in (1, 2, 4, 8, 16, 32, 64)]


def candidates(configs, pinned: tuple[int, int], per_token: int, budget: int) -> list:
    """The configs to time: pinned = (BLOCK_T, num_warps) of the untuned launch (without PREFETCH) first, then
    every other whose per-thread share (BLOCK_T * per_token / (32 * warps)) is in (budget / 8, budget]; with
    MODA_PIN_CONFIGS=1 the pinned one alone."""

    def key(c):
        return c.kwargs["BLOCK_T"], c.num_warps, c.kwargs["PREFETCH"]

    def fits(c):
        share = c.kwargs["BLOCK_T"] * per_token / (32 * c.num_warps)
        return budget / 8 < share <= budget

    # The pinned launch may lie outside CANDIDATES (MUDD at one way and D = 32 pins 128 tokens): made here then.
    first = [c for c in configs if key(c) == (*pinned, False)] or [
        triton.Config({"BLOCK_T": pinned[0], "PREFETCH": False}, num_warps=pinned[1])]
    return first if pin_configs() else first + [c for c in configs if fits(c) and key(c) != (*pinned, False)]


def tuned(fn, key: list[str], prune, restore: list[str] | None = None):
    """fn autotuned over CANDIDATES (pruned per launch by ``prune(configs, args)``, args the launch's arguments by
    name; ``restore``: the arguments it adds into, put back after each trial), or fn itself under the
    interpreter."""
    if interpreter():
        return fn
    return triton.autotune(configs=CANDIDATES, key=key, restore_value=restore, prune_configs_by={
        "early_config_prune": lambda configs, nargs, **kw: prune(configs, {**nargs, **kw})})(fn)


def launch(kernel, grid, pinned: dict, *args, **kwargs) -> dict:
    """Runs kernel (from ``tuned``) with grid(meta); returns the launch constants it ran with (BLOCK_T,
    PREFETCH): the autotuner's choice, or ``pinned`` (BLOCK_T, PREFETCH, num_warps) for the bare kernel."""
    if isinstance(kernel, Autotuner):
        kernel[grid](*args, **kwargs)
        return dict(kernel.best_config.kwargs)
    kernel[grid(pinned)](*args, **kwargs, **pinned)
    return {k: pinned[k] for k in ("BLOCK_T", "PREFETCH")}
