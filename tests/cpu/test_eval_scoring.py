"""score_continuations on CPU: the head on the scored positions only, batch widths bucketed to WIDTH_BUCKET and
eval.precision give the results of the full-logits algorithm they replaced, for a residual and a MoDA model."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models

from moda_lab.data.tokenizer import EOS
from moda_lab.model import GPT, ModelConfig
from variants import VARIANTS

lm_eval = pytest.importorskip("lm_eval")
from moda_lab.eval import EvalConfigError, eval_config_from_dict  # noqa: E402
from moda_lab.eval.lm import WIDTH_BUCKET, ModaLM, resolve_precision, score_continuations  # noqa: E402
from moda_lab.model.decode import greedy_tokens  # noqa: E402

VOCAB = 61
MAX_LEN = 150  # not a multiple of WIDTH_BUCKET: the widest batches are clipped to max_length


def build(mixer: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        n_layers=3,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=MAX_LEN,
        init_std=0.3,
        mixer=VARIANTS[mixer],
        attn_backend="naive",
    )
    return GPT(cfg).eval()


@torch.no_grad()
def full_logits_scores(model: GPT, pairs, batch_size: int, max_length: int | None = None) -> list[tuple[float, bool]]:
    """The algorithm score_continuations replaced: each batch as wide as its longest input, a log-softmax over
    all [B, T, V] logits, the continuation log-probs gathered and summed (same truncation, same order). A
    continuation longer than max_length is cut into windows of max_length tokens from its end, each scored with
    the max_length tokens before its last one, and the windows' scores are summed."""
    max_length = max_length or model.cfg.max_seq_len
    prepared, owner = [], []
    for k, (ctx, cont) in enumerate(pairs):
        seq = ctx + cont
        for stop in range(len(cont), 0, -max_length):  # cont[:stop] ends the window
            part = cont[max(0, stop - max_length) : stop]
            full = (seq[: len(ctx) + stop])[-(max_length + 1) :]
            prepared.append((full[:-1], part))
            owner.append(k)
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
    results: list = [None] * len(prepared)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = len(prepared[batch[0]][0])
        idx = torch.zeros(len(batch), width, dtype=torch.long)
        target = torch.zeros(len(batch), width, dtype=torch.long)
        scored = torch.zeros(len(batch), width, dtype=torch.bool)
        for row, i in enumerate(batch):
            inp, cont = prepared[i]
            idx[row, : len(inp)] = torch.tensor(inp)
            target[row, len(inp) - len(cont) : len(inp)] = torch.tensor(cont)
            scored[row, len(inp) - len(cont) : len(inp)] = True
        logprobs = F.log_softmax(model(idx).float(), dim=-1)
        token_lp = logprobs.gather(-1, target[..., None])[..., 0]
        sums = torch.where(scored, token_lp, 0.0).double().sum(-1).tolist()
        greedy = ((logprobs.argmax(-1) == target) | ~scored).all(-1).tolist()
        for row, i in enumerate(batch):
            results[i] = (sums[row], bool(greedy[row]))
    totals = [(0.0, True)] * len(pairs)
    for k, (s, g) in zip(owner, results):
        totals[k] = (totals[k][0] + s, totals[k][1] and g)
    return totals


