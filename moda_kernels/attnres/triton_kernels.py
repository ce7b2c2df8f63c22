"""Triton kernels of one Attention Residuals read (the math: naive.py): one pass over the sources per direction.

One pass (D <= ONE_PASS_MAX_D; ``schedule`` decides): a program owns BLOCK_T tokens and all D features
(BLOCK_D >= D, masked). Forward: per source j, one read of v_j gives its mean square and u . v_j, so its logit;
the online softmax's running max and sum rescale the [BLOCK_T, BLOCK_D] fp32 accumulator of alpha_j v_j; the
per-token log-sum-exp and the output's rounding residual are stored for the backward. Backward: from those,
alpha_j = exp(logit_j - lse) and sum_j alpha_j da_j = out . G, so one read of v_j gives its logit, da_j = G . v_j
and the final dv_j = alpha_j G + c_j u + e_j v_j, added into the stream's gradient buffer in place (read-add-write;
the program is the only writer of its tile), and the program's partial du = sum_t c_j v_j, which the launcher
reduces over programs (no atomics: deterministic).

Two passes (wider D, whose tiles would not fit in registers): the features are walked in BLOCK_D chunks. Forward:
pass 1 keeps the logits in a [tokens, m] scratch with the online max and sum; pass 2 sums alpha_j v_j. Backward:
pass 1 recomputes the logits with da_j; pass 2 walks each feature chunk over the sources as above.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import tile_tuning
from ..dispatch import pin_configs

BLOCK_T = 16  # tokens per program of the two-pass kernels


@triton.jit
def _source(H, LAST, tok, j, n, sht, shj, D):
    """Row pointers [BLOCK_T] of source j: slot j of the stream prefix, or (j == n) the partial sum."""
    if j < n:
        base = H + tok * sht + j * shj
    else:
        base = LAST + tok * D
    return base


@triton.jit
def _store_out(OUT, LO, offs, out, mask):
    """out (fp32) into OUT in the stream's dtype, and its rounding residual into LO: OUT + LO carries about twice
    the dtype's mantissa bits (exact zeros in fp32), so the one-pass backward's (OUT + LO) . G is
    sum_j alpha_j da_j to about fp32 rounding, not to the output dtype's (bf16 alone: about 1e-2 off in dquery)."""
    hi = out.to(OUT.dtype.element_ty)
    tl.store(OUT + offs, hi, mask=mask)
    tl.store(LO + offs, (out - hi.to(tl.float32)).to(LO.dtype.element_ty), mask=mask)


@triton.jit
def _add_source_grad(DH, DLAST, tok, j, n, sdt, sdj, D, dim, ok, dv):
    """Source j's gradient rows: added into slot j of the stream's gradient, or (j == n) stored as the partial
    sum's."""
    if j < n:
        dptr = DH + tok[:, None] * sdt + j * sdj + dim[None, :]
        prev = tl.load(dptr, mask=ok, other=0.0).to(tl.float32)
        tl.store(dptr, (prev + dv).to(DH.dtype.element_ty), mask=ok)
    else:
        tl.store(DLAST + tok[:, None] * D + dim[None, :], dv.to(DLAST.dtype.element_ty), mask=ok)


@triton.jit
def _fwd_kernel(H, LAST, U, OUT, LO, LSE, LOGIT, sht, shj, n_tok, n, m, D, eps,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok_t = tok < n_tok
    tok = tok.to(tl.int64)
    mx = tl.full([BLOCK_T], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_T], tl.float32)
    for j in range(0, m):
        base = _source(H, LAST, tok, j, n, sht, shj, D)
        ss = tl.zeros([BLOCK_T], tl.float32)
        dot = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dim = d0 + tl.arange(0, BLOCK_D)
            ok_d = dim < D
            v = tl.load(base[:, None] + dim[None, :], mask=ok_t[:, None] & ok_d[None, :], other=0.0).to(tl.float32)
            u = tl.load(U + dim, mask=ok_d, other=0.0)
            ss += tl.sum(v * v, 1)
            dot += tl.sum(v * u[None, :], 1)
        logit = dot * tl.rsqrt(ss / D + eps)
        tl.store(LOGIT + tok * m + j, logit, mask=ok_t)
        mx_new = tl.maximum(mx, logit)
        den = den * tl.exp(mx - mx_new) + tl.exp(logit - mx_new)
        mx = mx_new
    tl.debug_barrier()
    for d0 in range(0, D, BLOCK_D):
        dim = d0 + tl.arange(0, BLOCK_D)
        ok = ok_t[:, None] & (dim < D)[None, :]
        acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        for j in range(0, m):
            base = _source(H, LAST, tok, j, n, sht, shj, D)
            a = tl.exp(tl.load(LOGIT + tok * m + j, mask=ok_t, other=0.0) - mx) / den
            acc += a[:, None] * tl.load(base[:, None] + dim[None, :], mask=ok, other=0.0).to(tl.float32)
        _store_out(OUT, LO, tok[:, None] * D + dim[None, :], acc, ok)
    tl.store(LSE + tok, mx + tl.log(den), mask=ok_t)


