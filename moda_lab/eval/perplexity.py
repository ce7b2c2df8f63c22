"""Validation perplexity over named text domains: per-token perplexity and bits per byte.

Two splits (eval.perplexity.split):

* ``heldout``: the documents a training run held out of a corpus dir (moda_lab.data.packing.split_documents,
  with the run's data.val_fraction), scored exactly as the run's validation scores them: packed (tokens then
  EOS, document after document) and cut into disjoint windows of max_length + 1 tokens (TokenWindows; the
  stream's last partial window is left out, as in training). loss = nats / predicted tokens equals the run's
  ``val/<domain>/loss`` when data.val_windows covers the whole held-out split.
* ``all``: every document of the given files, each scored on its own: its tokens followed by EOS, the first
  token conditioned on EOS, in disjoint windows of the model's context (lm-eval's rolling windows).

bpb = total nats / ln 2 / UTF-8 bytes of the scored tokens; ppl = exp(total nats / predicted tokens).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.corpus import TEXT_SUFFIXES, corpus_files, is_saved_dataset, read_documents
from ..data.packing import split_documents
from ..train.datamodule import TokenWindows
from .lm import ModaLM, score_continuations

DOMAINS_KEY = "eval.perplexity.domains"  # how a corpus dir given as the domains is named in errors and warnings


def domain_files(domains: dict[str, str] | str) -> dict[str, list[Path]]:
    """{name: file or dir} -> {name: text files}; a single path is a corpus dir whose subdirs are the domains."""
    if isinstance(domains, (str, Path)):
        return corpus_files(domains, DOMAINS_KEY)
    out: dict[str, list[Path]] = {}
    for name, where in domains.items():
        p = Path(where)
        if is_saved_dataset(p):
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"{DOMAINS_KEY}.{name}={str(p)!r} does not exist")
        if not files:
            raise FileNotFoundError(
                f"{DOMAINS_KEY}.{name}={str(p)!r} holds no text files ({', '.join(TEXT_SUFFIXES)})"
            )
        out[name] = files
    return out


def domain_perplexity(lm: ModaLM, files: list[Path], max_documents: int | None = None, progress: bool = False) -> dict:
    """{"ppl", "bpb", "nats", "tokens", "bytes", "documents"} of one domain."""
    windows, n_bytes, n_docs = [], 0, 0
    for path in files:
        for doc in read_documents(path):
            if not doc.strip():
                continue
            if max_documents is not None and n_docs >= max_documents:
                break
            windows += lm.rolling_windows(lm.tok.encode(doc).ids + [lm.eot_token_id])
            n_bytes += len(doc.encode("utf-8"))
            n_docs += 1
    if not n_docs:
        raise ValueError(f"no documents in {[str(f) for f in files]}")
    scores = score_continuations(
        lm.gpt, windows, lm.batch_size, lm.device, lm.max_length, progress, "perplexity", lm.precision
    )
    nats = -sum(lp for lp, _ in scores)
    tokens = sum(len(cont) for _, cont in windows)
    return _stats(nats, tokens, n_bytes, n_docs)


def _stats(nats: float, tokens: int, n_bytes: float, n_docs: int) -> dict:
    return {
        "ppl": math.exp(nats / tokens),
        "bpb": nats / math.log(2) / n_bytes,
        "loss": nats / tokens,
        "nats": nats,
        "tokens": tokens,
        "bytes": n_bytes,
        "documents": n_docs,
    }


def heldout_perplexity(
    lm: ModaLM, domain: str, files: list[Path], val_fraction: float, max_documents: int | None = None, progress=False
) -> dict:
    """One domain's held-out documents scored as training validation does (see the module docstring).

    bytes: the scored tokens' share of the documents' UTF-8 bytes (tokens x bytes per token of the split), the
    bits-per-byte convention of training's val/<domain>/bpb.
    """
    _, docs = split_documents(domain, files, val_fraction)
    docs = docs[:max_documents]
    stream: list[int] = []
    for doc in docs:
        stream += lm.tok.encode(doc).ids + [lm.eot_token_id]
    try:
        windows = TokenWindows(np.asarray(stream, dtype=np.int64), lm.max_length)
    except ValueError:
        raise ValueError(
            f"held-out split of domain {domain!r}: {len(docs)} document(s), {len(stream)} tokens, fewer than one "
            f"window of max_length + 1 = {lm.max_length + 1} tokens"
        ) from None
    pairs = []
    for i in range(len(windows)):
        x, y = windows[i]  # inputs chunk[:-1], targets chunk[1:]
        pairs.append((x[:1].tolist(), y.tolist()))  # context + continuation = the whole chunk
    scores = score_continuations(
        lm.gpt, pairs, lm.batch_size, lm.device, lm.max_length, progress, "perplexity", lm.precision
    )
    nats = -sum(lp for lp, _ in scores)
    tokens = len(pairs) * lm.max_length
    bytes_per_token = sum(len(d.encode("utf-8")) for d in docs) / len(stream)
    return _stats(nats, tokens, tokens * bytes_per_token, len(docs))


def perplexity(
    lm: ModaLM,
    domains: dict[str, str] | str,
    max_documents: int | None = None,
    progress: bool = False,
    val_fraction: float | None = None,
) -> dict:
    """{domain: stats} for every named domain: held-out split when val_fraction is given, else every document."""
    if val_fraction is None:
        return {
            name: domain_perplexity(lm, files, max_documents, progress) for name, files in domain_files(domains).items()
        }
    if not isinstance(domains, (str, Path)):
        raise ValueError("the held-out split needs perplexity.domains to be the run's corpus dir, not a dict")
    return {
        name: heldout_perplexity(lm, name, files, val_fraction, max_documents, progress)
        for name, files in corpus_files(domains, DOMAINS_KEY).items()
    }
