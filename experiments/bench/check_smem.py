"""Offline shared-memory check of the MoDA Triton kernels for Hopper (sm_90), no GPU needed.

Compiles each autotune config of each kernel for a CUDA sm_90 target (Triton's bundled toolchain) up to
LLVM IR, where Triton's shared-memory allocation is final (``metadata["shared"]``), and prints the bytes
per block. Limit on H100/H200: 232448 bytes (227 KiB) of dynamic shared memory per block.

Launch-like specialisation: pointers, strides, T and L are marked divisible by 16 (as the JIT does for
real tensors), so vectorised / cp.async-pipelined loads are modelled. Do NOT run with TRITON_INTERPRET.

    PYTHONPATH=. .venv/bin/python experiments/bench/check_smem.py [--jobs 2] [--kernels fwd,dq,dkdv]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from concurrent.futures import ProcessPoolExecutor

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from moda_kernels.moda import shared, triton_bwd, triton_fwd  # noqa: E402

HOPPER_SMEM = 232448
TARGET = GPUTarget("cuda", 90, 32)
KERNELS = {
    "fwd": triton_fwd._moda_fwd_kernel,
    "dkdv": triton_bwd._moda_bwd_dkdv_kernel,
    "dq": triton_bwd._moda_bwd_dq_kernel,
}
TAGS = {"fwd": triton_fwd.FWD_TAGS, "dkdv": triton_bwd.DKDV_TAGS, "dq": triton_bwd.DQ_TAGS}
FP32_PTRS = {"LSE", "LSE_INIT", "DELTA"}
INT_ARGS = {"T", "L", "T_BUCKET", "L_BUCKET"}
NOT_DIVISIBLE = {"qk_scale", "scale", "Hk", "T_BUCKET", "L_BUCKET"}


class _Done(Exception):
    pass


def _hook(backend=None, stages=None, options=None, language=None, capability=None):
    if backend is None:  # called with no arguments for the compile cache key: (key, hash)
        return "moda-check-smem-stop-at-llir", "moda-check-smem-stop-at-llir"
    make_llir = stages["llir"]

    def llir_then_stop(src, metadata):
        make_llir(src, metadata)
        raise _Done(metadata["shared"])

    stages["llir"] = llir_then_stop
    stages.pop("ptx", None)
    stages.pop("cubin", None)


def shared_bytes(kname, const, dtype, num_warps, num_stages):
    fn = KERNELS[kname].fn
    names = fn.arg_names
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in const:
            sig[n] = "constexpr"
        elif n.isupper() and n not in INT_ARGS:
            sig[n] = "*fp32" if n in FP32_PTRS or (n in ("O_INIT", "DQ_INIT")) else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("qk_scale", "scale"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n not in NOT_DIVISIBLE:
                attrs[(i,)] = [["tt.divisibility", 16]]
    consts = {(names.index(k),): v for k, v in const.items()}
    knobs.runtime.add_stages_inspection_hook = _hook
    try:
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=TARGET,
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    except _Done as e:
        return e.args[0]
    except Exception as e:  # noqa: BLE001 - report any compile failure in the table
        return f"ERR {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    raise RuntimeError("compile finished without reaching the llir stage")


def _job(args):
    kname, d, mode, G, dtype, cfg = args
    has_seq, has_depth = mode in ("seq", "moda"), mode in ("depth", "moda")
    prec = "ieee" if dtype == "fp32" else None
    const = dict(G=G, HEAD_D=d, HAS_SEQ=has_seq, HAS_DEPTH=has_depth, CAUSAL=True, PREC=prec, **cfg.kwargs)
    if kname != "dkdv":
        const.update(GP=shared.row_group(G, has_depth), SUB_M=shared.sub_tile_rows(G), HAS_INIT=False)
    if kname == "dq":
        const.update(ACC=has_depth)
    return args, shared_bytes(kname, const, dtype, cfg.num_warps, cfg.num_stages)


def _kept(kname, d, mode, G, dtype):
    """Configs the kernel's early_config_prune keeps for these launch parameters."""
    autotuner = KERNELS[kname]
    has_seq, has_depth = mode in ("seq", "moda"), mode in ("depth", "moda")
    kwargs = dict(G=G, HEAD_D=d, HAS_SEQ=has_seq, HAS_DEPTH=has_depth)
    fake_q = type("T", (), {"element_size": lambda self: 4 if dtype == "fp32" else 2})()
    nargs = {"Q": fake_q}
    return autotuner.early_config_prune(autotuner.configs, nargs, **kwargs) if autotuner.early_config_prune else \
        autotuner.configs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--groups", default="8,32",
                    help="G values; G = 1, 2, 8 share SUB_M = 16 (same tile shapes), so 8 stands for them")
    ap.add_argument("--kernels", default="fwd,dkdv,dq")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtypes", default="bf16,fp32")
    a = ap.parse_args()
    groups = tuple(int(g) for g in a.groups.split(","))
    jobs = []
    for kname in a.kernels.split(","):
        for d, dtype in itertools.product([int(x) for x in a.dims.split(",")], a.dtypes.split(",")):
            for mode in ("seq", "depth", "moda"):
                if kname == "dkdv" and mode == "depth":
                    continue  # dK/dV kernel runs only with sequence keys
                # Sequence-only kernels do not depend on G beyond index arithmetic: one G suffices.
                gs = groups[:1] if mode == "seq" or kname == "dkdv" else groups
                tags = TAGS[kname]
                for G in gs:
                    for cfg, tag in zip(KERNELS[kname].configs, tags):
                        # Only configs a launch of this mode can be given: its own and the fallbacks.
                        if (mode if kname != "dkdv" else "seq") in tag or "fallback" in tag:
                            jobs.append((kname, d, mode, G, dtype, cfg))
    results = {}
    with ProcessPoolExecutor(a.jobs) as ex:
        for args, shared in ex.map(_job, jobs):
            results[args] = shared
    print("| kernel | dtype | d | mode | G | config (BM, BN, BDN, warps, stages) | shared bytes | fits | kept by pruner |")
    print("|---|---|---|---|---|---|---|---|---|")
    bad = []
    for combo, group in itertools.groupby(jobs, key=lambda j: j[:5]):
        group = list(group)
        kept = _kept(*combo)
        fits_any = False
        for args in group:
            cfg = args[5]
            sh = results[args]
            ok = isinstance(sh, int) and sh <= HOPPER_SMEM
            fits_any |= ok
            is_kept = any(c is cfg for c in kept)
            if is_kept and not ok:
                bad.append((combo, cfg, sh))
            kw = cfg.kwargs
            desc = (kw.get("BLOCK_M"), kw.get("BLOCK_N"), kw.get("BLOCK_DN", "-"), cfg.num_warps, cfg.num_stages)
            print(f"| {combo[0]} | {combo[4]} | {combo[1]} | {combo[2]} | {combo[3]} | {desc} | {sh} | "
                  f"{'yes' if ok else '**NO**'} | {'yes' if is_kept else 'no'} |")
        if not fits_any:
            bad.append((combo, None, "no config fits"))
    print()
    if bad:
        print("PROBLEMS:")
        for b in bad:
            print("  ", b)
        sys.exit(1)
    print("OK: every (kernel, dtype, d, mode, G) keeps >= 1 config and every kept config fits in", HOPPER_SMEM)


if __name__ == "__main__":
    main()
