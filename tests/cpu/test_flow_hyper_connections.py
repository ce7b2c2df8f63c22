"""Hyper-Connections (arXiv 2409.19606) against a reference written from the paper's equations."""

from __future__ import annotations

import pytest
import torch
from flow_checks import (
    assert_cached_generation_matches_uncached,
    assert_compiles_to_one_graph,
    assert_matches_reference,
    assert_triton_backend_matches_naive,
    compile_for_sm90,
    counted_forward_flops,
    randomize,
    ref_attention,
    ref_ffn,
    ref_head,
    ref_norm,
    tiny,
)

from moda_lab.model import GPT, MixerConfig

NORMS = ["pre", "post", "reordered"]


def hc(n=3, dynamic=True):
    return MixerConfig("hyper_connections", expansion=n, dynamic=dynamic)


def reference(cfg):
    """Eq. (the HC matrix): h = A_m^T H, H' = B^T T(h) + A_r^T H per sublayer, copies handled one by one; DHC's
    weights from H_bar = norm(H): B + s_b tanh(H_bar W_b), A + s_a tanh(H_bar W_a)."""
    n, dynamic, norm = cfg.mixer.expansion, cfg.mixer.dynamic, cfg.norm

    def weights(P, pre, H):
        A_m, A_r, B = P[pre + "pre"], P[pre + "res"].T, P[pre + "post"]  # res is stored as A_r^T
        A_m, A_r, B = A_m.expand(*H.shape[:2], n), A_r.expand(*H.shape[:2], n, n), B.expand(*H.shape[:2], n)
        if dynamic:
            Hb = ref_norm(P, pre + "norm_weight", H)  # [B, T, n, D]
            W = P[pre + "w"]
            s_b, s_a = P[pre + "scale"]
            B = B + s_b * torch.tanh(Hb @ W[:, 0])
            A_m = A_m + s_a * torch.tanh(Hb @ W[:, 1])
            A_r = A_r + s_a * torch.tanh(Hb @ W[:, 2:])  # [B, T, i, j]
        return A_m, A_r, B

    def sublayer(P, pre, name, H, f):
        A_m, A_r, B = weights(P, pre, H)
        h = sum(A_m[..., i, None] * H[:, :, i] for i in range(n))
        w = name + ".norm.weight"
        y = f(ref_norm(P, w, h)) if norm == "pre" else f(h)
        if norm == "reordered":
            y = ref_norm(P, w, y)
        new = [B[..., j, None] * y + sum(A_r[..., i, j, None] * H[:, :, i] for i in range(n)) for j in range(n)]
        H = torch.stack(new, dim=2)
        return ref_norm(P, w, H) if norm == "post" else H

    def logits(P, idx):
        H = torch.stack([P["tok_emb.weight"][idx]] * n, dim=2)
        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}."
            H = sublayer(P, b + "mixer.attn_hc.", b + "attn_norm", H,
                         lambda h, b=b: ref_attention(P, b + "attn.", cfg, h, h, h))
            H = sublayer(P, b + "mixer.ffn_hc.", b + "ffn_norm", H, lambda h, b=b: ref_ffn(P, b + "ffn.", h))
        return ref_head(P, cfg, H.sum(2))

    return logits


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@pytest.mark.parametrize("norm", NORMS)
def test_forward_and_every_gradient_match_the_reference(norm, dynamic):
    cfg = tiny(hc(3, dynamic), norm)
    torch.manual_seed(0)
    # Spread 0.1, not 0.2: every sublayer adds its output to three copies and mixes them, so the stream and the
    # head's sum of copies grow faster than the residual's and fp32 rounding alone passes 1e-5 at 0.2 (in
    # float64, with the sdpa backend and RoPE in float64, model and reference agree to 1e-11 at 0.2).
    assert_matches_reference(randomize(GPT(cfg), scale=0.1), reference(cfg))


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@pytest.mark.parametrize("norm", NORMS)
def test_one_copy_with_initial_weights_is_the_residual_model(norm, dynamic):
    """n = 1 and the connection weights at their init (A_m = A_r = B = 1, dynamic terms zero): the residual."""
    torch.manual_seed(0)
    base = randomize(GPT(tiny(MixerConfig("residual"), norm)))
    model = GPT(tiny(hc(1, dynamic), norm))
    missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all(".mixer." in k for k in missing)
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(model(idx), base(idx), rtol=0, atol=0)


