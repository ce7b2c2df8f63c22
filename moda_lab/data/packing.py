"""Tokenise a corpus once and pack it into flat uint16 token files that training memory-maps.

Cache layout (one folder per corpus fingerprint, so a changed corpus or vocabulary never reuses stale data):
  <cache_root>/<key>/tokenizer.json
  <cache_root>/<key>/train.bin            all training documents, EOS-separated
  <cache_root>/<key>/val_<domain>.bin     held-out documents of each domain
  <cache_root>/<key>/meta.json            vocab, token and byte counts per split (bytes give bits-per-byte)
Documents, not windows, are split, so no held-out text leaks into training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from .corpus import corpus_files, read_documents
from .tokenizer import EOS, train_tokenizer

log = logging.getLogger(__name__)


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
        """Memory-mapped uint16 tokens of 'train' or 'val_<domain>'."""
        return np.memmap(self.root / f"{split}.bin", dtype=np.uint16, mode="r")


def _fingerprint(files: dict[str, list[Path]], vocab_size: int, val_fraction: float) -> str:
    # File names and sizes, not absolute paths or mtimes: a corpus copied to another machine keeps its cache.
    h = hashlib.sha256(f"v2|{vocab_size}|{val_fraction}".encode())
    for domain, paths in files.items():
        for p in paths:
            h.update(f"{domain}|{p.name}|{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_packed(root: str | Path) -> PackedData:
    """A packed folder written by prepare() (meta.json, tokenizer.json, *.bin), e.g. copied to a cluster."""
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise FileNotFoundError(f"data.packed_dir={str(root)!r} holds no meta.json: not a packed data folder")
    return PackedData(root, json.loads((root / "meta.json").read_text()))


def _is_val(domain: str, index: int, val_fraction: float) -> bool:
    # Stable per-document coin: the same documents are held out on every machine.
    return zlib.crc32(f"{domain}/{index}".encode()) % 10_000 < val_fraction * 10_000


def prepare(corpus_dir: str | Path, cache_root: str | Path, vocab_size: int, val_fraction: float) -> PackedData:
    """Build (or reuse) the packed token files of corpus_dir; safe to call from several processes."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if not 256 < vocab_size <= 65535:
        raise ValueError(f"data.vocab_size must be in (256, 65535] for byte-level BPE in uint16, got {vocab_size}")
    files = corpus_files(corpus_dir)
    root = Path(cache_root) / _fingerprint(files, vocab_size, val_fraction)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not (root / "meta.json").is_file():
            _build(files, root, vocab_size, val_fraction)
    return PackedData(root, json.loads((root / "meta.json").read_text()))


def split_documents(domain: str, paths: list[Path], val_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents of one domain, in file order; evaluation re-derives the held-out split here."""
    docs = [d for p in paths for d in read_documents(p)]
    held_out = [_is_val(domain, i, val_fraction) for i in range(len(docs))]
    val = [d for d, h in zip(docs, held_out) if h]
    train = [d for d, h in zip(docs, held_out) if not h]
    if not val and len(docs) > 1:  # tiny domains still get a held-out document
        val, train = train[-1:], train[:-1]
    if not val:
        raise ValueError(f"domain {domain!r} has a single document: nothing to hold out for validation")
    return train, val


def _encode(tok, docs: list[str], eos: int, out) -> int:
    """Append docs' tokens, each followed by EOS, to the open binary file out as uint16; returns tokens written.
    In batches of documents, so memory stays bounded by a batch rather than by the corpus."""
    n = 0
    for start in range(0, len(docs), _ENCODE_BATCH):
        ids = [
            np.asarray([*enc.ids, eos], dtype=np.uint16)
            for enc in tok.encode_batch(docs[start : start + _ENCODE_BATCH])
        ]
        if ids:
            arr = np.concatenate(ids)
            arr.tofile(out)
            n += arr.size
    return n


_ENCODE_BATCH = 512


def _build(files: dict[str, list[Path]], root: Path, vocab_size: int, val_fraction: float) -> None:
    train: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    for domain, paths in files.items():
        train[domain], val[domain] = split_documents(domain, paths, val_fraction)
    all_train = [d for docs in train.values() for d in docs]
    log.info("training a %d-token BPE on %d documents", vocab_size, len(all_train))
    tok = train_tokenizer(all_train, vocab_size)
    del all_train
    tok.save(str(root / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    meta: dict = {"vocab_size": tok.get_vocab_size(), "eos_id": eos, "train": {}, "val": {}, "train_domains": {}}

    def stats(tokens: int, docs: list[str]) -> dict:
        return {"tokens": tokens, "bytes": sum(len(d.encode()) for d in docs), "documents": len(docs)}

    # train.bin: every domain's training documents, EOS-separated, in the corpus's domain order.
    with (root / "train.bin").open("wb") as out:
        for domain, docs in train.items():
            meta["train_domains"][domain] = stats(_encode(tok, docs, eos, out), docs)
    meta["train"] = {k: sum(d[k] for d in meta["train_domains"].values()) for k in ("tokens", "bytes", "documents")}
    for domain, docs in val.items():
        with (root / f"val_{domain}.bin").open("wb") as out:
            meta["val"][domain] = stats(_encode(tok, docs, eos, out), docs)
    # Written last and atomically: meta.json marks a complete cache, so a build killed midway is redone.
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(root / "meta.json")
