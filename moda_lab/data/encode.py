"""Tokenising batches of documents for packing: in this process, or over worker processes whose results come back
in submission order (so the packed files are the same bytes for any number of workers)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Protocol, TypeVar

import numpy as np
from tokenizers import Tokenizer


class Batch(Protocol):
    """What is tokenised: any object with the documents in ``docs`` (packing's batches also carry positions)."""

    docs: list[str]


B = TypeVar("B", bound=Batch)
Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]
EncodeFn = Callable[[Iterable[B]], Iterator[tuple[B, Encoded]]]


# A tokenising process's tokenizer, EOS id and token dtype (set by _init_worker).
_worker: tuple[Tokenizer, int, np.dtype] | None = None


def _exit_with_parent(parent: int) -> None:
    # The workers of a killed packer would wait on their task queue forever (they hold its write end themselves,
    # so it never reaches EOF): each exits once it is re-parented.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(tokenizer_json: str, eos: int, dtype: str, parent: int) -> None:
    global _worker
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    # One thread per process: num_proc processes use num_proc cores (the library's pool would take them all each).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = (Tokenizer.from_str(tokenizer_json), eos, np.dtype(dtype))


def _encode(docs: list[str]) -> Encoded:
    """(every document's tokens then EOS, concatenated; tokens per document, EOS included; UTF-8 bytes per document)."""
    tok, eos, dtype = _worker
    encs = tok.encode_batch(docs)
    tokens = np.concatenate([np.asarray([*enc.ids, eos], dtype=dtype) for enc in encs])
    lengths = np.fromiter((len(enc.ids) + 1 for enc in encs), dtype=np.int64, count=len(encs))
    nbytes = np.fromiter((len(doc.encode()) for doc in docs), dtype=np.int64, count=len(docs))
    return tokens, lengths, nbytes


@contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read on every encode_batch call
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


@contextmanager
def encoder(tok: Tokenizer, eos: int, dtype: np.dtype, num_proc: int) -> Iterator[EncodeFn]:
    """A function mapping batches to (batch, encoded) in order, encoded = (every document's tokens then EOS,
    concatenated; tokens per document, EOS included; UTF-8 bytes per document): in this process for num_proc=1, else
    over num_proc worker processes with at most 2 * num_proc batches in flight (memory stays a few batches)."""
    global _worker
    with _single_threaded_tokenizers():
        if num_proc == 1:
            _worker = (tok, eos, dtype)
            try:
                yield lambda batches: ((batch, _encode(batch.docs)) for batch in batches)
            finally:
                _worker = None
            return
        # fork, not spawn or forkserver: those re-import the caller's __main__, so a script that calls prepare()
        # without an `if __name__ == "__main__"` guard would run again in every worker (and wait on the cache lock
        # its parent holds). The workers only tokenise: no thread of the parent (torch's, a datasets download) is
        # used in them, and with TOKENIZERS_PARALLELISM set the tokenizers library forks without its warning.
        context = multiprocessing.get_context("fork")
        initargs = (tok.to_str(), eos, dtype.str, os.getpid())
        pool = ProcessPoolExecutor(num_proc, context, initializer=_init_worker, initargs=initargs)

        def ordered(batches: Iterable[B]) -> Iterator[tuple[B, Encoded]]:
            pending: deque = deque()
            for batch in batches:
                pending.append((batch, pool.submit(_encode, batch.docs)))
                if len(pending) > 2 * num_proc:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()

        try:
            yield ordered
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
