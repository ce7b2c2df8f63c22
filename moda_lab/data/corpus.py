"""The embedded default corpus, built from what the package registries provide, and the corpus reader.

Default corpus (two domains, one JSONL file each, one document per source file):
* ``prose`` - the Python documentation's reStructuredText sources, English technical prose, from Debian's
  ``python3.11-doc`` package (/usr/share/doc/python3.11/html/_sources). Without that package the reference
  manual topics shipped in the standard library (``pydoc_data.topics``) are used, with a warning.
* ``code``  - the Python standard library's own source files.
Larger sources (``sources=[...]``, e.g. conf/data/table6.yaml for the GPU runs), each its own validation domain:
* ``kernel``  (linux-docs)    - the Linux kernel documentation (Debian's ``linux-doc-6.1``), ~3k reStructuredText files.
* ``man``     (manpages)      - manual pages of Debian's ``manpages``, ``manpages-dev`` and ``perl-doc``, rendered
  to plain text by man-db (``man -l``).
* ``devdocs`` (devdocs)       - reStructuredText / plain-text sources of Debian documentation packages (LLVM, CMake,
  SQLAlchemy, Sphinx, Git, Debian Policy, Debian Reference): see ``DEVDOCS``.
* ``libcode`` (site-packages) - Python source of pinned installed distributions (torch, pandas, matplotlib,
  lightning; their test folders left out), the versions pyproject.toml pins.
Every source's documents are de-duplicated (exact text), so the corpus counts unique text.

Any directory works as a corpus: each subdirectory is a named domain, files directly inside are domain
``default``; ``.txt/.md/.rst`` files are one document each, ``.jsonl`` files hold one ``{"text": ...}`` per line,
``.parquet`` files one document per row in their ``text`` column, and a folder written by Hugging Face
``datasets`` (``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: every split, in name order) one document
per row of its ``text`` column. A corpus dir that is itself a saved dataset is domain ``default``. A text file
holding NUL bytes in its first 8 KiB (a binary file named like text) is skipped with a warning naming it.

A dataset that ``datasets.load_dataset(..., streaming=True)`` streams (``HubDataset``, ``data.hf``: a hub id or a
local folder of data files) is read by the same code as a saved dataset, the IterableDataset coming from the hub
instead of from disk. Readers yield each document with the position after it (``stream_documents``), from which a
later call continues: the resumable packing of moda_lab.data.packing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".parquet")
DOCUMENT_SUFFIXES = (".txt", ".md", ".rst")  # a whole file is one document
BINARY_PROBE = 8192  # bytes read to tell a binary file from text: text holds no NUL byte (git's test too)
TEXT_FIELD = "text"  # the document column of JSONL, Parquet and datasets sources
# What `datasets` writes into a saved Dataset / DatasetDict folder.
DATASET_MARKERS = ("state.json", "dataset_dict.json")
DEBIAN_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
LINUX_DOCS = Path("/usr/share/doc/linux-doc-6.1/Documentation")


def _write_jsonl(path: Path, texts: Iterator[str]) -> tuple[int, int]:
    """Write the non-empty, distinct texts; returns (documents, UTF-8 bytes) written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = nbytes = 0
    seen: set[bytes] = set()
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for text in texts:
            key = hashlib.sha1(text.encode()).digest()
            if text.strip() and key not in seen:  # exact duplicates (vendored copies, aliases) counted once
                seen.add(key)
                f.write(json.dumps({"text": text}) + "\n")
                n += 1
                nbytes += len(text.encode())
    tmp.replace(path)
    return n, nbytes


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
    if not LINUX_DOCS.is_dir():
        raise FileNotFoundError(
            f"{LINUX_DOCS} not found: install Debian's linux-doc-6.1 (apt-get install linux-doc-6.1)"
        )
    for path in sorted(LINUX_DOCS.rglob("*.rst*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            yield f.read()


def _read_maybe_gz(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _package_files(package: str) -> list[Path]:
    """Regular files a Debian package installed (dpkg -L), sorted; a missing package names its install command."""
    res = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if res.returncode:
        raise FileNotFoundError(
            f"Debian package {package} is not installed (apt-get install --no-install-recommends {package})"
        )
    paths = (Path(line) for line in res.stdout.splitlines() if line.startswith("/"))
    return sorted(p for p in paths if p.is_file() and not p.is_symlink())


# Manual pages: Linux man-pages (sections 1-8), the C library's (manpages-dev), Perl's (perl-doc: perl*.1 and the
# core modules' .3perl pages).
MAN_PACKAGES = ("manpages", "manpages-dev", "perl-doc")


def _render_man(path: Path) -> str:
    # man-db formats with groff -Tutf8 and, writing to a pipe, strips the overstrike bold/underline itself.
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}
    res = subprocess.run(
        ["man", "--no-hyphenation", "--no-justification", "-E", "UTF-8", "-l", str(path)],
        capture_output=True,
        env=env,
    )
    if res.returncode:
        log.warning("man -l %s failed (left out): %s", path, res.stderr.decode(errors="replace").strip()[:200])
        return ""
    return res.stdout.decode("utf-8", errors="replace")


def _man_pages(packages: tuple[str, ...] = MAN_PACKAGES) -> Iterator[str]:
    if shutil.which("man") is None:
        raise FileNotFoundError("man not found: install Debian's man-db (apt-get install man-db)")
    pages = []
    for package in packages:
        for path in _package_files(package):
            if "/share/man/man" not in str(path):  # English pages only: /usr/share/man/<lang>/ are translations
                continue
            head = _read_maybe_gz(path)[:4]
            if head != ".so ":  # a '.so' page only includes another page: it would be a duplicate
                pages.append(path)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # man runs as subprocesses, in order
        yield from pool.map(_render_man, pages)


# Debian documentation packages whose markup sources are shipped (reStructuredText / AsciiDoc / plain text): the
# package and which of its files are documents. Built HTML is left out (its navigation repeats on every page and
# it duplicates these sources).
DEVDOCS: dict[str, Callable[[Path], bool]] = {
    "llvm-15-doc": lambda p: "/_sources/" in str(p) and p.name.endswith(".txt"),
    "cmake-doc": lambda p: "/_sources/" in str(p) and p.name.endswith(".txt"),
    "python-sqlalchemy-doc": lambda p: "/rst/" in str(p) and p.suffix == ".rst",
    "sphinx-doc": lambda p: "/_sources/" in str(p) and p.name.endswith(".txt"),
    "git-doc": lambda p: p.suffix == ".txt",
    "debian-policy": lambda p: p.name.endswith((".txt", ".txt.gz")),
    "debian-reference-en": lambda p: p.name.endswith(".txt.gz"),
}


def _devdocs() -> Iterator[str]:
    for package, is_doc in DEVDOCS.items():
        for path in _package_files(package):
            if is_doc(path):
                yield _read_maybe_gz(path)


# Python source of installed distributions, as pyproject.toml pins them (pytorch_lightning is left out: lightning
# ships the same code as lightning.pytorch).
SITE_DISTRIBUTIONS = ("torch", "pandas", "matplotlib", "lightning")
_SKIP_DIRS = {"test", "tests", "testing"}


def _site_code(distributions: tuple[str, ...] = SITE_DISTRIBUTIONS) -> Iterator[str]:
    from importlib import metadata

    for name in distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(f"Python distribution {name} is not installed (pip install {name})") from None
        log.info("corpus site-packages: %s %s", name, dist.version)
        files = sorted(str(f) for f in dist.files or () if f.suffix == ".py")
        for rel in files:
            if _SKIP_DIRS.isdisjoint(Path(rel).parts):
                yield Path(dist.locate_file(rel)).read_text(encoding="utf-8", errors="replace")


# source name -> (domain, documents)
SOURCES = {
    "python-docs": ("prose", lambda: _prose_docs(DEBIAN_DOCS)),
    "stdlib": ("code", lambda: _code_docs(8_000_000)),
    "linux-docs": ("kernel", _linux_docs),
    "manpages": ("man", _man_pages),
    "devdocs": ("devdocs", _devdocs),
    "site-packages": ("libcode", _site_code),
}
# Debian packages each source reads (python-docs falls back to pydoc topics without its package).
DEBIAN_PACKAGES = {
    "python-docs": ("python3.11-doc",),
    "stdlib": (),
    "linux-docs": ("linux-doc-6.1",),
    "manpages": ("man-db", *MAN_PACKAGES),
    "devdocs": tuple(DEVDOCS),
    "site-packages": (),
}
DEFAULT_SOURCES = ("python-docs", "stdlib")


def build_default_corpus(out_dir: str | Path, sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES) -> Path:
    """Write <domain>/<domain>.jsonl under out_dir for each source (idempotent); returns out_dir.

    The sources are built into the sibling folder ``<out_dir>.partial`` and moved into out_dir only when every one
    was built: a failed build (a missing Debian package, an interrupt) leaves no half-written out_dir, and the
    domains an earlier build wrote there stay as they were."""
    out = Path(out_dir)
    for name in sources:
        if name not in SOURCES:
            raise ValueError(f"unknown corpus source {name!r}; choose from {sorted(SOURCES)}")
    domains = [SOURCES[name][0] for name in sources]
    if len(set(domains)) < len(domains):
        raise ValueError(f"corpus sources {list(sources)} name a source twice")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for name in sources:
            domain, docs = SOURCES[name]
            try:
                n, nbytes = _write_jsonl(partial / domain / f"{domain}.jsonl", docs())
            except FileNotFoundError as err:  # a package is missing: name every package these sources need
                packages = " ".join(p for s in sources for p in DEBIAN_PACKAGES[s])
                raise FileNotFoundError(
                    f"corpus source {name!r}: {err}. Sources {list(sources)} need, as root: "
                    f"apt-get install -y --no-install-recommends {packages}"
                ) from err
            log.info("corpus %s: %d %s documents, %.1f MB (%s)", out, n, domain, nbytes / 1e6, name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _move_domains(partial, out)
    return out


def _move_domains(partial: Path, out: Path) -> None:
    """Move a finished build's domain folders into out (a fresh out: one rename). A domain out already holds is
    replaced by renames only: its old folder goes into partial (removed last), never left inside the corpus."""
    if not out.exists():
        partial.rename(out)
        return
    for built in sorted(p for p in partial.iterdir() if p.suffix != ".old"):
        target = out / built.name
        if target.exists():
            target.rename(partial / f"{built.name}.old")
        built.rename(target)
    shutil.rmtree(partial)


def corpus_files(corpus_dir: str | Path, key: str = "data.corpus_dir") -> dict[str, list[Path]]:
    """Domain name -> sorted text files (binary files named like text skipped, with a warning naming them). Raises
    FileNotFoundError naming the directory, as the config key ``key``, when there are none."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}={str(root)!r} does not exist or is not a directory")
    if is_saved_dataset(root):
        return {"default": [root]}
    found = [p for p in root.rglob("*") if is_saved_dataset(p)]
    datasets = [d for d in found if not any(o in d.parents for o in found)]  # a DatasetDict's splits are inside
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not any(d in p.parents for d in datasets)
    ]
    binary = sorted(p for p in files if p.suffix in DOCUMENT_SUFFIXES and is_binary(p))
    if binary and root not in _warned_binary:  # once per corpus (a run lists its files in its check and its packing)
        _warned_binary.add(root)
        names = ", ".join(str(p.relative_to(root)) for p in binary[:5]) + (", ..." if len(binary) > 5 else "")
        log.warning("%s=%r: skipping %d binary file(s), not text: %s", key, str(root), len(binary), names)
        skipped = set(binary)
        files = [p for p in files if p not in skipped]
    domains: dict[str, list[Path]] = {}
    for path in sorted([*datasets, *files]):
        rel = path.relative_to(root)
        # A file directly in root is domain "default"; a saved dataset directly in root is a domain of its own.
        domain = rel.parts[0] if len(rel.parts) > 1 or path.is_dir() else "default"
        domains.setdefault(domain, []).append(path)
    if not domains:
        skipped = f" ({len(binary)} binary file(s) skipped)" if binary else ""
        raise FileNotFoundError(
            f"{key}={str(root)!r} holds no text files ({', '.join(TEXT_SUFFIXES)}) or saved datasets"
            f"{skipped}; point it at a directory of text/JSONL/Parquet files"
        )
    return domains


_warned_binary: set[Path] = set()


def is_binary(path: Path) -> bool:
    """A file with a NUL byte in its first BINARY_PROBE bytes: not text, whatever its name says."""
    with path.open("rb") as f:
        return b"\0" in f.read(BINARY_PROBE)


def is_saved_dataset(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS)


@dataclass(frozen=True)
class HubDataset:
    """A dataset that ``datasets.load_dataset(path, name, split=split, streaming=True)`` streams (``data.hf``).

    ``path`` is a hub dataset id (``HuggingFaceFW/fineweb-edu``) or a local folder of data files (load_dataset
    reads its Parquet/JSONL/CSV files as one dataset). The dataset is one validation domain, named after the
    last component of ``path``. ``revision`` pins a hub commit: the cache key holds these fields, not the data,
    so an unpinned dataset that changes upstream keeps its old packed cache.
    """

    path: str | None = None  # unset: no hub dataset (data.corpus_dir is read instead)
    name: str | None = None  # the dataset's configuration (subset), e.g. sample-10BT
    split: str = "train"
    text_field: str = "text"  # the document column
    revision: str | None = None  # a commit, tag or branch of the hub repository

    def __post_init__(self) -> None:
        for key in ("split", "text_field"):
            if not getattr(self, key):
                raise ValueError(f"data.hf.{key}={getattr(self, key)!r} is not allowed; allowed: a non-empty name")
        orphans = [f"data.hf.{k}={getattr(self, k)!r}" for k in ("name", "revision") if getattr(self, k) is not None]
        if self.path is None and orphans:
            raise ValueError(f"{' and '.join(orphans)} without data.hf.path; allowed: set data.hf.path too")
        if self.path is not None and not self.domain:
            raise ValueError(f"data.hf.path={self.path!r} is not allowed; allowed: a dataset id or a folder")

    @property
    def domain(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1] if self.path else ""

    def __str__(self) -> str:
        parts = [f"name={self.name!r}"] if self.name is not None else []
        parts += [f"split={self.split!r}"] + ([f"revision={self.revision!r}"] if self.revision else [])
        return f"data.hf.path={self.path!r} ({', '.join(parts)})"

    def load(self):
        """The streamed split (a datasets.IterableDataset); load_dataset's failure as one line naming the keys."""
        try:
            from datasets import load_dataset
        except ImportError as err:  # pragma: no cover - datasets comes with lm-eval
            raise ImportError(f"{self}: streaming a dataset needs `datasets` ({err})") from err
        try:
            return load_dataset(self.path, self.name, split=self.split, revision=self.revision, streaming=True)
        except (ValueError, OSError) as err:  # bad name or split, unknown dataset, no network
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"{self}: load_dataset failed: {type(err).__name__}: {first}") from err


# A corpus source: a file or saved-dataset folder of a corpus dir, or a streamed dataset.
Source = Path | HubDataset
# Where a domain's reading stands: (part, documents read in that part, the datasets iterator's state_dict or
# None). Parts are a domain's files, a saved DatasetDict's splits and a streamed dataset, in reading order.
Position = tuple[int, int, dict | None]


def _check_text(i: int, text: object, field: str, where: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where}: row {i}: {field!r} must be a string, got {type(text).__name__}")
    return text


def _parquet_documents(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if TEXT_FIELD not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no {TEXT_FIELD!r} column (columns: {pf.schema_arrow.names})")
    i = 0
    for batch in pf.iter_batches(columns=[TEXT_FIELD], batch_size=4096):  # row groups stream, not the file
        for text in batch.column(0).to_pylist():
            yield _check_text(i, text, TEXT_FIELD, str(path))
            i += 1


def _jsonl_documents(path: Path) -> Iterator[str]:
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


def _file_documents(path: Path) -> Iterator[str]:
    if path.suffix == ".parquet":
        return _parquet_documents(path)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path)
    return iter([path.read_text(encoding="utf-8", errors="replace")])


def _parts(source: Source) -> Iterator[tuple[Path | HubDataset, object, str]]:
    """(source, reader, where) per part: a file reads itself; a saved dataset (every split of a DatasetDict, in
    name order) and a hub dataset read through the same datasets.IterableDataset code, from disk or streamed."""
    if isinstance(source, HubDataset):
        yield source, source.load(), str(source)
        return
    if not source.is_dir():
        yield source, source, str(source)
        return
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as err:  # pragma: no cover - datasets comes with lm-eval
        raise ImportError(f"{source} is a saved Hugging Face dataset; reading it needs `datasets` ({err})") from err
    loaded = load_from_disk(str(source))
    for split in [loaded[k] for k in sorted(loaded)] if isinstance(loaded, DatasetDict) else [loaded]:
        yield source, split.to_iterable_dataset(), f"{source} ({split.split or 'dataset'})"


def _text_column(ds, field: str, missing: str):
    """The dataset with only its text column (other columns are never decoded); a missing one is an error."""
    if ds.column_names is None:  # features unknown until read: checked on the first row
        return ds
    if field not in ds.column_names:
        raise ValueError(missing.format(columns=ds.column_names))
    return ds.select_columns([field])


def stream_documents(sources: list[Source], start: Position | None = None) -> Iterator[tuple[str, Position]]:
    """(document, position after it) for a domain's sources in order; from ``start``, a position it yielded before,
    reading continues with the next document. Files skip what was read; datasets resume from their state_dict
    (a streamed dataset does not download its finished shards again)."""
    start_part, start_docs, start_state = start if start is not None else (0, 0, None)
    k = 0
    for source in sources:
        for owner, reader, where in _parts(source):
            if k < start_part:
                k += 1
                continue
            resume = start_docs if k == start_part else 0
            if isinstance(reader, Path):
                for j, doc in enumerate(_file_documents(reader), 1):
                    if j > resume:
                        yield doc, (k, j, None)
                k += 1
                continue
            if isinstance(owner, HubDataset):
                field = owner.text_field
                missing = f"data.hf.text_field={field!r} is not a column of {where}; columns found: {{columns}}"
            else:
                field, missing = TEXT_FIELD, f"{owner}: no {TEXT_FIELD!r} column (columns: {{columns}})"
            ds = _text_column(reader, field, missing)
            if resume:
                ds.load_state_dict(start_state)
            for j, row in enumerate(ds, resume + 1):
                if field not in row:
                    raise ValueError(missing.format(columns=list(row)))
                yield _check_text(j - 1, row[field], field, where), (k, j, ds.state_dict())
            k += 1


def read_documents(source: Source) -> Iterator[str]:
    """Documents of one file, saved dataset or streamed dataset; a record without a string text field is an error
    naming it (the file and line, or the dataset and row)."""
    for doc, _ in stream_documents([source]):
        yield doc
