"""Tokenise a corpus once and pack it into flat token files that training memory-maps.

Cache layout (one folder per corpus fingerprint, so a changed corpus, vocabulary, tokenizer or token budget never
reuses stale data):
  <cache_root>/<key>/tokenizer.json
  <cache_root>/<key>/train.bin            all training documents, EOS-separated
  <cache_root>/<key>/val_<domain>.bin     held-out documents of each domain
  <cache_root>/<key>/meta.json            vocab, token dtype, token and byte counts per split (bytes give
                                          bits-per-byte), and each token file's size and CRC (``files``)
Documents, not windows, are split, so no held-out text leaks into training. The held-out documents are a stable
coin per document (a CRC of its domain and index in the domain's stream): the same on every machine, and for a
token budget the held-out documents of a shorter budget are those of a longer one's first documents.

The tokenizer is a byte-level BPE trained on the training documents, or a pretrained ``tokenizer.json``
(``data.tokenizer``: a path, or a hub repository's name such as ``gpt2`` when the hub is reachable;
``<|endoftext|>`` is added as a special token when it has none). Tokens are uint16 when
the vocabulary fits (<= 65,536 ids), else uint32.

Packing streams each domain once (``data.num_proc`` worker processes tokenise batches of documents, written in
stream order, so the files are the same bytes for any num_proc) and can be resumed: while it runs the folder
holds ``progress.json`` (where each domain's stream stands, committed after every batch) and ``*.bin.partial``
files; a build that was killed continues from its last commit, and ``train.bin``, ``val_*.bin`` and meta.json
appear only when the whole build is done. ``data.max_tokens`` stops each domain's stream at the document that
brings its training tokens to the budget.

A folder is checked whenever it is opened (``check_packed``): every token file must hold the bytes of the tokens
meta.json counts, and the CRC of its first and last MiB must be the one recorded at build time (folders packed
before the CRC was recorded are checked by size). A damaged cache (a truncated ``train.bin``, a missing
``val_*.bin``) is named in a warning and rebuilt from the corpus, never read; a damaged ``data.packed_dir``,
which has no corpus to rebuild from, is an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer
from tqdm import tqdm

from ..errors import UsageError, dir_write_problem
from .corpus import HubDataset, Position, Source, corpus_files, read_documents, stream_documents
from .encode import Encoded, encoder
from .tokenizer import EOS, pretrained_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

ENCODE_BATCH = 1024  # documents per batch at most: a worker's unit of work and of committed progress
BATCH_BYTES = 1 << 20  # and about this much text at most, so large documents still spread over the workers
PROGRESS = "progress.json"
PROGRESS_VERSION = 1
CRC_BYTES = 1 << 20  # the first and the last MiB of each token file are checksummed: cheap for files of GBs
# Test hook: called with the progress dict after every commit (a test raises here to interrupt a build).
_on_commit: Callable[[dict], None] | None = None


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


def _identity(source: Source) -> str:
    if isinstance(source, HubDataset):  # its load_dataset arguments (and a local folder's size)
        local = Path(source.path)
        size = f"|{_size(local)}" if local.is_dir() else ""
        return f"hf|{source.path}|{source.name}|{source.split}|{source.text_field}|{source.revision}{size}"
    return f"{source.name}|{_size(source)}"


def _fingerprint(
    files: dict[str, list[Source]],
    vocab_size: int,
    val_fraction: float,
    tokenizer: str | None,
    max_tokens: int | None = None,
) -> str:
    # File names and sizes, not absolute paths or mtimes: a corpus copied to another machine keeps its cache.
    # Caches built without a token budget or a streamed dataset keep the keys they had before either existed.
    h = hashlib.sha256(f"v2|{vocab_size}|{val_fraction}".encode())
    if tokenizer is not None:  # the pretrained tokenizer's content (caches of trained BPE keep their keys)
        h.update(b"tokenizer|" + hashlib.sha256(tokenizer.encode()).digest())
    if max_tokens is not None:
        h.update(f"max_tokens|{max_tokens}".encode())
    for domain, sources in files.items():
        for source in sources:
            h.update(f"{domain}|{_identity(source)}".encode())
    return h.hexdigest()[:16]


def token_budget(value: object) -> int | None:
    """data.max_tokens as an int: a whole number >= 1 (2e9, as a command line gives it, is one), or None."""
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        raise ValueError(f"data.max_tokens={value!r} is out of range; allowed: a whole number >= 1 (e.g. 2e9), or null")
    return int(value)


def default_num_proc() -> int:
    """data.num_proc when it is null: min(the cores this process may use, 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def load_packed(root: str | Path) -> PackedData:
    """A packed folder written by prepare() (meta.json, tokenizer.json, *.bin), e.g. copied to a cluster; a damaged
    one (check_packed) is an error naming the file: there is no corpus here to rebuild it from."""
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise FileNotFoundError(f"data.packed_dir={str(root)!r} holds no meta.json: not a packed data folder")
    problem = _damage(root)
    if problem is not None:
        raise UsageError(
            f"data.packed_dir={str(root)!r} is damaged: {problem}; it cannot be rebuilt without its corpus: pack "
            "the corpus again (python -m moda_lab.data corpus=DIR) or copy the folder again"
        )
    return PackedData(root, json.loads((root / "meta.json").read_text()))


def _damage(root: Path) -> str | None:
    """check_packed of a folder holding meta.json, which may itself be damaged (not a JSON object: a cut write)."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        return f"{root / 'meta.json'} is not a JSON object (a cut write?)"
    return check_packed(root, meta)


def _crc_ends(path: Path) -> int:
    """CRC-32 of a file's first and last CRC_BYTES (all of it when smaller than twice that)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        crc = zlib.crc32(f.read(CRC_BYTES))
        if size > CRC_BYTES:
            f.seek(max(CRC_BYTES, size - CRC_BYTES))
            crc = zlib.crc32(f.read(), crc)
    return crc


def _token_files(meta: dict) -> dict[str, int]:
    """The token files of a packed folder and the bytes each holds, from meta.json's token counts."""
    itemsize = np.dtype(meta.get("dtype", "uint16")).itemsize
    sizes = {"train.bin": itemsize * meta["train"]["tokens"]}
    return sizes | {f"val_{d}.bin": itemsize * st["tokens"] for d, st in meta["val"].items()}


def _file_records(root: Path, meta: dict) -> dict[str, dict]:
    """What meta.json records of each token file at build time: its bytes and the CRC of its ends."""
    return {name: {"bytes": size, "crc32": _crc_ends(root / name)} for name, size in _token_files(meta).items()}


def check_packed(root: Path, meta: dict) -> str | None:
    """What is wrong with a complete packed folder, naming the file (None when it is intact): a token file missing,
    not the size of the tokens meta.json counts, or not the CRC recorded at build time (older folders: size only)."""
    try:
        sizes = _token_files(meta)
        int(meta["vocab_size"])
    except (KeyError, TypeError, AttributeError, ValueError):
        return f"{root / 'meta.json'} lacks the vocabulary size or token counts of a packed folder"
    recorded = meta.get("files", {})
    for name in ["tokenizer.json", *sizes]:
        if not (root / name).is_file():
            return f"{root / name} is missing"
    for name, size in sizes.items():
        path = root / name
        have = path.stat().st_size
        if have != size:
            return f"{path} holds {have:,} bytes, not the {size:,} of the tokens meta.json counts (truncated?)"
        crc = recorded.get(name, {}).get("crc32")
        if crc is not None and _crc_ends(path) != crc:
            return f"{path} does not match the CRC meta.json recorded when it was packed (overwritten or corrupted?)"
    return None


def check_windows(meta: dict, seq_len: int, source: str, batch_windows: int = 1) -> None:
    """Raise UsageError naming data.seq_len and the sizes unless the training tokens hold batch_windows windows
    of seq_len + 1 tokens (inputs and shifted targets) and every domain's held-out tokens hold one."""
    splits = {"training": meta["train"]["tokens"], **{f"{d!r} validation": s["tokens"] for d, s in meta["val"].items()}}
    name, tokens = min(splits.items(), key=lambda item: item[1])
    if tokens < seq_len + 1:
        fits = f"data.seq_len <= {tokens - 1}, or " if tokens > 1 else ""
        raise UsageError(
            f"data.seq_len={seq_len} is out of range: {source} holds {tokens:,} {name} tokens, fewer than one window "
            f"of data.seq_len + 1 = {seq_len + 1:,}; allowed: {fits}a larger corpus"
        )
    windows = (meta["train"]["tokens"] - 1) // seq_len
    if windows < batch_windows:
        raise UsageError(
            f"{source} holds {windows:,} training windows of data.seq_len={seq_len}, fewer than the {batch_windows:,} "
            "of one optimizer step (trainer.batch_size x trainer.accumulate); allowed: a smaller data.seq_len, "
            "trainer.batch_size or trainer.accumulate, or a larger corpus"
        )


def _is_val(domain: str, index: int, val_fraction: float) -> bool:
    # Stable per-document coin: the same documents are held out on every machine.
    return zlib.crc32(f"{domain}/{index}".encode()) % 10_000 < val_fraction * 10_000


def cache_dir_problem(cache_root: str | Path) -> str | None:
    """The one-line error naming data.cache_dir when no cache folder can be made under it (a file at or above it, a
    read-only folder), else None; creates nothing."""
    problem = dir_write_problem(cache_root)
    if problem is None:
        return None
    return f"data.cache_dir={str(cache_root)!r}: {problem}; allowed: a directory path this user can write"


def prepare(
    corpus_dir: str | Path | HubDataset,
    cache_root: str | Path,
    vocab_size: int,
    val_fraction: float,
    tokenizer: str | Path | None = None,
    *,
    max_tokens: int | None = None,
    num_proc: int | None = None,
) -> PackedData:
    """Build (or reuse, or finish) the packed token files of a corpus dir or a streamed dataset; safe to call from
    several processes.

    Without ``tokenizer`` a BPE of vocab_size tokens is trained; with one (a tokenizer.json path) that
    tokenizer is used as is and vocab_size only has to hold it (the model's embedding size, padding allowed).
    ``max_tokens`` caps each domain's training tokens; ``num_proc`` processes tokenise (None: min(cores, 8)).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    max_tokens = token_budget(max_tokens)
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"data.num_proc={num_proc!r} is out of range; allowed: >= 1, or null (min(cores, 8))")
    problem = cache_dir_problem(cache_root)
    if problem:
        raise UsageError(problem)
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
    extra: dict = {} if max_tokens is None else {"max_tokens": max_tokens}
    if isinstance(corpus_dir, HubDataset):
        if corpus_dir.path is None:
            raise ValueError("data.hf.path is null: there is no dataset to stream")
        files: dict[str, list[Source]] = {corpus_dir.domain: [corpus_dir]}
        extra["hf"] = {k: getattr(corpus_dir, k) for k in ("path", "name", "split", "text_field", "revision")}
    else:
        files = corpus_files(corpus_dir)
    key = _fingerprint(files, vocab_size, val_fraction, tok.to_str() if tok else None, max_tokens)
    root = Path(cache_root) / key
    root.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(root / ".lock")):
            if (root / "meta.json").is_file():
                _discard_if_damaged(root)
            if not (root / "meta.json").is_file():
                _build(files, root, vocab_size, val_fraction, tok, max_tokens, num_proc or default_num_proc(), extra)
    except (ValueError, FileNotFoundError):
        # The corpus cannot be packed as it is (a bad JSONL line, a one-document domain): keep no half-built
        # folder. An interrupt or a crash keeps it, to resume.
        _remove_unfinished(root)
        raise
    return PackedData(root, json.loads((root / "meta.json").read_text()))


def _remove_unfinished(root: Path) -> None:
    """Remove a cache folder whose build failed on its input (never a complete one, one holding meta.json)."""
    if not (root / "meta.json").is_file():
        shutil.rmtree(root, ignore_errors=True)


def _discard_if_damaged(root: Path) -> None:
    """A complete cache that fails check_packed is named in a warning and marked incomplete (meta.json and any
    progress removed), so the build starts over from the corpus: damaged tokens are never read."""
    problem = _damage(root)
    if problem is None:
        return
    log.warning("damaged packed data cache %s: %s; rebuilding it from the corpus", root, problem)
    (root / "meta.json").unlink()
    (root / PROGRESS).unlink(missing_ok=True)


def iter_split(domain: str, paths: list[Source], val_fraction: float) -> Iterator[tuple[str, bool]]:
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


def split_documents(domain: str, paths: list[Source], val_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents of one domain, in file order; evaluation re-derives the held-out split here."""
    train: list[str] = []
    val: list[str] = []
    for doc, held in iter_split(domain, paths, val_fraction):
        (val if held else train).append(doc)
    return train, val


def _bpe_documents(files: dict[str, list[Source]], val_fraction: float, max_tokens: int | None) -> Iterator[str]:
    """The training documents a BPE learns from: all of them, or under a token budget each domain's first ones up
    to max_tokens UTF-8 bytes (plus one per document, for its EOS). A byte-level token holds at least one byte, so
    these are always documents the budget packs: the BPE never sees text that is not trained on."""
    for domain, sources in files.items():
        budget = max_tokens
        for doc, held in iter_split(domain, sources, val_fraction):
            if held:
                continue
            yield doc
            if budget is not None:
                budget -= len(doc.encode()) + 1
                if budget <= 0:
                    break


@dataclass
class _Batch:
    """Consecutive documents of one domain's stream, each with its held-out coin and the stream position after it."""

    docs: list[str] = field(default_factory=list)
    held: list[bool] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    chars: int = 0


def _batches(stream: Iterator[tuple[str, Position]], domain: str, first: int, val_fraction: float) -> Iterator[_Batch]:
    """The stream in batches of ENCODE_BATCH documents or BATCH_BYTES characters; ``first`` is the domain index of
    the stream's first document (the coin is a function of it)."""
    batch = _Batch()
    for index, (doc, position) in enumerate(stream, first):
        batch.docs.append(doc)
        batch.held.append(_is_val(domain, index, val_fraction))
        batch.positions.append(position)
        batch.chars += len(doc)
        if len(batch.docs) >= ENCODE_BATCH or batch.chars >= BATCH_BYTES:
            yield batch
            batch = _Batch()
    if batch.docs:
        yield batch


def _zero() -> dict:
    return {"tokens": 0, "bytes": 0, "documents": 0}


def _file_sizes(progress: dict) -> dict[str, int]:
    """Bytes each partial file holds at the progress's last commit."""
    itemsize = np.dtype(progress["dtype"]).itemsize
    domains = progress["domains"]
    sizes = {"train.bin": itemsize * sum(st["train"]["tokens"] for st in domains.values())}
    sizes |= {f"val_{d}.bin": itemsize * st["val"]["tokens"] for d, st in domains.items()}
    return sizes


def _resume(root: Path, domains: list[str]) -> dict | None:
    """The progress of an interrupted build of this folder, its partial files cut back to their last commit; None
    when there is none to continue (then the build starts over)."""
    path = root / PROGRESS
    if not path.is_file():
        return None
    progress = json.loads(path.read_text())
    if progress.get("version") != PROGRESS_VERSION or list(progress.get("domains", ())) != domains:
        log.warning("%s: written by another version of the packer; packing starts over", path)
        return None
    if not (root / "tokenizer.json").is_file():
        return None
    for name, size in _file_sizes(progress).items():
        partial, final = root / f"{name}.partial", root / name
        if not partial.exists() and final.exists():  # killed while renaming the finished files
            final.replace(partial)
        have = partial.stat().st_size if partial.exists() else 0
        if have < size:  # lost data that was committed (a machine crash rather than a killed process)
            log.warning("%s holds %d bytes, fewer than the %d committed; packing starts over", partial, have, size)
            return None
        if partial.exists():
            os.truncate(partial, size)  # what was written after the last commit is written again
    return progress


def _commit(root: Path, progress: dict, *files) -> None:
    """Record progress after the files it counts: flushed first, then progress.json replaced atomically."""
    for f in files:
        f.flush()
    tmp = root / f"{PROGRESS}.tmp"
    tmp.write_text(json.dumps(progress))
    tmp.replace(root / PROGRESS)
    if _on_commit is not None:
        _on_commit(progress)


def _write_batch(batch: _Batch, encoded: Encoded, st: dict, train_f, val_f, max_tokens: int | None) -> bool:
    """Append a batch's documents to the training and held-out files and count them; True when the domain's
    training tokens reached max_tokens (the batch's later documents are left out)."""
    tokens, lengths, nbytes = encoded
    held = np.asarray(batch.held, dtype=bool)
    n = len(held)
    if max_tokens is not None:
        cum = st["train"]["tokens"] + np.cumsum(np.where(held, 0, lengths))
        reached = np.flatnonzero(cum >= max_tokens)
        if reached.size:
            n = int(reached[0]) + 1  # the document that reaches the budget is kept whole
    held, lengths, nbytes = held[:n], lengths[:n], nbytes[:n]
    per_token = np.repeat(held, lengths)  # [tokens of these n documents]: held out?
    tokens = tokens[: per_token.size]
    train_f.write(tokens[~per_token].tobytes())
    val_f.write(tokens[per_token].tobytes())
    for split, sel in (("train", ~held), ("val", held)):
        stats = st[split]
        stats["tokens"] += int(lengths[sel].sum())
        stats["bytes"] += int(nbytes[sel].sum())
        stats["documents"] += int(sel.sum())
    train_docs = np.flatnonzero(~held)
    if train_docs.size:
        st["last_train"] = [int(lengths[train_docs[-1]]), int(nbytes[train_docs[-1]])]
    st["documents"] += n
    st["position"] = batch.positions[n - 1]
    return max_tokens is not None and st["train"]["tokens"] >= max_tokens


def _finish_domain(domain: str, st: dict, root: Path, progress: dict, train_f, val_f, itemsize: int) -> None:
    """Mark a domain done and commit. One whose coins held nothing out first gives up its last training document
    (iter_split's rule), so tiny domains keep a validation split: its tokens are appended to the held-out file, the
    counts committed, and only then is the training file cut, so a kill at any point leaves a resumable build."""
    cut = None
    if st["val"]["documents"] == 0:
        if st["documents"] <= 1:
            what = "no documents" if st["documents"] == 0 else "a single document"
            raise ValueError(f"domain {domain!r} has {what}: nothing to hold out for validation")
        n_tokens, n_bytes = st["last_train"]
        train_f.flush()
        cut = os.fstat(train_f.fileno()).st_size - n_tokens * itemsize
        with open(train_f.name, "rb") as f:
            f.seek(cut)
            val_f.write(f.read())
        for split, sign in (("train", -1), ("val", 1)):
            st[split]["tokens"] += sign * n_tokens
            st[split]["bytes"] += sign * n_bytes
            st[split]["documents"] += sign
    st["done"] = True
    _commit(root, progress, train_f, val_f)
    if cut is not None:
        train_f.truncate(cut)


def _build(
    files: dict[str, list[Source]],
    root: Path,
    vocab_size: int,
    val_fraction: float,
    tok: Tokenizer | None,
    max_tokens: int | None,
    num_proc: int,
    extra_meta: dict,
) -> None:
    """Stream every domain once (twice when a BPE is trained): memory holds a few batches, not the corpus.

    A build that was interrupted continues from its last commit (progress.json); one without progress starts over."""
    progress = _resume(root, list(files))
    if progress is None:
        for stale in [*root.glob("*.bin"), *root.glob("*.bin.partial"), root / PROGRESS]:
            stale.unlink(missing_ok=True)
        if tok is None:
            log.info("training a %d-token BPE on the training documents", vocab_size)
            tok = train_tokenizer(_bpe_documents(files, val_fraction, max_tokens), vocab_size)
        tmp = root / "tokenizer.json.tmp"
        tok.save(str(tmp))
        tmp.replace(root / "tokenizer.json")
        eos = tok.token_to_id(EOS)
        domains = {
            d: {"position": None, "documents": 0, "train": _zero(), "val": _zero(), "last_train": None, "done": False}
            for d in files
        }
        progress = {
            "version": PROGRESS_VERSION,
            "vocab_size": tok.get_vocab_size(),
            "eos_id": eos,
            "dtype": token_dtype(tok.get_vocab_size()).name,
            "domains": domains,
        }
        _commit(root, progress)
    else:
        tok = Tokenizer.from_file(str(root / "tokenizer.json"))  # what the committed tokens were encoded with
        done = sum(st["documents"] for st in progress["domains"].values())
        log.info("%s: resuming an interrupted packing after %d documents", root, done)
    dtype = np.dtype(progress["dtype"])
    domains = progress["domains"]
    total = None if max_tokens is None else max_tokens * len(files)
    initial = sum(st["train"]["tokens"] for st in domains.values())
    log.info("packing %s with %d tokenising process(es)", root, num_proc)
    with (
        open(root / "train.bin.partial", "ab") as train_f,
        tqdm(
            total=total, initial=initial, desc=f"packing {root.name}", unit="tok", unit_scale=True, disable=None
        ) as bar,
        encoder(tok, progress["eos_id"], dtype, num_proc) as encode,
    ):  # disable=None: the bar (of training tokens) is only drawn on a TTY
        for domain, sources in files.items():
            st = domains[domain]
            if st["done"]:
                continue
            bar.set_postfix_str(domain)
            with open(root / f"val_{domain}.bin.partial", "ab") as val_f:
                stream = stream_documents(sources, st["position"])
                for batch, encoded in encode(_batches(stream, domain, st["documents"], val_fraction)):
                    before = st["train"]["tokens"]
                    full = _write_batch(batch, encoded, st, train_f, val_f, max_tokens)
                    bar.update(st["train"]["tokens"] - before)
                    _commit(root, progress, train_f, val_f)
                    if full:
                        break
                _finish_domain(domain, st, root, progress, train_f, val_f, dtype.itemsize)
    meta: dict = {
        "vocab_size": progress["vocab_size"],
        "eos_id": progress["eos_id"],
        "dtype": progress["dtype"],
        "train": {k: sum(st["train"][k] for st in domains.values()) for k in _zero()},
        "val": {d: st["val"] for d, st in domains.items()},
        "train_domains": {d: st["train"] for d, st in domains.items()},
        **extra_meta,
    }
    for name in _file_sizes(progress):
        (root / f"{name}.partial").replace(root / name)
    meta["files"] = _file_records(root, meta)  # what check_packed compares whenever the folder is opened
    # Written last and atomically: meta.json marks a complete cache.
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(root / "meta.json")
    (root / PROGRESS).unlink()
