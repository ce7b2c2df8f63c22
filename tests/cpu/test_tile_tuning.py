"""moda_kernels/tile_tuning.py: the autotuning candidates of the slot-walking kernels (AttnRes, MUDD), how a
kernel's prune sees its launch, and that every MUDD candidate compiles for sm_90 without register spills (the
AttnRes ones: test_flow_attnres.py)."""

from __future__ import annotations

import pytest
from flow_checks import compile_for_sm90

from moda_kernels import tile_tuning


def shape(c):
    return c.kwargs["BLOCK_T"], c.num_warps, c.kwargs["PREFETCH"]


def test_candidates_put_the_pinned_launch_first_and_keep_the_budget(monkeypatch):
    monkeypatch.delenv("MODA_PIN_CONFIGS", raising=False)
    kept = tile_tuning.candidates(tile_tuning.CANDIDATES, (8, 4), 512, 32)  # MUDD's backward at C = 4, D = 384
    assert shape(kept[0]) == (8, 4, False)
    assert sorted(shape(c) for c in kept[1:]) == sorted(
        [(bt, 4, pf) for bt in (2, 4, 8) for pf in (False, True) if (bt, pf) != (8, False)]
        + [(bt, 8, pf) for bt in (4, 8, 16) for pf in (False, True)])
    monkeypatch.setenv("MODA_PIN_CONFIGS", "1")
    assert [shape(c) for c in tile_tuning.candidates(tile_tuning.CANDIDATES, (8, 4), 512, 32)] == [(8, 4, False)]
    # A pinned launch outside the list (MUDD's untuned tile at C = 1, D = 32: 128 tokens) still comes first.
    assert [shape(c) for c in tile_tuning.candidates(tile_tuning.CANDIDATES, (128, 4), 32, 32)] == [(128, 4, False)]
    monkeypatch.delenv("MODA_PIN_CONFIGS")
    assert shape(tile_tuning.candidates(tile_tuning.CANDIDATES, (128, 4), 32, 32)[0]) == (128, 4, False)


@pytest.mark.parametrize("kernel", ["attnres", "mudd"])
def test_the_autotuners_prune_reads_the_launchs_arguments(kernel, monkeypatch):
    """On a GPU (the interpreter check set aside) tuned() wraps the kernel in triton.autotune; Triton calls the
    prune with the positional arguments by name and the launch's keywords apart: D and C come from either."""
    from moda_kernels.attnres import triton_kernels as A
    from moda_kernels.mudd import triton_kernels as M

    monkeypatch.setattr(tile_tuning, "interpreter", lambda: False)
    monkeypatch.delenv("MODA_PIN_CONFIGS", raising=False)
    if kernel == "attnres":
        tuner = tile_tuning.tuned(A._bwd_one_pass_kernel, ["D", "N_BUCKET"],
                                  lambda configs, args: A.tuned_configs(configs, "bwd", args["BLOCK_D"]), ["DH"])
        got = tuner.early_config_prune(tile_tuning.CANDIDATES, {"D": 384, "N_BUCKET": 32}, BLOCK_D=512)
        want = A.tuned_configs(tile_tuning.CANDIDATES, "bwd", 512)
    else:
        tuner = tile_tuning.tuned(M._mudd_bwd_kernel, ["N_BUCKET", "D", "C"],
                                  lambda configs, args: M.tuned_configs(configs, "bwd", args["C"], args["D"]), ["DH"])
        got = tuner.early_config_prune(tile_tuning.CANDIDATES, {"D": 384, "N_BUCKET": 16}, C=4, CP=4, BLOCK_D=128)
        want = M.tuned_configs(tile_tuning.CANDIDATES, "bwd", 4, 384)
    assert [shape(c) for c in got] == [shape(c) for c in want] and len(got) == 12
    assert tuner.restore_value == ["DH"] and tuner.keys == (["D", "N_BUCKET"] if kernel == "attnres"
                                                            else ["N_BUCKET", "D", "C"])


_AOT = """
from sm90_aot import compile_sm90
from moda_kernels import tile_tuning
from moda_kernels.mudd import triton_kernels as K

INTS = {"sht", "shj", "sdt", "sdj", "n_tok", "n", "D", "N_BUCKET"}

def arg_type(a):  # the history in bf16, as in training
    return "i32" if a in INTS else "*fp32" if a == "PART" else "*bf16"

def compile(fn, constexprs, num_warps):
    return compile_sm90(fn, constexprs, num_warps, arg_type, not_divisible={"n", "N_BUCKET"})[2]

C, D = 4, 384  # MUDD's four ways at the paper's width
cp, bt, bd = K._tiles(C, D)
for fn, direction in ((K._mudd_fwd_kernel, "fwd"), (K._mudd_bwd_kernel, "bwd")):
    for c in K.tuned_configs(tile_tuning.CANDIDATES, direction, C, D):
        spills = compile(fn, {**c.kwargs, "C": C, "CP": cp, "BLOCK_D": bd}, c.num_warps)
        print(fn.__name__, c.kwargs, c.num_warps, "spills", *spills)
"""


def test_mudd_candidates_compile_for_h100_without_spills(tmp_path):
    lines = compile_for_sm90(_AOT, tmp_path)
    assert len(lines) == 24 and all(line.endswith("spills 0 0") for line in lines), lines
