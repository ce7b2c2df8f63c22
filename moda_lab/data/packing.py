"""Tokenise a corpus once and pack it into flat token files that training memory-maps.

Cache layout (one folder per corpus fingerprint, so a changed corpus, vocabulary or tokenizer never reuses
stale data):
  <cache_root>/<key>/tokenizer.json
  <cache_root>/<key>/train.bin            all training documents, EOS-separated
  <cache_root>/<key>/val_<domain>.bin     held-out documents of each domain
  <cache_root>/<key>/meta.json            vocab, token dtype, token and byte counts per split (bytes give bits-per-byte)
Documents, not windows, are split, so no held-out text leaks into training.

The tokenizer is a byte-level BPE trained on the training documents, or a pretrained ``tokenizer.json``
(``data.tokenizer``; ``<|endoftext|>`` is added as a special token when it has none). Tokens are uint16 when
the vocabulary fits (<= 65,536 ids), else uint32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer
from tqdm import tqdm

from .corpus import corpus_files, read_documents
from .tokenizer import EOS, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

ENCODE_BATCH = 1024  # documents per encode_batch call (and per write)


@dataclass(frozen=True)
class PackedData:
    root: Path
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def domains(self) -> list[str]:
        return sorted(self.meta["val"])

    def tokens(self, split: str) -> np.ndarray:
        """Memory-mapped tokens (uint16 or uint32, meta's dtype) of 'train' or 'val_<domain>'."""
        return np.memmap(self.root / f"{split}.bin", dtype=self.meta.get("dtype", "uint16"), mode="r")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits, else uint32 (pretrained vocabularies over 65,536 tokens)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _fingerprint(files: dict[str, list[Path]], vocab_size: int, val_fraction: float, tokenizer: str | None) -> str:
    # File names and sizes, not absolute paths or mtimes: a corpus copied to another machine keeps its cache.
    h = hashlib.sha256(f"v2|{vocab_size}|{val_fraction}".encode())
    if tokenizer is not None:  # the pretrained tokenizer's content (caches of trained BPE keep their keys)
        h.update(b"tokenizer|" + hashlib.sha256(tokenizer.encode()).digest())
    for domain, paths in files.items():
        for p in paths:
            h.update(f"{domain}|{p.name}|{_size(p)}".encode())
    return h.hexdigest()[:16]


def pretrained_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json (or a folder holding one) with the EOS every document ends with (added if missing)."""
    try:
        tok = load_tokenizer(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"data.tokenizer={str(path)!r}: no tokenizer.json there") from None
    if tok.token_to_id(EOS) is None:
        tok.add_special_tokens([EOS])
        log.info("data.tokenizer=%s has no %s token: added it as id %d", path, EOS, tok.token_to_id(EOS))
    return tok


def load_packed(root: str | Path) -> PackedData:
    """A packed folder written by prepare() (meta.json, tokenizer.json, *.bin), e.g. copied to a cluster."""
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise FileNotFoundError(f"data.packed_dir={str(root)!r} holds no meta.json: not a packed data folder")
    return PackedData(root, json.loads((root / "meta.json").read_text()))


def _is_val(domain: str, index: int, val_fraction: float) -> bool:
    # Stable per-document coin: the same documents are held out on every machine.
    return zlib.crc32(f"{domain}/{index}".encode()) % 10_000 < val_fraction * 10_000


def prepare(
    corpus_dir: str | Path,
    cache_root: str | Path,
    vocab_size: int,
    val_fraction: float,
    tokenizer: str | Path | None = None,
) -> PackedData:
    """Build (or reuse) the packed token files of corpus_dir; safe to call from several processes.

    Without ``tokenizer`` a BPE of vocab_size tokens is trained; with one (a tokenizer.json path) that
    tokenizer is used as is and vocab_size only has to hold it (the model's embedding size, padding allowed).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    tok = None
    if tokenizer is not None:
        tok = pretrained_tokenizer(tokenizer)
        if tok.get_vocab_size() > vocab_size:
            raise ValueError(
                f"data.tokenizer={str(tokenizer)!r} has {tok.get_vocab_size()} tokens, more than "
                f"data.vocab_size={vocab_size} (the model's embedding rows); raise data.vocab_size"
            )
    elif not 256 < vocab_size <= 65535:
        raise ValueError(f"data.vocab_size must be in (256, 65535] for byte-level BPE in uint16, got {vocab_size}")
    files = corpus_files(corpus_dir)
    root = Path(cache_root) / _fingerprint(files, vocab_size, val_fraction, tok.to_str() if tok else None)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not (root / "meta.json").is_file():
            _build(files, root, vocab_size, val_fraction, tok)
    return PackedData(root, json.loads((root / "meta.json").read_text()))


def iter_split(domain: str, paths: list[Path], val_fraction: float) -> Iterator[tuple[str, bool]]:
    """(document, held out?) for each document of one domain, in file order, without holding the domain in memory.

    A domain whose coins hold out nothing still gives up its last training document (tiny domains keep a
    validation split): the newest training document is held back one step to make that possible.
    """
    n = n_val = 0
    pending = None
    for path in paths:
        for doc in read_documents(path):
            if _is_val(domain, n, val_fraction):
                n_val += 1
                yield doc, True
            else:
                if pending is not None:
                    yield pending, False
                pending = doc
            n += 1
    if pending is not None:
        to_val = n_val == 0 and n > 1
        n_val += to_val
        yield pending, to_val
    if not n_val:
        raise ValueError(f"domain {domain!r} has a single document: nothing to hold out for validation")


def split_documents(domain: str, paths: list[Path], val_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents of one domain, in file order; evaluation re-derives the held-out split here."""
    train: list[str] = []
    val: list[str] = []
    for doc, held in iter_split(domain, paths, val_fraction):
        (val if held else train).append(doc)
    return train, val


class _TokenFile:
    """Appends documents to a flat token file (tokens, then EOS, per document), encoding them in batches."""

    def __init__(self, path: Path, tok: Tokenizer, eos: int, dtype: np.dtype) -> None:
        self.f, self.tok, self.eos, self.dtype = path.open("wb"), tok, eos, dtype
        self.batch: list[str] = []
        self.stats = {"tokens": 0, "bytes": 0, "documents": 0}

    def add(self, doc: str) -> None:
        self.batch.append(doc)
        if len(self.batch) >= ENCODE_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.batch:
            return
        # encode_batch tokenises on every core (the tokenizers library's own thread pool).
        ids = [np.asarray([*enc.ids, self.eos], dtype=self.dtype) for enc in self.tok.encode_batch(self.batch)]
        arr = np.concatenate(ids)
        self.f.write(arr.tobytes())
        self.stats["tokens"] += int(arr.size)
        self.stats["bytes"] += sum(len(d.encode()) for d in self.batch)
        self.stats["documents"] += len(self.batch)
        self.batch = []

    def flush(self) -> dict:
        """Encode what is batched; the running totals so far (a copy)."""
        self._flush()
        return dict(self.stats)

    def close(self) -> dict:
        self._flush()
        self.f.close()
        return self.stats


def _build(
    files: dict[str, list[Path]], root: Path, vocab_size: int, val_fraction: float, tok: Tokenizer | None
) -> None:
    """Stream every domain once (twice when a BPE is trained): memory holds one encode batch, not the corpus.

    An interrupted build leaves no meta.json, so the next call rebuilds the folder from the start."""
    if tok is None:
        log.info("training a %d-token BPE on the training documents", vocab_size)
        train_docs = (
            doc for domain, paths in files.items() for doc, held in iter_split(domain, paths, val_fraction) if not held
        )
        tok = train_tokenizer(train_docs, vocab_size)
    tok.save(str(root / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    dtype = token_dtype(tok.get_vocab_size())
    meta: dict = {
        "vocab_size": tok.get_vocab_size(), "eos_id": eos, "dtype": dtype.name, "train": {}, "val": {},
        "train_domains": {},
    }
    # train.bin: every domain's training documents, EOS-separated, in the corpus's domain order.
    train = _TokenFile(root / "train.bin", tok, eos, dtype)
    with tqdm(desc=f"packing {root.name}", unit=" docs", disable=None) as bar:  # disable=None: only on a TTY
        for domain, paths in files.items():
            val = _TokenFile(root / f"val_{domain}.bin", tok, eos, dtype)
            before = train.flush()
            for doc, held in iter_split(domain, paths, val_fraction):
                (val if held else train).add(doc)
                bar.update()
            meta["val"][domain] = val.close()
            after = train.flush()
            meta["train_domains"][domain] = {k: after[k] - before[k] for k in after}
        meta["train"] = train.close()
    # Written last and atomically: meta.json marks a complete cache, so a build killed midway is redone.
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(root / "meta.json")
