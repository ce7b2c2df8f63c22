"""CUDA graphs for the compiled training step (issue 29), the half that a CPU can check.

The step's graph must be one that Inductor's CUDA graphs take without copies: its only inputs besides the model's
parameters and buffers are idx and targets (cudagraph trees copy every other input into graph memory on each
replay), the depth stream's buffers are made inside it by one op that the partitioner never recomputes in the
backward, and the compiled step computes what the eager one does, bit for bit, under the partitioner Inductor
uses. The switch, trainer.cudagraphs, is refused where it cannot run (one line naming the key, nothing written).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from flow_checks import randomize, tiny
from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
from torch._dynamo.backends.common import aot_autograd

from helpers import ROOT, compose_cfg, tiny_cfg
from moda_lab.config import ConfigError, run_config_from_dict
from moda_lab.model import DEPTH_MIXERS, GPT
from moda_lab.model.depth import new_stream_buffers
from moda_lab.train.task import check_accelerator, compile_options
from variants import VARIANTS

# One variant per mixer that declares a depth stream (K/V slots, DWA's mix, per-token reads): every kind of op.
STREAM_VARIANTS = list({cfg.name: name for name, cfg in reversed(VARIANTS.items())
                        if DEPTH_MIXERS[cfg.name].stream_spec(tiny(cfg)) is not None}.values())
DEPTH_BUFFERS = torch.ops.moda_lab.depth_buffers.default


def _model(name: str) -> GPT:
    torch.manual_seed(0)
    return randomize(GPT(tiny(VARIANTS[name], "post")))


def _step(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["residual", *STREAM_VARIANTS])
def test_compiled_step_takes_only_idx_and_targets_besides_the_weights(name):
    """What Dynamo hands the compiler: the model's parameters and buffers (static inputs to CUDA graphs) and the two
    batch tensors, no stream buffer (the per-step allocations of the old path were three more inputs)."""
    inputs = []

    def backend(gm, example_inputs):
        inputs.extend(t for t in example_inputs if isinstance(t, torch.Tensor))
        return gm.forward

    torch._dynamo.reset()
    model = _model(name)
    model.compile(backend=backend, fullgraph=True)
    idx = torch.randint(0, 64, (2, 9))
    x, y = idx[:, :-1], idx[:, 1:]
    model(x, y).backward()
    weights = [*model.parameters(), *model.buffers()]
    others = [t for t in inputs if not any(t is w for w in weights)]
    assert len(others) == 2 and others[0] is x and others[1] is y, [tuple(t.shape) for t in others]


@pytest.mark.parametrize("name", STREAM_VARIANTS)
def test_backward_reads_the_buffers_the_forward_made_and_matches_eager_bit_for_bit(name):
    """Under the min-cut partitioner Inductor uses: depth_buffers runs once, in the forward graph, and never in the
    backward (a recomputed buffer would hold garbage, not the forward's writes); the buffers cross to the backward
    as saved tensors; two compiled steps reuse one graph; loss and every gradient equal eager's exactly (no Inductor
    code generation here, so no reordered sums: any difference is a wrong read)."""
    graphs = {"fw": [], "bw": []}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw"),
                           partition_fn=min_cut_rematerialization_partition)
    model = _model(name)
    idx = torch.randint(0, 64, (2, 9))
    eager = _step(model, idx)
    torch._dynamo.reset()
    model.compile(backend=backend, fullgraph=True)
    for _ in range(2):
        compiled = _step(model, idx)
    assert len(graphs["fw"]) == len(graphs["bw"]) == 1
    calls = {k: [n for n in g[0].graph.nodes if n.target is DEPTH_BUFFERS] for k, g in graphs.items()}
    assert len(calls["fw"]) == 1 and calls["bw"] == []
    stream_shape = calls["fw"][0].meta["val"][0].shape
    saved = [n for n in graphs["bw"][0].graph.nodes
             if n.op == "placeholder" and getattr(n.meta.get("val"), "shape", None) == stream_shape]
    assert len(saved) >= 2  # data and grad, both taken from the forward
    assert torch.equal(compiled[0], eager[0])
    for a, b in zip(compiled[1], eager[1]):
        assert torch.equal(a, b)


def test_each_forward_gets_its_own_buffers():
    """No stream state outlives a forward: two forwards before one backward give the gradients of two separate
    steps (buffers kept by the model across calls would let the second forward overwrite what the first saved)."""
    model = _model("moda")
    a, b = torch.randint(0, 64, (2, 2, 9))
    want = [x + y for x, y in zip(_step(model, a)[1], _step(model, b)[1])]
    model.zero_grad()
    (model(a[:, :-1], a[:, 1:]) + model(b[:, :-1], b[:, 1:])).backward()
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-7)


def test_new_stream_buffers_are_fresh_and_shaped():
    data, grad, token = new_stream_buffers(2, 3, 2, 5, (2, 4), "cpu", torch.bfloat16)
    again = new_stream_buffers(2, 3, 2, 5, (2, 4), "cpu", torch.bfloat16)
    assert data.shape == grad.shape == (2, 2, 5, 3, 2, 4) and token.shape == (1,)
    assert {t.dtype for t in (data, grad, token)} == {torch.bfloat16}
    assert not grad.any() and not token.any()
    ptrs = {t.data_ptr() for t in (data, grad, *again[:2])}
    assert len(ptrs) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual", *STREAM_VARIANTS])
def test_inductor_finds_no_reason_to_skip_cuda_graphs(name):
    """Inductor itself (CPU code generation, cudagraphs requested as mode reduce-overhead does), with only the
    device check set aside (a CPU graph is never captured): no skip reason in forward or backward, no mutated
    input, and the forward's only non-static inputs are idx and targets."""
    import torch._inductor.cudagraph_utils as cudagraph_utils
    import torch._inductor.output_code as output_code
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    seen = []

    def inner(gm, example_inputs, **kwargs):
        out = compile_fx_inner(gm, example_inputs, **kwargs)
        static = set(kwargs.get("static_input_idxs") or ())
        dynamic = [tuple(t.shape) for i, t in enumerate(example_inputs) if isinstance(t, torch.Tensor) and i not in static]
        seen.append((bool(kwargs.get("is_backward")), out.disabled_cudagraphs_reason,
                     out.cudagraph_info.cudagraph_fail_reasons, sorted(out.mutated_inputs), dynamic))
        return out

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, inner_compile=inner, config_patches={"triton.cudagraphs": True})

    torch._dynamo.reset()
    model = _model(name)
    model.compile(backend=backend, fullgraph=True)
    idx = torch.randint(0, 64, (2, 9))
    with (pytest.MonkeyPatch.context() as mp, torch._inductor.config.patch(fx_graph_cache=False),
          torch._functorch.config.patch(enable_autograd_cache=False)):  # caches would skip inner_compile
        mp.setattr(cudagraph_utils, "check_lowering_disable_cudagraph", lambda mapping: None)
        for capture in ("cudagraph_post_compile", "cudagraph_partition_post_compile"):  # nothing to capture on a CPU
            mp.setattr(output_code, capture, lambda *args, **kwargs: None)
        model(idx[:, :-1], idx[:, 1:]).backward()
    assert [s[0] for s in seen] == [False, True]
    for _, reason, fails, mutated, _ in seen:
        assert reason is None and fails == [] and mutated == []
    assert seen[0][4] == [(2, 8), (2, 8)]  # idx and targets
    assert seen[1][4] == [()]  # the loss's gradient


