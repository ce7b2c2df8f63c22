"""The embedded default corpus, built from what the package registries provide, and the corpus reader.

Default corpus (two domains, one JSONL file each, one document per source file):
* ``prose`` - the Python documentation's reStructuredText sources, English technical prose, from Debian's
  ``python3.11-doc`` package (/usr/share/doc/python3.11/html/_sources). Without that package the reference
  manual topics shipped in the standard library (``pydoc_data.topics``) are used, with a warning.
* ``code``  - the Python standard library's own source files.
Optional larger source (``sources=[python-docs, stdlib, linux-docs]``, for GPU runs):
* ``kernel`` - the Linux kernel documentation (Debian's ``linux-doc-6.1``), ~6k reStructuredText files.

Any directory works as a corpus: each subdirectory is a named domain, files directly inside are domain
``default``; ``.txt/.md/.rst`` files are one document each, ``.jsonl`` files hold one ``{"text": ...}`` per line,
``.parquet`` files one document per row in their ``text`` column, and a folder written by Hugging Face
``datasets`` (``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: every split, in name order) one document
per row of its ``text`` column. A corpus dir that is itself a saved dataset is domain ``default``.
"""

from __future__ import annotations

import json
import logging
import sysconfig
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".parquet")
TEXT_FIELD = "text"  # the document column of JSONL, Parquet and datasets sources
# What `datasets` writes into a saved Dataset / DatasetDict folder.
DATASET_MARKERS = ("state.json", "dataset_dict.json")
DEBIAN_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
LINUX_DOCS = Path("/usr/share/doc/linux-doc-6.1/Documentation")


def _write_jsonl(path: Path, texts: Iterator[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for text in texts:
            if text.strip():
                f.write(json.dumps({"text": text}) + "\n")
                n += 1
    tmp.replace(path)
    return n


def _prose_docs(docs_dir: Path) -> Iterator[str]:
    if docs_dir.is_dir():
        for path in sorted(docs_dir.rglob("*.txt")):
            yield path.read_text(encoding="utf-8", errors="replace")
        return
    log.warning("%s not found (Debian package python3.11-doc); using pydoc_data.topics as prose", docs_dir)
    from pydoc_data.topics import topics

    yield from (topics[k] for k in sorted(topics))


def _code_docs(max_bytes: int) -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        if any(part in {"site-packages", "test", "tests", "idlelib", "lib2to3"} for part in path.parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        total += len(text.encode())
        if total > max_bytes:
            return
        yield text


def _linux_docs() -> Iterator[str]:
    import gzip

    if not LINUX_DOCS.is_dir():
        raise FileNotFoundError(
            f"{LINUX_DOCS} not found: install Debian's linux-doc-6.1 (apt-get install linux-doc-6.1)"
        )
    for path in sorted(LINUX_DOCS.rglob("*.rst*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            yield f.read()


# source name -> (domain, documents)
SOURCES = {
    "python-docs": ("prose", lambda: _prose_docs(DEBIAN_DOCS)),
    "stdlib": ("code", lambda: _code_docs(8_000_000)),
    "linux-docs": ("kernel", _linux_docs),
}
DEFAULT_SOURCES = ("python-docs", "stdlib")


def build_default_corpus(out_dir: str | Path, sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES) -> Path:
    """Write <domain>/<domain>.jsonl under out_dir for each source (idempotent); returns out_dir."""
    out = Path(out_dir)
    for name in sources:
        if name not in SOURCES:
            raise ValueError(f"unknown corpus source {name!r}; choose from {sorted(SOURCES)}")
        domain, docs = SOURCES[name]
        n = _write_jsonl(out / domain / f"{domain}.jsonl", docs())
        log.info("corpus %s: %d %s documents (%s)", out, n, domain, name)
    return out


def corpus_files(corpus_dir: str | Path) -> dict[str, list[Path]]:
    """Domain name -> sorted text files. Raises FileNotFoundError naming the directory when there are none."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data.corpus_dir={str(root)!r} does not exist or is not a directory")
    if is_saved_dataset(root):
        return {"default": [root]}
    found = [p for p in root.rglob("*") if is_saved_dataset(p)]
    datasets = [d for d in found if not any(o in d.parents for o in found)]  # a DatasetDict's splits are inside
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not any(d in p.parents for d in datasets)
    ]
    domains: dict[str, list[Path]] = {}
    for path in sorted([*datasets, *files]):
        rel = path.relative_to(root)
        # A file directly in root is domain "default"; a saved dataset directly in root is a domain of its own.
        domain = rel.parts[0] if len(rel.parts) > 1 or path.is_dir() else "default"
        domains.setdefault(domain, []).append(path)
    if not domains:
        raise FileNotFoundError(
            f"data.corpus_dir={str(root)!r} holds no text files ({', '.join(TEXT_SUFFIXES)}) or saved datasets; "
            "point it at a directory of text/JSONL/Parquet files"
        )
    return domains


def is_saved_dataset(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS)


def _column_documents(rows: Iterator[tuple[int, object]], where: str) -> Iterator[str]:
    for i, text in rows:
        if not isinstance(text, str):
            raise ValueError(f"{where}: row {i}: {TEXT_FIELD!r} must be a string, got {type(text).__name__}")
        yield text


def _parquet_documents(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if TEXT_FIELD not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no {TEXT_FIELD!r} column (columns: {pf.schema_arrow.names})")

    def rows() -> Iterator[tuple[int, object]]:
        i = 0
        for batch in pf.iter_batches(columns=[TEXT_FIELD], batch_size=4096):  # row groups stream, not the file
            for text in batch.column(0).to_pylist():
                yield i, text
                i += 1

    yield from _column_documents(rows(), str(path))


def _dataset_documents(path: Path) -> Iterator[str]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as err:  # pragma: no cover - datasets comes with lm-eval
        raise ImportError(f"{path} is a saved Hugging Face dataset; reading it needs `datasets` ({err})") from err
    loaded = load_from_disk(str(path))
    splits = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, DatasetDict) else [loaded]
    for split in splits:
        if TEXT_FIELD not in split.column_names:
            raise ValueError(f"{path}: no {TEXT_FIELD!r} column (columns: {split.column_names})")

        def rows(split=split) -> Iterator[tuple[int, object]]:
            i = 0
            for batch in split.iter(batch_size=4096):
                for text in batch[TEXT_FIELD]:
                    yield i, text
                    i += 1

        yield from _column_documents(rows(), f"{path} ({split.split or 'dataset'})")


def read_documents(path: Path) -> Iterator[str]:
    """Documents of one file or saved dataset; a record without a string "text" field is an error naming it."""
    if path.is_dir():
        yield from _dataset_documents(path)
        return
    if path.suffix == ".parquet":
        yield from _parquet_documents(path)
        return
    if path.suffix != ".jsonl":
        yield path.read_text(encoding="utf-8", errors="replace")
        return
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field ({err})") from err
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
            yield text
