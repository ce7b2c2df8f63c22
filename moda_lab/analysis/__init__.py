"""Sweep analysis: load runs (run dirs, offline wandb, online wandb), one tidy run x step table, paper-shaped
tables and figures, paired seed differences against the baseline (beside a published result's, through
reference.Reference: moda_paper holds the paper's Table 6), kernel benchmark plots, and attention inspection
(Figure 5 of arXiv 2603.15619).

Command: ``python -m moda_lab.analysis sweep_dir=... out=...`` (see ``moda_lab/analysis/__main__.py``).
"""

from __future__ import annotations

from moda_lab.analysis.attention import (
    attention_summary,
    inspect_checkpoint,
    inspect_model,
    layer_summary,
    plot_attention_heatmaps,
    plot_attention_summary,
    save_inspection,
    synthetic_attention_maps,
    synthetic_inspection,
    validate_maps,
)
from moda_lab.analysis.attention_runs import attention_by_variant, load_run_attention, plot_attention_by_variant
from moda_lab.analysis.bench import bench_groups, load_bench_results, plot_bench_group
from moda_lab.analysis.local_runs import load_run_dir, load_sweep_dir
from moda_lab.analysis.mcnemar import compare_samples, mcnemar_table
from moda_lab.analysis.paired_plots import plot_paired_curves, plot_paired_differences
from moda_lab.analysis.pipeline import SweepAnalysis, add_significance, analyze, load_runs, run_analysis
from moda_lab.analysis.plots import plot_cost_vs_loss, plot_curves, plot_downstream, save_figure
from moda_lab.analysis.records import RunIssue, RunRecord
from moda_lab.analysis.reference import Reference, load_reference, verdict, verdict_words
from moda_lab.analysis.significance import (
    pair_by_seed,
    paired_curves,
    paired_differences,
    paired_markdown,
    seed_spread,
    spread_markdown,
    t_interval,
)
from moda_lab.analysis.tables import paper_table, to_markdown, write_table
from moda_lab.analysis.tidy import complete_runs, curves, run_summary, seed_aggregate, tidy_table
from moda_lab.analysis.wandb_offline import load_offline_dir, read_offline_run
from moda_lab.analysis.wandb_online import load_wandb_project

__all__ = [
    "Reference",
    "RunIssue",
    "RunRecord",
    "SweepAnalysis",
    "add_significance",
    "analyze",
    "attention_by_variant",
    "attention_summary",
    "bench_groups",
    "compare_samples",
    "complete_runs",
    "curves",
    "inspect_checkpoint",
    "inspect_model",
    "layer_summary",
    "load_bench_results",
    "load_reference",
    "load_offline_dir",
    "load_run_attention",
    "load_run_dir",
    "load_runs",
    "load_sweep_dir",
    "load_wandb_project",
    "mcnemar_table",
    "pair_by_seed",
    "paired_curves",
    "paired_differences",
    "paired_markdown",
    "paper_table",
    "plot_attention_by_variant",
    "plot_attention_heatmaps",
    "plot_attention_summary",
    "plot_bench_group",
    "plot_cost_vs_loss",
    "plot_curves",
    "plot_downstream",
    "plot_paired_curves",
    "plot_paired_differences",
    "read_offline_run",
    "run_analysis",
    "run_summary",
    "save_figure",
    "save_inspection",
    "seed_aggregate",
    "seed_spread",
    "spread_markdown",
    "synthetic_attention_maps",
    "synthetic_inspection",
    "t_interval",
    "tidy_table",
    "to_markdown",
    "validate_maps",
    "verdict",
    "verdict_words",
    "write_table",
]
