"""moda_lab.eval on CPU: scoring equals the model's own forward, cached == uncached greedy decoding, fixture
tasks end to end through lm-eval's API and both CLIs, the after-fit hook through run.py, clear errors."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures.eval_tasks import write_eval_fixtures

from helpers import ROOT
from moda_lab.load import CheckpointError, load_checkpoint
from moda_lab.model import GPT, ModelConfig
from variants import PER_MIXER, VARIANTS

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from moda_lab.eval import TASK_FIELDS, EvalConfigError, eval_config_from_dict  # noqa: E402
from moda_lab.eval.lm import ModaLM  # noqa: E402
from moda_lab.eval.perplexity import domain_perplexity, perplexity  # noqa: E402
from moda_lab.model.decode import greedy_tokens  # noqa: E402

ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _copy_run(tiny_run, name: str) -> Path:
    dst = tiny_run["tmp"] / name
    shutil.copytree(tiny_run["run_dir"], dst)
    return dst


def _full_split_fixtures(root: Path, tasks: tuple[str, ...]) -> Path:
    """Fixture task files as long as the tasks' full splits: a full evaluation, whose rows go to metrics.jsonl (a
    shorter file is a partial one, kept in its folder like an eval.limit one)."""
    from moda_lab.eval.tasks import SPLIT_SIZES

    for task in tasks:
        write_eval_fixtures(root, tasks=(task,), n=SPLIT_SIZES[task])
    return root


def _ref_logprob(model: GPT, ctx: list[int], cont: list[int]) -> float:
    """log p(cont | ctx) from one un-batched forward over the (left-truncated) sequence."""
    full = (ctx + cont)[-(model.cfg.max_seq_len + 1) :]
    with torch.no_grad():
        lp = F.log_softmax(model(torch.tensor([full[:-1]])).double(), -1)[0]
    n = len(full) - 1
    return sum(float(lp[i, full[i + 1]]) for i in range(n - len(cont), n))


# --- scoring == the model's own forward -----------------------------------------------------------------


def test_loglikelihood_equals_forward_log_softmax(lm):
    long_ctx = " ".join(f"the water {i} is next to the stone." for i in range(12))  # > max_seq_len tokens
    pairs = [
        ("Question: How do you dry water?\nAnswer:", " Put the water in the sun."),
        ("The stone", " is next to the glass."),
        (long_ctx, " Answer: paper"),
        ("def f(x):", "\n    return x"),
    ]
    assert len(lm.tok_encode(long_ctx)) > lm.gpt.cfg.max_seq_len
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    for (ctx, cont), (score, _) in zip(pairs, got):
        whole = lm.tok_encode(ctx + cont)
        c = lm.tok_encode(ctx)
        assert math.isclose(score, _ref_logprob(lm.gpt, c, whole[len(c) :]), abs_tol=1e-4)


def test_batched_request_encoding_equals_lm_evals_one_by_one(lm, monkeypatch):
    """ModaLM.loglikelihood encodes every distinct string once, in one batch; the pairs it scores are exactly the
    ones lm-eval's own TemplateLM.loglikelihood builds request by request."""
    from lm_eval.api.model import TemplateLM

    from moda_lab.data.tokenizer import EOS

    ctx = "Question: How do you dry water?\nAnswer:"
    pairs = [
        (ctx, " Put the water in the sun."),
        (ctx, " Put the water in the fridge."),  # the same context again (encoded once)
        ("The stone is ", "next to the glass."),  # trailing space: it moves to the continuation
        ("Ends in two spaces  ", "x"),
        ("", "The first words of a document."),  # empty context: EOS is the context
        ("", EOS + " after an EOS"),  # ... unless the continuation starts with EOS itself
        ("Umlaut: \u00fc\u00f6", " und \u00df."),
    ]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    seen = {}
    monkeypatch.setattr(type(lm), "_loglikelihood_tokens", lambda self, new, **kw: seen.setdefault("x", new) and [])
    TemplateLM.loglikelihood(lm, reqs, disable_tqdm=True)
    expected = [(ctx_enc, cont_enc) for _, ctx_enc, cont_enc in seen.pop("x")]
    assert lm.encode_requests(pairs) == expected
    lm.loglikelihood(reqs, disable_tqdm=True)
    assert [(args, c, x) for args, c, x in seen["x"]] == [(p, c, x) for p, (c, x) in zip(pairs, expected)]
    assert expected[4][0] == expected[5][0] == [lm.eot_token_id] and expected[5][1][:1] != [lm.eot_token_id]


