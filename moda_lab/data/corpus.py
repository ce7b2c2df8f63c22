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
per row of its ``text`` column. A corpus dir that is itself a saved dataset is domain ``default``.
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
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".parquet")
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
    """Write <domain>/<domain>.jsonl under out_dir for each source (idempotent); returns out_dir."""
    out = Path(out_dir)
    for name in sources:
        if name not in SOURCES:
            raise ValueError(f"unknown corpus source {name!r}; choose from {sorted(SOURCES)}")
    domains = [SOURCES[name][0] for name in sources]
    if len(set(domains)) < len(domains):
        raise ValueError(f"corpus sources {list(sources)} name a source twice")
    for name in sources:
        domain, docs = SOURCES[name]
        try:
            n, nbytes = _write_jsonl(out / domain / f"{domain}.jsonl", docs())
        except FileNotFoundError as err:  # a package is missing: name every package these sources need
            packages = " ".join(p for s in sources for p in DEBIAN_PACKAGES[s])
            raise FileNotFoundError(
                f"corpus source {name!r}: {err}. Sources {list(sources)} need, as root: "
                f"apt-get install -y --no-install-recommends {packages}"
            ) from err
        log.info("corpus %s: %d %s documents, %.1f MB (%s)", out, n, domain, nbytes / 1e6, name)
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
