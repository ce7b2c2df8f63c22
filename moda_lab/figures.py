"""Writing a matplotlib figure to disk, shared by the sweep figures (analysis/) and the after-fit attention
statistics (eval/attention_stats.py): PNG alone unless a caller asks for PDF too (``figure_formats``; the analysis
CLI's ``pdf=true``, for a figure meant for a paper)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

FIGURE_FORMATS: ContextVar[tuple[str, ...]] = ContextVar("FIGURE_FORMATS", default=("png",))


@contextmanager
def figure_formats(formats: tuple[str, ...]) -> Iterator[None]:
    """Within the block, save_figure writes ``formats`` (e.g. ``("png", "pdf")``)."""
    token = FIGURE_FORMATS.set(formats)
    try:
        yield
    finally:
        FIGURE_FORMATS.reset(token)


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi; and ``<stem>.pdf`` within ``figure_formats(("png", "pdf"))``) and close the
    figure (also when writing fails)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{fmt}" for fmt in FIGURE_FORMATS.get()]
    try:
        for path in paths:
            # Layouts are tight already (bbox_inches="tight" would draw twice); no creation date in the PDF, so
            # regenerating an unchanged figure leaves its committed file unchanged.
            fig.savefig(path, dpi=150, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    finally:  # closed even when saving fails: pyplot keeps every figure it made until it is closed
        plt.close(fig)
    return paths
