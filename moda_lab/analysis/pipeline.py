"""Sweep -> tidy table -> every figure, table and a report.md listing missing/partial runs.

``run_analysis`` is what ``python -m moda_lab.analysis`` calls; notebooks call the same functions step by step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from moda_lab.analysis import plots
from moda_lab.analysis.bench import bench_groups, load_bench_results, plot_bench_group
from moda_lab.analysis.local_runs import load_sweep_dir
from moda_lab.analysis.records import RunIssue, RunRecord
from moda_lab.analysis.tables import TABLES, paper_table, write_table
from moda_lab.analysis.tidy import all_issues, complete_runs, incomplete_issues, run_summary, tidy_table
from moda_lab.analysis.wandb_offline import load_offline_dir
from moda_lab.analysis.wandb_online import load_wandb_project

log = logging.getLogger(__name__)

# Outside the repo, shared by every analysis of the same wandb project.
DEFAULT_CACHE = Path.home() / ".cache" / "moda_lab" / "wandb_history"


@dataclass
class SweepAnalysis:
    """Everything derived from a set of runs; ``written`` lists the files produced so far."""

    records: list[RunRecord]
    tidy: pd.DataFrame
    summary: pd.DataFrame
    issues: list[RunIssue]
    written: list[Path] = field(default_factory=list)


def load_runs(
    sweep_dir: str | Path | None = None,
    wandb_project: str | None = None,
    wandb_offline: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE,
    refresh: bool = False,
) -> list[RunRecord]:
    """Runs from any mix of sources; an online/offline wandb run already loaded from a run dir is skipped."""
    records: list[RunRecord] = list(load_sweep_dir(sweep_dir)) if sweep_dir else []
    known = {str(r.meta.get("wandb_id")) for r in records if r.meta.get("wandb_id")} | {r.run for r in records}
    extra: list[RunRecord] = []
    if wandb_offline:
        extra += load_offline_dir(wandb_offline)
    if wandb_project:
        extra += load_wandb_project(wandb_project, cache_dir, refresh=refresh)
    for rec in extra:
        if rec.run in known or str(rec.meta.get("wandb_id")) in known:
            log.info("skipping %s run %s: already loaded from its run dir", rec.source, rec.run)
            continue
        records.append(rec)
    return records


def unique_run_names(records: list[RunRecord]) -> None:
    """Suffix repeated run names with their source (then a counter): the tidy table is keyed by run name."""
    seen: dict[str, int] = {}
    for rec in records:
        base = rec.run
        if base in seen:
            rec.run = f"{base} [{rec.source}]" if seen[base] == 1 else f"{base} [{rec.source} {seen[base]}]"
            rec.issues = [RunIssue(rec.run, i.kind, i.detail) for i in rec.issues]
            rec.add_issue("duplicate_name", f"another run is also named {base!r}; renamed")
        seen[base] = seen.get(base, 0) + 1


def analyze(records: list[RunRecord]) -> SweepAnalysis:
    """Tidy table, run summary and every issue (loader issues, content checks, runs left out of tables)."""
    unique_run_names(records)
    tidy = tidy_table(records)
    summary = run_summary(tidy)
    return SweepAnalysis(records, tidy, summary, [*all_issues(records), *incomplete_issues(summary)])


def write_figures(analysis: SweepAnalysis, out_dir: Path) -> list[Path]:
    tidy, summary = analysis.tidy, analysis.summary
    complete = complete_runs(summary)
    written: list[Path] = []
    for metric, stem, xs in (("val/loss", "val_loss", ("tokens", "flops")), ("train/loss", "train_loss", ("tokens",))):
        if metric in tidy and tidy[metric].notna().any():
            for x in xs:
                if tidy[x].notna().any():
                    written += plots.save_figure(plots.plot_curves(tidy, metric, x), out_dir, f"{stem}_vs_{x}")
    # No empty figures: a plot whose data nobody logged is left out (report.md lists what was written).
    if plots.has_downstream(complete):
        written += plots.save_figure(plots.plot_downstream(complete), out_dir, "downstream_acc")
    for x, stem in (("model/params", "params_vs_val_loss"), ("train_flops", "flops_vs_val_loss")):
        if plots.has_cost_and_loss(complete, x):
            written += plots.save_figure(plots.plot_cost_vs_loss(complete, x), out_dir, stem)
    return written


def write_tables(analysis: SweepAnalysis, out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for stem, (kind, title) in TABLES.items():
        written += write_table(paper_table(analysis.summary, kind), out_dir, stem, title)
    return written


def write_bench(bench_dir: str | Path, out_dir: Path) -> list[Path]:
    frame = load_bench_results(bench_dir)
    written: list[Path] = []
    for group in bench_groups(frame):
        written += plots.save_figure(plot_bench_group(frame, group), out_dir, f"bench_{group}")
    if not frame.empty:
        csv = out_dir / "bench_results.csv"
        frame.to_csv(csv, index=False)
        written.append(csv)
    return written


def report_markdown(analysis: SweepAnalysis, out_dir: Path) -> str:
    """Run list with status and steps, then every issue, then the files written."""
    lines = ["# Sweep analysis report", "", f"{len(analysis.records)} runs loaded.", "", "## Runs", ""]
    lines += [
        "| run | source | status | model | norm | seed | last step | complete |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in analysis.summary.iterrows():
        step = "–" if pd.isna(row["last_step"]) else int(row["last_step"])
        lines.append(
            f"| {row['run']} | {row['source']} | {row['status']} | {row['variant']} | {row['norm']} | {row['seed']} | {step} | {'yes' if row['complete'] else 'no'} |"
        )
    lines += ["", f"## Issues ({len(analysis.issues)})", ""]
    lines += [f"- {i.as_line()}" for i in analysis.issues] or ["- none"]
    lines += ["", "## Files", ""]
    lines += [f"- {p.relative_to(out_dir) if p.is_relative_to(out_dir) else p}" for p in analysis.written]
    return "\n".join(lines) + "\n"


def run_analysis(
    sweep_dir: str | Path | None,
    out: str | Path,
    wandb_project: str | None = None,
    wandb_offline: str | Path | None = None,
    bench_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
) -> SweepAnalysis:
    """Load runs, write ``tidy.csv``, ``runs.csv``, ``figures/``, ``tables/`` and ``report.md`` under ``out``."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir if cache_dir is not None else out_dir / "wandb_cache"
    records = load_runs(sweep_dir, wandb_project, wandb_offline, cache, refresh)
    analysis = analyze(records)
    if not records:
        where = ", ".join(str(x) for x in (sweep_dir, wandb_project, wandb_offline) if x)
        analysis.issues.append(RunIssue(where, "no_runs", "no run dirs or wandb runs found"))
    analysis.tidy.to_csv(out_dir / "tidy.csv", index=False)
    analysis.summary.to_csv(out_dir / "runs.csv", index=False)
    analysis.written += [out_dir / "tidy.csv", out_dir / "runs.csv"]
    if records:
        analysis.written += write_figures(analysis, out_dir / "figures")
        analysis.written += write_tables(analysis, out_dir / "tables")
    if bench_dir is not None and Path(bench_dir).exists():
        analysis.written += write_bench(bench_dir, out_dir / "figures")
    report = out_dir / "report.md"
    analysis.written.append(report)
    report.write_text(report_markdown(analysis, out_dir), encoding="utf-8")
    return analysis
