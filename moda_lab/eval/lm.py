"""The moda-lab decoder as an lm-eval model (``--model moda``): lm-eval's own HF model (HFLM) over the checkpoint.

The checkpoint (a Lightning .ckpt, a run dir or an exported folder) is loaded into the workbench's GPT and handed
to HFLM as the exported model's classes in memory (moda_lab.hf.wrap: MoDAForCausalLM, the folder's tokenizer
settings), so tokenization, generation (``generate()`` with the depth-aware KV cache) and rolling windows are
lm-eval's HF code, as under ``--model hf`` on the export. Two parts are the workbench's own: requests are
encoded in one batched call (encode_requests), and log-likelihoods are scored by score_continuations: the
model's batched forward (right-padded: the causal mask keeps padding out of every scored position) under bf16
autocast or in fp32 (``precision``), with the head applied to the scored positions only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from ..data.tokenizer import EOS
from ..errors import UsageError
from ..load import CheckpointError, checkpoint_tokenizer, load_checkpoint
from ..model import GPT
from .device import check_device
from .precision import PRECISIONS

try:
    # lm-eval registers its stock models (hf, vllm, ...) only when its registry is empty at the first lookup;
    # importing lm_eval.models first keeps them next to ``moda`` (e.g. ``--model hf`` on an exported folder).
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # pragma: no cover - lm_eval, transformers and accelerate are declared dependencies
    raise ImportError(
        f"moda_lab.eval needs lm-eval with its HF model (pip install 'lm-eval==0.4.13' transformers accelerate): {err}"
    ) from err

log = logging.getLogger(__name__)

# Scoring batches are padded to a multiple of this width (at most max_length): the fused Triton attention
# autotunes once per distinct sequence length, so a handful of widths instead of one per batch.
WIDTH_BUCKET = 64


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """fp32 or bf16; auto is bf16 on CUDA (the models train under bf16-mixed there) and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r} is not supported by the moda model; choose one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The forward's precision: bf16 autocast as in training, or no autocast (fp32)."""
    device = torch.device(device)
    return torch.autocast(device.type, torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


def parse_batch_size(value: int | str) -> int | str:
    """A positive integer, or "auto" (the largest batch that fits on the GPU, see auto_batch_size).

    lm-eval hands batch sizes as strings from its CLI; "auto:N" (re-probing) is not supported.
    """
    if value == "auto":
        return "auto"
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"batch_size={value!r} is not supported by the moda model; give a positive integer or auto"
        ) from None
    if size < 1:
        raise UsageError(f"batch_size must be a positive integer or auto, got {size}")
    return size


