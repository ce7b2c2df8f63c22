"""Hugging Face export: every depth-flow variant x norm placement loads through AutoModelForCausalLM with
trust_remote_code, gives the workbench's logits and greedy tokens (cached, uncached, padded batches), the
tokenizer loads through AutoTokenizer, and lm-eval's stock ``hf`` model scores like our ``moda`` model."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from moda_lab.data.tokenizer import EOS, train_tokenizer
from moda_lab.errors import UsageError
from moda_lab.hf import export
from moda_lab.load import CheckpointError, load_checkpoint
from moda_lab.model import DEPTH_MIXERS, GPT, NORM_PLACEMENTS, ModelConfig
from moda_lab.model.decode import greedy_tokens
from variants import MODA_SINGLE_SOURCES, PER_MIXER, VARIANTS

transformers = pytest.importorskip("transformers")

# Every registered mixer, MoDA with each depth K/V source alone and with all of them.
MIXERS = {**PER_MIXER, "moda_depth_kv": VARIANTS["moda_depth_kv"], **MODA_SINGLE_SOURCES}
CASES = [(m, n) for m in MIXERS for n in NORM_PLACEMENTS]
# The fast tier exports each variant under one norm placement, taking the placements in turn (so each is exported
# too); the full suite (slow marks included) exports every pair.
FAST_CASES = {(m, list(NORM_PLACEMENTS)[i % len(NORM_PLACEMENTS)]) for i, m in enumerate(MIXERS)}
TEXT = [
    "The water is next to the stone. Question: How do you dry paper? Answer: in the sun.",
    "def f(x):\n    return x",
]


def test_cases_cover_every_registered_variant():
    assert {m.name for m in MIXERS.values()} == set(DEPTH_MIXERS)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT * 30, 320)


def _checkpoint(tmp, tokenizer, mixer: str, norm: str, tie: bool = True) -> tuple[GPT, object]:
    """A random GPT saved the way training saves it (hyper_parameters.model_cfg, model.* weights, tokenizer)."""
    cfg = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(),
        n_layers=3,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=40,
        # DeepNorm's up-weighted stream (and its x0.45 branch init) makes a 0.3-std model repeat its last token
        # greedily, which would hide a wrong cache: its weights start wider.
        init_std=1.0 if norm == "deepnorm" else 0.3,
        mixer=MIXERS[mixer],
        norm=norm,
        tie_embeddings=tie,
        attn_backend="naive",
    )
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    ckpt = {
        "hyper_parameters": {"model_cfg": dataclasses.asdict(cfg)},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.to_str(),
        "global_step": 7,
    }
    path = tmp / f"{mixer}-{norm}-{tie}.ckpt"
    torch.save(ckpt, path)
    return model, path


def _greedy(model: GPT, ids: torch.Tensor, new: int) -> torch.Tensor:
    """[B, T] prompts and their ``new`` greedy tokens, [B, T + new], by the workbench's decoding loop."""
    return torch.tensor([row + list(itertools.islice(greedy_tokens(model, row), new)) for row in ids.tolist()])


def _load_hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


