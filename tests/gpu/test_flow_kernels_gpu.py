"""The depth-flow kernels (AttnRes read, MUDD mix, Sinkhorn-Knopp, HC/mHC norm + projection) on the GPU at the Table 6 width, autotuned
(moda_kernels/tile_tuning.py: every candidate tile is compiled and timed here, which the CPU tests cannot do):
each against its fp32 reference in fp32 and bf16, forward and backward, with the gradient buffers the backward
adds into starting non-zero (the autotuner's restore_value must put them back after every trial)."""

from __future__ import annotations

import pytest
import torch

from moda_kernels.attnres import attnres_read_backward, attnres_read_forward, naive_attnres_read, naive_attnres_read_bwd
from moda_kernels.mudd import mudd_mix_backward, mudd_mix_forward, naive_mudd_mix, naive_mudd_mix_bwd
from moda_kernels.normproj import naive_norm_proj, naive_norm_proj_bwd, norm_proj_backward, norm_proj_forward
from moda_kernels.sinkhorn import naive_sinkhorn, naive_sinkhorn_bwd, sinkhorn_backward, sinkhorn_forward

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

B, T, D = 4, 512, 384  # a quarter of a Table 6 micro-batch's tokens at its width
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # relative RMS error against the fp32 reference


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,last", [(25, True), (48, False), (3, True)], ids=["n25-partial", "n48", "n3-partial"])
def test_attnres_read_autotuned_matches_the_reference(n, last, dtype):
    gen = torch.Generator(device="cuda").manual_seed(n)
    buf = torch.randn(B, T, n + 2, D, device="cuda", generator=gen).to(dtype)
    h = buf[:, :, :n]  # a prefix view of a wider stream, as the model reads it
    partial = torch.randn(B, T, D, device="cuda", generator=gen).to(dtype) if last else None
    query = 0.3 * torch.randn(D, device="cuda", generator=gen)
    gain = torch.rand(D, device="cuda", generator=gen) + 0.5
    g = torch.randn(B, T, D, device="cuda", generator=gen).to(dtype)
    start = (0.01 * torch.randn(B, T, n + 2, D, device="cuda", generator=gen)).to(dtype)  # small: bf16 keeps the sum
    out, lse, lo = attnres_read_forward(h, partial, query, gain, 1e-6)
    hf, pf = h.float(), (partial.float() if last else None)
    assert rel(out, naive_attnres_read(hf, pf, query, gain, 1e-6)) < TOL[dtype]
    acc = start.clone()
    got = attnres_read_backward(g, h, partial, query, gain, 1e-6, acc[:, :, :n], out, lse, lo)
    acc_ref = start.float().clone()  # float() of fp32 is start itself
    want = naive_attnres_read_bwd(g.float(), hf, pf, query, gain, 1e-6, acc_ref[:, :, :n])
    assert rel(acc[:, :, :n] - start[:, :, :n].float(), acc_ref[:, :, :n] - start[:, :, :n].float()) < TOL[dtype]
    assert torch.equal(acc[:, :, n:], start[:, :, n:])
    for name, a, b in zip(("dlast", "dquery", "dgain"), got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            assert rel(a, b) < TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C,n", [(4, 26), (1, 49), (4, 2)], ids=["C4-n26", "C1-n49", "C4-n2"])
def test_mudd_mix_autotuned_matches_the_reference(C, n, dtype):
    gen = torch.Generator(device="cuda").manual_seed(C * 100 + n)
    h = torch.randn(B, T, n + 3, D, device="cuda", generator=gen).to(dtype)[:, :, :n]
    w = torch.randn(B, T, C, n, device="cuda", generator=gen).to(dtype)
    g = torch.randn(B, T, C, D, device="cuda", generator=gen).to(dtype)
    start = (0.01 * torch.randn(B, T, n, D, device="cuda", generator=gen)).to(dtype)
    assert rel(mudd_mix_forward(h, w), naive_mudd_mix(h.float(), w.float())) < TOL[dtype]
    dh, dh_ref = start.clone(), start.float().clone()
    dw = mudd_mix_backward(g, h, w, dh)
    dw_ref = naive_mudd_mix_bwd(g.float(), h.float(), w.float(), dh_ref)
    assert rel(dw, dw_ref) < TOL[dtype]
    assert rel(dh.float() - start.float(), dh_ref - start.float()) < TOL[dtype]


@pytest.mark.parametrize("n,iters", [(4, 20), (8, 20), (2, 5)])
def test_sinkhorn_matches_the_reference_at_a_step_of_tokens(n, iters):
    """One mHC sublayer's matrices for a Table 6 micro-batch (16 x 1,024 tokens), fp32 as the model runs it."""
    gen = torch.Generator(device="cuda").manual_seed(n)
    logits = 2 * torch.randn(16, 1024, n, n, device="cuda", generator=gen)
    g = torch.randn(16, 1024, n, n, device="cuda", generator=gen)
    m = sinkhorn_forward(logits, iters)
    assert rel(m, naive_sinkhorn(logits, iters)) < 1e-5
    assert rel(sinkhorn_backward(g, logits, iters), naive_sinkhorn_bwd(g, logits, iters)) < 1e-4


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,M,flat", [(4, 6, False), (4, 24, True)], ids=["hc-n4", "mhc-n4"])
def test_norm_proj_matches_the_reference_at_a_step_of_tokens(n, M, flat, dtype, tf32):
    """HC's H_bar W (rows of D, n + 2 columns) and mHC's phi (rows of n D, 2n + n^2 columns, phi's weight
    transposed) on a quarter step of copies, against the fp32 reference of the same (rounded) inputs; with tf32
    dots within tf32's rounding (10 mantissa bits: a relative error of ~5e-4 a product)."""
    gen = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(B, T, n, D, device="cuda", generator=gen).to(dtype)
    x = x.reshape(B, T, n * D) if flat else x
    K = x.shape[-1]
    weight = 1 + 0.1 * torch.randn(K, device="cuda", generator=gen)
    proj = 0.02 * torch.randn(M, K, device="cuda", generator=gen).t()
    dz = torch.randn(*x.shape[:-1], M, device="cuda", generator=gen)
    z, rstd = norm_proj_forward(x, weight, proj, 1e-6, tf32)
    assert z.dtype == torch.float32 and rel(z, naive_norm_proj(x.float(), weight, proj, 1e-6)) < (2e-3 if tf32 else 1e-5)
    got = norm_proj_backward(dz, x, weight, proj, z, rstd, tf32)
    ref = naive_norm_proj_bwd(dz, x.float(), weight, proj, 1e-6)
    assert got[0].dtype == dtype
    for a, b in zip(got, ref):
        assert rel(a, b) < max(TOL[dtype], 2e-3 if tf32 else 0.0), (rel(a, b), a.shape)
