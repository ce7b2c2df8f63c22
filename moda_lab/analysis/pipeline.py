"""Sweep -> tidy table -> every figure, table and a report.md listing missing/partial runs, the paired seed
differences against the baseline, a reference's claims checked on them (reference.Reference, e.g. moda_paper's
Table 6 orderings), the seed spread and the runs that did not train.

``run_analysis`` is what ``python -m moda_lab.analysis`` calls; notebooks call the same functions step by step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from moda_lab.analysis import paired_plots, plots
from moda_lab.analysis.attention_runs import attention_by_variant, load_run_attention, plot_attention_by_variant
from moda_lab.analysis.bench import bench_groups, load_bench_results, plot_bench_group
from moda_lab.analysis.local_runs import load_sweep_dir
from moda_lab.analysis.mcnemar import mcnemar_markdown, mcnemar_table
from moda_lab.analysis.norm_gap import norm_differences, norm_gap_markdown
from moda_lab.analysis.records import RunIssue, RunRecord, config_columns, variant_of
from moda_lab.analysis.repeats import Repeat, last_step, split_repeats
from moda_lab.analysis.significance import (
    ALPHA,
    LEVEL,
    SEED_STD_TARGET,
    baseline_variant,
    level_text,
    paired_curves,
    paired_differences,
    paired_markdown,
    seed_spread,
    spread_markdown,
)
from moda_lab.analysis.tables import TABLES, paper_table, to_markdown, write_table
from moda_lab.analysis.tidy import (
    TRAINED_MIN_DROP,
    all_issues,
    complete_runs,
    eval_issues,
    incomplete_issues,
    run_summary,
    stale_val_issues,
    tidy_table,
    untrained_issues,
)
from moda_lab.analysis.wandb_offline import load_offline_dir
from moda_lab.analysis.wandb_online import load_wandb_project
from moda_lab.errors import UsageError, dir_write_problem

if TYPE_CHECKING:
    from moda_lab.analysis.reference import Reference

log = logging.getLogger(__name__)

# Outside the repo, shared by every analysis of the same wandb project.
DEFAULT_CACHE = Path.home() / ".cache" / "moda_lab" / "wandb_history"


@dataclass
class SweepAnalysis:
    """Everything derived from a set of runs; ``written`` lists the files produced so far. ``paired``: the paired
    seed differences against the baseline (with the ``reference``'s Δ where one is given), ``claims``: the
    reference's claims checked on them (Reference.check; empty without one), ``spread``: the seed spread per cell, ``curves``: the paired val-loss difference at every validation,
    ``norms``: each placement other than pre-norm minus pre-norm, per variant, paired by seed (norm_gap.py),
    ``mcnemar``: per-question tests per task against the baseline of the same seed, where runs have samples files
    (filled by ``add_significance``). ``records`` holds every run loaded; ``repeats`` those not counted because
    another run is the same (repeats.py), so ``tidy`` and ``summary`` hold the others."""

    records: list[RunRecord]
    tidy: pd.DataFrame
    summary: pd.DataFrame
    issues: list[RunIssue]
    written: list[Path] = field(default_factory=list)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    spread: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    mcnemar: pd.DataFrame = field(default_factory=pd.DataFrame)
    norms: pd.DataFrame = field(default_factory=pd.DataFrame)
    seed_std_target: float = SEED_STD_TARGET
    min_drop: float = TRAINED_MIN_DROP
    repeats: list[Repeat] = field(default_factory=list)
    reference: Reference | None = None


def load_runs(
    sweep_dir: str | Path | None = None,
    wandb_project: str | None = None,
    wandb_offline: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE,
    refresh: bool = False,
) -> list[RunRecord]:
    """Runs from any mix of sources; an online/offline wandb run already loaded from a run dir is skipped."""
    records: list[RunRecord] = list(load_sweep_dir(sweep_dir)) if sweep_dir else []
    if sweep_dir and not records and (wandb_project or wandb_offline):  # alone, run_analysis refuses it
        log.warning("no run dirs under sweep_dir=%s", sweep_dir)
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


def analyze(records: list[RunRecord], min_drop: float = TRAINED_MIN_DROP) -> SweepAnalysis:
    """Tidy table, run summary and every issue (loader issues, content checks, runs left out of tables, runs
    that did not train: val/loss flat by less than ``min_drop`` nats over their second half, evaluations of a
    checkpoint before the last)."""
    unique_run_names(records)
    counted, repeats = split_repeats(records)
    tidy = tidy_table(counted)
    summary = run_summary(tidy, min_drop=min_drop)
    issues = [
        *all_issues(counted), *incomplete_issues(summary), *stale_val_issues(summary), *untrained_issues(summary, min_drop)
    ]
    issues += eval_issues(summary)
    issues += [
        RunIssue(r.record.run, "repeated_run", f"{r.why} as {r.kept}, which logged as many steps or more: not counted")
        for r in repeats
    ]
    return SweepAnalysis(records, tidy, summary, issues, min_drop=min_drop, repeats=repeats)


def repeat_rows(repeats: list[Repeat]) -> pd.DataFrame:
    """runs.csv rows of the runs not counted: identity, config columns, last step, and the run counted instead."""
    rows = []
    for rep in repeats:
        rec, cols = rep.record, config_columns(rep.record.config)
        step = last_step(rec)
        variant = variant_of(rep.record.config)  # as the summary names the run counted instead
        rows.append({"run": rec.run, "source": rec.source, "status": rec.status, "path": rec.path, **cols,
                     "variant": variant, "last_step": step if step >= 0 else float("nan"), "complete": False,
                     "repeat_of": rep.kept})
    return pd.DataFrame(rows)


def runs_table(analysis: SweepAnalysis) -> pd.DataFrame:
    """Every run loaded, one row each (runs.csv): the run summary, then the repeats that were not counted."""
    if not analysis.repeats:
        return analysis.summary
    return pd.concat([analysis.summary, repeat_rows(analysis.repeats)], ignore_index=True, sort=False)


def add_significance(
    analysis: SweepAnalysis,
    seed_std_target: float = SEED_STD_TARGET,
    level: float = LEVEL,
    reference: Reference | None = None,
) -> SweepAnalysis:
    """Fill ``paired`` (every non-baseline cell vs its baseline, per metric), ``curves`` and ``spread`` (against
    ``seed_std_target`` nats); with a ``reference`` (reference.Reference), its Δ beside ``paired`` and ``curves``
    and its claims checked in ``claims``."""
    paired = paired_differences(analysis.summary, level=level)
    complete = complete_runs(analysis.summary).get("run")  # None without runs
    curves = paired_curves(analysis.tidy, complete, level=level)
    analysis.reference = reference
    analysis.paired = reference.annotate(paired) if reference else paired
    analysis.curves = reference.annotate(curves) if reference else curves
    analysis.claims = reference.check(analysis.summary, level) if reference else pd.DataFrame()
    analysis.spread = seed_spread(analysis.summary, seed_std_target)
    analysis.mcnemar = mcnemar_table(analysis.summary, issues=analysis.issues)
    analysis.norms = norm_differences(analysis.summary, level=level)
    analysis.seed_std_target = seed_std_target
    return analysis


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
    if not plots.lr_sweep_points(complete).empty:
        written += plots.save_figure(plots.plot_lr_sweep(complete), out_dir, "lr_sweep_val_loss")
    for x, stem in (("model/params", "params_vs_val_loss"), ("train_flops", "flops_vs_val_loss")):
        if plots.has_cost_and_loss(complete, x):
            written += plots.save_figure(plots.plot_cost_vs_loss(complete, x), out_dir, stem)
    return written


def write_attention(analysis: SweepAnalysis, tables_dir: Path, figures_dir: Path) -> list[Path]:
    """``tables/attention_by_layer.csv`` and ``figures/attention_by_layer`` when any complete run was evaluated
    with eval.attention_windows > 0 (its eval/last/attention.csv)."""
    attention = load_run_attention(complete_runs(analysis.summary))
    if attention.empty:
        return []
    tables_dir.mkdir(parents=True, exist_ok=True)
    csv = tables_dir / "attention_by_layer.csv"
    attention_by_variant(attention).to_csv(csv, index=False)
    return [csv, *plots.save_figure(plot_attention_by_variant(attention), figures_dir, "attention_by_layer")]


def write_tables(analysis: SweepAnalysis, out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for stem, (kind, title) in TABLES.items():
        written += write_table(paper_table(analysis.summary, kind), out_dir, stem, title)
    return written


def write_significance(analysis: SweepAnalysis, tables_dir: Path, figures_dir: Path) -> list[Path]:
    """``tables/paired_differences``, the reference's tables (e.g. ``paper_table6_orderings``), ``seed_spread`` (.csv
    and .md), ``paired_curves`` (.csv) and the figures ``paired_val_loss`` and ``paired_val_loss_vs_tokens`` when
    any cell has a baseline to pair with; ``tables/mcnemar`` (.csv and .md) when any pair has per-question samples;
    ``tables/norm_placement`` (.csv and .md) when a variant ran under pre-norm and another placement."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    reference = analysis.reference
    for stem, frame, markdown in (
        ("paired_differences", analysis.paired, paired_markdown(analysis.paired, reference=reference)),
        *(reference.tables(analysis.claims) if reference else []),
        ("seed_spread", analysis.spread, spread_markdown(analysis.spread)),
    ):
        frame.to_csv(tables_dir / f"{stem}.csv", index=False)
        (tables_dir / f"{stem}.md").write_text(markdown, encoding="utf-8")
        written += [tables_dir / f"{stem}.csv", tables_dir / f"{stem}.md"]
    paired = analysis.paired
    if not paired.empty and ((paired["metric"] == "val/loss") & (paired["n"] > 0)).any():
        figure = paired_plots.plot_paired_differences(paired, "val/loss", reference=reference)
        written += plots.save_figure(figure, figures_dir, "paired_val_loss")
    if not analysis.curves.empty:
        analysis.curves.to_csv(tables_dir / "paired_curves.csv", index=False)
        written.append(tables_dir / "paired_curves.csv")
        figure = paired_plots.plot_paired_curves(analysis.curves, "val/loss", reference=reference)
        written += plots.save_figure(figure, figures_dir, "paired_val_loss_vs_tokens")
    if not analysis.mcnemar.empty:
        analysis.mcnemar.to_csv(tables_dir / "mcnemar.csv", index=False)
        (tables_dir / "mcnemar.md").write_text(mcnemar_markdown(analysis.mcnemar), encoding="utf-8")
        written += [tables_dir / "mcnemar.csv", tables_dir / "mcnemar.md"]
    if not analysis.norms.empty:
        analysis.norms.to_csv(tables_dir / "norm_placement.csv", index=False)
        (tables_dir / "norm_placement.md").write_text(norm_gap_markdown(analysis.norms), encoding="utf-8")
        written += [tables_dir / "norm_placement.csv", tables_dir / "norm_placement.md"]
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