@triton.jit
def _bwd_kernel(H, LAST, U, G, DH, DLAST, DU, LOGIT, S, DA, sht, shj, sdt, sdj, n_tok, n, m, D, eps,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    tok = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    ok_t = tok < n_tok
    tok = tok.to(tl.int64)
    mx = tl.full([BLOCK_T], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_T], tl.float32)
    wda = tl.zeros([BLOCK_T], tl.float32)  # sum_j exp(logit_j - mx) da_j, rescaled with mx
    for j in range(0, m):
        base = _source(H, LAST, tok, j, n, sht, shj, D)
        ss = tl.zeros([BLOCK_T], tl.float32)
        dot = tl.zeros([BLOCK_T], tl.float32)
        da = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dim = d0 + tl.arange(0, BLOCK_D)
            ok_d = dim < D
            ok = ok_t[:, None] & ok_d[None, :]
            v = tl.load(base[:, None] + dim[None, :], mask=ok, other=0.0).to(tl.float32)
            u = tl.load(U + dim, mask=ok_d, other=0.0)
            g = tl.load(G + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
            ss += tl.sum(v * v, 1)
            dot += tl.sum(v * u[None, :], 1)
            da += tl.sum(v * g, 1)
        s = tl.rsqrt(ss / D + eps)
        logit = dot * s
        tl.store(LOGIT + tok * m + j, logit, mask=ok_t)
        tl.store(S + tok * m + j, s, mask=ok_t)
        tl.store(DA + tok * m + j, da, mask=ok_t)
        mx_new = tl.maximum(mx, logit)
        scale = tl.exp(mx - mx_new)
        p = tl.exp(logit - mx_new)
        den = den * scale + p
        wda = wda * scale + p * da
        mx = mx_new
    mean_da = wda / den  # sum_j alpha_j da_j
    tl.debug_barrier()
    for d0 in range(0, D, BLOCK_D):
        dim = d0 + tl.arange(0, BLOCK_D)
        ok_d = dim < D
        ok = ok_t[:, None] & ok_d[None, :]
        u = tl.load(U + dim, mask=ok_d, other=0.0)
        g = tl.load(G + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
        du = tl.zeros([BLOCK_D], tl.float32)
        for j in range(0, m):
            base = _source(H, LAST, tok, j, n, sht, shj, D)
            logit = tl.load(LOGIT + tok * m + j, mask=ok_t, other=0.0)
            s = tl.load(S + tok * m + j, mask=ok_t, other=0.0)
            a = tl.where(ok_t, tl.exp(logit - mx) / den, 0.0)
            c = s * a * (tl.load(DA + tok * m + j, mask=ok_t, other=0.0) - mean_da)
            e = -c * s * logit / D
            v = tl.load(base[:, None] + dim[None, :], mask=ok, other=0.0).to(tl.float32)
            _add_source_grad(DH, DLAST, tok, j, n, sdt, sdj, D, dim, ok, a[:, None] * g + c[:, None] * u[None, :]
                             + e[:, None] * v)
            du += tl.sum(c[:, None] * v, 0)
        tl.store(DU + pid * D + dim, du, mask=ok_d)


@triton.jit
def _one_pass_tile(pid, n_tok, D, U, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """A one-pass program's tokens and its whole feature row (BLOCK_D >= D): (tok, ok_t, dim, ok_d, ok, u)."""
    tok = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    ok_t = tok < n_tok
    dim = tl.arange(0, BLOCK_D)
    ok_d = dim < D
    u = tl.load(U + dim, mask=ok_d, other=0.0)
    return tok.to(tl.int64), ok_t, dim, ok_d, ok_t[:, None] & ok_d[None, :], u


@triton.jit
def _load_source(H, LAST, tok, j, n, m, sht, shj, D, dim, ok):
    """Source j's [BLOCK_T, BLOCK_D] tile in the stream's dtype (masked off for j >= m: a prefetch past the end)."""
    base = _source(H, LAST, tok, j, n, sht, shj, D)
    return tl.load(base[:, None] + dim[None, :], mask=ok & (j < m), other=0.0)


@triton.jit
def _source_tiles(prev, H, LAST, tok, j, n, m, sht, shj, D, dim, ok, PREFETCH: tl.constexpr):
    """(source j's tile, the next step's prev). PREFETCH: prev is source j's tile, loaded a step earlier, and
    source j + 1's load is issued now; else source j is loaded now and prev (unused) passes through."""
    if PREFETCH:
        return prev, _load_source(H, LAST, tok, j + 1, n, m, sht, shj, D, dim, ok)
    else:
        return _load_source(H, LAST, tok, j, n, m, sht, shj, D, dim, ok), prev


@triton.jit
def _fwd_one_pass_kernel(H, LAST, U, OUT, LO, LSE, sht, shj, n_tok, n, m, D, eps, N_BUCKET,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr):
    """One read of each source: the online softmax rescales the [BLOCK_T, BLOCK_D >= D] accumulator per source.
    PREFETCH: source j + 1's load is issued before source j is used (two loads in flight per program)."""
    tok, ok_t, dim, ok_d, ok, u = _one_pass_tile(tl.program_id(0), n_tok, D, U, BLOCK_T, BLOCK_D)
    mx = tl.full([BLOCK_T], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_T], tl.float32)
    acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    nxt = _load_source(H, LAST, tok, 0, n, m if PREFETCH else 0, sht, shj, D, dim, ok)  # masked off without
    for j in range(0, m):
        cur, nxt = _source_tiles(nxt, H, LAST, tok, j, n, m, sht, shj, D, dim, ok, PREFETCH)
        v = cur.to(tl.float32)
        logit = tl.sum(v * u[None, :], 1) * tl.rsqrt(tl.sum(v * v, 1) / D + eps)
        mx_new = tl.maximum(mx, logit)
        scale = tl.exp(mx - mx_new)
        p = tl.exp(logit - mx_new)
        den = den * scale + p
        acc = acc * scale[:, None] + p[:, None] * v
        mx = mx_new
    _store_out(OUT, LO, tok[:, None] * D + dim[None, :], acc / den[:, None], ok)
    tl.store(LSE + tok, mx + tl.log(den), mask=ok_t)


@triton.jit
def _bwd_one_pass_kernel(H, LAST, U, G, OUT, LO, LSE, DH, DLAST, DU, sht, shj, sdt, sdj, n_tok, n, m, D, eps,
                         N_BUCKET, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr):
    """One read of each source: alpha_j = exp(logit_j - LSE) from the forward's log-sum-exp, and
    sum_j alpha_j da_j = (OUT + LO) . G from its output, so every source's gradient is final when it is read.
    PREFETCH as in the forward."""
    pid = tl.program_id(0)
    tok, ok_t, dim, ok_d, ok, u = _one_pass_tile(pid, n_tok, D, U, BLOCK_T, BLOCK_D)
    g = tl.load(G + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
    out = tl.load(OUT + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
    out += tl.load(LO + tok[:, None] * D + dim[None, :], mask=ok, other=0.0).to(tl.float32)
    mean_da = tl.sum(out * g, 1)  # sum_j alpha_j da_j
    lse = tl.load(LSE + tok, mask=ok_t, other=0.0)
    du = tl.zeros([BLOCK_D], tl.float32)
    nxt = _load_source(H, LAST, tok, 0, n, m if PREFETCH else 0, sht, shj, D, dim, ok)  # masked off without
    for j in range(0, m):
        cur, nxt = _source_tiles(nxt, H, LAST, tok, j, n, m, sht, shj, D, dim, ok, PREFETCH)
        v = cur.to(tl.float32)
        s = tl.rsqrt(tl.sum(v * v, 1) / D + eps)
        logit = tl.sum(v * u[None, :], 1) * s
        a = tl.where(ok_t, tl.exp(logit - lse), 0.0)
        c = s * a * (tl.sum(v * g, 1) - mean_da)
        e = -c * s * logit / D
        _add_source_grad(DH, DLAST, tok, j, n, sdt, sdj, D, dim, ok, a[:, None] * g + c[:, None] * u[None, :]
                         + e[:, None] * v)
        du += tl.sum(c[:, None] * v, 0)
    tl.store(DU + pid * D + dim, du, mask=ok_d)


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(token stride, slot stride) of a [B, T, n, D] view whose (B, T) merge into one token axis."""
    B, T = t.shape[:2]
    if B > 1 and t.stride(0) != T * t.stride(1):
        raise ValueError(f"stream view strides {tuple(t.stride())} do not merge its batch and time axes")
    if t.stride(-1) != 1:
        raise ValueError(f"stream view needs a contiguous feature dim; strides {tuple(t.stride())}")
    return t.stride(1), t.stride(2)


def _block_d(D: int) -> int:
    """The two-pass kernels' feature chunk: one that divides D when a power of two up to 128 does, else masked."""
    return next((b for b in (128, 64, 32) if D % b == 0), min(triton.next_power_of_2(D), 128))


ONE_PASS_MAX_D = 1024  # the widest D whose one-pass [BLOCK_T, D] fp32 tiles stay in registers; wider: two passes
ONE_PASS_WARPS = 8
# fp32 elements of a one-pass kernel's [BLOCK_T, BLOCK_D] tile, per direction: at 8 warps and BLOCK_D = 512 (the
# paper's D = 384) they compile for sm_90 with no spills (tests/cpu/test_flow_attnres.py prints the registers).
# The launch without tuning (the interpreter, MODA_PIN_CONFIGS=1) uses these.
ONE_PASS_TILE = {"fwd": 16 * 512, "bwd": 8 * 512}
# On a GPU the one-pass kernels are autotuned (moda_kernels/tile_tuning.py) per (D, dtype, slots rounded up to a
# power of two) over BLOCK_T, warps and PREFETCH, within this many fp32 tile elements a thread: ptxas -v finds no
# spill there at BLOCK_D = 512 and 1024, 4 and 8 warps, with and without PREFETCH, and spills one step above.
ONE_PASS_PER_THREAD = {"fwd": 64, "bwd": 32}
PREFETCH_UNTUNED = False  # PREFETCH of the launch without autotuning (the tests run both)


def schedule(D: int, direction: str) -> dict | None:
    """The one place that picks a read's kernels: the one-pass kernel's launch constants (BLOCK_D covers D, and
    BLOCK_T tokens keep its tile size) when D <= ONE_PASS_MAX_D, else None: the two-pass kernels. Both wrappers
    below ask it, so a forward and its backward always agree (the one-pass backward needs the one-pass
    forward's out and log-sum-exp; the two-pass backward recomputes everything). On a GPU the autotuner then
    picks BLOCK_T, num_warps and PREFETCH among tuned_configs; these are its pinned choice."""
    if D > ONE_PASS_MAX_D:
        return None
    block_d = triton.next_power_of_2(D)
    return {"BLOCK_T": min(64, max(1, ONE_PASS_TILE[direction] // block_d)), "BLOCK_D": block_d,
            "num_warps": ONE_PASS_WARPS}


def tuned_configs(configs, direction: str, block_d: int) -> list:
    """The one-pass kernel's autotuning candidates at BLOCK_D (tile_tuning.candidates), the pinned one first."""
    one = schedule(block_d, direction)
    return tile_tuning.candidates(configs, (one["BLOCK_T"], one["num_warps"]), block_d,
                                  ONE_PASS_PER_THREAD[direction])


# direction -> the launched kernel (autotuned on a GPU). The backward adds into the slots' gradient buffer DH,
# which the autotuner puts back after each trial.
ONE_PASS_KERNELS = {
    "fwd": tile_tuning.tuned(_fwd_one_pass_kernel, ["D", "N_BUCKET"],
                             lambda configs, args: tuned_configs(configs, "fwd", args["BLOCK_D"])),
    "bwd": tile_tuning.tuned(_bwd_one_pass_kernel, ["D", "N_BUCKET"],
                             lambda configs, args: tuned_configs(configs, "bwd", args["BLOCK_D"]), ["DH"]),
}


@functools.cache
def _fewest_tokens(direction: str, block_d: int, pinned: bool) -> int:
    """The smallest BLOCK_T among a direction's candidates at BLOCK_D (``pinned``: MODA_PIN_CONFIGS, which
    narrows them): the backward sizes its partial-dquery rows by it before the autotuner picks. Cached: the
    candidates are rebuilt from the config list otherwise, on every call."""
    return min(c.kwargs["BLOCK_T"] for c in tuned_configs(tile_tuning.CANDIDATES, direction, block_d))


def _launch_one_pass(direction: str, n_tok: int, block_d: int, *args) -> int:
    """Launches the one-pass kernel of a direction over n_tok tokens (args: its arguments up to N_BUCKET); returns
    the BLOCK_T it ran with (the backward's partial dquery rows: one per program)."""
    one = schedule(block_d, direction)
    pinned = {"BLOCK_T": one["BLOCK_T"], "PREFETCH": PREFETCH_UNTUNED, "num_warps": one["num_warps"]}
    ran = tile_tuning.launch(ONE_PASS_KERNELS[direction], lambda meta: (triton.cdiv(n_tok, meta["BLOCK_T"]),),
                             pinned, *args, BLOCK_D=block_d)
    return ran["BLOCK_T"]


def _inputs(h, last, query, gain):
    B, T, n, D = h.shape
    last = last.to(h.dtype).contiguous() if last is not None else h.new_empty(0)
    u = (query.float() * gain.float()).contiguous()
    return B, T, n, D, last, u, n + (last.numel() > 0)


def attnres_read_forward(h: torch.Tensor, last: torch.Tensor | None, query: torch.Tensor, gain: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h [B, T, n, D] prefix view, last [B, T, D] or None, query and gain [D] -> (out [B, T, D] in h's dtype,
    the softmax's log-sum-exp [B, T] in fp32, out's rounding residual [B, T, D] in h's dtype): the backward takes
    the three back."""
    B, T, n, D, last_c, u, m = _inputs(h, last, query, gain)
    sht, shj = _rows(h)
    out = torch.empty(B, T, D, dtype=h.dtype, device=h.device)
    lse = torch.empty(B, T, dtype=torch.float32, device=h.device)
    lo = torch.empty_like(out)
    one = schedule(D, "fwd")
    if one is not None:
        _launch_one_pass("fwd", B * T, one["BLOCK_D"], h, last_c, u, out, lo, lse, sht, shj, B * T, n, m, D, eps,
                         triton.next_power_of_2(m))
        return out, lse, lo
    logit = torch.empty(B * T, m, dtype=torch.float32, device=h.device)
    grid = (triton.cdiv(B * T, BLOCK_T),)
    _fwd_kernel[grid](h, last_c, u, out, lo, lse, logit, sht, shj, B * T, n, m, D, eps, BLOCK_T=BLOCK_T,
                      BLOCK_D=_block_d(D))
    return out, lse, lo


def attnres_read_backward(g: torch.Tensor, h: torch.Tensor, last: torch.Tensor | None, query: torch.Tensor,
                          gain: torch.Tensor, eps: float, dh_acc: torch.Tensor, out: torch.Tensor,
                          lse: torch.Tensor, lo: torch.Tensor):
    """Adds the slots' gradients into dh_acc (a [B, T, n, D] view like h) in place; returns (dlast or None,
    dquery, dgain). ``out``, ``lse`` and ``lo`` are what attnres_read_forward returned for these inputs."""
    B, T, n, D, last_c, u, m = _inputs(h, last, query, gain)
    sht, shj = _rows(h)
    sdt, sdj = _rows(dh_acc)
    g = g.contiguous()
    dlast = torch.empty(B, T, D, dtype=h.dtype, device=h.device) if last is not None else h.new_empty(0)
    one = schedule(D, "bwd")
    if one is not None:
        fewest = _fewest_tokens("bwd", one["BLOCK_D"], pin_configs())
        du = torch.empty(triton.cdiv(B * T, fewest), D, dtype=torch.float32, device=h.device)  # rows: programs
        bt = _launch_one_pass("bwd", B * T, one["BLOCK_D"], h, last_c, u, g, out.contiguous(), lo.contiguous(),
                              lse.contiguous(), dh_acc, dlast, du, sht, shj, sdt, sdj, B * T, n, m, D, eps,
                              triton.next_power_of_2(m))
        du = du[: triton.cdiv(B * T, bt)]  # the rows its programs wrote
    else:
        grid = (triton.cdiv(B * T, BLOCK_T),)
        du = torch.empty(grid[0], D, dtype=torch.float32, device=h.device)
        logit, s, da = (torch.empty(B * T, m, dtype=torch.float32, device=h.device) for _ in range(3))
        _bwd_kernel[grid](h, last_c, u, g, dh_acc, dlast, du, logit, s, da, sht, shj, sdt, sdj, B * T, n, m, D, eps,
                          BLOCK_T=BLOCK_T, BLOCK_D=_block_d(D))
    du = du.sum(0)
    dl = dlast.to(last.dtype) if last is not None else None
    return dl, (du * gain.float()).to(query.dtype), (du * query.float()).to(gain.dtype)
