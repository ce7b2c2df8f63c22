"""Writing a matplotlib figure to disk, shared by the sweep figures (analysis/) and the after-fit attention
statistics (eval/attention_stats.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` and close the figure (also when writing fails)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    try:
        for path in paths:
            # Layouts are tight already (bbox_inches="tight" would draw twice); no creation date in the PDF, so
            # regenerating an unchanged figure leaves its committed file unchanged.
            fig.savefig(path, dpi=150, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    finally:  # closed even when saving fails: pyplot keeps every figure it made until it is closed
        plt.close(fig)
    return paths