def _prompts(model: GPT, eos: int) -> torch.Tensor:
    """Two prompts whose greedy continuations (14 tokens) hold no EOS, so generate() never pads a row, and are
    not one token repeated (so that a wrong cache shows)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        ids = torch.randint(eos + 1, model.cfg.vocab_size, (2, 6), generator=gen)
        new = _greedy(model, ids, 14)[:, 6:]
        if eos not in new and all(len(set(row.tolist())) > 2 for row in new):
            return ids
    raise AssertionError("every sampled prompt generates EOS or repeats one token")


@pytest.mark.parametrize(
    ("mixer", "norm"),
    [pytest.param(m, n, marks=() if (m, n) in FAST_CASES else pytest.mark.slow) for m, n in CASES],
    ids=[f"L3-D32-H4-G2-{m}-{n}" for m, n in CASES],
)
def test_logits_and_greedy_generation_match_the_workbench(tmp_path, tokenizer, mixer, norm):
    model, ckpt = _checkpoint(tmp_path, tokenizer, mixer, norm)
    hf = _load_hf(export(ckpt, tmp_path / "hf"))
    assert type(hf).__name__ == "MoDAForCausalLM" and hf.model.cfg == model.cfg
    assert hf.model.lm_head.weight is hf.model.tok_emb.weight  # the tied head stays tied after loading
    eos = tokenizer.token_to_id(EOS)
    ids = _prompts(model, eos)
    with torch.no_grad():
        ref = model(ids)
        got = hf(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    greedy = _greedy(model, ids, 14)
    assert torch.equal(hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=14), greedy)
    assert torch.equal(
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=14, use_cache=False), greedy
    )


def test_untied_head_and_padded_batches(tmp_path, tokenizer):
    """An untied head round-trips; a right-padded forward and a left-padded generate give each row's own result."""
    model, ckpt = _checkpoint(tmp_path, tokenizer, "moda_full", "post", tie=False)
    hf = _load_hf(export(ckpt, tmp_path / "hf"))
    assert not torch.equal(hf.model.lm_head.weight, hf.model.tok_emb.weight)
    torch.testing.assert_close(hf.model.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)
    eos = tokenizer.token_to_id(EOS)
    ids = _prompts(model, eos)
    short, full = ids[0, :3], ids[1]
    pad = torch.tensor([eos] * 3)
    ones, zeros = torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        right = hf(
            torch.stack([torch.cat([short, pad]), full]),
            attention_mask=torch.stack([torch.cat([ones, zeros]), torch.ones(6, dtype=torch.long)]),
        ).logits
        torch.testing.assert_close(right[0, :3], model(short[None])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(right[1], model(full[None])[0], rtol=1e-5, atol=1e-5)
    left = torch.stack([torch.cat([pad, short]), full])
    mask = torch.stack([torch.cat([zeros, ones]), torch.ones(6, dtype=torch.long)])
    out = hf.generate(left, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(out[1], _greedy(model, full[None], 10)[0])
    row = _greedy(model, short[None], 10)[0]
    stop = (row[3:] == eos).nonzero()
    n = 3 + (int(stop[0]) + 1 if len(stop) else 10)  # generate() pads a row after its EOS
    assert torch.equal(out[0, 3 : 3 + n], row[:n])
    # labels: transformers' shifted next-token loss == the workbench's loss on (inputs, targets).
    with torch.no_grad():
        out = hf(ids, labels=ids)
        assert float(out.loss) == pytest.approx(float(model(ids[:, :-1], ids[:, 1:])), rel=1e-5)
        loss, logits = hf(ids, labels=ids, return_dict=False)
        assert torch.equal(logits, out.logits) and torch.equal(loss, out.loss)
    with pytest.raises(ValueError, match="one contiguous run"):
        hf(ids, attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1], [1] * 6]))


