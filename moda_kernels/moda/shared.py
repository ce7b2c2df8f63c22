"""What the forward and backward launches of the MoDA kernels share (host side and two jit helpers).

Config tagging and pruning (the autotuner's early_config_prune, shared-memory estimates for Hopper, pinning
one config where dispatch.pin_configs() says so), the autotune key, the folding of GQA groups into rows
(row_group, sub_tile_rows), the dot precision per dtype, and in the kernels the online-softmax update and the
causal loop bounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import pin_configs

LOG2E = 1.4426950408889634


def tagged_configs(entries, blocks=("BLOCK_M", "BLOCK_N", "BLOCK_DN")):
    """Configs and their mode tags from (*block sizes, warps, stages, modes) entries, block sizes in the order
    of ``blocks``; modes is a comma list of 'seq', 'depth', 'moda' (the launches the config is tuned for) or
    'fallback'."""
    n = len(blocks)
    configs = [triton.Config(dict(zip(blocks, e[:n])), num_warps=e[n], num_stages=e[n + 1]) for e in entries]
    return configs, [frozenset(e[-1].split(",")) for e in entries]


# Hopper (H100/H200): at most 227 KiB of shared memory per block.
SMEM_LIMIT = 232448

def launch_mode(has_seq: bool, has_depth: bool) -> str:
    """The config tag of a launch: sequence-only, depth-only or both (MoDA, fused)."""
    return "moda" if has_seq and has_depth else ("seq" if has_seq else "depth")


def smem_estimate(kind, cfg, G, head_d, elt, has_seq, has_depth):
    """Upper estimate of a config's shared memory (bytes), checked against Triton's sm_90 allocation by
    experiments/bench/check_smem.py. Pipelined loads get stages - 1 buffers from 3 stages on, and up to
    `stages` buffers below (seen at 2 stages with fp32); the depth phase loads [BLOCK_M / SUB_M, BLOCK_DN, d]
    K and V tiles, which is what dominates at d = 128."""
    kw = cfg.kwargs
    bm, bn, dn = kw["BLOCK_M"], kw["BLOCK_N"], kw.get("BLOCK_DN", 0)
    buf = cfg.num_stages if cfg.num_stages <= 2 else cfg.num_stages - 1
    nsub = max(bm // sub_tile_rows(G), 1)
    if kind == "dkdv":  # loops over query tiles: q and dO pipelined, K and V resident, P^T and dS^T staged
        return elt * (buf * 2 * bm * head_d + 2 * bn * head_d + 2 * bn * bm)
    rows = 1 if kind == "fwd" else 2  # q (and dO for dQ) staged as dot operands
    est = 0
    if has_seq:
        est = max(est, elt * (buf * 2 * bn * head_d + rows * bm * head_d + rows * bm * bn))
    if has_depth:
        est = max(est, elt * (buf * 2 * nsub * dn * head_d + rows * bm * head_d + rows * bm * dn))
    return est


def make_prune(kind, tags):
    """early_config_prune: keep the configs tagged with the launch's mode whose shared memory fits; if none
    does, the fitting fallbacks; if still none, the single smallest config (never an empty list).
    With ``MODA_PIN_CONFIGS=1`` (dispatch.pin_configs) only the first of them is kept: no autotuning (fast GPU
    tests)."""

    def prune(configs, named_args, **kwargs):
        kept = _prune(configs, named_args, **kwargs)
        return kept[:1] if pin_configs() else kept

    def _prune(configs, named_args, **kwargs):
        q = named_args.get("Q")
        elt = q.element_size() if q is not None and hasattr(q, "element_size") else 4
        has_seq, has_depth = kwargs.get("HAS_SEQ", True), kwargs.get("HAS_DEPTH", False)
        mode = "seq" if kind == "dkdv" else launch_mode(has_seq, has_depth)
        est = [smem_estimate(kind, c, kwargs["G"], kwargs["HEAD_D"], elt, has_seq, has_depth) for c in configs]
        fits = [e <= SMEM_LIMIT for e in est]
        tuned = [c for c, t, ok in zip(configs, tags, fits) if mode in t and ok]
        if tuned:
            return tuned
        fallback = [c for c, t, ok in zip(configs, tags, fits) if "fallback" in t and ok]
        return fallback or [configs[min(range(len(configs)), key=est.__getitem__)]]

    return prune


# Autotune key: bucketed T and L (powers of two) so that every layer of a deep model (L = 1, 2, ...)
# or a ragged T does not re-tune, plus every compile-time switch that changes the kernel's cost.
TUNE_KEY = ["T_BUCKET", "L_BUCKET", "G", "HEAD_D", "HAS_SEQ", "HAS_DEPTH", "HAS_INIT", "CAUSAL"]


def dot_precision(dtype: torch.dtype) -> str | None:
    """fp32 inputs get exact fp32 products (the test reference); 16-bit inputs keep Triton's default."""
    return "ieee" if dtype == torch.float32 else None


def sub_tile_rows(G: int) -> int:
    """Rows of a depth sub-tile: whole tokens (a multiple of the row group) and at least a tensor-core M of 16."""
    return max(16, row_group(G, True))


def row_group(G: int, has_depth: bool) -> int:
    """Rows per token in the folded query. A depth phase needs tiles of whole tokens, so a group that is not a
    power of two (Table 6's G=3) gets padding rows up to the next power of two there: they are masked, never
    loaded or stored, and cost (GP - G) / GP of the depth phase's arithmetic. Sequence passes fold any G."""
    return triton.next_power_of_2(G) if has_depth else G


@triton.jit
def seq_bounds(start_m, T, GP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Sequence key range of a folded row tile: keys [0, n_full) need no mask, [n_full, n_end) are masked.

    Causal: keys s <= the tile's first token are visible to every row; the last token seen is the tile's last
    (capped at T - 1). Non-causal: only the ragged last key tile is masked."""
    if CAUSAL:
        t_first = start_m // GP
        t_last = tl.minimum((start_m + BLOCK_M - 1) // GP, T - 1)
        n_full = ((t_first + 1) // BLOCK_N) * BLOCK_N
        n_end = t_last + 1
    else:
        n_full = (T // BLOCK_N) * BLOCK_N
        n_end = T
    return n_full, n_end


@triton.jit
def softmax_step(s, m_i, l_i, MASKED: tl.constexpr):
    """One online-softmax update in log2 units with the scores s [rows, cols]: returns (p, alpha, l_new, m_new),
    with acc_new = acc * alpha + p @ V. With MASKED (some entries -inf) a row that has seen no key yet (padded
    rows) keeps m = 0, so that exp2 never sees (-inf) - (-inf)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    return p, alpha, l_i * alpha + tl.sum(p, 1), m_new
