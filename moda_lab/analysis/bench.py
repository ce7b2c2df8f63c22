"""Kernel benchmark results (``experiments/bench/results/*.json``) -> long table -> timing plots.

The files are read tolerantly: ``{"device" | "meta": {"device", ...}, "rows": [...]}`` where a row holds shape
parameters (T, G, Hq, Hk, d, L, C, ...), optionally a ``table`` group name (else the file name is the group; a
row's ``name`` is its case label), optionally an implementation name (``impl``, ``mode``, ``backend`` or
``provider``) and timing columns ending in ``ms``: ``fwd_ms``/``fwdbwd_ms`` (per-row implementation) or
``<impl>_fwd_ms`` / ``<impl>_fwdbwd_ms`` / ``<impl>_ms`` (one column per implementation, as bench_moda.py writes).
Non-timing columns (``*_tflops``, ratios, ``wall_s``) are ignored.
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
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    env = payload.get("env") if isinstance(payload.get("env"), dict) else {}  # bench_train.py's header
    device = str(payload.get("device") or meta.get("device") or env.get("device") or "unknown")
    out = []
    for row in payload.get("rows", []):
        if not isinstance(row, dict):
            continue
        group = str(row.get("table") or Path(source).stem or "bench")
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
            impl = impl or row_impl or "default"
            if row.get("variant") is not None:  # bench_train.py: a row per model variant; step_ms is a step's time
                impl, kind = str(row["variant"]), key.removesuffix("_ms")
            case = row.get("name")
            out.append(
                {
                    "file": source,
                    "device": device,
                    "group": group,
                    "case": case,
                    "impl": impl,
                    "pass": kind,
                    "ms": float(val),
                    **shape,
                }
            )
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


def _determines(frame: pd.DataFrame, a: str, b: str) -> bool:
    """Each value of ``a`` comes with a single value of ``b`` (e.g. G determines Hq at fixed Hk)."""
    return bool(frame.groupby(a)[b].nunique().max() <= 1)


def _panels(group: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per swept shape parameter, the other parameters held at their most common value.

    Parameters that move together (G and Hq) give one panel, and neither is held fixed in the other's panel.
    """
    varying = [k for k in SHAPE_KEYS if k in group and group[k].nunique() > 1]
    if not varying:
        return [("", group)]
    panels: list[tuple[str, pd.DataFrame]] = []
    for key in varying:
        if any(_determines(group, used, key) and _determines(group, key, used) for used, _ in panels):
            continue
        sub = group
        for other in varying:
            if other != key and not _determines(group, key, other):
                sub = sub[sub[other] == group[other].mode().iloc[0]]
        if sub[key].nunique() > 1:
            panels.append((key, sub))
    return panels or [(varying[0], group)]


def plot_bench_group(frame: pd.DataFrame, group: str) -> Figure:
    """Timing (ms, log) vs each varying shape parameter of one group: one row of panels per pass (fwd, fwd+bwd),
    one line per implementation; the other parameters are held at their most common value (panel title)."""
    data = frame[frame["group"] == group]
    panels = _panels(data)
    passes = sorted(data["pass"].unique(), key=lambda p: (PASSES + ["ms"]).index(p) if p in PASSES + ["ms"] else 99)
    fig, axes = plt.subplots(len(passes), len(panels), figsize=(5.2 * len(panels), 3.8 * len(passes)), squeeze=False)
    for r, kind in enumerate(passes):
        for c, (key, sub) in enumerate(panels):
            ax, sub = axes[r][c], sub[sub["pass"] == kind]
            fixed = {k: sub[k].dropna().iloc[0] for k in SHAPE_KEYS if k in sub and k != key and sub[k].nunique() == 1}
            for impl, line in sub.groupby("impl", sort=True):
                if key:
                    line = line.groupby(key, as_index=False)["ms"].median().sort_values(key)
                    ax.plot(line[key], line["ms"], marker="o", label=impl)
                else:
                    ax.bar(impl, line["ms"].median())
            if key:
                ax.set_xlabel(key)
                if sub[key].max() / max(sub[key].min(), 1) >= 8:
                    ax.set_xscale("log", base=2)
                ax.legend(fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("time (ms, median)" if kind == "ms" else f"{kind} time (ms, median)")
            ax.set_title(", ".join(f"{k}={v:g}" for k, v in fixed.items()), fontsize=9)
            ax.grid(alpha=0.3, which="both")
    devices = ", ".join(sorted(d for d in data["device"].unique() if d != "unknown"))
    fig.suptitle(f"{group} ({devices})" if devices else group)
    fig.tight_layout()
    return fig


def bench_groups(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["group"].unique()) if not frame.empty else []
