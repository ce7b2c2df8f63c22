"""Attention Residuals (arXiv 2603.15031) against plain-PyTorch references written from the paper: Eqs. 2-4
(Full AttnRes: a Python list of every sublayer's output) and Fig. 2 (Block AttnRes: a list of completed blocks
and the partial sum), each read a torch.stack + softmax. Forward and every gradient on random weights (fp32,
1e-5); the read op alone in fp64 and its Triton kernel (interpreter); the paper's identities; parameters and
FLOPs against counts made here; norm placements; the generation cache; one compiled graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flow_checks import (
    assert_cached_generation_matches_uncached,
    assert_compiles_to_one_graph,
    assert_matches_reference,
    compile_for_sm90,
    counted_forward_flops,
    randomize,
    ref_attention,
    ref_ffn,
    ref_head,
    ref_norm,
    tiny,
)

from helpers import CONF
from moda_kernels.attnres import (
    attnres_read_backward,
    attnres_read_forward,
    naive_attnres_read,
    naive_attnres_read_bwd,
)
from moda_lab.config import ConfigError
from moda_lab.model import GPT, MixerConfig, ModelConfig
from moda_lab.model.depth import DepthStream, new_stream_buffers
from moda_lab.model.mixers.attnres import DepthQuery
from moda_lab.train.preflight import check_command_line

L, D = 3, 32  # flow_checks.SHAPE
NORMS = ["pre", "post", "reordered"]
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the Triton interpreter (tests/conftest.py)


def attnres_cfg(block_size: int = 1, norm: str = "pre", **kw) -> ModelConfig:
    return tiny(MixerConfig("attnres", block_size=block_size), norm, **kw)


def random_model(cfg: ModelConfig, seed: int = 1) -> GPT:
    """Every parameter redrawn (flow_checks.randomize), the pseudo-queries as N(0, 0.2^2) vectors: depth logits
    of about unit spread. randomize's all-ones-ish vectors (or std 0.5) line up with the sources and make the
    depth softmaxes so sharp that fp32 rounding sets the error: model and reference then each sit up to ~1.5e-5
    from an fp64 evaluation of the reference, past the 1e-5 this test holds both to."""
    torch.manual_seed(0)
    model = randomize(GPT(cfg), seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_read.query"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


# --- the references: P = dict(model.named_parameters()), idx [B, T] -> logits ------------------------------


def attnres(P: dict, read: str, sources: list[torch.Tensor], uniform: bool = False) -> torch.Tensor:
    """Eqs. 2-4 (Fig. 2's block_attn_res): alpha_j = softmax_j(w . RMSNorm(v_j)), h = sum_j alpha_j v_j."""
    V = torch.stack(sources)  # [m, B, T, D]
    if uniform:
        return V.mean(0)
    K = ref_norm(P, read + ".key_norm.weight", V)
    alpha = torch.einsum("d,mbtd->mbt", P[read + ".query"], K).softmax(0)
    return torch.einsum("mbt,mbtd->btd", alpha, V)


def sublayers(cfg: ModelConfig):
    """(sublayer index i, parameter prefix of its read, f_i(h)) in order: attention then FFN of every layer. The
    placement's norm sits on the sublayer's input (pre) or output (reordered); post-norm's is on the sum (``add``)."""
    for n in range(cfg.n_layers):
        for j, which in enumerate(("attn", "ffn")):
            pre = f"blocks.{n}."
            norm = pre + f"{which}_norm.norm.weight"

            def f(P, h, pre=pre, which=which, norm=norm):
                x = ref_norm(P, norm, h) if cfg.norm == "pre" else h
                y = ref_attention(P, pre + "attn.", cfg, x, x, x) if which == "attn" else ref_ffn(P, pre + "ffn.", x)
                return ref_norm(P, norm, y) if cfg.norm == "reordered" else y

            yield 2 * n + j, pre + f"mixer.{which}_read", norm, f


def add(P: dict, cfg: ModelConfig, norm: str, partial: torch.Tensor | None, y: torch.Tensor, i: int) -> torch.Tensor:
    """b_n^{i+1} = b_n^i + f_i(h_i) (a block's first sublayer starts the sum); post-norm normalises the sum, but
    for the last sublayer, whose norm follows the output AttnRes (``output``)."""
    s = y if partial is None else partial + y
    return ref_norm(P, norm, s) if cfg.norm == "post" and i < 2 * cfg.n_layers - 1 else s


def output(P: dict, cfg: ModelConfig, sources: list[torch.Tensor], uniform: bool) -> torch.Tensor:
    """The output AttnRes over every source, post-normed with the last sublayer's norm, then the head."""
    last = f"blocks.{cfg.n_layers - 1}."
    out = attnres(P, last + "mixer.out_read", sources, uniform)
    if cfg.norm == "post":
        out = ref_norm(P, last + "ffn_norm.norm.weight", out)
    return ref_head(P, cfg, out)


def full_reference(cfg: ModelConfig, uniform: bool = False):
    """Full AttnRes, Eqs. 2-4: v_0 = embeddings, v_{i+1} = f_i(h_i), h_i = attention of w_i over v_0..v_i; then
    the output AttnRes over every v."""

    def logits(P, idx):
        values = [P["tok_emb.weight"][idx]]
        for i, read, norm, f in sublayers(cfg):
            h = attnres(P, read, values, uniform)
            values.append(add(P, cfg, norm, None, f(P, h), i))
        return output(P, cfg, values, uniform)

    return logits


def block_reference(cfg: ModelConfig, S: int, counts: list | None = None, uniform: bool = False):
    """Block AttnRes, Fig. 2: read over the completed blocks and the partial sum; at a boundary (every S
    sublayers, the first included) the partial sum joins the blocks and the next sum starts from zero; then the
    output AttnRes over every block, the last partial one included. ``counts`` collects each read's sources."""

    def logits(P, idx):
        blocks, partial = [], P["tok_emb.weight"][idx]  # the embeddings become b_0 at sublayer 0's boundary
        for i, read, norm, f in sublayers(cfg):
            h = attnres(P, read, blocks + [partial], uniform)
            if counts is not None:
                counts.append(len(blocks) + 1)
            if i % S == 0:
                blocks.append(partial)
                partial = None
            partial = add(P, cfg, norm, partial, f(P, h), i)
        if counts is not None:
            counts.append(len(blocks) + 1)
        return output(P, cfg, blocks + [partial], uniform)

    return logits


# --- exactness ------------------------------------------------------------------------------------------------

CASES = [(S, n) for S in (1, 2, 3, 6) for n in NORMS]


@pytest.mark.parametrize("S,norm", CASES, ids=[f"L{L}-D{D}-S{S}-{n}" for S, n in CASES])
def test_forward_and_every_gradient_match_the_fig2_reference(S, norm):
    cfg = attnres_cfg(S, norm)
    assert_matches_reference(random_model(cfg, seed=S), block_reference(cfg, S))


@pytest.mark.parametrize("norm", NORMS)
def test_full_attnres_matches_the_eq_2_4_reference(norm):
    cfg = attnres_cfg(1, norm)
    assert_matches_reference(random_model(cfg, seed=7), full_reference(cfg))


@pytest.mark.parametrize("last", [True, False], ids=["partial", "no-partial"])
def test_the_read_op_is_exact_in_fp64(last):
    """One read through the depth stream (slots put, read in place, gradients added into the stream's buffer)
    against torch.stack + softmax with autograd, in fp64: forward and the gradient of every source, the
    pseudo-query and the key-norm gain to 1e-12."""
    gen = torch.Generator().manual_seed(0)
    B, T, n = 2, 5, 4
    slots = [torch.randn(B, T, D, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(n)]
    partial = torch.randn(B, T, D, generator=gen, dtype=torch.float64).requires_grad_() if last else None
    read = DepthQuery(D, 1e-6).double()
    with torch.no_grad():
        read.query.copy_(torch.randn(D, generator=gen))
        read.key_norm.weight.copy_(torch.rand(D, generator=gen) + 0.5)
    P = {"r.query": read.query, "r.key_norm.weight": read.key_norm.weight}
    w = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    inputs = slots + ([partial] if last else []) + [read.query, read.key_norm.weight]
    want = attnres(P, "r", slots + ([partial] if last else []))
    want_grads = torch.autograd.grad((want * w).sum(), inputs)
    stream = DepthStream(*new_stream_buffers(1, n + 1, B, T, (D,), "cpu", torch.float64))
    for v in slots:
        stream.put(v)
    got = read(stream, partial)
    got_grads = torch.autograd.grad((got * w).sum(), inputs)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


KERNEL_CASES = [(2, 5, 3, 40, True), (1, 17, 2, 64, False), (2, 3, 1, 8, True), (1, 9, 5, 160, True)]


@pytest.mark.parametrize("B,T,n,Dk,last", KERNEL_CASES, ids=[f"B{b}-T{t}-n{n}-D{d}-{'partial' if p else 'slots'}"
                                                             for b, t, n, d, p in KERNEL_CASES])
@pytest.mark.parametrize("passes", ["one-pass", "one-pass-prefetch", "two-pass"])
def test_triton_read_matches_the_reference(B, T, n, Dk, last, passes, monkeypatch):
    """The Triton read (interpreter on CPU, fp32) against moda_kernels/attnres/naive.py on a prefix view of a
    wider stream: output, log-sum-exp, dlast, dquery, dgain, and the slots' gradients added into a non-zero
    buffer; by the one-pass kernels (with and without PREFETCH) and by the two-pass ones (ONE_PASS_MAX_D lowered
    below D)."""
    from moda_kernels.attnres import triton_kernels as K

    if passes == "two-pass":
        monkeypatch.setattr(K, "ONE_PASS_MAX_D", Dk - 1)
    monkeypatch.setattr(K, "PREFETCH_UNTUNED", passes == "one-pass-prefetch")
    assert (K.schedule(Dk, "fwd") is None) == (K.schedule(Dk, "bwd") is None) == (passes == "two-pass")
    gen = torch.Generator().manual_seed(n)
    buf = torch.randn(B, T, n + 2, Dk, generator=gen).to(KERNEL_DEVICE)
    h, partial = buf[:, :, :n], torch.randn(B, T, Dk, generator=gen).to(KERNEL_DEVICE) if last else None
    query = (0.5 * torch.randn(Dk, generator=gen)).to(KERNEL_DEVICE)
    gain = (torch.rand(Dk, generator=gen) + 0.5).to(KERNEL_DEVICE)
    out, lse, lo = attnres_read_forward(h, partial, query, gain, 1e-6)
    torch.testing.assert_close(out, naive_attnres_read(h, partial, query, gain, 1e-6), atol=1e-5, rtol=1e-5)
    v = h if partial is None else torch.cat([h, partial.unsqueeze(2)], dim=2)
    logits = (v @ (query * gain)) * torch.rsqrt(v.square().mean(-1) + 1e-6)
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1), atol=1e-5, rtol=1e-5)
    assert not lo.any()  # fp32: out is exact; bf16's residual: the next test
    g = torch.randn(B, T, Dk, generator=gen).to(KERNEL_DEVICE)
    acc = torch.randn(B, T, n + 2, Dk, generator=gen).to(KERNEL_DEVICE)
    acc_ref = acc.clone()
    got = attnres_read_backward(g, h, partial, query, gain, 1e-6, acc[:, :, :n], out, lse, lo)
    want = naive_attnres_read_bwd(g, h, partial, query, gain, 1e-6, acc_ref[:, :, :n])
    torch.testing.assert_close(acc, acc_ref, atol=1e-5, rtol=1e-5)
    assert (got[0] is None) == (want[0] is None)
    for a, b in zip(got, want):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_autotuned_launch_runs_the_chosen_config_and_sums_only_its_rows(monkeypatch):
    """On a GPU the one-pass kernels run through triton.autotune: the grid follows the chosen BLOCK_T, and the
    backward sums the partial dquery rows of that many programs only (its buffer is sized for the fewest tokens a
    program among the candidates). Here an autotuner of one config (which runs it without benchmarking, as the
    interpreter needs): a candidate at D = 64 with twice the fewest tokens a program and PREFETCH, so the buffer
    has rows past the programs'; they hold garbage."""
    import triton

    from moda_kernels import tile_tuning
    from moda_kernels.attnres import triton_kernels as K

    B, T, n, Dk = 2, 40, 4, 64
    config = triton.Config({"BLOCK_T": 32, "PREFETCH": True}, num_warps=4)
    candidates = K.tuned_configs(tile_tuning.CANDIDATES, "bwd", Dk)
    assert min(c.kwargs["BLOCK_T"] for c in candidates) == 16 and any(
        (c.kwargs, c.num_warps) == (config.kwargs, 4) for c in candidates)
    for direction, fn in (("fwd", K._fwd_one_pass_kernel), ("bwd", K._bwd_one_pass_kernel)):
        tuned = triton.autotune(configs=[config], key=["D", "N_BUCKET"],
                                restore_value=["DH"] if direction == "bwd" else None)(fn)
        monkeypatch.setitem(K.ONE_PASS_KERNELS, direction, tuned)
    real_empty = torch.empty
    monkeypatch.setattr(K.torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(1e6))  # garbage, not zeros
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(B, T, n, Dk, generator=gen).to(KERNEL_DEVICE)
    partial = torch.randn(B, T, Dk, generator=gen).to(KERNEL_DEVICE)
    query, gain = (0.5 * torch.randn(Dk, generator=gen)).to(KERNEL_DEVICE), torch.ones(Dk, device=KERNEL_DEVICE)
    out, lse, lo = attnres_read_forward(h, partial, query, gain, 1e-6)
    torch.testing.assert_close(out, naive_attnres_read(h, partial, query, gain, 1e-6), atol=1e-5, rtol=1e-5)
    g = torch.randn(B, T, Dk, generator=gen).to(KERNEL_DEVICE)
    got = attnres_read_backward(g, h, partial, query, gain, 1e-6, torch.zeros_like(h), out, lse, lo)
    want = naive_attnres_read_bwd(g, h, partial, query, gain, 1e-6, torch.zeros_like(h))
    assert K.ONE_PASS_KERNELS["bwd"].best_config is config
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_tuning_candidates_stay_within_the_register_budget(monkeypatch):
    """The autotuner's candidates at the paper's D: the pinned choice first, each within a thread's budget, both
    PREFETCH settings; MODA_PIN_CONFIGS=1 keeps the pinned one alone."""
    from moda_kernels import tile_tuning
    from moda_kernels.attnres import triton_kernels as K

    for direction in ("fwd", "bwd"):
        kept = K.tuned_configs(tile_tuning.CANDIDATES, direction, 512)
        one = K.schedule(384, direction)
        assert (kept[0].kwargs, kept[0].num_warps) == ({"BLOCK_T": one["BLOCK_T"], "PREFETCH": False}, 8)
        assert len(kept) == 12 and {c.kwargs["PREFETCH"] for c in kept} == {False, True}
        assert all(c.kwargs["BLOCK_T"] * 512 <= K.ONE_PASS_PER_THREAD[direction] * 32 * c.num_warps for c in kept)
        monkeypatch.setenv("MODA_PIN_CONFIGS", "1")
        assert K.tuned_configs(tile_tuning.CANDIDATES, direction, 512) == kept[:1]
        monkeypatch.delenv("MODA_PIN_CONFIGS")