# --- the switch ------------------------------------------------------------------------------------------------


def test_off_compiles_exactly_as_before_and_on_asks_for_reduce_overhead():
    assert compile_options(False) == {"fullgraph": True}  # torch's default mode, as before the switch
    assert compile_options(True) == {"fullgraph": True, "mode": "reduce-overhead"}
    for trainer in ("cpu", "gpu"):
        assert run_config_from_dict(compose_cfg([f"trainer={trainer}"])).trainer.cudagraphs is False


def test_training_compiles_the_model_with_the_switch_s_options(tiny_corpus, tmp_path, monkeypatch):
    """train() hands GPT.compile compile_options(trainer.cudagraphs): with the switch off, exactly the call it made
    before the switch existed (recorded here instead of compiling, which takes minutes on a CPU)."""
    from moda_lab.train.task import train

    calls = []
    monkeypatch.setattr(GPT, "compile", lambda self, **kwargs: calls.append(kwargs))
    steps = ["trainer.max_steps=2", "trainer.val_every=2", "trainer.ckpt_every=2", "trainer.compile=true"]
    train(tiny_cfg(tiny_corpus, tmp_path, steps), tmp_path / "run")
    assert calls == [{"fullgraph": True}]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.cudagraphs=true"], "trainer.cudagraphs=true is not allowed with trainer.compile=false; allowed: "
         "trainer.compile=true (CUDA graphs replay the compiled step), or trainer.cudagraphs=false"),
        (["trainer.cudagraphs=true", "trainer.compile=true", "trainer.accelerator=cpu"],
         "trainer.cudagraphs=true is not allowed with trainer.accelerator='cpu'; allowed: CUDA graphs on a GPU "
         "(trainer=gpu), or trainer.cudagraphs=false"),
        (["trainer=gpu", "trainer.cudagraphs=true", "trainer.accumulate=2"],
         "trainer.cudagraphs=true is not allowed with trainer.accumulate=2; allowed: trainer.accumulate=1 (a larger "
         "trainer.batch_size instead), or trainer.cudagraphs=false"),
    ],
)
def test_config_refuses_cudagraphs_where_they_cannot_run(overrides, message):
    with pytest.raises(ConfigError) as err:
        run_config_from_dict(compose_cfg(overrides))
    assert str(err.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="the probe needs a machine without a GPU")