def _trained_cells(row: pd.Series) -> tuple[str, str]:
    if pd.isna(row.get("val_drop")):
        return "–", "–"
    return f"{row['val_drop']:.3f} (from step {int(row['val_drop_from'])})", "yes" if row["trained"] else "**no**"


def significance_markdown(analysis: SweepAnalysis) -> list[str]:
    """The report's sections on paired differences, the reference's claims (its own section, when the analysis has
    a reference), seed spread and zero-shot accuracy."""
    paired, base, reference = analysis.paired, baseline_variant(), analysis.reference
    level = level_text(paired)
    corrected = f" ({reference.corrected_note})" if reference else ""
    lines = ["## Paired differences vs the baseline", ""]
    lines += [
        f"Each variant minus the baseline (`{base}`) of the same cell otherwise (same config except `model.mixer.*`, "
        "the seed and the peak lr: same norm, layers, width, optimizer, schedule, data, tokens), paired by seed, on "
        "the final val loss (nats/token; Δ < 0: the variant is lower). The baseline is the one at the variant's lr "
        "where it ran at it, else the baseline's one lr (each at its own tuned lr); a baseline at several lrs, none "
        "the variant's (an lr sweep), pairs nothing. Column *lr*: the variant's lr vs the baseline's ((both): one "
        f"shared lr). {level} CI: mean ± t·s/√n with Student's t at n − 1 degrees of freedom "
        "(paired t-interval over seeds); p: the paired t-test's two-sided p-value of Δ = 0, uncorrected for the "
        f"other rows{corrected}. One pair gives no interval and no test (n=1). "
        "Params: the variant's parameter count against the baseline's. Seeds run for one side only are listed "
        "as unpaired and left out. Complete runs only. Per-domain losses and average accuracy: "
        "`tables/paired_differences.md`.",
        "",
    ]
    lines += paired_markdown(paired, metrics=["val/loss"], reference=reference).splitlines()
    if not analysis.norms.empty:
        lines += ["", "### Norm placement vs pre-norm, per variant", ""]
        lines += [
            "Each other placement minus pre-norm for the same variant and config (lr aside: each placement at its "
            "own lr, both shown), paired by seed, final val loss; interval and p as above. An arm at an "
            "under-tuned lr shows here as it is.",
            "",
        ]
        lines += norm_gap_markdown(analysis.norms).splitlines()
    if reference:
        lines += ["", *reference.report_lines(analysis.claims, level)]
    lines += ["", f"### Seed spread (target: std ≤ {analysis.seed_std_target:g} nats)", ""]
    gaps = reference.spread_note if reference else "a few hundredths of a nat"
    lines += [
        f"Std over seeds of the final val loss per cell; above the target, a few seeds cannot resolve gaps of {gaps}. "
        f"A run did not train when its val loss fell by less than {analysis.min_drop:g} nats over its second half "
        "(Runs table: val drop).",
        "",
    ]
    lines += spread_markdown(analysis.spread).splitlines()
    downstream = paper_table(analysis.summary, "downstream")
    lines += ["", "### Zero-shot accuracy (final checkpoints)", ""]
    if downstream.empty or "avg acc" not in downstream:
        lines += ["_No downstream evaluation of a final checkpoint in these runs._"]
    else:
        lines += to_markdown(downstream).splitlines()
        lines += ["", "Average accuracy (percentage points), variant minus baseline, paired by seed:", ""]
        lines += paired_markdown(paired, metrics=["avg acc"], reference=reference).splitlines()
    if not analysis.mcnemar.empty:
        lines += ["", "### Per-question tests per task (McNemar, final checkpoints)", ""]
        lines += [
            "Each variant's run against the baseline's run of the same seed (the baseline cell the paired table "
            "uses: same lr, else the baseline's one lr), on the questions "
            "both scored (`samples_<task>.jsonl` of each run's final-checkpoint evaluation): b = questions only the "
            "variant got right, c = only the baseline; Δ acc = (b − c) / questions. p: McNemar's exact test "
            "(binomial, two-sided); Holm p: corrected over the tasks of one pair; *exceeds noise* where that is "
            f"< {ALPHA:g}. Seeds are not pooled here: the paired table above averages over them.",
            "",
        ]
        lines += mcnemar_markdown(analysis.mcnemar).splitlines()
    return lines + [""]


