"""One error convention for every entry point (run.py, moda_lab.eval, moda_lab.data, moda_lab.analysis, the export).

A bad input -- a key, a value, a file the user named -- raises UsageError (or a subclass: ConfigError,
EvalConfigError, CheckpointError ...) whose message names the key or file and what is allowed. An entry point wraps
its work in ``exit_on_usage_error``: such an error prints ONE line on stderr and exits with status 2, having written
nothing. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad input named by the user; the message names the key or file and what is allowed."""


def dir_write_problem(path: str | os.PathLike) -> str | None:
    """Why a directory cannot be made (or written) at path, or None: the nearest existing path at or above it is
    a file or other non-directory, or a folder this user cannot write. Creates nothing; callers name their key."""
    existing = Path(path)
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory" if existing.is_file() else f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only for this user"
    return None


def exit_usage(err: BaseException, prefix: str = "error") -> None:
    """Print one line on stderr and exit with status 2 (the shell's usage-error convention)."""
    line = " ".join(str(err).split("\n"))  # one line, whatever the message held
    sys.stderr.write(f"{prefix}: {line}{os.linesep}")
    raise SystemExit(EXIT_USAGE)


@contextmanager
def exit_on_usage_error(prefix: str = "error") -> Iterator[None]:
    """Turn a UsageError raised inside the block into one line on stderr and exit status 2."""
    try:
        yield
    except UsageError as err:
        exit_usage(err, prefix)
