"""The embedded default corpus, built from what the package registries provide, and the corpus reader.

Default corpus (two domains, one JSONL file each, one document per source file):
* ``prose`` - the Python documentation's reStructuredText sources, English technical prose, from Debian's
  ``python3.11-doc`` package (/usr/share/doc/python3.11/html/_sources). Without that package the reference
  manual topics shipped in the standard library (``pydoc_data.topics``) are used, with a warning.
* ``code``  - the Python standard library's own source files.
Optional larger source (``sources=[python-docs, stdlib, linux-docs]``, for GPU runs):
* ``kernel`` - the Linux kernel documentation (Debian's ``linux-doc-6.1``), ~6k reStructuredText files.

Any directory works as a corpus: each subdirectory is a named domain, files directly inside are domain
``default``; ``.txt/.md/.rst`` files are one document each, ``.jsonl`` files hold one ``{"text": ...}`` per line.
"""

from __future__ import annotations

import json
import logging
import sysconfig
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")
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
    domains: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            rel = path.relative_to(root)
            domain = rel.parts[0] if len(rel.parts) > 1 else "default"
            domains.setdefault(domain, []).append(path)
    if not domains:
        raise FileNotFoundError(
            f"data.corpus_dir={str(root)!r} holds no text files ({', '.join(TEXT_SUFFIXES)}); "
            "point it at a directory of text/JSONL files"
        )
    return domains


def read_documents(path: Path) -> Iterator[str]:
    """Documents of one file; a JSONL line without a string "text" field is an error naming file and line."""
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
