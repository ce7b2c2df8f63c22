"""Per-question paired tests between two evaluations of one task: McNemar's exact test on the questions both scored.

Input: ``samples_<task>.jsonl`` as moda_lab.eval writes it beside each evaluation's ``results.json``: one JSON object
a line with ``doc_id`` and ``acc`` and/or ``acc_norm`` (0 or 1; 0.0 and 1.0 as well). Two evaluations A and B of a
task pair by ``doc_id`` (and, where both files carry it, ``doc_hash`` must agree, as far as the shorter goes: the
same question). Over the n
questions both scored, b = A right and B wrong, c = A wrong and B right; A's accuracy minus B's is (b - c) / n.
Under "neither is more often right" each discordant question is a fair coin, b ~ Binomial(b + c, 1/2), and the exact
two-sided p-value is min(1, 2 P(X <= min(b, c))) (McNemar 1947, exact form; 1 when no question is discordant).

``mcnemar_table`` runs it per task for every variant's run against the run of the same seed in the baseline cell
that pairing.py's rule picks (as the paired differences: the baseline at the variant's lr, else its one lr), on
each run's evaluation of its final checkpoint, and Holm-corrects over the tasks of one pair: a task "exceeds noise"
where that corrected p is below ALPHA. Runs without samples files are skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from moda_lab.analysis.archive import files_dir
from moda_lab.analysis.pairing import cell_pairs
from moda_lab.analysis.plots import REPORTED_METRIC
from moda_lab.analysis.records import RunIssue
from moda_lab.analysis.significance import (
    ALPHA,
    GROUP_COLUMNS,
    LR_COLUMNS,
    LRS_HEADER,
    baseline_variant,
    format_p,
    holm,
    markdown_table,
    pair_lrs_text,
    shows_lrs,
)
from moda_lab.analysis.tidy import complete_runs, sort_cells
from moda_lab.errors import UsageError

SAMPLES_PREFIX = "samples_"
METRICS = ("acc", "acc_norm")


class SamplesError(UsageError):
    """A samples file that cannot be read as per-question scores; the message names the file and line."""


def read_samples(path: str | Path) -> list[dict]:
    """The records of one samples file; SamplesError naming the file and line for bad JSON, a record without an
    integer ``doc_id``, or a ``doc_id`` seen twice."""
    path = Path(path)
    records, seen = [], set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise SamplesError(f"{path}:{i}: not JSON ({err.msg}); expected one object a line") from None
        doc = rec.get("doc_id") if isinstance(rec, dict) else None
        if not isinstance(doc, int) or isinstance(doc, bool):
            raise SamplesError(f"{path}:{i}: no integer doc_id; each line needs doc_id and acc or acc_norm")
        if doc in seen:
            raise SamplesError(f"{path}:{i}: doc_id {doc} appears twice")
        seen.add(doc)
        records.append(rec)
    return records


def scores(records: Sequence[dict], metric: str, path: str | Path) -> dict[int, int]:
    """doc_id -> 0/1 of ``metric``; SamplesError naming the file and doc_id where it is missing or not 0/1."""
    out = {}
    for rec in records:
        value = rec.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
            raise SamplesError(f"{path}: doc_id {rec['doc_id']}: {metric}={value!r}; allowed: 0 or 1")
        out[rec["doc_id"]] = int(value)
    return out


def sample_metric(task: str, *record_sets: Sequence[dict]) -> str | None:
    """The metric to test: the task's reported one (plots.REPORTED_METRIC; acc_norm for a task not listed), else
    the other, whichever every record of every set has; None when neither is."""
    first = REPORTED_METRIC.get(task, "acc_norm")
    for metric in (first, *(m for m in METRICS if m != first)):
        if all(metric in rec for records in record_sets for rec in records):
            return metric
    return None


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2); 1 when b + c = 0.
    Exact integer sums (math.comb), so thousands of discordant questions lose nothing to rounding."""
    if b < 0 or c < 0:
        raise ValueError(f"b={b}, c={c}: counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar(a: Mapping[int, int], b: Mapping[int, int]) -> dict[str, float]:
    """McNemar's test of two evaluations' 0/1 scores by doc_id over the questions both have: ``n``, ``acc_a``,
    ``acc_b``, ``diff`` (acc_a - acc_b), ``b`` (a right, b wrong), ``c`` (a wrong, b right), ``p`` (mcnemar_p)
    and ``unpaired`` (questions only one side scored)."""
    shared = sorted(set(a) & set(b))
    n = len(shared)
    only_a = sum(1 for d in shared if a[d] and not b[d])
    only_b = sum(1 for d in shared if b[d] and not a[d])
    acc_a = sum(a[d] for d in shared) / n if n else math.nan
    acc_b = sum(b[d] for d in shared) / n if n else math.nan
    return {"n": n, "acc_a": acc_a, "acc_b": acc_b, "diff": acc_a - acc_b, "b": only_a, "c": only_b,
            "p": mcnemar_p(only_a, only_b) if n else math.nan, "unpaired": len(set(a) ^ set(b))}


def compare_samples(path_a: str | Path, path_b: str | Path, task: str | None = None) -> dict[str, object]:
    """McNemar's test between two samples files of one task (``task``: default from the file name), with the
    ``metric`` tested; SamplesError where neither metric is in both, or a shared doc_id names different questions."""
    task = task or Path(path_a).stem.removeprefix(SAMPLES_PREFIX)
    ra, rb = read_samples(path_a), read_samples(path_b)
    metric = sample_metric(task, ra, rb)
    if metric is None:
        raise SamplesError(f"{path_a}, {path_b}: no metric every line of both has; need one of {', '.join(METRICS)}")
    hashes = {r["doc_id"]: r.get("doc_hash") for r in rb}
    for r in ra:
        mine, other = str(r.get("doc_hash") or ""), str(hashes.get(r["doc_id"]) or "")
        n = min(len(mine), len(other))  # files of before 2026-12-07 hold all 64 hex digits, later ones a prefix
        if n and mine[:n] != other[:n]:
            raise SamplesError(f"{path_a}, {path_b}: doc_id {r['doc_id']} is a different question in each (doc_hash)")
    return {"task": task, "metric": metric, **mcnemar(scores(ra, metric, path_a), scores(rb, metric, path_b))}


def final_samples(run_dir: str | Path, step: float) -> dict[str, Path]:
    """task -> samples file of a run's evaluation of its final checkpoint: under ``<run>/eval/``, the newest folder
    with samples_<task>.jsonl beside a results.json whose ``moda.step`` is ``step`` and that scored every example
    (no ``eval_config.limit``, no ``partial_tasks``: task files short of their full split); {} where there is none."""
    best: tuple[float, Path] | None = None
    # A run of an archive stands for a folder that does not exist: its files are in the extraction (files_dir).
    for results in files_dir(run_dir).glob("eval/**/results.json"):
        if not any(results.parent.glob(f"{SAMPLES_PREFIX}*.jsonl")):
            continue
        try:
            moda = json.loads(results.read_text(encoding="utf-8")).get("moda") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            continue  # the run loader reports an unreadable results.json
        at, limit = moda.get("step"), (moda.get("eval_config") or {}).get("limit")
        if at is None or pd.isna(step) or float(at) != float(step) or limit or moda.get("partial_tasks"):
            continue
        mtime = results.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, results.parent)
    if best is None:
        return {}
    return {p.stem.removeprefix(SAMPLES_PREFIX): p for p in sorted(best[1].glob(f"{SAMPLES_PREFIX}*.jsonl"))}