def test_continuation_longer_than_the_context_is_scored_in_windows(lm):
    """A long context keeps its last tokens (lm-eval's HF rule); a continuation longer than the context is scored
    in full, in windows of max_length counted back from its end, as the exported model runs such an input."""
    L = lm.gpt.cfg.max_seq_len
    ctx = lm.tok_encode("Question: How do you dry water?\nAnswer:")
    cont = lm.tok_encode(" " + " ".join(f"put the {w} in the sun." for w in ("water", "paper", "stone") * 4))
    assert len(cont) > 2 * L + 1
    (score, greedy), (short_score, _) = lm._loglikelihood_tokens(
        [(None, ctx, cont), (None, ctx, cont[: L - 3])], disable_tqdm=True
    )
    inp, target = (ctx + cont)[:-1], (ctx + cont)[1:]
    ref, ref_greedy = 0.0, True
    for end in range(len(inp), len(ctx) - 1, -L):  # each window run alone, from position 0
        start = max(0, end - L)
        with torch.no_grad():
            lp = F.log_softmax(lm.gpt(torch.tensor([inp[start:end]])).double(), -1)[0]
        for pos in range(max(start, len(ctx) - 1), end):
            ref += float(lp[pos - start, target[pos]])
            ref_greedy &= int(lp[pos - start].argmax()) == target[pos]
    assert math.isclose(score, ref, abs_tol=1e-4) and greedy == ref_greedy
    # A continuation that fits keeps the end of its context and is scored in full.
    assert math.isclose(short_score, _ref_logprob(lm.gpt, ctx, cont[: L - 3]), abs_tol=1e-4)
    # Through lm-eval's request path, as PIQA's long solutions reach it.
    req = Instance("loglikelihood", {}, ("Question: How do you dry water?\nAnswer:", lm.tok_decode(cont)), 0)
    assert math.isfinite(lm.loglikelihood([req], disable_tqdm=True)[0][0])


def test_exported_folder_scores_like_the_ckpt(tiny_run, lm):
    from moda_lab.eval import results_dir
    from moda_lab.hf import export

    folder = export(tiny_run["ckpt"], tiny_run["tmp"] / "export")
    exported = ModaLM(checkpoint=folder, batch_size=2, device="cpu")
    reqs = [Instance("loglikelihood", {}, ("The paper", " is next to the glass."), 0)]
    assert exported.step == lm.step == 10
    assert exported.loglikelihood(reqs, disable_tqdm=True)[0][0] == pytest.approx(
        lm.loglikelihood(reqs, disable_tqdm=True)[0][0], abs=1e-5
    )
    assert results_dir(folder) == folder / "eval" / "export"
    assert results_dir(tiny_run["ckpt"]) == tiny_run["run_dir"] / "eval" / "last"


def test_loglikelihood_rolling_equals_forward(lm):
    texts = ["The glass is next to the bread.", " ".join(f"metal {i} sugar cloth." for i in range(15))]
    got = lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)], disable_tqdm=True
    )
    L = lm.gpt.cfg.max_seq_len
    for text, score in zip(texts, got):
        toks = lm.tok_encode(text)
        seq = [lm.eot_token_id, *toks]
        ref = 0.0
        for s in range(0, len(toks), L):
            # Predict toks[s:e] from the L tokens before e (seq[i] precedes toks[i]); the last, partial window
            # keeps a full context of earlier tokens.
            e = min(s + L, len(toks))
            inp = seq[max(0, e - L) : e]
            with torch.no_grad():
                lp = F.log_softmax(lm.gpt(torch.tensor([inp])).double(), -1)[0]
            ref += sum(float(lp[len(inp) - (e - s) + j, toks[s + j]]) for j in range(e - s))
        assert math.isclose(score, ref, abs_tol=1e-4)
    assert len(lm.tok_encode(texts[1])) > L  # the second text really is windowed


