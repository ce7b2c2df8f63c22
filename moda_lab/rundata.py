"""The data of a run, as its config says: a packed folder (data.packed_dir), a corpus dir (packed once into
data.cache_dir; the embedded default corpus is built first when asked) or a streamed dataset (data.hf). Training
and the after-fit attention statistics (eval/attention_stats.py) read a run's data through load_data."""

from __future__ import annotations

import logging
from pathlib import Path

from filelock import FileLock

from .config import ConfigError, RunConfig
from .data import PackedData, build_default_corpus, corpus_files, prepare
from .data.packing import cache_dir_problem, check_windows, load_packed

log = logging.getLogger(__name__)


def check_data(run: RunConfig) -> PackedData | None:
    """Fail on missing data paths (naming the key and path) before anything is written or built; returns the
    folder it opened and verified for data.packed_dir (else None)."""
    d = run.data
    if d.packed_dir:
        meta = Path(d.packed_dir) / "meta.json"
        if not meta.is_file():
            raise ConfigError(
                f"data.packed_dir={d.packed_dir!r} is not a packed data folder (no meta.json); "
                "allowed: a folder written by `python -m moda_lab.data`, or null"
            )
        try:  # a damaged folder (a cut meta.json, a truncated token file) is refused before a run dir is made
            packed = load_packed(d.packed_dir)
        except ValueError as err:  # nothing to rebuild it from
            raise ConfigError(str(err)) from None
        if packed.vocab_size > run.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size={run.model.vocab_size} is out of range; allowed: >= the {packed.vocab_size} "
                f"tokens of data.packed_dir={d.packed_dir!r}"
            )
        return packed
    problem = cache_dir_problem(d.cache_dir)  # a file at or above it: refused before a run dir is made
    if problem:
        raise ConfigError(problem)
    if d.hf.path is not None:  # a streamed dataset: load_dataset reports a bad name or split when it is read
        return None
    if Path(d.corpus_dir).is_dir():
        try:
            corpus_files(d.corpus_dir)
        except FileNotFoundError as err:  # a directory without text files
            raise ConfigError(str(err)) from None
        return None
    if not d.uses_default_corpus:
        raise ConfigError(
            f"data.corpus_dir={d.corpus_dir!r} does not exist; allowed: an existing directory of text/JSONL files "
            f"(the embedded default corpus is built only into data.default_corpus_dir={d.default_corpus_dir!r})"
        )
    if not d.build_default:
        raise ConfigError(
            f"data.corpus_dir={d.corpus_dir!r} does not exist (data.build_default=false); "
            "allowed: an existing directory of text/JSONL files, or data.build_default=true"
        )


def _build_default_corpus(corpus: Path, sources: tuple[str, ...]) -> None:
    """Build under a lock, so that concurrent jobs build it once; build_default_corpus itself moves the corpus into
    place only once every source is written, so a build killed midway leaves none for later runs to take."""
    corpus.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(corpus) + ".lock"):
        if corpus.is_dir():  # another job built it while this one waited
            return
        log.info("building the default corpus into %s", corpus)
        build_default_corpus(corpus, sources)


def load_data(run: RunConfig) -> PackedData:
    packed = check_data(run)
    d = run.data
    if packed is not None:
        data = packed
    else:
        corpus = d.hf if d.hf.path is not None else Path(d.corpus_dir)
        if isinstance(corpus, Path) and not corpus.is_dir():
            _build_default_corpus(corpus, d.sources)
        try:
            packing = {"max_tokens": d.max_tokens, "num_proc": d.num_proc}
            data = prepare(corpus, d.cache_dir, d.vocab_size, d.val_fraction, d.tokenizer, **packing)
        except (ValueError, FileNotFoundError) as err:  # the files' content: a bad JSONL line, a one-document domain
            if isinstance(corpus, Path):
                raise ConfigError(f"data.corpus_dir={d.corpus_dir!r}: {err}") from err
            raise ConfigError(str(err) if str(err).startswith("data.hf") else f"{corpus}: {err}") from err
    if data.vocab_size > run.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={run.model.vocab_size} is smaller than the tokenizer's {data.vocab_size} tokens"
        )
    source = (
        f"data.packed_dir={d.packed_dir!r}" if d.packed_dir
        else str(d.hf) if d.hf.path is not None
        else f"data.corpus_dir={d.corpus_dir!r}"
    )
    try:  # a corpus shorter than one window fails here, in one line, not in the data loader
        check_windows(data.meta, d.seq_len, source, run.trainer.batch_size * run.trainer.accumulate)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return data