COLUMNS = [*GROUP_COLUMNS, "variant", *LR_COLUMNS, "baseline", "seed", "task", "metric", "n", "acc_variant",
           "acc_baseline", "diff", "b", "c", "p", "p_holm", "exceeds_noise", "unpaired"]


def mcnemar_table(
    summary: pd.DataFrame,
    baseline: str | None = None,
    alpha: float = ALPHA,
    issues: list[RunIssue] | None = None,
) -> pd.DataFrame:
    """Per non-baseline complete local run with samples files, against the run of its seed in the baseline cell
    pairing.py's rule picks (LR_COLUMNS say which): one row per task both evaluated (compare_samples, variant = A),
    with ``p_holm`` (Holm over that pair's tasks) and ``exceeds_noise`` (p_holm < ``alpha``). Empty where no run has
    samples files. A pair with an unreadable samples file is left out, with a ``bad_samples`` issue appended to
    ``issues`` (when given)."""
    runs = complete_runs(summary)
    if runs.empty or "pair_group" not in runs or "path" not in runs:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs[runs["source"].eq("local") & runs["seed"].notna()] if "source" in runs else runs.iloc[0:0]
    base = baseline or baseline_variant()
    rows = []
    for pair in cell_pairs(runs, base):
        bases = {int(r["seed"]): r for _, r in pair.base.iterrows()}
        for _, run in pair.runs.iterrows():
            ref = bases.get(int(run["seed"]))
            if ref is None:
                continue
            mine, theirs = final_samples(run["path"], run["last_step"]), final_samples(ref["path"], ref["last_step"])
            try:
                tests = [compare_samples(mine[t], theirs[t], t) for t in sorted(mine.keys() & theirs.keys())]
            except SamplesError as err:
                if issues is not None:
                    issues.append(RunIssue(run["run"], "bad_samples", f"{err}; its per-question tests left out"))
                continue
            ids = {c: run[c] for c in GROUP_COLUMNS if c in run}
            ids["config"] = run.get("cell_label") or ""
            ids |= {"variant": run["variant"], **pair.lr_columns(), "baseline": base, "seed": int(run["seed"])}
            for test, p_holm in zip(tests, holm([t["p"] for t in tests])):
                rows.append({**ids, "task": test["task"], "metric": test["metric"], "n": test["n"],
                             "acc_variant": test["acc_a"], "acc_baseline": test["acc_b"], "diff": test["diff"],
                             "b": test["b"], "c": test["c"], "p": test["p"], "p_holm": p_holm,
                             "exceeds_noise": bool(p_holm < alpha), "unpaired": test["unpaired"]})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return sort_cells(pd.DataFrame(rows, columns=COLUMNS), first=["layers", "norm"])


def mcnemar_markdown(table: pd.DataFrame) -> str:
    """The per-question tests in Markdown: accuracy difference in points, b and c, p before and after Holm."""
    show_config = "config" in table and table["config"].fillna("").astype(bool).any()
    show_lrs = shows_lrs(table)
    header = ["layers", "norm", *(["config"] if show_config else []), *([LRS_HEADER] if show_lrs else [])]
    header += ["variant − baseline", "seed", "task", "metric"]
    header += ["questions", "Δ acc (pp)", "b: variant only right", "c: baseline only right", "p (exact)"]
    header += ["Holm p (tasks of the pair)", "exceeds noise"]
    body = []
    for _, r in table.iterrows():
        cells = [r["layers"], r["norm"], *([r["config"]] if show_config else [])]
        cells += [pair_lrs_text(r)] if show_lrs else []
        cells += [f"{r['variant']} − {r['baseline']}", r["seed"], r["task"], r["metric"], int(r["n"])]
        cells += [f"{100 * r['diff']:+.2f}", int(r["b"]), int(r["c"]), format_p(r["p"]), format_p(r["p_holm"])]
        cells.append(bool(r["exceeds_noise"]))
        body.append(cells)
    return "\n".join(markdown_table(header, body)) + "\n"
