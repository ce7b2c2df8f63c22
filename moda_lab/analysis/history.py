"""Turn logged rows (metrics.jsonl lines, wandb history rows) into one history frame per run, one row per step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

INDEX_COLUMNS: list[str] = ["step", "tokens", "time"]
# Logged once at step 0, broadcast to every row of the run.
STATIC_METRICS: list[str] = ["model/params", "model/params_embedding", "model/flops_per_token"]


def history_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> frame sorted by step, with the last logged value of each key per step.

    A resumed run appends to the same metrics file, so a step can appear more than once; train and val metrics of
    one step may also come on separate lines. Taking the last non-null value per (step, key) handles both.
    Non-finite values (a diverged run's; metrics.jsonl holds them as the strings "nan" and "inf") become NaN: no
    table, mean or axis can use them (the run dir loader reports them as issues).
    """
    frame = pd.DataFrame([{k: _finite(v) for k, v in r.items()} for r in rows if r.get("step") is not None])
    if frame.empty:
        return pd.DataFrame(columns=INDEX_COLUMNS)
    frame["step"] = frame["step"].astype("int64")
    frame = frame.groupby("step", sort=True).last().reset_index()
    for col in INDEX_COLUMNS:
        if col not in frame:
            frame[col] = float("nan")
    frame["tokens"] = fill_tokens(frame["step"], frame["tokens"].astype("float64"))
    for col in STATIC_METRICS:
        if col in frame:
            frame[col] = frame[col].ffill().bfill()
    if "model/flops_per_token" in frame:
        frame["flops"] = frame["tokens"].astype("float64") * frame["model/flops_per_token"].astype("float64")
    else:
        frame["flops"] = float("nan")
    ordered = INDEX_COLUMNS + ["flops"]
    return frame[ordered + sorted(c for c in frame.columns if c not in ordered)]


NON_FINITE = ("nan", "inf", "-inf", "infinity", "-infinity")


def _number(value: Any) -> Any:
    """A logged "nan" / "inf" / "-inf" string as its float; any other value as it is."""
    return float(value) if isinstance(value, str) and value.strip().lower() in NON_FINITE else value


def _finite(value: Any) -> Any:
    """A logged value with every non-finite number (or its string) as NaN."""
    value = _number(value)
    return float("nan") if isinstance(value, float) and not np.isfinite(value) else value


def non_finite_keys(row: dict[str, Any]) -> list[str]:
    """Keys of a logged row whose value is not a finite number (NaN, inf, or their strings)."""
    return [k for k, v in row.items() if isinstance(_number(v), float) and not np.isfinite(_number(v))]


def fill_tokens(step: pd.Series, tokens: pd.Series) -> pd.Series:
    """Fill steps logged without a token count (e.g. wandb validation rows) by linear interpolation in step.

    Step 0 has seen 0 tokens; steps outside the logged range stay NaN rather than being extrapolated.
    """
    known = tokens.notna()
    if known.all() or not known.any():
        return tokens
    xs, ys = step[known].to_numpy(float), tokens[known].to_numpy(float)
    if 0 not in xs:
        xs, ys = np.r_[0.0, xs], np.r_[0.0, ys]
    missing = ~known & (step >= xs.min()) & (step <= xs.max())
    out = tokens.copy()
    out[missing] = np.interp(step[missing].to_numpy(float), xs, ys)
    return out


WANDB_STEP_KEYS = ("step", "trainer/global_step", "_step")


def normalise_wandb_row(row: dict[str, Any]) -> dict[str, Any]:
    """A wandb history row with the metrics.jsonl index keys: ``step`` (logged ``step``, else Lightning's
    ``trainer/global_step``, else wandb's ``_step``), ``time`` (``_timestamp``), ``tokens`` (``train/tokens``)."""
    out = dict(row)
    out["step"] = next((row[k] for k in WANDB_STEP_KEYS if _present(row.get(k))), None)
    if not _present(out.get("time")):
        out["time"] = row.get("_timestamp")
    if not _present(out.get("tokens")) and _present(row.get("train/tokens")):
        out["tokens"] = row["train/tokens"]
    return out


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def metric_columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Columns of ``frame`` under a metric namespace, e.g. ``metric_columns(df, "eval/")``."""
    return sorted(c for c in frame.columns if isinstance(c, str) and c.startswith(prefix))


def val_domains(frame: pd.DataFrame) -> list[str]:
    """Domains with a per-domain validation loss, from columns ``val/<domain>/loss``."""
    return sorted({c.split("/")[1] for c in metric_columns(frame, "val/") if c.count("/") == 2 and c.endswith("/loss")})


def eval_tasks(frame: pd.DataFrame) -> list[str]:
    """Downstream tasks, from columns ``eval/<task>/acc`` or ``eval/<task>/acc_norm``."""
    return sorted({c.split("/")[1] for c in metric_columns(frame, "eval/") if c.count("/") == 2})