def test_cudagraphs_on_a_cpu_machine_exit_2_in_one_line_and_write_nothing(tmp_path):
    """A CPU trainer (accelerator auto, which goes to the CPU here) with the switch on: run.py's preflight refuses
    it before Hydra makes a run dir."""
    check_accelerator("auto", cudagraphs=False)  # the switch off: nothing to refuse
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), f"run_root={tmp_path / 'runs'}", "trainer.compile=true",
         "trainer.cudagraphs=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "config error: trainer.cudagraphs=true needs a CUDA GPU and this machine shows none "
        "(torch.cuda.is_available() is False); allowed here: trainer.cudagraphs=false\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the probe needs a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
def test_the_triton_backend_on_a_cpu_trainer_is_refused_outside_the_interpreter(accelerator, monkeypatch):
    """model.attn_backend=triton on a CPU trainer once made the run dir, then died in the kernel's input check."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MODA_LAB_ATTN_BACKEND", raising=False)
    for backend in ("auto", "naive", "sdpa"):
        check_accelerator(accelerator, attn_backend=backend)
    with pytest.raises(ConfigError, match=r"^model.attn_backend='triton' runs Triton kernels, which need a CUDA GPU, "
                       rf"and this run trains on the CPU \(trainer.accelerator='{accelerator}'.*allowed here: "):
        check_accelerator(accelerator, attn_backend="triton")
    monkeypatch.setenv("MODA_LAB_ATTN_BACKEND", "triton")
    with pytest.raises(ConfigError, match=r"^MODA_LAB_ATTN_BACKEND=triton runs Triton kernels"):
        check_accelerator(accelerator)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_accelerator(accelerator, attn_backend="triton")  # the interpreter runs them on the CPU (the tests do)


def test_the_switch_does_not_define_the_run(tmp_path):
    """A run dir trained before the key existed (its config has no trainer.cudagraphs) resumes with it on or off."""
    from moda_lab.rundir import check_resume_compatible, run_name

    old = compose_cfg(["trainer=gpu"])
    del old["trainer"]["cudagraphs"]
    check_resume_compatible(old, compose_cfg(["trainer=gpu", "trainer.cudagraphs=true"]), tmp_path)
    check_resume_compatible(old, compose_cfg(["trainer=gpu"]), tmp_path)
    assert run_name(["trainer.cudagraphs=true", "model=moda"]) == "model=moda"