def test_static_init_is_the_papers_pre_norm_equivalent():
    model = GPT(tiny(hc(4, False)))
    for layer, block in enumerate(model.blocks):
        for k, conn in ((2 * layer, block.mixer.attn_hc), (2 * layer + 1, block.mixer.ffn_hc)):
            assert conn.pre.tolist() == [float(i == k % 4) for i in range(4)]
            assert torch.equal(conn.res, torch.eye(4)) and conn.post.tolist() == [1.0] * 4


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_params_and_flops_are_counted(dynamic):
    n, L, D = 3, 3, 32
    res, model = GPT(tiny(MixerConfig("residual"))), GPT(tiny(hc(n, dynamic)))
    per_sublayer = n + n * n + n + ((D + D * (n + 2) + 2) if dynamic else 0)
    assert model.num_params() - res.num_params() == 2 * L * per_sublayer
    # Independent count: the flop counter sees DHC's H_bar W per copy (a matmul), not the input, copy mix and
    # output (broadcast multiply-adds, counted by hand); the formula must add exactly both to the residual's.
    extra = model.forward_flops_per_token(16) - res.forward_flops_per_token(16)
    applied, seen = 2 * n * D + 2 * n * n * D + 2 * n * D, (2 * n * D * (n + 2) if dynamic else 0)
    assert counted_forward_flops(model) - counted_forward_flops(res) == 2 * L * seen
    assert extra == 2 * L * (applied + seen)


def test_bad_expansion_names_the_key():
    with pytest.raises(ValueError, match=r"^model.mixer.expansion=0 is out of range; allowed: >= 1$"):
        hc(0)


@pytest.mark.parametrize("norm", NORMS)
def test_cached_greedy_generation_equals_uncached(norm):
    assert_cached_generation_matches_uncached(tiny(hc(3, True), norm))


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_compiles_to_one_graph(dynamic):
    assert_compiles_to_one_graph(tiny(hc(3, dynamic), "post"))


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the Triton interpreter (tests/conftest.py)
NORM_PROJ_CASES = [((2, 7, 3), 40, 6), ((37,), 384, 6), ((5,), 96, 24), ((130,), 17, 3), ((1,), 1, 1), ((0, 4), 8, 6)]


def check_norm_proj_kernels(lead, K, M, seed: int, tf32: bool, tol: float) -> None:
    """Both norm_proj kernels on random inputs against moda_kernels/normproj/naive.py: z and rstd, and d x,
    d weight, d proj against autograd through the reference in fp64, shapes and dtypes included."""
    from moda_kernels.normproj import naive_norm_proj, naive_norm_proj_bwd, norm_proj_backward, norm_proj_forward

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, K, generator=gen).to(KERNEL_DEVICE)
    weight = (1 + 0.3 * torch.randn(K, generator=gen)).to(KERNEL_DEVICE)
    proj = torch.randn(M, K, generator=gen).to(KERNEL_DEVICE).t()
    dz = torch.randn(*lead, M, generator=gen).to(KERNEL_DEVICE)
    z, rstd = norm_proj_forward(x, weight, proj, 1e-6, tf32)
    torch.testing.assert_close(z, naive_norm_proj(x, weight, proj, 1e-6), atol=tol, rtol=tol)
    torch.testing.assert_close(rstd, x.square().mean(-1).add(1e-6).rsqrt(), atol=1e-6, rtol=1e-5)
    for got, ref in zip(norm_proj_backward(dz, x, weight, proj, z, rstd, tf32),
                        naive_norm_proj_bwd(dz, x, weight, proj, 1e-6)):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("lead,K,M", NORM_PROJ_CASES, ids=[f"R{'x'.join(map(str, r))}-K{k}-M{m}"
                                                            for r, k, m in NORM_PROJ_CASES])
def test_norm_proj_kernel_matches_the_reference(lead, K, M):
    """The Triton norm + projection (interpreter on CPU, fp32) against the reference at widths that are not
    multiples of the kernels' chunks, row counts that end mid-block (130 rows: several backward spans) or are
    zero, and a transposed proj (the layout mHC passes phi's weight in)."""
    check_norm_proj_kernels(lead, K, M, seed=K * 100 + M, tf32=False, tol=1e-5)


@pytest.mark.parametrize("lead,K,M", [((37,), 384, 6), ((5,), 96, 24)], ids=["hc", "mhc"])
def test_norm_proj_kernel_with_tf32_dots_runs_the_same_algorithm(lead, K, M):
    """tf32=True only changes the dots' input precision (a constexpr of both kernels). The interpreter computes
    every dot in fp32 whatever that precision, so on CPU the tf32 kernels match the reference as tightly as the
    ieee ones; on a GPU the tolerance is tf32's (tests/gpu/test_flow_kernels_gpu.py)."""
    check_norm_proj_kernels(lead, K, M, seed=K + M, tf32=True, tol=1e-5 if KERNEL_DEVICE == "cpu" else 2e-3)