def test_heldout_perplexity_reproduces_the_runs_validation_loss(lm, tiny_run):
    """The held-out documents of the run's corpus, scored by the eval, give the run's own val/<domain>/loss."""
    rows = [json.loads(x) for x in (tiny_run["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/prose/loss" in r][-1]
    assert val["step"] == lm.step == 10  # the validation of the checkpointed weights
    cfg = eval_config_from_dict({"tasks": [], "perplexity": {"domains": str(tiny_run["corpus"])}})
    assert cfg.perplexity.split == "heldout"
    stats = perplexity(lm, cfg.perplexity.domains, val_fraction=0.2)
    assert sorted(stats) == ["code", "prose"]
    for domain, s in stats.items():
        assert s["tokens"] // lm.max_length <= 64  # data.val_windows of TINY_RUN covers the split
        assert s["loss"] == pytest.approx(val[f"val/{domain}/loss"], abs=1e-5)
        assert s["bpb"] == pytest.approx(val[f"val/{domain}/bpb"], rel=1e-5)
        assert s["ppl"] == pytest.approx(val[f"val/{domain}/ppl"], rel=1e-4)
    everything = perplexity(lm, {"prose": str(tiny_run["corpus"] / "prose")})["prose"]
    assert everything["documents"] == 10 > stats["prose"]["documents"] >= 1  # training documents left out
    first = perplexity(lm, str(tiny_run["corpus"]), max_documents=1, val_fraction=0.2)
    assert all(s["documents"] == 1 for s in first.values())


def test_domain_perplexity_matches_forward(lm, tiny_run):
    f = tiny_run["tmp"] / "ppl.jsonl"
    docs = ["The sugar is next to the cloth.", "def g(x):\n    return x"]
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    stats = domain_perplexity(lm, [f])
    nats, n_tok = 0.0, 0
    for d in docs:
        toks = [*lm.tok_encode(d), lm.eot_token_id]  # a document as training packs it: tokens then EOS
        nats -= _ref_logprob(lm.gpt, [lm.eot_token_id], toks)
        n_tok += len(toks)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert stats["tokens"] == n_tok and stats["bytes"] == n_bytes
    assert math.isclose(stats["ppl"], math.exp(nats / n_tok), rel_tol=1e-4)
    assert math.isclose(stats["bpb"], nats / math.log(2) / n_bytes, rel_tol=1e-4)


# --- cached greedy decoding == argmax over a full re-forward each step ------------------------------------

MIXERS = {**PER_MIXER, "moda_depth_kv": VARIANTS["moda_depth_kv"]}


@pytest.mark.parametrize("mixer", list(MIXERS), ids=[f"L3-D32-H4-G2-{m}" for m in MIXERS])
def test_cached_generation_matches_uncached(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=61,
        n_layers=3,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=24,
        init_std=0.3,
        mixer=MIXERS[mixer],
        attn_backend="naive",
    )
    model = GPT(cfg).eval()
    prompt = torch.randint(0, 61, (2, 5))
    ref = prompt
    with torch.no_grad():
        for _ in range(14):
            ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row, want in zip(prompt.tolist(), ref[:, 5:].tolist()):
        assert list(itertools.islice(greedy_tokens(model, row), 14)) == want
    assert len(set(ref[0, 5:].tolist())) > 2  # not a degenerate repeat of one token


def test_generate_until_uses_cache_and_stops(lm):
    """lm-eval's HF generate_until over the exported model's generate() (depth-aware KV cache): the greedy tokens
    of the uncached forward, cut before the stop string; the context keeps its last max_length - max_gen_toks."""
    prompt = "The stone is"
    ctx = lm.tok_encode(prompt)
    assert len(ctx) + 12 <= lm.gpt.cfg.max_seq_len
    ref = list(ctx)
    with torch.no_grad():
        for _ in range(12):
            ref.append(int(lm.gpt(torch.tensor([ref]))[0, -1].argmax()))
    new = ref[len(ctx) :]
    if lm.eot_token_id in new:
        new = new[: new.index(lm.eot_token_id)]
    full_text = lm.tok_decode(new)
    req = Instance("generate_until", {}, (prompt, {"until": ["\n\n\n"], "max_gen_toks": 12}), 0)
    assert lm.generate_until([req], disable_tqdm=True) == [full_text]
    stop = full_text[len(full_text) // 2 :][:3]
    assert stop.strip(), f"degenerate generation {full_text!r}"
    req = Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 12}), 0)
    assert lm.generate_until([req], disable_tqdm=True) == [full_text[: full_text.index(stop)]]
    # Longer than the context: only the last max_length - max_gen_toks context tokens are kept.
    L = lm.gpt.cfg.max_seq_len
    long_prompt = " ".join(f"the water {i} is next to the stone." for i in range(12))
    long_ctx = lm.tok_encode(long_prompt)
    assert len(long_ctx) > L
    ref = long_ctx[-(L - 8) :]
    with torch.no_grad():
        for _ in range(8):
            ref.append(int(lm.gpt(torch.tensor([ref]))[0, -1].argmax()))
    new = ref[L - 8 :]
    if lm.eot_token_id in new:
        new = new[: new.index(lm.eot_token_id)]
    req = Instance("generate_until", {}, (long_prompt, {"until": ["\n\n\n"], "max_gen_toks": 8}), 0)
    assert lm.generate_until([req], disable_tqdm=True) == [lm.tok_decode(new)]