def report_markdown(analysis: SweepAnalysis, out_dir: Path) -> str:
    """Run list with status, steps and the training check, the paired differences and the reference's claims, then every
    issue, then the files written."""
    lines = ["# Sweep analysis report", "", f"{len(analysis.records)} runs loaded.", "", "## Runs", ""]
    lines += [
        "| run | source | status | model | norm | seed | last step | complete | val drop, 2nd half | trained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in analysis.summary.iterrows():
        step = "–" if pd.isna(row["last_step"]) else int(row["last_step"])
        drop, trained = _trained_cells(row)
        lines.append(
            f"| {row['run']} | {row['source']} | {row['status']} | {row['variant']} | {row['norm']} | {row['seed']} | {step} | {'yes' if row['complete'] else 'no'} | {drop} | {trained} |"
        )
    for _, row in repeat_rows(analysis.repeats).iterrows():
        step = "–" if pd.isna(row["last_step"]) else int(row["last_step"])
        lines.append(
            f"| {row['run']} | {row['source']} | {row['status']} | {row['variant']} | {row['norm']} | {row['seed']} | {step} | no: repeat of {row['repeat_of']} | – | – |"
        )
    lines += [""]
    if analysis.records:
        lines += significance_markdown(analysis)
    lines += [f"## Issues ({len(analysis.issues)})", ""]
    lines += [f"- {i.as_line()}" for i in analysis.issues] or ["- none"]
    lines += ["", "## Files", ""]
    lines += [f"- {p.relative_to(out_dir) if p.is_relative_to(out_dir) else p}" for p in analysis.written]
    return "\n".join(lines) + "\n"


def check_out_dir(out: str | Path) -> None:
    """Raise UsageError naming out= when no output folder can be made there (a file at or above it, a read-only
    folder); creates nothing."""
    problem = dir_write_problem(out)
    if problem:
        raise UsageError(f"out={str(out)!r}: {problem}; allowed: a directory path this user can write")


def run_analysis(
    sweep_dir: str | Path | None,
    out: str | Path,
    wandb_project: str | None = None,
    wandb_offline: str | Path | None = None,
    bench_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    seed_std_target: float = SEED_STD_TARGET,
    min_drop: float = TRAINED_MIN_DROP,
    reference: Reference | None = None,
) -> SweepAnalysis:
    """Load runs, write ``tidy.csv``, ``runs.csv``, ``figures/``, ``tables/`` and ``report.md`` under ``out``; no
    runs at all (or a sweep_dir that does not exist, or an out where no folder can be made) raise UsageError before
    anything is written.

    ``seed_std_target``: the seed-spread target (nats); ``min_drop``: a run whose val loss fell by less over its
    second half did not train (tidy.TRAINED_MIN_DROP); ``reference``: a published result to compare with
    (reference.Reference; the command's default is moda_paper's Table 6)."""
    out_dir = Path(out)
    cache = cache_dir if cache_dir is not None else out_dir / "wandb_cache"
    records = load_runs(sweep_dir, wandb_project, wandb_offline, cache, refresh)
    if not records:  # nothing to analyse: one line, and no output folder of empty tables
        where = [f"{k}={str(v)!r}" for k, v in (("sweep_dir", sweep_dir), ("wandb", wandb_project),
                                               ("wandb_offline", wandb_offline)) if v]
        raise UsageError(
            f"{' and '.join(where) or 'no source'}: no runs found; allowed: a folder of run dirs (each with "
            "config.yaml, meta.json or metrics.jsonl), offline wandb runs, or a wandb project with runs"
        )
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = add_significance(analyze(records, min_drop), seed_std_target, reference=reference)
    analysis.tidy.to_csv(out_dir / "tidy.csv", index=False)
    runs_table(analysis).to_csv(out_dir / "runs.csv", index=False)
    analysis.written += [out_dir / "tidy.csv", out_dir / "runs.csv"]
    analysis.written += write_figures(analysis, out_dir / "figures")
    analysis.written += write_tables(analysis, out_dir / "tables")
    analysis.written += write_significance(analysis, out_dir / "tables", out_dir / "figures")
    analysis.written += write_attention(analysis, out_dir / "tables", out_dir / "figures")
    if bench_dir is not None and Path(bench_dir).exists():
        analysis.written += write_bench(bench_dir, out_dir / "figures")
    report = out_dir / "report.md"
    analysis.written.append(report)
    report.write_text(report_markdown(analysis, out_dir), encoding="utf-8")
    return analysis