def test_inputs_longer_than_the_context_run_in_windows_from_the_end(tmp_path, tokenizer):
    """Past max_seq_len (40) the export runs disjoint windows of 40 counted back from the last token, each from
    position 0; several unmasked rows that long are refused (padding cannot be told), masked ones are not."""
    model, ckpt = _checkpoint(tmp_path, tokenizer, "moda_full", "pre")
    hf = _load_hf(export(ckpt, tmp_path / "hf"))
    L = model.cfg.max_seq_len
    torch.manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 2 * L + 7))  # windows of 7, 40 and 40 tokens
    with torch.no_grad():
        got = hf(ids[:1]).logits
        want = torch.cat([model(ids[:1, :7]), model(ids[:1, 7 : 7 + L]), model(ids[:1, 7 + L :])], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[:, -L:], model(ids[:1, -L:]), rtol=1e-5, atol=1e-5)  # = cut to the end
        with pytest.raises(ValueError, match="2 rows of 87 tokens, longer than max_seq_len=40, without attention_mask"):
            hf(ids)
        both = hf(ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(both[:1], got, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(both[1:], hf(ids[1:]).logits, rtol=1e-5, atol=1e-5)


def test_folder_files_tokenizer_and_workbench_reload(tmp_path, tokenizer):
    model, ckpt = _checkpoint(tmp_path, tokenizer, "moda_depth_kv", "reordered")
    folder = export(ckpt, tmp_path / "hf")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "config.json",
            "configuration_moda.py",
            "generation_config.json",
            "model.safetensors",
            "modeling_moda.py",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "moda" and config["training_step"] == 7 and config["mixer"]["depth_kv"] is True
    hf_cfg = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert (hf_cfg.hidden_size, hf_cfg.num_hidden_layers, hf_cfg.max_position_embeddings) == (32, 3, 40)
    assert hf_cfg.moda_config() == model.cfg
    tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    eos = tokenizer.token_to_id(EOS)
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == eos
    for text in [*TEXT, "a  b . , c"]:
        ids = tokenizer.encode(text).ids
        assert tok(text).input_ids == ids  # no BOS added: what training saw
        assert tok.decode(ids) == tokenizer.decode(ids)
    # The workbench reads the folder back (moda lm-eval model, analysis) with the same weights.
    again, cfg, extras = load_checkpoint(folder)
    assert extras["step"] == 7 and ModelConfig(**cfg) == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    # An exported folder re-exports to the same files (not into itself).
    copy = export(folder, tmp_path / "copy")
    for name in names:
        assert (copy / name).read_bytes() == (folder / name).read_bytes(), name
    with pytest.raises(CheckpointError, match="export it into another folder"):
        export(folder, folder)


def test_bf16_export_within_bf16_tolerance(tmp_path, tokenizer):
    model, ckpt = _checkpoint(tmp_path, tokenizer, "moda_full", "pre")
    hf = _load_hf(export(ckpt, tmp_path / "hf", dtype="bfloat16"))
    assert hf.dtype == torch.bfloat16
    ids = _prompts(model, tokenizer.token_to_id(EOS))
    with torch.no_grad():
        ref, got = model(ids), hf(ids).logits.float()
    rel = (got - ref).norm() / ref.norm()
    assert rel < 2e-2, rel  # bf16 weights and activations: ~3 significant digits
    with pytest.raises(ValueError, match="dtype='float16' is not supported"):
        export(ckpt, tmp_path / "bad", dtype="float16")


def test_an_out_folder_below_a_file_or_read_only_is_one_line(tmp_path, tokenizer, capsys, monkeypatch):
    from moda_lab.hf.__main__ import main

    _, ckpt = _checkpoint(tmp_path, tokenizer, "moda_full", "pre")
    notes, ro = tmp_path / "notes.txt", tmp_path / "ro"
    notes.write_text("mine")
    ro.mkdir()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main([str(ckpt), str(notes / "hf")])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        f"export error: export folder {notes / 'hf'}: {notes} is a file, not a directory; give a new or empty folder "
        "this user can write\n"
    )
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    with pytest.raises(UsageError, match=rf"^export folder {ro}/hf: {ro} is read-only for this user; give a new"):
        export(ckpt, ro / "hf")
    assert sorted(tmp_path.rglob("*")) == before and notes.read_text() == "mine"


@pytest.mark.slow  # 7-20 s end to end; the fast tier covers the module with quicker tests
def test_lm_eval_hf_model_scores_like_the_moda_model(tiny_run):
    """The CLI exports the tiny trained run; lm-eval's stock hf model on it reproduces the moda model's scores."""
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm-eval's hf model imports it
    from lm_eval.tasks import TaskManager

    import moda_lab.eval.lm  # noqa: F401 - registers the moda model
    from moda_lab.eval.tasks import TASK_DIR

    folder = tiny_run["tmp"] / "hf_export"
    cmd = [sys.executable, "-m", "moda_lab.hf", str(tiny_run["run_dir"]), str(folder)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(folder)
    tasks = ["moda_piqa", "moda_arc_easy", "moda_copa", "moda_hellaswag", "moda_mmlu"]
    results = {}
    # The stock model runs one row at a time: its batches are right-padded without an attention_mask, and rows
    # longer than the model's context (these contexts are) need their real end to place the window.
    for model, args, batch_size in [
        ("moda", {"checkpoint": str(tiny_run["ckpt"]), "device": "cpu"}, 4),
        ("hf", {"pretrained": str(folder), "trust_remote_code": True, "device": "cpu"}, 1),
    ]:
        tm = TaskManager(
            include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(tiny_run["data"])}
        )
        results[model] = lm_eval.simple_evaluate(
            model=model, model_args=args, tasks=tasks, task_manager=tm, batch_size=batch_size, log_samples=True
        )
    for task in tasks:
        ours, stock = results["moda"]["results"][task], results["hf"]["results"][task]
        metrics = [m for m in ours if m.startswith(("acc,", "acc_norm,"))]
        assert "acc,none" in metrics
        for metric in metrics:
            assert stock[metric] == ours[metric], (task, metric)
        # Per-choice log-likelihoods agree to fp32 accumulation (ours sums in float64).
        ll = [float(r[0][0]) for s in results["moda"]["samples"][task] for r in s["resps"]]
        ll_hf = [float(r[0][0]) for s in results["hf"]["samples"][task] for r in s["resps"]]
        assert ll_hf == pytest.approx(ll, abs=1e-4)
    # generate_until: the stock model batches left-padded prompts through generate(); ours decodes one by one.
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from moda_lab.eval.lm import ModaLM

    # Prompt + generation within max_seq_len (32): the stock model keeps n_positions - max_gen_toks prompt tokens,
    # ours max_seq_len - max_gen_toks, and the cached forward refuses to run past max_seq_len.
    prompts = ["The stone is", "How do you dry water?\nAnswer:", "def f(x):"]
    reqs = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 8}), i) for i, p in enumerate(prompts)
    ]
    stock = HFLM(pretrained=str(folder), trust_remote_code=True, device="cpu", batch_size=3)
    ours = ModaLM(checkpoint=tiny_run["ckpt"], device="cpu")
    texts = stock.generate_until(reqs, disable_tqdm=True)
    assert texts == ours.generate_until(reqs, disable_tqdm=True)
    assert all(texts), texts  # each prompt generated something before EOS / the stop string