# --- fixture tasks end to end ------------------------------------------------------------------------------


def test_simple_evaluate_fixture_tasks(tiny_run, lm):
    from lm_eval.tasks import TaskManager

    from moda_lab.eval.tasks import TASK_DIR

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(tiny_run["data"])})
    res = lm_eval.simple_evaluate(
        model="moda",
        model_args={"checkpoint": str(tiny_run["ckpt"]), "device": "cpu"},
        tasks=["moda_piqa", "moda_arc_easy"],
        task_manager=tm,
        batch_size=4,
    )
    # Recompute PIQA accuracy by hand from the model's own scores.
    rows = [json.loads(x) for x in (tiny_run["data"] / "piqa.jsonl").read_text().splitlines()]
    hits = hits_norm = 0
    for r in rows:
        ctx = f"Question: {r['goal']}\nAnswer:"
        conts = [" " + r["sol1"], " " + r["sol2"]]
        scores = [
            s
            for s, _ in lm.loglikelihood([Instance("loglikelihood", {}, (ctx, c), 0) for c in conts], disable_tqdm=True)
        ]
        norm = [s / len(c.encode()) for s, c in zip(scores, conts)]
        hits += int(max(range(2), key=scores.__getitem__) == r["label"])
        hits_norm += int(max(range(2), key=norm.__getitem__) == r["label"])
    assert res["results"]["moda_piqa"]["acc,none"] == pytest.approx(hits / len(rows))
    assert res["results"]["moda_piqa"]["acc_norm,none"] == pytest.approx(hits_norm / len(rows))
    assert 0.0 <= res["results"]["moda_arc_easy"]["acc,none"] <= 1.0


