"""Ahead-of-time compilation of one Triton kernel for sm_90 (the H100's), with ptxas -v's report: what the kernel
tests' scripts call in the subprocess that flow_checks.compile_for_sm90 starts (interpreter off,
TRITON_DUMP_PTXAS_LOG on, this folder on the path). A compiled kernel's registers and spills are only filled in
on a GPU; ptxas's report gives them on any machine."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Collection

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sm90(fn, constexprs: dict, num_warps: int, arg_type: Callable[[str], str],
                 not_divisible: Collection[str] = ()) -> tuple[list[str], str, tuple[str, str]]:
    """fn compiled for sm_90 at ``constexprs``: (its artefact kinds, registers, (spill store, spill load) bytes).
    ``arg_type(name)``: each runtime argument's signature type ("i32", "fp32", "*bf16", ...). Every runtime
    argument but those in ``not_divisible`` is marked divisible by 16, as the launcher's specialisation sees them
    at the tested shapes."""
    sig = {a: "constexpr" if a in constexprs else arg_type(a) for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in not_divisible and a not in constexprs}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG: ptxas -v's report goes to stdout
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    regs = re.search(r"Used (\d+) registers", log.getvalue()).group(1)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue()).groups()
    return sorted(k.asm), regs, spills