@torch.no_grad()
def auto_batch_size(
    model: GPT, max_length: int, device: torch.device | str, cap: int = 1024, precision: str = "fp32"
) -> int:
    """The largest power of two (<= cap) whose full-context scoring forward fits in GPU memory.

    Probes with batches of max_length tokens, every position scored (a perplexity window), the largest a
    scoring batch gets, so every later batch fits.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise UsageError(f"batch_size=auto probes GPU memory; on {device} give a fixed batch_size")
    vocab = model.cfg.vocab_size
    size, best = 1, 0
    while size <= cap:
        try:
            idx = torch.zeros(size, max_length, dtype=torch.long, device=device)
            with autocast(device, precision):
                logits = model(idx)
            F.log_softmax(logits.float(), dim=-1)  # the scoring path holds the fp32 log-probs too
            best = size
            size *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if best == 0:
        raise RuntimeError(f"one sequence of {max_length} tokens (vocab {vocab}) does not fit on {device}")
    return best


def _pieces(ctx: list[int], cont: list[int], window: int) -> list[tuple[list[int], list[int]]]:
    """(input, targets of its last positions) per window of one pair, the last window first.

    The input (context + continuation minus its last token) is cut into windows of ``window`` tokens counted back
    from its end, as the exported model runs an input longer than its context (hf/modeling_moda.py); only the
    windows that predict continuation tokens are kept: one, unless the continuation is longer than the window.
    """
    if not cont:
        raise ValueError("an empty continuation cannot be scored")
    if not ctx:
        raise ValueError("a context must hold at least one token (use the EOS token as prefix)")
    seq = ctx + cont
    n, first = len(seq) - 1, len(ctx) - 1  # input length; the position predicting cont[0]
    out = []
    for end in range(n, first, -window):
        start = max(0, end - window)
        out.append((seq[start:end], seq[max(start, first) + 1 : end + 1]))
    return out


@torch.no_grad()
def score_continuations(
    model: GPT,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    device: torch.device | str = "cpu",
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "loglikelihood",
    precision: str = "fp32",
) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) and whether the continuation is the greedy one, per pair.

    As lm-eval's HF model does, the model sees the last max_length tokens of context + continuation (minus the
    final token): a long context is left-truncated. A continuation longer than max_length is scored in full, in
    windows of max_length counted back from its end (_pieces), as the exported model scores it under lm-eval's
    stock hf model. Windows are scored longest first in right-padded batches (widths rounded up to
    WIDTH_BUCKET); results come back in input order. precision (see resolve_precision) sets the forward's
    autocast; the log-softmax is fp32.

    Pairs whose inputs are the same tokens share one forward: the choices of a question whose continuations are
    one token each (MMLU's " A" ... " D", BoolQ's " no" / " yes") have the context alone as their input, so a
    question costs one row of a batch, not one per choice (MMLU: 14,042 rows, not 56,168).
    """
    max_length = max_length or model.cfg.max_seq_len
    # Each distinct input once, with the (pair, continuation tokens) it scores.
    readers: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (ctx, cont) in enumerate(pairs):
        for inp, targets in _pieces(ctx, cont, max_length):
            readers.setdefault(tuple(inp), []).append((i, targets))
    order = sorted(readers, key=len, reverse=True)
    sums = [0.0] * len(pairs)
    greedy = [True] * len(pairs)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress):
        width = min(-(-len(batch[0]) // WIDTH_BUCKET) * WIDTH_BUCKET, max_length)
        idx = torch.zeros(len(batch), width, dtype=torch.long)
        scored, owners = [], []  # (row, position, target, reader) per continuation token; reader -> pair
        for row, inp in enumerate(batch):
            idx[row, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            for pair, cont in readers[inp]:
                # Positions whose next-token prediction is a continuation token: the last len(cont) inputs.
                start = len(inp) - len(cont)
                scored += [(row, start + j, tok, len(owners)) for j, tok in enumerate(cont)]
                owners.append(pair)
        idx = idx.to(device)
        rows, cols, target, reader = torch.tensor(scored, dtype=torch.long).T.contiguous().to(device)
        # The head and the fp32 log-softmax see the scored positions only ([N, V], a few rows per request, not
        # [B, T, V]); the per-request reduction stays on the device, so only sums and flags reach the host.
        with autocast(device, precision):
            logits = model.lm_head(model.hidden_states(idx)[rows, cols])
        logprobs = F.log_softmax(logits.float(), dim=-1)  # [N, V]
        token_lp = logprobs.gather(-1, target[:, None])[:, 0].double()
        reader_sums = torch.zeros(len(owners), dtype=torch.float64, device=device).index_add_(0, reader, token_lp)
        misses = torch.zeros(len(owners), dtype=torch.long, device=device)
        misses.index_add_(0, reader, (logprobs.argmax(-1) != target).long())
        for pair, total, miss in zip(owners, reader_sums.tolist(), misses.tolist()):
            sums[pair] += total
            greedy[pair] = greedy[pair] and miss == 0
    return list(zip(sums, greedy))


@register_model("moda")
class ModaLM(HFLM):
    """lm-eval's HF model over a moda-lab checkpoint: a Lightning .ckpt, a run dir, or an exported folder; or over
    a GPT in memory (``model=`` and ``tokenizer=``). ``gpt`` is the workbench's model, ``model`` HFLM's wrapper.

    max_length (default and at most the model's max_seq_len) is the scoring window and lm-eval's context for
    rolling windows and generation; max_gen_toks the default number of generated tokens.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        backend: str | None = None,
        precision: str = "auto",
        model: GPT | None = None,
        tokenizer: Tokenizer | None = None,
        **unused,
    ) -> None:
        from ..hf.wrap import wrap

        if unused:
            # lm-eval passes max_batch_size (and a few others) to every model; anything else is a typo.
            unknown = sorted(k for k in unused if k not in ("max_batch_size", "trust_remote_code"))
            if unknown:
                raise UsageError(
                    f"unknown model_args for the moda model: {unknown}; known: checkpoint, batch_size, device, "
                    "max_length, max_gen_toks, backend, precision. A checkpoint path with commas (Hydra run dirs) "
                    """must be given as JSON: --model_args '{"checkpoint": "runs/x/model=moda,norm=post"}'"""
                )
        check_device(device, "device")  # lm-eval's --device and model_args device=: before loading anything
        self.step = None
        if model is None:
            if checkpoint is None:
                raise UsageError(
                    "the moda model needs model_args checkpoint=<.ckpt file, run dir or exported folder>"
                )
            model, _, extras = load_checkpoint(checkpoint, backend)
            tokenizer = checkpoint_tokenizer(extras, checkpoint)
            self.step = extras["step"]
        elif tokenizer is None:
            raise ValueError("ModaLM(model=...) also needs tokenizer=")
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        if tokenizer.token_to_id(EOS) is None:
            raise CheckpointError(f"the checkpoint's tokenizer has no {EOS!r} token")
        auto = device in (None, "auto")
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else device)
        self.gpt = model.to(device).eval()
        self.tok = tokenizer
        self.precision = resolve_precision(precision, device)
        limit = self.gpt.cfg.max_seq_len
        try:
            window = int(max_length) if max_length is not None else limit
        except (TypeError, ValueError):
            raise UsageError(f"max_length={max_length!r} must be an integer in [1, {limit}]") from None
        if not 1 <= window <= limit:
            raise UsageError(f"max_length={window} must be in [1, model.max_seq_len={limit}]")
        batch_size = parse_batch_size(batch_size)
        if batch_size == "auto":
            batch_size = auto_batch_size(self.gpt, window, device, precision=self.precision)
            log.info("batch_size=auto: %d sequences of %d tokens fit on %s", batch_size, window, device)
        hf_model, hf_tokenizer = wrap(self.gpt, tokenizer, self.step)
        # HFLM warns that a model object, not a name, was passed and that it skips its multi-process setup: that
        # is this class's design (one process), not the user's mistake, so its warnings are held back here.
        hf_log = logging.getLogger(HFLM.__module__)
        level = hf_log.level
        hf_log.setLevel(logging.ERROR)
        try:
            super().__init__(
                pretrained=hf_model,
                tokenizer=hf_tokenizer,
                backend="causal",
                max_length=window,
                batch_size=batch_size,
            )
        finally:
            hf_log.setLevel(level)
        self._max_gen_toks = int(max_gen_toks)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def encode_requests(self, args: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context tokens, continuation tokens) per (context, continuation), as lm-eval's TemplateLM.loglikelihood
        makes them (trailing context spaces move to the continuation; the continuation is what encoding the
        whole adds after the context; an empty context becomes EOS), but every distinct string is encoded once,
        in one batched call: the nine tasks' 89k requests took 41 s one by one on the GPU machine."""
        texts: dict[str, int] = {}
        plan = []
        for context, continuation in args:
            if context == "":
                plan.append((None, texts.setdefault(continuation, len(texts))))
                continue
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            plan.append((texts.setdefault(context, len(texts)), texts.setdefault(context + continuation, len(texts))))
        ids = [enc.ids for enc in self.tok.encode_batch(list(texts))]
        eos = self.eot_token_id
        out = []
        for ctx_i, whole_i in plan:
            whole = ids[whole_i]
            if ctx_i is None:  # lm-eval: EOS as the context, unless the continuation already starts with it
                out.append(([eos], whole) if whole[:1] != [eos] else (whole[:1], whole[1:]))
            else:
                out.append((ids[ctx_i], whole[len(ids[ctx_i]) :]))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [req.args for req in requests]
        encoded = self.encode_requests(args)
        return self._loglikelihood_tokens([(a, c, x) for a, (c, x) in zip(args, encoded)], disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """score_continuations instead of HFLM's full-logits loop (same truncation, the head on scored positions
        only). HFLM's loglikelihood_rolling calls it once per batch of windows (with override_bs): no bar then."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        progress = not disable_tqdm and "override_bs" not in kwargs
        out = score_continuations(
            self.gpt, pairs, self.batch_size, self.device, self.max_length, progress, precision=self.precision
        )
        for (key, _, _), res in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """Disjoint windows of at most max_length predicted tokens, the first conditioned on EOS (as HFLM's
        loglikelihood_rolling makes them)."""
        return [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1)
        ]
