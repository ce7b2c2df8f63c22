"""Tables, figures, benchmark plots and the `python -m moda_lab.analysis` command on the fixture sweep."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from moda_lab.errors import UsageError

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402
import bench_results  # noqa: E402

from moda_lab.analysis import (  # noqa: E402
    analyze,
    bench_groups,
    curves,
    load_bench_results,
    load_sweep_dir,
    paper_table,
    plot_bench_group,
    plot_curves,
    to_markdown,
)
from moda_lab.analysis.__main__ import main, parse_args  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory):
    return analyze(load_sweep_dir(fx.build_fixture_sweep(tmp_path_factory.mktemp("sweep") / "fixture")))


def final_val(spec: fx.RunSpec) -> float:
    return [r["val/loss"] for r in fx.metrics_rows(spec) if "val/loss" in r][-1]


def test_main_table_mean_std_and_seed_count(result):
    table = paper_table(result.summary, "main")
    assert len(table) == 6  # 3 variants x 2 norms; residual runs have no metrics
    row = table[(table["model"] == "moda") & table["ffn_kv"] & (table["norm"] == "pre")].iloc[0]
    vals = [final_val(fx.RunSpec("moda", "pre", s, ffn_kv=True)) for s in (0, 1, 2)]
    assert row["seeds"] == 3
    assert row["val ppl"] == pytest.approx(sum(math.exp(v) for v in vals) / 3)
    assert row["params M"] == pytest.approx(fx.params_and_flops(fx.RunSpec("moda", "pre", 0, ffn_kv=True))[0] / 1e6)
    assert {"c4 ppl", "wiki ppl", "avg acc", "train ppl", "GFLOPs/token"} <= set(table.columns)
    # moda-post-s2 is partial: left out, so that cell has 2 seeds.
    partial = table[(table["model"] == "moda") & ~table["ffn_kv"] & (table["norm"] == "post")].iloc[0]
    assert partial["seeds"] == 2
    # Canonical order: dense before moda, pre before post.
    assert table["model"].tolist()[:3] == ["dense", "moda", "moda"] and table["norm"].iloc[0] == "pre"


def test_downstream_table_uses_acc_norm_and_average(result):
    table = paper_table(result.summary, "downstream")
    row = table[(table["model"] == "dense") & (table["norm"] == "pre")].iloc[0]
    accs = {t: [] for t in fx.TASKS}
    for s in (0, 1, 2):
        last = fx.metrics_rows(fx.RunSpec("dense", "pre", s))[-1]
        for t in fx.TASKS:
            accs[t].append(100 * last[f"eval/{t}/acc_norm"])
    for t in fx.TASKS:
        assert row[t] == pytest.approx(sum(accs[t]) / 3)
    assert row["avg acc"] == pytest.approx(sum(sum(v) / 3 for v in accs.values()) / len(fx.TASKS))


def test_each_task_reports_the_metric_lm_evals_own_task_does():
    from moda_lab.analysis.plots import REPORTED_METRIC, task_metric
    from moda_lab.eval.tasks import TASK_DIR, TASK_FIELDS

    # The first GPU rows: BoolQ's acc_norm moved with the seed (39 vs 60%) while acc stayed at the "no" share.
    summary = pd.DataFrame({"eval/boolq/acc": [0.378, 0.378], "eval/boolq/acc_norm": [0.389, 0.604],
                            "eval/piqa/acc": [0.534, 0.545], "eval/piqa/acc_norm": [0.532, 0.536],
                            "seed": [0, 1], "complete": [True, True]})
    assert task_metric(summary, "boolq") == "eval/boolq/acc"
    assert task_metric(summary, "piqa") == "eval/piqa/acc_norm"
    assert task_metric(summary, "piqa", ("acc",)) == "eval/piqa/acc"
    assert task_metric(summary.drop(columns=["eval/piqa/acc_norm"]), "piqa") == "eval/piqa/acc"
    assert task_metric(summary, "unknown_task") is None
    assert set(REPORTED_METRIC) == set(TASK_FIELDS)
    for task, metric in REPORTED_METRIC.items():  # every reported metric is one the task's YAML logs
        assert f"metric: {metric}\n" in (TASK_DIR / f"{task}.yaml").read_text(), task


def test_norm_table_shape_and_markdown(result):
    table = paper_table(result.summary, "norm")
    assert list(table.columns[:3]) == ["layers", "norm", "model"]
    md = to_markdown(table, "Table 6")
    assert "| layers | norm | model |" in md
    assert "±" in md and "seeds per row: 2, 3" in md
    single = to_markdown(paper_table(result.summary[result.summary["seed"] == 0], "norm"))
    assert "rows with 1 seed show no std" in single and "±" not in single.split("_mean")[0].split("|---|")[-1]


def test_curves_aggregate_over_seeds_with_counts(result):
    agg = curves(result.tidy, "val/loss")
    cell = agg[(agg["model"] == "moda") & ~agg["ffn_kv"] & (agg["norm"] == "post")].set_index("step")
    assert cell.loc[100, "val/loss:n"] == 3 and cell.loc[150, "val/loss:n"] == 2  # the running seed stopped at 120
    vals = [
        fx.loss_at(fx.RunSpec("moda", "post", s), 100 * fx.TOKENS_PER_STEP, 0.0) + 0.004 * (s - 1) for s in (0, 1, 2)
    ]
    assert cell.loc[100, "val/loss"] == pytest.approx(sum(vals) / 3)
    assert cell.loc[100, "val/loss:std"] == pytest.approx(pd.Series(vals).std())
    fig = plot_curves(result.tidy, "val/loss", "flops")
    top, zoom = fig.axes[:2], fig.axes[2:]  # a panel per norm, and under each its last half, zoomed
    labels = [t.get_text() for ax in top for t in ax.get_legend().get_texts()]
    assert "moda (n=2-3 seeds)" in labels and "dense (n=3 seeds)" in labels
    assert [ax.get_title() for ax in top] == ["norm = pre (solid)", "norm = post (dashed)"]
    assert [ax.get_title() for ax in zoom] == ["last 50% of FLOPs (tokens x FLOPs/token), zoomed"] * 2
    assert fig.axes[0].get_ylabel() == zoom[0].get_ylabel() == "validation loss (nats/token)"
    # The zoom holds the last half of the x range and the lines' y range there: narrower than the full axis.
    x_max = max(line.get_xdata().max() for line in top[0].get_lines())
    assert zoom[0].get_xlim()[0] == pytest.approx(x_max / 2)
    tail_ys = [y for line in top[0].get_lines() for xv, y in zip(line.get_xdata(), line.get_ydata()) if xv >= x_max / 2]
    lo, hi = zoom[0].get_ylim()
    assert lo <= min(tail_ys) and max(tail_ys) <= hi and hi - lo < 0.5 * (top[0].get_ylim()[1] - top[0].get_ylim()[0])
    assert len(plot_curves(result.tidy, "val/loss", "flops", tail=None).axes) == 2
    from matplotlib.ticker import EngFormatter, NullFormatter

    assert isinstance(fig.axes[0].xaxis.get_major_formatter(), EngFormatter)  # 2P, 5P, 10P: no crowded minor labels
    assert isinstance(fig.axes[0].xaxis.get_minor_formatter(), NullFormatter)
    one = plot_curves(result.tidy[result.tidy["norm"] == "post"], "val/loss", "flops")  # one narrow panel
    title, note = one._suptitle.get_text().split("\n")  # too long for one line over one panel: the note wraps
    assert title == "Validation loss vs training FLOPs (tokens x FLOPs/token)" and note.startswith("(mean ± std")
    assert "\n" not in fig._suptitle.get_text()  # two panels hold it on one line


def test_curves_leave_out_a_step_that_another_seed_went_past(result):
    """One seed's extra validation between the grid's steps (a resumed run's) is no point of the mean curve: its
    mean would be of one seed where the points beside it are of three. A running seed's end is no such step."""
    tidy = result.tidy
    cell = tidy[(tidy["model"] == "moda") & ~tidy["ffn_kv"] & (tidy["norm"] == "post") & tidy["val/loss"].notna()]
    run = cell[cell["seed"] == 0].iloc[[0]].copy()
    run["step"], run["val/loss"] = 105, 1.0  # seed 0 validated at 105 too; the others went past 105 without
    agg = curves(pd.concat([tidy, run], ignore_index=True), "val/loss")
    steps = agg[(agg["model"] == "moda") & ~agg["ffn_kv"] & (agg["norm"] == "post")]["step"].tolist()
    assert 105 not in steps and 100 in steps and 150 in steps  # 150: the two seeds that got there


def test_runs_differing_beyond_the_seed_are_separate_cells_labelled_by_the_difference(tmp_path: Path):
    """Same variant and seed, different lr / seq_len: never averaged together, and the legend says why."""
    from moda_lab.analysis.plots import plot_cost_vs_loss, plot_downstream, variant_colors

    root = tmp_path / "lr_sweep"
    for extra in ({}, {"trainer.lr": 1e-3}, {"data.seq_len": 256}):
        for model in ("dense", "residual"):
            spec = fx.RunSpec(model, "pre", 0, extra=extra)
            fx.write_run_dir(root, spec, fx.metrics_rows(spec))
    res = analyze(load_sweep_dir(root))
    assert res.summary["cell"].nunique() == 6
    assert sorted(set(res.summary["cell_label"])) == [
        "seq_len=128, lr=0.001",
        "seq_len=128, lr=0.003",
        "seq_len=256, lr=0.003",
    ]
    agg = curves(res.tidy, "val/loss")
    assert (agg["val/loss:n"] == 1).all()  # one seed per cell: nothing averaged across lr or seq_len
    fig = plot_curves(res.tidy, "val/loss")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert "dense, seq_len=128, lr=0.001" in lines and not any("seed" in k for k in lines)
    assert "1 seed per line" in fig._suptitle.get_text()
    # One colour per variant; in the curves, one shade of it per config (the middle config: the colour itself).
    colors = variant_colors(res.summary)
    for variant, color in colors.items():
        shades = [matplotlib.colors.to_hex(lines[f"{variant}, {c}"].get_color()) for c in res.summary["cell_label"]
                  .drop_duplicates().sort_values()]
        assert len(set(shades)) == 3 and shades[1] == color
    scatter = plot_cost_vs_loss(res.summary)
    assert {c.get_label().split(",")[0]: c.lines[0].get_color() for c in scatter.axes[0].containers} == colors
    bars = plot_downstream(res.summary)
    bar_colors = {
        b.get_label().split(",")[0]: matplotlib.colors.to_hex(b.patches[0].get_facecolor())
        for b in bars.axes[0].containers
        if isinstance(b, matplotlib.container.BarContainer)
    }
    assert bar_colors == colors
    containers = [b for b in bars.axes[0].containers if isinstance(b, matplotlib.container.BarContainer)]
    assert all(b.errorbar is None for b in containers)  # one seed per bar: no std to draw, not a zero-length one
    bars.canvas.draw()  # the legend sits beside the bars, never over them
    renderer = bars.canvas.get_renderer()
    assert bars.axes[0].get_legend().get_window_extent(renderer).y1 <= bars.axes[0].get_window_extent(renderer).y0


def test_bench_loader_is_tolerant(tmp_path: Path):
    bench_results.write_bench_results(tmp_path)
    frame = load_bench_results(tmp_path)  # the broken file is skipped with a warning
    assert set(bench_groups(frame)) == {"seq_len", "group_size", "ladder", "moda_h100"}
    ladder = frame[frame["group"] == "ladder"].set_index("impl")["ms"]
    assert ladder.to_dict() == {"naive": 2128.9, "flash": 13.1, "chunk": 6.29, "group": 1.46}
    group = frame[(frame["group"] == "group_size") & (frame["impl"] == "moda")]
    assert set(group["pass"]) == {"fwdbwd"} and sorted(group["G"]) == [2, 8, 32]
    seq = frame[(frame["group"] == "seq_len") & (frame["T"] == 8192) & (frame["pass"] == "fwdbwd")]
    assert seq.set_index("impl")["ms"].to_dict() == {"fa2_triton": 28.7, "moda_triton": 35.4}
    # bench_moda.py shape: device from "meta", impl x pass from column names, ratios/tflops/wall time ignored.
    real = frame[frame["group"] == "moda_h100"]
    assert set(real["device"]) == {"NVIDIA H100 80GB HBM3 (synthetic)"}
    assert set(real["impl"]) == {"sdpa", "seq", "moda"} and set(real["pass"]) == {"fwd", "fwdbwd"}
    t4k = real[(real["case"] == "t2-T4K") & (real["pass"] == "fwdbwd")].set_index("impl")["ms"]
    payload = bench_results.bench_moda_payload()["rows"][1]
    assert t4k["moda"] == payload["moda_fwdbwd_ms"] and t4k["seq"] == payload["seq_fwdbwd_ms"]
    fig = plot_bench_group(frame, "moda_h100")
    panels = {ax.get_xlabel() for ax in fig.axes}
    assert panels == {"T", "G", "L"}, panels  # one panel per swept parameter, the others held fixed
    assert len(fig.axes) == 6  # x (fwd, fwdbwd)


def test_cli_writes_everything_and_reports_issues(result, tmp_path: Path, capsys):
    sweep = Path(result.records[0].path).parent
    bench = tmp_path / "bench"
    bench_results.write_bench_results(bench, paper=False)
    out = tmp_path / "out"
    assert main([f"sweep_dir={sweep}", f"out={out}"]) == 0
    assert not [p for p in (out / "figures").iterdir() if p.name.startswith("bench_")]  # only when asked
    assert main([f"sweep_dir={sweep}", f"out={out}", f"bench={bench}"]) == 0
    printed = capsys.readouterr().out
    for run in fx.FIXTURE_BROKEN:
        assert run in printed
    figures = {p.name for p in (out / "figures").iterdir()}
    for stem in [
        "val_loss_vs_tokens",
        "val_loss_vs_flops",
        "downstream_acc",
        "params_vs_val_loss",
        "bench_moda_h100",
    ]:
        assert f"{stem}.png" in figures and f"{stem}.pdf" not in figures, stem  # PDF: pdf=true
    for stem in ["table3_main", "table4_domains", "table5_downstream", "table6_norm"]:
        assert (out / "tables" / f"{stem}.md").read_text().startswith("###")
        assert len(pd.read_csv(out / "tables" / f"{stem}.csv")) == 6
    report = (out / "report.md").read_text()
    assert (
        "[truncated_line]" in report
        and "[missing_metrics]" in report
        and "| moda-post-L4-s2 | local | running |" in report
    )
    tidy = pd.read_csv(out / "tidy.csv")
    assert set(tidy["run"]) == set(result.summary["run"])
    assert str(out / "report.md") in printed


def test_cli_rejects_bad_arguments(capsys):
    for argv in (["sweep_dir"], ["colour=blue"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"moda_lab.analysis: bad argument {argv[0]!r}; expected key=value")
    assert parse_args(["sweep_dir=a", "wandb=e/p"]) == {"sweep_dir": "a", "wandb": "e/p"}
    with pytest.raises(UsageError, match="text="):
        parse_args(["ckpt=x.ckpt"])


def test_config_shades_order_configs_numerically_and_keep_single_configs_in_the_variant_colour():
    from matplotlib.colors import to_rgb

    from moda_lab.analysis.plots import VARIANT_COLORS, config_shades

    lrs = ["lr=0.003", "lr=0.000375", "lr=0.0001875", "lr=0.0015"]
    sweep = pd.DataFrame({"variant": ["residual"] * 4, "cell_label": lrs})
    shades = config_shades(sweep, VARIANT_COLORS)
    order = sorted(lrs, key=lambda s: float(s.split("=")[1]))
    assert len({shades[("residual", lab)] for lab in lrs}) == 4
    # viridis, alone: its green channel rises with the lr (numeric order, not the strings' order)
    greens = [shades[("residual", lab)][1] for lab in order]
    assert greens == sorted(greens)
    both = pd.DataFrame({"variant": ["residual", "residual", "moda"], "cell_label": ["lr=0.001", "lr=0.002", ""]})
    shades = config_shades(both, VARIANT_COLORS)
    assert shades[("moda", "")] == to_rgb(VARIANT_COLORS["moda"])
    light, dark = shades[("residual", "lr=0.001")], shades[("residual", "lr=0.002")]
    assert sum(light) > sum(to_rgb(VARIANT_COLORS["residual"])) > sum(dark)  # tint and shade of its own grey
    # One lr per norm (each norm's own best, as in Table 6): no panel holds two configs, so every line of the
    # variant keeps its colour; two lrs under one norm shade both norms' lines, one colour per config throughout.
    per_norm = pd.DataFrame({"variant": ["moda", "moda", "residual"], "norm": ["pre", "post", "pre"],
                             "cell_label": ["lr=0.006", "lr=0.000375", "lr=0.006"]})
    shades = config_shades(per_norm, VARIANT_COLORS)
    assert shades[("moda", "lr=0.006")] == shades[("moda", "lr=0.000375")] == to_rgb(VARIANT_COLORS["moda"])
    shared = pd.concat([per_norm, pd.DataFrame({"variant": ["moda"], "norm": ["pre"], "cell_label": ["lr=0.000375"]})])
    shades = config_shades(shared, VARIANT_COLORS)
    assert shades[("moda", "lr=0.006")] != shades[("moda", "lr=0.000375")]
    assert sum(shades[("moda", "lr=0.000375")]) > sum(to_rgb(VARIANT_COLORS["moda"])) > sum(shades[("moda", "lr=0.006")])


def test_lr_sweep_points_and_figure(tmp_path: Path):
    """Two or more peak lrs of one variant and norm make an lr sweep: one point per lr (mean over seeds), the
    figure is written, a colour per sweep; one lr does not."""
    from moda_lab.analysis.pipeline import write_figures
    from moda_lab.analysis.plots import lr_sweep_points, plot_lr_sweep

    root = tmp_path / "lrs"
    for lr in (1e-3, 2e-3, 4e-3):
        for seed in (0, 1):
            spec = fx.RunSpec("residual", "pre", seed, extra={"trainer.lr": lr})
            fx.write_run_dir(root, spec, fx.metrics_rows(spec))
    spec = fx.RunSpec("moda", "pre", 0, extra={"trainer.lr": 1e-3})
    fx.write_run_dir(root, spec, fx.metrics_rows(spec))
    # The same variant and norm with another warm-up: a sweep of its own, never averaged with the first.
    for lr in (1e-3, 2e-3, 4e-3):
        spec = fx.RunSpec("residual", "pre", 0, extra={"trainer.lr": lr, "trainer.warmup_steps": 7})
        fx.write_run_dir(root, spec, fx.metrics_rows(spec))
    res = analyze(load_sweep_dir(root))
    points = lr_sweep_points(res.summary)
    assert (points["variant"] == "residual").all() and points["lr_group"].nunique() == 2 and points["trained"].all()
    for group, line in points.groupby("lr_group"):
        assert line["peak_lr"].tolist() == [1e-3, 2e-3, 4e-3]
        runs = res.summary[res.summary["lr_group"] == group]
        assert line["seeds"].tolist() == [len(runs) // 3] * 3
        assert line["val/loss"].tolist() == pytest.approx(runs.groupby("peak_lr")["val/loss"].mean().tolist())
        assert not any(part.startswith("lr=") for part in line["sweep_label"].iloc[0].split(", "))
    assert sorted(points.groupby("lr_group")["seeds"].first()) == [1, 2]
    fig = plot_lr_sweep(res.summary)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.001", "0.002", "0.004"]
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    names = [p.name for p in write_figures(res, tmp_path / "figs")]
    assert "lr_sweep_val_loss.png" in names
    colors = {line.get_color() for line in fig.axes[0].get_lines() if line.get_linestyle() != "None"}
    assert len(colors) == 2  # one variant, two sweeps: a colour each
    one = res.summary[res.summary["peak_lr"] < 2e-3]
    assert lr_sweep_points(one).empty and len(lr_sweep_points(res.summary[res.summary["peak_lr"] < 4e-3])) == 4
    assert len(fig.axes) == 1  # the losses lie within LR_SWEEP_ZOOM_SPAN: one panel
    collapsed = res.summary.copy()  # one lr collapsed to the unigram loss: a second panel zooms on the rest
    collapsed.loc[collapsed["peak_lr"] == 4e-3, "val/loss"] += 3.0
    lowest = lr_sweep_points(collapsed)["val/loss"].min()
    fig = plot_lr_sweep(collapsed)
    assert len(fig.axes) == 2 and fig.axes[0].get_ylim()[1] > lowest + 3.0
    assert fig.axes[1].get_ylim() == pytest.approx((lowest - 0.04, lowest + 0.4))
    assert fig.axes[1].get_xlim() == pytest.approx((1e-3 / 1.25, 2e-3 * 1.25))  # the lrs whose points are in it


def test_long_legend_names_go_under_the_panel(tmp_path: Path):
    """Cells that differ in several keys get long names; their legend leaves the axes instead of covering curves."""
    root = tmp_path / "many"
    for extra in ({}, {"trainer.lr": 1e-3, "trainer.warmup_steps": 7, "trainer.weight_decay": 0.0}):
        spec = fx.RunSpec("residual", "post", 0, extra=extra)
        fx.write_run_dir(root, spec, fx.metrics_rows(spec))
    res = analyze(load_sweep_dir(root))
    fig = plot_curves(res.tidy, "val/loss")
    full, zoom = fig.axes  # the legend of the full curves goes under the zoom beneath them
    assert full.get_legend() is None
    legend = zoom.get_legend()
    assert max(len(t.get_text()) for t in legend.get_texts()) > 40
    fig.canvas.draw()
    legend_box = legend.get_window_extent()
    assert legend_box.y1 <= zoom.get_window_extent().y0  # entirely below both panels
    assert fig.get_figheight() > 4.4 + 3.2
    one_row = plot_curves(res.tidy, "val/loss", tail=None)
    one_row.canvas.draw()
    assert one_row.axes[0].get_legend().get_window_extent().y1 <= one_row.axes[0].get_window_extent().y0
    # The cost scatter places its legend the same way; FLOPs within one decade stay on a linear axis.
    from moda_lab.analysis.plots import plot_cost_vs_loss

    scatter = plot_cost_vs_loss(res.summary, "train_flops")
    scatter.canvas.draw()
    ax = scatter.axes[0]
    assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0
    assert ax.get_xscale() == "linear"


def test_curve_panels_name_what_sets_lines_apart_and_zoom_past_far_off_lines(tmp_path: Path):
    """What every line of a panel shares is said once, under its title, not in each legend name; a line far above
    the others in the last stretch (a run that collapsed) is off the zoom's scale, and the zoom's title says so."""
    root = tmp_path / "recipes"
    for norm, warmup in (("pre", 7), ("post", 9)):
        for lr, collapsed in ((1e-3, False), (2e-3, False), (4e-3, norm == "post")):
            spec = fx.RunSpec("residual", norm, 0, extra={"trainer.lr": lr, "trainer.warmup_steps": warmup})
            rows = fx.metrics_rows(spec)
            for row in rows:
                if collapsed and row.get("val/loss") is not None and row["step"] > 0:
                    row["val/loss"] = 7.4  # stuck at the unigram loss
            fx.write_run_dir(root, spec, rows)
    fig = plot_curves(analyze(load_sweep_dir(root)).tidy, "val/loss")
    top, zoom = fig.axes[:2], fig.axes[2:]
    assert top[1].get_title() == "norm = post (dashed)\nall lines: warmup_steps=9"
    names = [line.get_label() for line in top[1].get_lines()]
    assert names == ["residual, lr=0.001", "residual, lr=0.002", "residual, lr=0.004"]
    assert zoom[0].get_title() == "last 50% of tokens, zoomed"  # every pre-norm line is near the lowest
    assert zoom[1].get_title().endswith("zoomed to within 0.4 nats of the lowest (1 line(s) above)")
    lo, hi = zoom[1].get_ylim()
    assert hi < 7.0 and hi - lo < 1.0  # the two lines that trained fill the zoom
