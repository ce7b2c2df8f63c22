"""Kernel benchmark results (``experiments/bench/results/*.json``) -> long table -> timing plots.

The files are read tolerantly: ``{"device", "versions", "rows": [...]}`` where a row holds shape parameters
(T, G, Hq, Hk, d, L, C, ...), a group name (``table`` or ``name``), optionally an implementation name (``impl``,
``mode``, ``backend`` or ``provider``) and timing columns ending in ``ms``: ``fwd_ms``/``fwdbwd_ms`` (per-row
implementation) or ``<impl>_fwd_ms`` / ``<impl>_ms`` (one column per implementation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SHAPE_KEYS = ["B", "T", "G", "Hq", "Hk", "H", "d", "D", "L", "C", "S"]
IMPL_KEYS = ["impl", "mode", "backend", "provider", "method"]
PASSES = ["fwdbwd", "fwd_bwd", "fwd", "bwd"]


def _split_timing(key: str) -> tuple[str | None, str]:
    """``"fwd_ms"`` -> (None, "fwd"); ``"triton_fwdbwd_ms"`` -> ("triton", "fwdbwd"); ``"sdpa_ms"`` -> ("sdpa", "ms")."""
    stem = key[: -len("_ms")] if key.endswith("_ms") else key[: -len("ms")]
    stem = stem.rstrip("_")
    for p in PASSES:
        if stem == p:
            return None, p.replace("fwd_bwd", "fwdbwd")
        if stem.endswith("_" + p):
            return stem[: -len(p) - 1], p.replace("fwd_bwd", "fwdbwd")
    return stem or None, "ms"


def bench_rows(payload: dict[str, Any], source: str = "") -> list[dict[str, Any]]:
    """Long rows ``{file, device, group, impl, pass, ms, <shape keys>}`` of one results payload."""
    device = str(payload.get("device", "unknown"))
    out = []
    for row in payload.get("rows", []):
        if not isinstance(row, dict):
            continue
        group = str(row.get("table") or row.get("name") or "bench")
        row_impl = next((str(row[k]) for k in IMPL_KEYS if row.get(k) is not None), None)
        row_pass = str(row.get("pass", "ms"))
        if row_impl in PASSES:  # e.g. {"mode": "fwdbwd", "fa2_ms": ..., "moda_ms": ...}
            row_pass, row_impl = row_impl.replace("fwd_bwd", "fwdbwd"), None
        shape = {k: row[k] for k in SHAPE_KEYS if k in row}
        if "dtype" in row:
            shape["dtype"] = row["dtype"]
        for key, val in row.items():
            if not (key.endswith("ms") and isinstance(val, (int, float)) and not isinstance(val, bool)):
                continue
            impl, kind = _split_timing(key)
            kind = row_pass if kind == "ms" else kind
            out.append({"file": source, "device": device, "group": group, "impl": impl or row_impl or "default", "pass": kind, "ms": float(val), **shape})
    return out


def load_bench_results(path: str | Path) -> pd.DataFrame:
    """Every ``*.json`` under ``path`` (a dir or a file) -> one long frame; unreadable files are logged and skipped."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    rows: list[dict[str, Any]] = []
    for file in files:
        try:
            payload = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("bench results %s unreadable: %s", file, err)
            continue
        if not isinstance(payload, dict):
            log.warning("bench results %s: expected an object with 'rows'", file)
            continue
        rows.extend(bench_rows(payload, source=file.name))
    return pd.DataFrame(rows)


def _panels(group: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per shape parameter that varies, holding the other varying parameters at their most common value."""
    varying = [k for k in SHAPE_KEYS if k in group and group[k].nunique() > 1]
    if not varying:
        return [("", group)]
    panels = []
    for key in varying:
        sub = group
        for other in varying:
            if other != key:
                sub = sub[sub[other] == group[other].mode().iloc[0]]
        if sub[key].nunique() > 1:
            panels.append((key, sub))
    return panels or [(varying[0], group)]


def plot_bench_group(frame: pd.DataFrame, group: str) -> Figure:
    """Timing (ms, log) vs each varying shape parameter of one benchmark group, one line per implementation x pass."""
    data = frame[frame["group"] == group]
    panels = _panels(data)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0), squeeze=False)
    for ax, (key, sub) in zip(axes[0], panels):
        fixed = {k: sub[k].iloc[0] for k in SHAPE_KEYS if k in sub and k != key and sub[k].nunique() == 1}
        for (impl, kind), line in sub.groupby(["impl", "pass"], sort=True):
            if key:
                line = line.groupby(key, as_index=False)["ms"].median().sort_values(key)
                ax.plot(line[key], line["ms"], marker="o", label=f"{impl} ({kind})")
            else:
                ax.bar(f"{impl}\n{kind}", line["ms"].median())
        if key:
            ax.set_xlabel(key)
            if sub[key].max() / max(sub[key].min(), 1) >= 8:
                ax.set_xscale("log", base=2)
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("time (ms, median)")
        ax.set_title(", ".join(f"{k}={v}" for k, v in fixed.items()), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    devices = ", ".join(sorted(data["device"].unique()))
    fig.suptitle(f"{group} — {devices}")
    fig.tight_layout()
    return fig


def bench_groups(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["group"].unique()) if not frame.empty else []