def test_one_pass_backward_in_bf16_takes_out_with_its_rounding_residual():
    """The one-pass backward's sum_j alpha_j da_j is (out + lo) . G: with a bf16 stream, out alone is off by its
    rounding, which shifts every c_j alike and puts a percent-level error into dquery and dgain; with lo they stay
    within 1e-4 of the fp64 reference (the two-pass kernels recompute the sum: ~1e-6). No tl.dot in these kernels,
    so the interpreter's bf16 is sound here."""
    gen = torch.Generator().manual_seed(0)
    B, T, n, Dk = 2, 16, 6, 128
    h = torch.randn(B, T, n, Dk, generator=gen).to(KERNEL_DEVICE, torch.bfloat16)
    partial = torch.randn(B, T, Dk, generator=gen).to(KERNEL_DEVICE, torch.bfloat16)
    g = torch.randn(B, T, Dk, generator=gen).to(KERNEL_DEVICE, torch.bfloat16)
    query = (0.3 * torch.randn(Dk, generator=gen)).to(KERNEL_DEVICE)
    gain = (torch.rand(Dk, generator=gen) + 0.5).to(KERNEL_DEVICE)
    want = naive_attnres_read_bwd(g.double(), h.double(), partial.double(), query.double(), gain.double(), 1e-6,
                                  torch.zeros(h.shape, dtype=torch.float64, device=KERNEL_DEVICE))
    out, lse, lo = attnres_read_forward(h, partial, query, gain, 1e-6)
    assert lo.dtype == torch.bfloat16 and lo.any()

    def query_grads_error(residual):
        got = attnres_read_backward(g, h, partial, query, gain, 1e-6, torch.zeros_like(h), out, lse, residual)
        return max(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(got[1:], want[1:]))

    assert query_grads_error(lo) < 1e-4
    assert query_grads_error(torch.zeros_like(lo)) > 1e-3