@pytest.mark.slow  # ~25 s on 2 cores: ten tasks loaded twice
def test_stock_hf_scores_the_real_eval_files_like_the_moda_model(tiny_run):
    """On a few rows of each real evaluation file (../shared/data/eval), with a checkpoint whose context (32
    tokens) is shorter than some continuations: the export under lm-eval's stock hf model (n_positions) gives
    our moda model's per-choice log-likelihoods, the long continuations included."""
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from lm_eval.tasks import TaskManager

    import moda_lab.eval.lm  # noqa: F401 - registers the moda model
    from moda_lab.eval.tasks import TASK_DIR, TASK_FIELDS, data_dir, lm_eval_name

    real = data_dir()
    present = [t for t in TASK_FIELDS if (real / f"{t}.jsonl").is_file()]
    if not present:
        pytest.skip(f"no real eval data in {real}")
    folder = export(tiny_run["run_dir"], tiny_run["tmp"] / "hf_export_real")
    assert json.loads((folder / "config.json").read_text())["n_positions"] == 2048
    tasks = [lm_eval_name(t) for t in present]
    samples = {}
    for model, args, batch_size in [
        ("moda", {"checkpoint": str(tiny_run["ckpt"]), "device": "cpu"}, 4),
        ("hf", {"pretrained": str(folder), "trust_remote_code": True, "device": "cpu"}, 1),
    ]:
        tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(real)})
        out = lm_eval.simple_evaluate(
            model=model, model_args=args, tasks=tasks, task_manager=tm, batch_size=batch_size, limit=3, log_samples=True
        )
        samples[model] = out["samples"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    longest = 0
    for task in tasks:
        ours, stock = samples["moda"][task], samples["hf"][task]
        assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in stock]
        for a, b in zip(ours, stock):
            ll, ll_hf = [float(r[0][0]) for r in a["resps"]], [float(r[0][0]) for r in b["resps"]]
            assert ll_hf == pytest.approx(ll, abs=1e-3), (task, a["doc_id"])
            assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]], (task, a["doc_id"])
            longest = max(longest, *(len(tok(cont).input_ids) for _, cont in a["arguments"]))
    if "piqa" in present:  # PIQA's solutions outgrow the 32-token context
        assert longest > 32