def test_norm_proj_op_passes_tf32_to_both_kernels(monkeypatch):
    """normed_projection(tf32=True) reaches the forward kernel, and the op's autograd hands it to the backward
    kernel; the default (what the model runs) is full fp32 both ways."""
    import moda_lab.model.mixers.hyper_connections as module

    seen = []
    fwd, bwd = module.norm_proj_forward, module.norm_proj_backward
    monkeypatch.setattr(module, "norm_proj_forward", lambda *a: seen.append(("fwd", a[-1])) or fwd(*a))
    monkeypatch.setattr(module, "norm_proj_backward", lambda *a: seen.append(("bwd", a[-1])) or bwd(*a))
    gen = torch.Generator().manual_seed(3)
    for tf32 in (True, False):
        x = torch.randn(2, 3, 4, 16, generator=gen).to(KERNEL_DEVICE).requires_grad_()
        weight = torch.ones(16, device=KERNEL_DEVICE, requires_grad=True)
        proj = torch.randn(16, 6, generator=gen).to(KERNEL_DEVICE).requires_grad_()
        module.normed_projection(x, weight, proj, 1e-6, kernel=True, tf32=tf32).sum().backward()
    x = torch.randn(2, 3, 4, 16, generator=gen).to(KERNEL_DEVICE).requires_grad_()
    module.norm_proj(x, weight, proj, 1e-6)[0].sum().backward()  # tf32 left out
    assert seen == [("fwd", True), ("bwd", True), ("fwd", False), ("bwd", False), ("fwd", False), ("bwd", False)]


_NORM_PROJ_AOT = """
from sm90_aot import compile_sm90
from moda_kernels.normproj import triton_kernels as K

INTS = {"R", "K", "span", "stride_wk", "stride_wm"}
def arg_type(a):  # every tensor fp32: the copies are, in training (the stream adds into the fp32 embeddings)
    return "fp32" if a == "eps" else "i32" if a in INTS else "*fp32"

def compile(fn, constexprs):
    return compile_sm90(fn, constexprs, K.WARPS, arg_type, not_divisible={"eps", "stride_wm", "span"})

for M in (6, 24):  # HC's n + 2 and mHC's 2n + n^2 at n = 4
    for precision in ("ieee", "tf32"):
        for fn, tile in ((K._norm_proj_fwd_kernel, (K.BLOCK_R_FWD, K.BLOCK_K_FWD)),
                         (K._norm_proj_bwd_kernel, (K.BLOCK_R_BWD, K.BLOCK_K_BWD))):
            constexprs = {"M": M, "MP": K._mp(M), "BLOCK_R": tile[0], "BLOCK_K": tile[1], "PRECISION": precision}
            asm, regs, spills = compile(fn, constexprs)
            print(fn.__name__, f"M={M}", precision, asm, "regs", regs, "spills", *spills)
"""


@pytest.mark.slow
def test_norm_proj_kernels_compile_for_sm90_without_spills(tmp_path):
    """Both kernels at their launch tiles, for HC's and mHC's column counts and with ieee and tf32 dots, compiled
    ahead of time for sm_90 (the
    H100's; the interpreter never compiles): no register spills (ptxas -v). With dz @ proj^T as a third tl.dot the
    backward spilled 312 bytes at M = 6 and 1,172 at M = 24."""
    lines = compile_for_sm90(_NORM_PROJ_AOT, tmp_path)
    assert len(lines) == 8 and all("'cubin'" in line for line in lines), lines
    assert all(line.endswith("spills 0 0") for line in lines), lines


def test_norm_proj_ops_pass_torch_opcheck():
    """The custom ops' fake kernels give the real outputs' shapes, dtypes and strides (torch.compile traces the
    fakes) and their autograd registration is consistent: torch.library.opcheck on both ops."""
    from moda_lab.model.mixers.hyper_connections import norm_proj, norm_proj_bwd

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 40, generator=gen).to(KERNEL_DEVICE).requires_grad_()
    weight = torch.randn(40, generator=gen).to(KERNEL_DEVICE).requires_grad_()
    proj = torch.randn(6, 40, generator=gen).to(KERNEL_DEVICE).t().requires_grad_()
    torch.library.opcheck(norm_proj, (x, weight, proj, 1e-6))
    z, rstd = (t.detach() for t in norm_proj(x, weight, proj, 1e-6))
    torch.library.opcheck(norm_proj_bwd, (torch.randn_like(z), x.detach(), weight.detach(), proj.detach(), z, rstd))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_triton_backend_runs_the_weights_through_the_norm_proj_op(norm, monkeypatch):
    """attn_backend=triton routes every sublayer's H_bar W through the norm_proj op, with the naive backend's loss
    and every gradient (fp32)."""
    import moda_lab.model.mixers.hyper_connections as module

    calls = []
    real = module.norm_proj_forward
    monkeypatch.setattr(module, "norm_proj_forward", lambda *a: calls.append(tuple(a[0].shape)) or real(*a))
    model = assert_triton_backend_matches_naive(tiny(hc(3), norm, d_model=64, attn_backend="triton"), KERNEL_DEVICE)
    assert calls == [(2, 8, 3, 64)] * (2 * model.cfg.n_layers)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="compiles a CPU model through the Triton interpreter")
def test_compiles_to_one_graph_through_the_norm_proj_op():
    """With the Triton backend the norm_proj op (and its backward op) is one node of the one graph."""
    torch._dynamo.reset()
    assert_compiles_to_one_graph(tiny(hc(3), "post", d_model=64, attn_backend="triton"))