def random_pairs(model: GPT, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Random contexts and continuations, some longer than max_seq_len (left truncation; continuations longer
    than the window, scored in two windows), and some continuations that are the model's greedy ones (greedy flag true)."""
    rng = random.Random(seed)
    pairs = []
    for n_ctx, n_cont in [(1, 1), (5, 3), (63, 1), (64, 2), (100, 10), (200, 4), (10, 160), (1, MAX_LEN + 5)]:
        pairs.append(([rng.randrange(VOCAB) for _ in range(n_ctx)], [rng.randrange(VOCAB) for _ in range(n_cont)]))
    for n_ctx, n_cont in [(7, 4), (90, 2), (170, 3)]:
        ctx = [rng.randrange(VOCAB) for _ in range(n_ctx)]
        pairs.append((ctx, list(itertools.islice(greedy_tokens(model, ctx), n_cont))))
    return pairs


def assert_same(got, want, atol=1e-4) -> None:
    assert [g for _, g in got] == [g for _, g in want]
    for (s, _), (r, _) in zip(got, want):
        assert s == pytest.approx(r, abs=atol)


@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("mixer", ["residual", "moda"])
def test_scores_equal_the_full_logits_algorithm(mixer, batch_size):
    model = build(mixer)
    pairs = random_pairs(model)
    got = score_continuations(model, pairs, batch_size)
    want = full_logits_scores(model, pairs, batch_size)
    assert_same(got, want)
    assert any(g for _, g in got) and not all(g for _, g in got)  # both flags occur


def record_batches(monkeypatch, model: GPT) -> list[tuple[int, int]]:
    """The (rows, width) of every batch the model's trunk runs from now on."""
    shapes = []
    hidden_states = model.hidden_states

    def recording(idx):
        shapes.append(tuple(idx.shape))
        return hidden_states(idx)

    monkeypatch.setattr(model, "hidden_states", recording)
    return shapes


def test_width_bucketing_changes_no_score(monkeypatch):
    model = build("moda")
    shapes = record_batches(monkeypatch, model)
    # Input lengths (context + continuation - 1) 140, 128, 65, 64, 30: on and off the bucket boundaries.
    pairs = [([3] * (n - 1), [5, 7]) for n in (30, 64, 65, 128, 140)]
    ref = full_logits_scores(model, pairs, batch_size=1)  # each sequence at its own width, unpadded
    assert_same(score_continuations(model, pairs, batch_size=1), ref, atol=1e-5)
    assert [w for _, w in shapes] == [MAX_LEN, 128, 128, 64, 64]  # longest first; 140 -> 192, clipped to max_length
    for batch_size in (2, 5):
        shapes.clear()
        assert_same(score_continuations(model, pairs, batch_size), ref, atol=1e-5)
        assert all(w % WIDTH_BUCKET == 0 or w == MAX_LEN for _, w in shapes)
    shapes.clear()
    assert_same(score_continuations(model, pairs, 2, max_length=100), full_logits_scores(model, pairs, 1, 100))
    # Left-truncated to 100 tokens, the inputs of 140 and 128 are the same tokens: one row scores both.
    assert [w for _, w in shapes] == [100, 64]  # 65 -> 128, clipped to the max_length given


def test_choices_with_the_same_input_share_one_row(monkeypatch):
    """MMLU's case: one-token continuations of one context all have the context as their input, so a question
    takes one row of a batch whatever its choices; the scores are those of each pair scored alone."""
    model = build("residual")
    shapes = record_batches(monkeypatch, model)
    rng = random.Random(3)
    contexts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (9, 40, 40, 120)]  # two of length 40
    pairs = [(ctx, [choice]) for ctx in contexts for choice in (11, 12, 13, 14)]
    pairs.append((contexts[1], [11, 12]))  # a two-token continuation: its own input
    want = full_logits_scores(model, pairs, batch_size=1)
    for batch_size in (1, 2, 16):
        shapes.clear()
        assert_same(score_continuations(model, pairs, batch_size), want, atol=1e-5)
        assert sum(r for r, _ in shapes) == len(contexts) + 1


def tiny_lm(precision: str) -> ModaLM:
    tok = Tokenizer(models.WordLevel({EOS: 0, "a": 1}, unk_token=EOS))
    return ModaLM(model=build("moda"), tokenizer=tok, device="cpu", batch_size=3, precision=precision)


def test_precision_setting():
    with pytest.raises(EvalConfigError, match=r"eval.precision='fp16' .*\['auto', 'fp32', 'bf16'\]"):
        eval_config_from_dict({"tasks": [], "precision": "fp16"})
    assert eval_config_from_dict({"tasks": []}).precision == "auto"
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    assert tiny_lm("auto").precision == "fp32"
    with pytest.raises(ValueError, match="precision='fp16' is not supported"):
        tiny_lm("fp16")


def test_bf16_autocast_scores_close_to_fp32():
    lm = tiny_lm("bf16")
    pairs = random_pairs(lm.gpt)[:4]
    fp32 = score_continuations(lm.gpt, pairs, 3)
    bf16 = lm._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in pairs], disable_tqdm=True)
    assert bf16 == score_continuations(lm.gpt, pairs, 3, precision="bf16")
    assert [s for s, _ in bf16] != [s for s, _ in fp32]  # autocast was on
    for (s, _), (r, _) in zip(bf16, fp32):
        assert s == pytest.approx(r, rel=0.05, abs=0.2)