@pytest.mark.slow  # 7-20 s end to end; the fast tier covers the module with quicker tests
def test_hydra_cli_writes_results_and_metrics(tiny_run):
    """tasks=all on a data dir with two of the ten files: those two run, the others are named; table printed.

    The checkpoint is a run dir named like a smoke run of the README's main job, given unquoted as documented.
    """
    run_dir = _copy_run(tiny_run, "model=moda,norm=post,trainer=smoke")
    data = _full_split_fixtures(tiny_run["tmp"] / "partial_data", tasks=("copa", "piqa"))
    before = (run_dir / "metrics.jsonl").read_text().splitlines()
    cmd = [
        sys.executable,
        "-m",
        "moda_lab.eval",
        f"checkpoint={run_dir}",
        "tasks=all",
        f"data_dir={data}",
        "batch_size=4",
        "device=cpu",
        f"perplexity.domains={tiny_run['corpus']}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (run_dir / "eval" / "last").glob("*/results.json")
    assert path.parent.name.startswith("step10_2tasks_")
    results = json.loads(path.read_text())
    samples = [json.loads(x) for x in (path.parent / "samples_piqa.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(1838))
    assert sum(s["acc"] for s in samples) / 1838 == pytest.approx(results["results"]["moda_piqa"]["acc,none"])
    assert results["moda"]["partial_tasks"] == {}
    assert sorted(results["moda"]["missing_tasks"]) == sorted(set(TASK_FIELDS) - {"piqa", "copa"})
    assert results["moda"]["missing_tasks"]["hellaswag"] == str(data / "hellaswag.jsonl")
    assert "NOT EVALUATED (data file missing): hellaswag, winogrande" in out.stdout + out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert any("moda_piqa" in line and "acc" in line for line in table), out.stdout[-3000:]
    val = [json.loads(x) for x in before if "val/prose/loss" in x][-1]
    assert results["moda"]["perplexity"]["prose"]["loss"] == pytest.approx(val["val/prose/loss"], abs=1e-5)
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len(before) + 1
    row = json.loads(rows[-1])
    step = results["moda"]["step"]
    assert step == 10 and row["step"] == step
    assert row["tokens"] == step * 4 * 32  # batch_size * seq_len
    assert row["eval/piqa/acc"] == results["results"]["moda_piqa"]["acc,none"]
    assert row["eval/copa/acc_norm"] == results["results"]["moda_copa"]["acc_norm,none"]
    assert row["eval/piqa/n"] == 1838 and row["eval/copa/n"] == 100
    assert (
        row["eval/prose/bpb"] == pytest.approx(results["moda"]["perplexity"]["prose"]["bpb"])
        and row["eval/prose/bpb"] > 0
    )
    assert results["moda"]["timing"]["total_s"] > 0 and results["moda"]["eval_config"]["tasks"] == ["piqa", "copa"]
    assert results["moda"]["eval_config"]["precision"] == "auto" and results["moda"]["precision"] == "fp32"
    assert sorted(results["results"]) == ["moda_copa", "moda_piqa"]


@pytest.mark.slow  # 7-20 s end to end; the fast tier covers the module with quicker tests
def test_lm_eval_cli_wrapper(tiny_run):
    out_dir = tiny_run["tmp"] / "lm_eval_out"
    model_args = json.dumps({"checkpoint": str(tiny_run["ckpt"])})
    cmd = [
        sys.executable,
        "-m",
        "moda_lab.eval.cli",
        "--model",
        "moda",
        "--model_args",
        model_args,
        "--tasks",
        "moda_winogrande",
        "--batch_size",
        "2",
        "--data_dir",  # no --device: the wrapper's default is auto (lm-eval's own, cuda, fails without a GPU)
        str(tiny_run["data"]),
        "--output_path",
        str(out_dir),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = list(out_dir.rglob("results_*.json"))
    acc = json.loads(path.read_text())["results"]["moda_winogrande"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and "moda_winogrande" in out.stdout


@pytest.mark.slow  # four run.py launches
def test_after_fit_hook_through_run_py(tiny_run):
    cmd = [
        sys.executable,
        "run.py",
        *tiny_run["overrides"],
        "trainer.max_steps=4",
        "trainer.ckpt_every=4",
        "trainer.val_every=4",
        f"run_root={tiny_run['tmp'] / 'runs'}",
        "name=hook",
        "eval.after_fit=true",
        "eval.tasks=[boolq,sciq]",
        f"eval.data_dir={_full_split_fixtures(tiny_run['tmp'] / 'full_data', ('boolq', 'sciq'))}",
        "eval.batch_size=4",
        "eval.device=cpu",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = [p for p in (tiny_run["tmp"] / "runs" / "hook").iterdir() if p.is_dir()]
    (path,) = (run_dir / "eval" / "last").glob("*/results.json")
    results = json.loads(path.read_text())
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 4 and row["eval/boolq/acc"] == results["results"]["moda_boolq"]["acc,none"]
    assert "eval/sciq/acc_norm" in row

    def eval_rows() -> int:
        return sum('"eval/' in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())

    # Relaunched, the finished run is neither trained nor evaluated again; another eval config is evaluated.
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, again.stderr[-3000:]
    assert eval_rows() == 1 and "not evaluated again" in again.stdout + again.stderr
    # Attention statistics asked for later: written beside the results, which are not evaluated again.
    attn = subprocess.run([*cmd, "eval.attention_windows=1"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=150)
    assert attn.returncode == 0, attn.stderr[-3000:]
    assert eval_rows() == 1 and (run_dir / "eval" / "last" / "attention.csv").is_file()
    other = subprocess.run([*cmd, "eval.limit=3"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=150)
    assert other.returncode == 0, other.stderr[-3000:]
    # A partial evaluation goes beside the full one, into its own folder, and not into metrics.jsonl.
    assert eval_rows() == 1 and json.loads(path.read_text()) == results
    (partial,) = [p for p in (run_dir / "eval" / "last").glob("*/results.json") if p != path]
    assert partial.parent.name.endswith("_limit3") and (partial.parent / "samples_boolq.jsonl").is_file()
    assert json.loads(partial.read_text())["moda"]["eval_config"]["limit"] == 3


def test_attention_statistics_are_the_models_maps_on_its_validation_windows(tiny_run):
    import numpy as np
    import pandas as pd
    import yaml

    from moda_lab.analysis.attention import attention_summary
    from moda_lab.config import run_config_from_dict
    from moda_lab.eval.attention_stats import validation_windows, write_run_attention
    from moda_lab.rundata import load_data
    from moda_lab.train.datamodule import TokenWindows

    run = _copy_run(tiny_run, "attention")
    csv = write_run_attention(run, 2, "cpu")
    stats = pd.read_csv(csv)
    windows = validation_windows(run, 2)
    model, cfg, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert set(stats["domain"]) == set(windows) and len(stats) == len(windows) * cfg["n_layers"] * cfg["n_heads"]
    assert (stats["step"] == 10).all() and (stats["asked"] == 2).all()
    assert stats.groupby("domain")["windows"].first().to_dict() == {d: len(w) for d, w in windows.items()}
    # The windows are the inputs of training's validation batches.
    runcfg = run_config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    domain = max(sorted(windows), key=lambda d: len(windows[d]))
    assert len(windows[domain]) == 2
    val = TokenWindows(load_data(runcfg).tokens(f"val_{domain}"), runcfg.data.seq_len)
    assert np.array_equal(windows[domain][1], val[1][0].numpy())
    with torch.no_grad():
        ref = pd.concat([attention_summary(model.eval().attention_maps(torch.tensor(w)[None])) for w in windows[domain]])
    ref = ref.groupby(["layer", "head"]).mean()
    got = stats[stats["domain"] == domain].set_index(["layer", "head"])
    for col in ("depth_mass", "sink_mass", "sequence_mass"):
        assert np.allclose(got[col], ref[col], atol=1e-6), col
    assert (got.loc[0, "depth_slots"] == 0).all() and (got["depth_slots"] > 0).any()  # MoDA: later layers read depth
    assert ((got["depth_mass"] > 0) == (got["depth_slots"] > 0)).all()
    assert (csv.parent / "attention.png").is_file()
    # Done for this step and window count: not computed again; another count is.
    mtime = csv.stat().st_mtime_ns
    write_run_attention(run, 2, "cpu")
    assert csv.stat().st_mtime_ns == mtime
    write_run_attention(run, 1, "cpu")
    assert set(pd.read_csv(csv)["asked"]) == {1} and set(pd.read_csv(csv)["windows"]) == {1}
    # A damaged last.ckpt: the statistics come from the newest intact checkpoint, as evaluation's do.
    damaged = _copy_run(tiny_run, "attention_damaged")
    (damaged / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    stats = pd.read_csv(write_run_attention(damaged, 1, "cpu"))
    assert set(stats["step"]) == {10} and not stats.empty
    with pytest.raises(EvalConfigError, match="eval.attention_windows must be an integer >= 0"):
        eval_config_from_dict({"tasks": [], "attention_windows": -1})


# --- errors --------------------------------------------------------------------------------------------------


def test_corrupt_checkpoint_is_a_clear_error(tiny_run):
    bad = tiny_run["tmp"] / "truncated.ckpt"
    data = tiny_run["ckpt"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*truncated.ckpt"):
        ModaLM(checkpoint=bad)


def test_mismatched_checkpoint_is_a_clear_error(tiny_run):
    ckpt = torch.load(tiny_run["ckpt"], map_location="cpu", weights_only=False)
    _, cfg, _ = load_checkpoint(tiny_run["ckpt"])
    other = GPT(ModelConfig(**{**cfg, "n_layers": 3, "mixer": {"name": "dense"}}))
    ckpt["state_dict"] = {f"model.{k}": v for k, v in other.state_dict().items()}
    path = tiny_run["tmp"] / "mismatched.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="weights do not match its config"):
        ModaLM(checkpoint=path)


def test_eval_config_errors(tiny_run):
    with pytest.raises(EvalConfigError, match=r"unknown task\(s\) \['lambada'\]; available: \['piqa'"):
        eval_config_from_dict({"tasks": ["piqa", "lambada"], "data_dir": str(tiny_run["data"])})
    empty = tiny_run["tmp"] / "no_data"
    with pytest.raises(EvalConfigError, match=f"{empty}/mmlu.jsonl.*eval.data_dir.*MODA_EVAL_DATA"):
        eval_config_from_dict({"tasks": ["mmlu"], "data_dir": str(empty)})
    with pytest.raises(EvalConfigError, match="eval.batch_size"):
        eval_config_from_dict({"tasks": [], "batch_size": 0})
    with pytest.raises(EvalConfigError, match="eval.perplexity.domains.web"):
        eval_config_from_dict({"tasks": [], "perplexity": {"split": "all", "domains": {"web": str(empty / "web")}}})
    with pytest.raises(EvalConfigError, match="perplexity.split=heldout .*corpus dir"):
        eval_config_from_dict({"tasks": [], "perplexity": {"domains": {"web": str(tiny_run["corpus"])}}})
    with pytest.raises(EvalConfigError, match="perplexity.split='val'"):
        eval_config_from_dict({"tasks": [], "perplexity": {"split": "val"}})
    full = eval_config_from_dict({"tasks": "all", "data_dir": str(tiny_run["data"])})
    assert full.tasks == tuple(TASK_FIELDS) and full.missing_tasks == {}


def test_tasks_all_names_missing_files_explicit_ones_are_errors(tiny_run, caplog):
    data = write_eval_fixtures(tiny_run["tmp"] / "three_tasks", tasks=("mmlu", "boolq", "piqa"))
    with caplog.at_level("WARNING"):
        cfg = eval_config_from_dict({"tasks": "all", "data_dir": str(data)})
    assert cfg.tasks == ("piqa", "boolq", "mmlu")  # the paper's order
    assert cfg.missing_tasks["hellaswag"] == str(data / "hellaswag.jsonl") and len(cfg.missing_tasks) == 7
    assert "NOT EVALUATED (data file missing): hellaswag, winogrande, openbookqa" in caplog.text
    with pytest.raises(EvalConfigError, match=f"eval data missing: .*{data / 'hellaswag.jsonl'}"):
        eval_config_from_dict({"tasks": ["piqa", "hellaswag"], "data_dir": str(data)})
    with pytest.raises(EvalConfigError, match="eval.tasks=all: no task file in"):
        eval_config_from_dict({"tasks": "all", "data_dir": str(tiny_run["tmp"] / "no_data")})
    with pytest.raises(EvalConfigError, match="unknown key.*missing_tasks"):
        eval_config_from_dict({"tasks": "all", "missing_tasks": {}})


def test_heldout_split_reads_the_runs_val_fraction(tiny_run, caplog):
    import yaml

    from moda_lab.eval.evaluate import run_val_fraction

    assert run_val_fraction(tiny_run["ckpt"], str(tiny_run["corpus"])) == 0.2
    with caplog.at_level("WARNING"):
        run_val_fraction(tiny_run["ckpt"], str(tiny_run["tmp"] / "other_corpus"))
    assert "is not the run's data.corpus_dir" in caplog.text
    packed = _copy_run(tiny_run, "packed_run")
    cfg = yaml.safe_load((packed / "config.yaml").read_text())
    cfg["data"]["packed_dir"] = "data/packed"
    (packed / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(EvalConfigError, match="data.packed_dir='data/packed'.*perplexity.split=all"):
        run_val_fraction(packed / "checkpoints" / "last.ckpt", str(tiny_run["corpus"]))
    with pytest.raises(EvalConfigError, match="set eval.perplexity.val_fraction"):
        run_val_fraction(tiny_run["tmp"] / "loose.ckpt", str(tiny_run["corpus"]))


def test_batch_size_auto_is_a_gpu_probe(tiny_run):
    assert eval_config_from_dict({"tasks": [], "batch_size": "auto"}).batch_size == "auto"
    with pytest.raises(EvalConfigError, match="eval.batch_size must be a positive integer or auto, got 'big'"):
        eval_config_from_dict({"tasks": [], "batch_size": "big"})
    with pytest.raises(ValueError, match="batch_size=auto probes GPU memory; on cpu give a fixed batch_size"):
        ModaLM(checkpoint=tiny_run["ckpt"], batch_size="auto", device="cpu")