@pytest.mark.parametrize("passes", ["one-pass", "two-pass"])
def test_triton_backend_reads_through_the_kernel(passes, monkeypatch):
    """attn_backend=triton routes every read through the Triton kernel, with the reference's loss and gradients;
    the read op keeps the forward's lse and lo only for the one-pass backward (two-pass: empty, nothing saved)."""
    import moda_lab.model.mixers.attnres as mixer
    from moda_kernels.attnres import triton_kernels as K

    if passes == "two-pass":
        monkeypatch.setattr(K, "ONE_PASS_MAX_D", 63)  # below d_model = 64
    calls, kept = [], []
    real = mixer.attnres_read_forward
    monkeypatch.setattr(mixer, "attnres_read_forward", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    real_op = mixer.depth_attnres
    monkeypatch.setattr(mixer, "depth_attnres", lambda *a: (lambda r: kept.append(r[2].numel() > 0) or r)(real_op(*a)))
    cfg = attnres_cfg(2, attn_backend="triton", d_model=64)  # head dim 16: the attention kernel's smallest
    model = random_model(cfg).to(KERNEL_DEVICE)
    idx = torch.randint(0, 64, (2, 9)).to(KERNEL_DEVICE)
    loss = model(idx[:, :-1], idx[:, 1:])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert calls == [1, 1, 2, 2, 3, 3, 3]  # slots read by each of the 2L reads and the output read
    assert kept == [passes == "one-pass"] * 7
    model.set_backend("naive")
    ref = model(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(ref, list(model.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


_AOT = """
import triton
from sm90_aot import compile_sm90
from moda_kernels import tile_tuning
from moda_kernels.attnres import triton_kernels as K

INTS = {"sht", "shj", "sdt", "sdj", "n_tok", "n", "m", "D", "N_BUCKET"}
FP32 = {"U", "DU", "LSE", "LOGIT", "S", "DA"}

def arg_type(a):  # the stream in bf16, as in training
    return "fp32" if a == "eps" else "i32" if a in INTS else "*fp32" if a in FP32 else "*bf16"

def compile(fn, constexprs, num_warps=4):
    # The divisibility by 16 that the launcher's specialisation sees at D = 384 (pointers, strides, D, tokens).
    return compile_sm90(fn, constexprs, num_warps, arg_type, not_divisible={"eps", "n", "m", "N_BUCKET"})

for fn in (K._fwd_kernel, K._bwd_kernel):
    asm, regs, spills = compile(fn, {"BLOCK_T": K.BLOCK_T, "BLOCK_D": 128})
    print(fn.__name__, "two-pass", asm, "regs", regs, "spills", *spills)
# Every autotuning candidate at the paper's D (BLOCK_D = 512); at ONE_PASS_MAX_D the largest tile of each warp
# count and PREFETCH setting, where a spill would show first.
for D in (384, K.ONE_PASS_MAX_D):
    for fn, direction in ((K._fwd_one_pass_kernel, "fwd"), (K._bwd_one_pass_kernel, "bwd")):
        block_d = triton.next_power_of_2(D)
        configs = K.tuned_configs(tile_tuning.CANDIDATES, direction, block_d)
        if D != 384:
            configs = [c for c in configs if not any(o.num_warps == c.num_warps and o.kwargs["PREFETCH"] ==
                       c.kwargs["PREFETCH"] and o.kwargs["BLOCK_T"] > c.kwargs["BLOCK_T"] for o in configs)]
        for c in configs:
            asm, regs, spills = compile(fn, {**c.kwargs, "BLOCK_D": block_d}, c.num_warps)
            print(fn.__name__, f"D={D}", c.kwargs, c.num_warps, asm, "regs", regs, "spills", *spills)
"""


def test_triton_kernels_compile_for_h100(tmp_path):
    """Every kernel compiles ahead of time to an sm_90 cubin (no GPU needed): the interpreter checks the numbers,
    this the code generation (branches on the source index, runtime loops) that the interpreter does not. Every
    autotuning candidate of the one-pass kernels at the paper's D = 384, and the largest at ONE_PASS_MAX_D, spills
    no register (ptxas -v's report: a compiled kernel's n_regs / n_spills are only filled in on a GPU)."""
    lines = compile_for_sm90(_AOT, tmp_path)
    assert len(lines) == 2 + 2 * 12 + 2 * 4 and all("'cubin'" in line for line in lines), lines
    one_pass = [line for line in lines if "one_pass" in line]
    assert len(one_pass) == 32 and all(line.endswith("spills 0 0") for line in one_pass), lines


# --- the paper's identities -------------------------------------------------------------------------------


def test_fig2_with_one_sublayer_per_block_is_full_attnres():
    """The paper's two formulations agree: Block AttnRes with block size 1 is Full AttnRes (Eqs. 2-4)."""
    cfg = attnres_cfg(1)
    P = dict(random_model(cfg, seed=3).named_parameters())
    idx = torch.randint(0, 64, (2, 7))
    torch.testing.assert_close(block_reference(cfg, 1)(P, idx), full_reference(cfg)(P, idx), atol=0, rtol=0)


@pytest.mark.parametrize("S", [1, 4])
def test_zero_initialised_queries_read_the_uniform_average(S):
    """The paper's initialisation: every pseudo-query starts at zero and every key-norm gain at one, so every read
    is the plain mean of its sources, whatever the gains become (they are scrambled here)."""
    cfg = attnres_cfg(S)
    torch.manual_seed(0)
    model = GPT(cfg)
    reads = {n: p for n, p in model.named_parameters() if "_read." in n}
    assert len(reads) == 2 * (2 * L + 1)
    assert all((p == 0).all() if n.endswith("query") else (p == 1).all() for n, p in reads.items())
    with torch.no_grad():
        for n, p in reads.items():
            if n.endswith("key_norm.weight"):
                p.uniform_(0.5, 1.5)
    idx = torch.randint(0, 64, (2, 7))
    want = block_reference(cfg, S, uniform=True)(dict(model.named_parameters()), idx)
    torch.testing.assert_close(model(idx), want, atol=1e-5, rtol=1e-5)


def test_first_sublayer_reads_the_embeddings():
    """h_0 = v_0: a softmax over one source is that source, whatever the query."""
    cfg = attnres_cfg(2)
    model = random_model(cfg)
    idx = torch.randint(0, 64, (1, 5))
    seen = []
    model.blocks[0].attn.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    model(idx)
    torch.testing.assert_close(seen[0], model.blocks[0].attn_norm.norm(model.tok_emb(idx)), atol=0, rtol=0)


def test_block_size_must_be_positive(tmp_path, monkeypatch):
    """A bad block size is refused at the door in one line naming the key, and nothing is written."""
    msg = r"model.mixer.block_size must be >= 1 \(1: Full AttnRes\), got 0$"
    with pytest.raises(ValueError, match="^" + msg):
        MixerConfig("attnres", block_size=0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=msg):
        check_command_line([f"run_root={tmp_path / 'runs'}", "model=attnres", "model.mixer.block_size=0"], CONF)
    assert list(tmp_path.iterdir()) == []


# --- size and cost ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("S", [1, 2, 4])
def test_params_and_flops_against_counts_made_here(S):
    """model/params: a pseudo-query and a key-norm gain (D each) per read: 2 per layer and the output read.
    model/flops_per_token: the residual model's, plus 4 D per source of every read (w . k_j and alpha_j v_j), the
    sources counted by the Fig. 2 reference as it runs; torch's flop counter (the reads' registered formula)
    sees the same total."""
    cfg = attnres_cfg(S, tie_embeddings=False)
    model, residual = GPT(cfg), GPT(dataclasses.replace(cfg, mixer=MixerConfig("residual")))
    assert model.num_params() - residual.num_params() == (2 * L + 1) * 2 * D
    counts: list[int] = []
    block_reference(cfg, S, counts)(dict(model.named_parameters()), torch.randint(0, 64, (1, 4)))
    assert len(counts) == 2 * L + 1
    T = 16
    assert model.forward_flops_per_token(T) == residual.forward_flops_per_token(T) + 4 * D * sum(counts)
    assert counted_forward_flops(model, T) == model.forward_flops_per_token(T)
    assert model.flops_per_token(T) == 3 * model.forward_flops_per_token(T)


def test_depth_stream_holds_the_completed_blocks_only():
    """Full AttnRes keeps the embeddings and every sublayer output but the last (the output read's partial);
    Block AttnRes one slot per completed block."""
    for S, slots in ((1, 2 * L), (2, L), (4, 2), (6, 1)):
        cfg = attnres_cfg(S)
        assert type(GPT(cfg).blocks[0].mixer).stream_spec(cfg).slots == slots


# --- composes with training, the generation cache, torch.compile ---------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_trains_under_every_norm_placement(norm):
    torch.manual_seed(0)
    model = GPT(attnres_cfg(2, norm))
    idx = torch.randint(0, 64, (2, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(60):
        loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        if step == 0:
            first = loss.item()
            assert not [n for n, p in model.named_parameters() if p.grad is None]
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("S", [1, 4])
def test_cached_generation_matches_uncached(S):
    assert_cached_generation_matches_uncached(attnres_cfg(S))


@pytest.mark.slow
@pytest.mark.parametrize("S", [1, 4])
def test_whole_model_compiles_to_one_graph(S):
    assert_compiles_to_one_graph(attnres_cfg(S))


@pytest.mark.slow
@pytest.mark.parametrize("passes", ["one-pass", "two-pass"])
def test_whole_model_compiles_to_one_graph_through_the_kernel(passes, monkeypatch):
    """The Triton read compiles to one graph too (its op returns the output and, for the one-pass backward, the
    log-sum-exp and rounding residual, which that backward takes back; its fake op agrees on the schedule), with
    the eager loss and gradients."""
    from moda_kernels.attnres import triton_kernels as K

    if passes == "two-pass":
        monkeypatch.setattr(K, "ONE_PASS_MAX_D", 63)  # below d_model = 64
    torch._dynamo.reset()  # the schedule is fixed within a process; here it changes between the two cases
    assert_compiles_to_one_graph(attnres_cfg(2, attn_backend="triton", d_model=64))
