"""Validation perplexity over named text domains: per-token perplexity and bits per byte.

Each document is scored as the training data packs it (moda_lab.data.packing): its tokens followed by EOS,
the first token conditioned on EOS, in disjoint windows of the model's context (lm-eval's rolling windows).
bpb = total nats / ln 2 / UTF-8 bytes of the documents; ppl = exp(total nats / predicted tokens).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data.corpus import TEXT_SUFFIXES, corpus_files, read_documents
from .lm import ModaLM, score_continuations


def domain_files(domains: dict[str, str] | str) -> dict[str, list[Path]]:
    """{name: file or dir} -> {name: text files}; a single path is a corpus dir whose subdirs are the domains."""
    if isinstance(domains, (str, Path)):
        return corpus_files(domains)
    out: dict[str, list[Path]] = {}
    for name, where in domains.items():
        p = Path(where)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"eval.perplexity.domains.{name}={str(p)!r} does not exist")
        if not files:
            raise FileNotFoundError(
                f"eval.perplexity.domains.{name}={str(p)!r} holds no text files ({', '.join(TEXT_SUFFIXES)})"
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
            windows += lm.rolling_windows(lm.tok_encode(doc) + [lm.eot_token_id])
            n_bytes += len(doc.encode("utf-8"))
            n_docs += 1
    if not n_docs:
        raise ValueError(f"no documents in {[str(f) for f in files]}")
    scores = score_continuations(lm.model, windows, lm.batch_size, lm.device, lm.max_length, progress, "perplexity")
    nats = -sum(lp for lp, _ in scores)
    tokens = sum(len(cont) for _, cont in windows)
    return {
        "ppl": math.exp(nats / tokens),
        "bpb": nats / math.log(2) / n_bytes,
        "nats": nats,
        "tokens": tokens,
        "bytes": n_bytes,
        "documents": n_docs,
    }


def perplexity(
    lm: ModaLM, domains: dict[str, str] | str, max_documents: int | None = None, progress: bool = False
) -> dict:
    """{domain: domain_perplexity(...)} for every named domain."""
    return {
        name: domain_perplexity(lm, files, max_documents, progress) for name, files in domain_files(domains).items()
    }
