"""Issue 12's Table 6 runs on one GPU machine: the lr sweep per norm on the residual baseline, then the rows with the
chosen lr, several runs at once, resumable across calls.

    python3 experiments/gpu/table6.py --budget-s 540 --parallel 3 --extra data.packed_dir=data/packed/<fingerprint>

Each call does what is left, in order, until its time budget: a run that finished (meta.json, and its eval when
the rows evaluate) is skipped; an unfinished one resumes from its checkpoint when the machine still holds it. A row
that finished training but not its eval, on a machine that no longer holds its checkpoint (the lease ended during
the eval), is not trained again: status.json lists it under eval_lost.
Jobs are plain ``python3 run.py <overrides>`` processes (the run dir is the one `-m` gives the same overrides);
up to --parallel of them share the GPU, the longest first (a job that runs out of GPU memory beside others is
queued again, and from then on fewer run at once). Rows go norm by norm (every seed of the first norm, so
its paired differences come first), seed by seed within it. A norm's rows start as soon as its sweep is complete,
while the other norm's sweep jobs may still run.

The lr rule (experiments/results/README.md): per norm, the lowest final val/loss of the grid on the residual
baseline; when the best is at an edge of what was tried, the next value beyond it (a factor of 2) is added, at most
--max-extend times per side. The choice, with every loss, is written to <run_root>/<name>_lr/lr_choice.json, its
one writer. A norm whose best sweep run did not train (analysis' training check) gets no rows: status says so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
sys.path.insert(0, str(ROOT))

from moda_lab.analysis.tidy import training_progress  # noqa: E402
from moda_lab.config import ConfigError  # noqa: E402
from moda_lab.rundir import RunDir, run_name  # noqa: E402
from moda_lab.train.preflight import check_command_line  # noqa: E402

MODELS = ("moda", "moda_depth_kv", "residual")  # longest first
BASELINE = "residual"
PACKED_KEY = "data.packed_dir="  # the corpus every job reads (in --extra; part of each run dir's name)
# The rows: evaluate each final checkpoint on the GPU (checkpoints do not come back from a call), checkpoint every
# 400 steps (a checkpoint is taken after a validation: val_every divides it). Every 100 cost ~2.7 s each, 40 s of
# the pre-norm residual's 295 s of steps alone on an H100 (2026-12-08); a row stopped at the budget cannot resume in
# a later lease anyway, and one that crashes within a lease loses at most 400 steps.
# Progress bars (lm-eval's over 2.8k batches, the training bar) redraw in a job's log file every 0.1 s by default.
# Several runs share the GPU: expandable segments keep what each reserves close to what it uses.
JOB_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ, "TQDM_MININTERVAL": "30"}
ROW_EXTRA = (
    "eval.after_fit=true",
    "eval.batch_size=128",  # 2.8k batches of 32 took 152 s beside the trainings (2026-12-01); 4x fewer launches
    "eval.data_dir=data/eval",
    "eval.attention_windows=4",  # per domain: where each variant's attention mass goes, kept after the checkpoint
    "trainer.val_every=100",
    "trainer.ckpt_every=400",
)


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


@dataclass(frozen=True)
class Job:
    stage: str  # "sweep" or "row"
    norm: str
    lr: float
    model: str = BASELINE
    seed: int = 0
    recipe: str = ""  # a name of Plan.recipes: its overrides join the job's


@dataclass(frozen=True)
class Recipe:
    """Named overrides (an optimizer, untied embeddings, a norm's variant ...) swept over their own lr grid, for
    each of their norms and models: one lr choice per (norm, model, recipe) cell."""

    overrides: tuple[str, ...] = ()
    grid: tuple[float, ...] | dict[str, tuple[float, ...]] | None = None  # None: the plan's; a dict: per norm
    norms: tuple[str, ...] | None = None  # None: the plan's norms
    models: tuple[str, ...] = (BASELINE,)
    max_extend: int | None = None  # None: the plan's


@dataclass(frozen=True)
class Cell:
    """One lr sweep: a norm, a variant and a recipe. The plan's own cells (the baseline, no recipe) keep the
    norm alone as their key in lr_choice.json, as every earlier sweep wrote it."""

    norm: str
    model: str = BASELINE
    recipe: str = ""

    @property
    def key(self) -> str:
        if self.model == BASELINE and not self.recipe:
            return self.norm
        return "/".join(p for p in (self.norm, self.model, self.recipe) if p)


@dataclass
class Plan:
    """What the driver runs: the names, grids and overrides, from the command line."""

    name: str
    experiment: str | None
    norms: tuple[str, ...]
    seeds: tuple[int, ...]
    models: tuple[str, ...] = MODELS
    grid: tuple[float, ...] = (7.5e-4, 1.5e-3, 3e-3)
    sweep_steps: int = 400
    max_extend: int = 2
    run_root: Path = Path("runs_gpu")
    extra: tuple[str, ...] = ()  # every job (data.packed_dir, small shapes in tests)
    sweep_extra: tuple[str, ...] = ()
    row_extra: tuple[str, ...] = ()  # the rows (eval.after_fit=true ...)
    evaluate: bool = False  # a row counts as done only with eval/last/results.json
    recipes: dict[str, Recipe] = field(default_factory=dict)
    baseline_sweep: bool = True  # the plain residual sweep per norm (the rows' lr when no recipe cell has one)
    sweep_models: tuple[str, ...] = ()  # variants swept per norm besides the baseline: rows then take their own lr
    row_recipe: str = ""  # rows train under this recipe's overrides and take its cells' lr (per variant if swept)
    sweep_packed_dir: str = ""  # the corpus the lr sweeps ran on, where it is not the rows' (data.packed_dir in extra)
    row_order: str = "norm"  # "norm": one norm's rows, seed by seed, then the next's; "seed": seed by seed, every norm

    @property
    def sweep_name(self) -> str:
        return f"{self.name}_lr"

    def cells(self) -> list[Cell]:
        """Every lr sweep of the plan, in launch order."""
        own = [Cell(n, m) for n in self.norms for m in (BASELINE, *self.sweep_models)] if self.baseline_sweep else []
        named = [Cell(n, m, name) for name, r in self.recipes.items() for n in (r.norms or self.norms)
                 for m in r.models]
        return [*own, *named]

    def grid_of(self, cell: Cell) -> tuple[float, ...]:
        r = self.recipes.get(cell.recipe)
        grid = r.grid if r is not None else None
        if isinstance(grid, dict):
            grid = grid.get(cell.norm)
        return tuple(grid) if grid else self.grid

    def max_extend_of(self, cell: Cell) -> int:
        r = self.recipes.get(cell.recipe)
        return r.max_extend if r is not None and r.max_extend is not None else self.max_extend

    def overrides(self, job: Job) -> list[str]:
        exp = [f"experiment={self.experiment}"] if self.experiment else []
        recipe = self.recipes[job.recipe].overrides if job.recipe else ()
        base = [*exp, f"model={job.model}", f"norm={job.norm}", f"trainer.lr={fmt_lr(job.lr)}", *recipe]
        if job.stage == "sweep":
            steps = self.sweep_steps
            every = max(1, steps // 4)
            own = [f"name={self.sweep_name}", f"trainer.max_steps={steps}", f"trainer.val_every={every}",
                   f"trainer.ckpt_every={every}", *self.sweep_extra]
        else:
            own = [f"name={self.name}", f"seed={job.seed}", *self.row_extra]
        extra = self.extra
        if job.stage == "sweep" and self.sweep_packed_dir:
            extra = tuple(e for e in extra if not e.startswith(PACKED_KEY)) + (PACKED_KEY + self.sweep_packed_dir,)
        return [*base, *extra, f"run_root={self.run_root}", *own]

    def run_dir(self, job: Job) -> Path:
        name = self.sweep_name if job.stage == "sweep" else self.name
        return self.run_root / name / run_name(self.overrides(job))

    def max_steps(self, job: Job) -> int | None:
        return self.sweep_steps if job.stage == "sweep" else None  # rows: the experiment's own


def final_val(rundir: RunDir) -> tuple[float | None, dict]:
    """The last val/loss of a run and analysis' training check of its val curve."""
    import pandas as pd

    vals = {r["step"]: r["val/loss"] for r in rundir.metric_rows() if isinstance(r.get("val/loss"), (int, float))}
    if not vals:
        return None, {}
    series = pd.Series(vals).sort_index()
    return float(series.iloc[-1]), training_progress(series, float(series.index[-1]))


def is_done(plan: Plan, job: Job) -> bool:
    rundir = RunDir(plan.run_dir(job))
    if not rundir.trained(plan.max_steps(job)):
        return False
    return not (job.stage == "row" and plan.evaluate) or has_eval(rundir) or eval_lost(rundir)


def has_eval(rundir: RunDir) -> bool:
    """An evaluation of last.ckpt: eval/last/<evaluation>/results.json, or eval/last/results.json (older layout)."""
    last = rundir.path / "eval" / "last"
    return (last / "results.json").is_file() or any(last.glob("*/results.json"))


def eval_lost(rundir: RunDir) -> bool:
    """Trained, not evaluated, and its checkpoint is gone (a fresh machine): a relaunch would train it again."""
    return not has_eval(rundir) and rundir.last_ckpt is None


def row_without_eval(plan: Plan, job: Job) -> bool:
    """A row counted done whose evaluation was lost with the machine: its per-question pairs need it retrained."""
    return plan.evaluate and is_done(plan, job) and eval_lost(RunDir(plan.run_dir(job)))


def choose_lr(plan: Plan, cell: Cell | str) -> tuple[list[Job], dict | None]:
    """(sweep jobs still to run, the choice once every needed sweep run is done) for one cell (a bare norm: the
    baseline's cell of that norm)."""
    cell = Cell(cell) if isinstance(cell, str) else cell
    grid = plan.grid_of(cell)
    max_extend = plan.max_extend_of(cell)
    tried = sorted(grid)
    while True:
        jobs = [Job("sweep", cell.norm, lr, cell.model, recipe=cell.recipe) for lr in tried]
        pending = [j for j in jobs if not is_done(plan, j)]
        if pending:
            return pending, None
        results = {}
        for j in jobs:
            loss, progress = final_val(RunDir(plan.run_dir(j)))
            results[j.lr] = {"val_loss": loss, "trained": progress.get("trained"), "run_dir": str(plan.run_dir(j))}
        scored = [lr for lr in tried if results[lr]["val_loss"] is not None]
        head = {"norm": cell.norm, **({"model": cell.model, "recipe": cell.recipe} if cell.key != cell.norm else {})}
        if not scored:
            return [], {**head, "lr": None, "why": "no sweep run logged a val/loss", "runs": results}
        best = min(scored, key=lambda lr: results[lr]["val_loss"])
        low, high = best == tried[0], best == tried[-1]
        extend_low = sum(lr < min(grid) for lr in tried) < max_extend
        extend_high = sum(lr > max(grid) for lr in tried) < max_extend
        if low and extend_low:
            tried = [best / 2, *tried]
        elif high and extend_high:
            tried = [*tried, best * 2]
        else:
            trained = results[best]["trained"] is not False
            choice = {**head, "lr": best if trained else None, "trained": trained,
                      "at_edge": low or high, "runs": {fmt_lr(k): v for k, v in sorted(results.items())}}
            if not trained:
                choice["why"] = "the best sweep run did not train (val/loss flat over its second half)"
            return [], choice


def plan_jobs(plan: Plan) -> tuple[list[Job], dict[str, dict]]:
    """Every job not yet done, in launch order, and the lr choices made so far (keyed by Cell.key)."""
    sweep: list[Job] = []
    choices: dict[str, dict] = {}
    for cell in plan.cells():
        pending, choice = choose_lr(plan, cell)
        sweep += pending
        if choice is not None:
            choices[cell.key] = choice
    return [*sweep, *(j for j in _rows(plan, choices) if not is_done(plan, j))], choices


def row_lr(plan: Plan, choices: dict[str, dict], norm: str, model: str) -> float | None:
    """A row's lr: its own variant's choice where the plan sweeps that variant (None until it is made), else the
    baseline's; under --row-recipe, the choices of that recipe's cells."""
    if plan.row_recipe:
        swept = model in plan.recipes[plan.row_recipe].models
        key = Cell(norm, model if swept else BASELINE, plan.row_recipe).key
    else:
        key = Cell(norm, model).key if model in plan.sweep_models else Cell(norm).key
    return choices[key]["lr"] if key in choices else None


def _rows(plan: Plan, choices: dict[str, dict]) -> list[Job]:
    """Every row whose lr is chosen, norm-major, then seed, then model (longest first); with row_order "seed",
    seed-major, then norm: each seed's pairs of every norm before the next seed's."""
    order = [(n, s) for n in plan.norms for s in plan.seeds]
    if plan.row_order == "seed":
        order = [(n, s) for s in plan.seeds for n in plan.norms]
    rows = []
    for norm, seed in order:
        for model in plan.models:
            lr = row_lr(plan, choices, norm, model)
            if lr is not None:
                rows.append(Job("row", norm, lr, model, seed, recipe=plan.row_recipe))
    return rows


def write_choices(plan: Plan, choices: dict[str, dict]) -> None:
    if not choices:
        return
    path = plan.run_root / plan.sweep_name / "lr_choice.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**old, **choices}, indent=2))
    tmp.replace(path)


OOM_RETRIES = 2  # per job and drive: a job out of GPU memory beside others is queued again, with fewer at once
OOM_MARKERS = ("torch.OutOfMemoryError", "CUDA out of memory")


def out_of_memory(plan: Plan, job: Job, start: int) -> bool:
    """Whether the job's launch (its driver.log from byte ``start``) ended out of GPU memory. Four Table 6 runs
    of MoDA at once ask for ~22 GiB each on an 80 GiB H100: the fourth one's first step failed (2026-12-06)."""
    log = plan.run_dir(job) / "driver.log"
    if not log.is_file():
        return False
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", "replace")
    return any(marker in text for marker in OOM_MARKERS)


def eval_import_error() -> str | None:
    """Why lm-eval does not import here (None: it does). The rows evaluate after fit; on a machine without its
    wheels (datasets and the rest: docs/EVAL.md) a row would train for minutes and then fail its evaluation."""
    try:
        import lm_eval.evaluator  # noqa: F401
    except Exception as err:  # an ImportError, or a broken dependency of it
        return f"{type(err).__name__}: {err}"
    return None


def _clock(t_start: float) -> str:
    return f"+{time.monotonic() - t_start:4.0f}s"


def stop(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """SIGTERM every job's whole process group (its compile workers and data loaders too) at once, SIGKILL what
    is left after grace_s: the last call of a lease waits for this."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        t_end = time.monotonic() + wait
        for proc in procs:
            try:
                proc.wait(max(0.0, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        procs = [p for p in procs if p.poll() is None]
        if not procs:
            return


def read_deadline(path: Path, current: float) -> float:
    """The deadline in ``path`` (epoch seconds, written by table6.sh, or by this driver when it runs alone, and
    moved by a later call of table6.sh: DEADLINE_IN_S) as a time.monotonic() value; ``current`` while the file is
    missing, being written, or says the same second."""
    try:
        epoch = float(path.read_text().strip())
    except (OSError, ValueError):
        return current
    moved = time.monotonic() + (epoch - time.time())
    return current if abs(moved - current) < 1.0 else moved


def drive(
    plan: Plan, parallel: int, budget_s: float, log_dir: Path, poll_s: float = 5.0, start_until_s: float | None = None,
    deadline_file: Path | None = None,
) -> dict:
    """Run what is left until done or budget_s; returns the status (also written to log_dir/status.json).

    deadline_file: the lease's deadline (epoch seconds), which table6.sh writes and a later call moves; the driver
    only reads it (budget_s stands while it cannot be read). Without it the driver writes log_dir/deadline itself
    from budget_s, for a later call to move.

    start_until_s: no job starts later than this into the call (the last call of a lease: a run that cannot
    finish before the machine goes back would only cost device time; the running ones go on until budget_s).
    Nor does a job start with less time left than the shortest job of its stage that finished in this drive took
    (a row that finished early once started a fifth row with 620 s left; rows had taken 969-1,457 s).
    """
    t_start = time.monotonic()
    deadline = t_start + budget_s
    last_start = t_start + (budget_s if start_until_s is None else start_until_s)
    log_dir.mkdir(parents=True, exist_ok=True)
    if deadline_file is None:  # run alone: this driver writes the deadline that a later call may move
        deadline_file = log_dir / "deadline"
        deadline_file.write_text(f"{time.time() + budget_s:.0f}\n")
    else:  # the lease's, as it stands now (budget_s came from it a moment ago)
        deadline = read_deadline(deadline_file, deadline)
    running: dict[Job, tuple[subprocess.Popen, float]] = {}
    failed: dict[str, int | str] = {}  # run dir -> exit status, or the config error that refused it
    history: list[dict] = []
    choices: dict[str, dict] = {}
    took: dict[str, float] = {}  # stage -> the shortest time a job of it took to finish in this drive
    held_back: set[Job] = set()  # said once each
    no_eval = eval_import_error() if plan.evaluate else None  # rows that evaluate cannot finish: none starts
    if no_eval:
        print(f"[table6] rows evaluate after fit, but lm-eval does not import here ({no_eval}): no row starts; "
              "carry its wheels (docs/EVAL.md) or pass --row-extra eval.after_fit=false", flush=True)
    log_start: dict[Job, int] = {}  # where this launch's output begins in the job's (appended) driver.log
    oom_retries: dict[Job, int] = {}
    while True:
        moved = read_deadline(deadline_file, deadline)
        if moved != deadline:
            deadline = moved
            print(f"[table6] {_clock(t_start)} deadline moved: {deadline - time.monotonic():.0f} s left", flush=True)
        for job, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[job]
                s = time.monotonic() - t0
                history.append({"run_dir": str(plan.run_dir(job)), "rc": proc.returncode, "s": s})
                finished = is_done(plan, job)
                if finished:
                    took[job.stage] = min(s, took.get(job.stage, s))
                what = "done" if finished else "ended unfinished"  # a job stopped from outside can exit 0
                print(f"[table6] {_clock(t_start)} {what} rc={proc.returncode} in {s:.0f} s: {plan.run_dir(job)}",
                      flush=True)
                if proc.returncode != 0 and not finished and running and out_of_memory(plan, job, log_start[job]):
                    oom_retries[job] = oom_retries.get(job, 0) + 1
                    if oom_retries[job] <= OOM_RETRIES:  # it resumes from its checkpoint, if it wrote one
                        parallel = len(running)
                        print(f"[table6] {_clock(t_start)} out of GPU memory beside {len(running)} other run(s): "
                              f"queued again, at most {parallel} at once from now: {plan.run_dir(job)}", flush=True)
                        continue
                if proc.returncode != 0:
                    failed[str(plan.run_dir(job))] = proc.returncode
        todo, new_choices = plan_jobs(plan)
        if new_choices != choices:  # written when a choice is made or changes, not on every poll
            write_choices(plan, new_choices)
            choices = new_choices
        ready = [j for j in todo if j not in running and str(plan.run_dir(j)) not in failed
                 and not (no_eval and j.stage == "row")]
        if time.monotonic() >= deadline:
            break
        while ready and len(running) < parallel and time.monotonic() < last_start:
            job = ready.pop(0)
            left_s = deadline - time.monotonic()
            if job.stage in took and left_s < took[job.stage]:  # (no finished job yet: nothing to go by)
                if job not in held_back:
                    held_back.add(job)
                    print(f"[table6] {_clock(t_start)} not starting {plan.run_dir(job)}: {left_s:.0f} s left, the "
                          f"shortest {job.stage} of this drive took {took[job.stage]:.0f} s", flush=True)
                continue
            try:  # a config error ends the job before it starts, with the message in status.json
                check_command_line(plan.overrides(job), CONF)
            except ConfigError as err:
                failed[str(plan.run_dir(job))] = f"config error: {err}"
                print(f"[table6] refused {plan.run_dir(job)}: {err}", flush=True)
                continue
            log = plan.run_dir(job) / "driver.log"  # comes back with the run dir; run names hold '=' and ','
            log.parent.mkdir(parents=True, exist_ok=True)
            log_start[job] = log.stat().st_size if log.is_file() else 0
            cmd = [sys.executable, str(ROOT / "run.py"), *plan.overrides(job)]
            print(f"[table6] {_clock(t_start)} start {plan.run_dir(job)}", flush=True)
            with log.open("a") as f:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=JOB_ENV)
            running[job] = (proc, time.monotonic())
        if not running:
            break
        time.sleep(poll_s)
    for job in running:
        print(f"[table6] {_clock(t_start)} budget spent: stopping {plan.run_dir(job)}", flush=True)
    stop([proc for proc, _ in running.values()])
    todo, choices = plan_jobs(plan)
    status = {
        "lr_choice": choices,
        "parallel_at_end": parallel,
        "rows_held": f"lm-eval does not import: {no_eval}" if no_eval else None,
        "finished_this_call": [h for h in history if h["rc"] == 0],
        "failed": failed,
        "left": [str(plan.run_dir(j)) for j in todo],
        "stopped_at_budget": [str(plan.run_dir(j)) for j in running],
        "eval_lost": [str(plan.run_dir(j)) for j in _rows(plan, choices) if row_without_eval(plan, j)],
    }
    (log_dir / "status.json").write_text(json.dumps(status, indent=2))
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="table6_24l")
    p.add_argument("--name", default=None, help="the rows' sweep name (default: the experiment's name)")
    p.add_argument("--norms", default="post,pre")
    p.add_argument("--seeds", default="0,1,2", help="the rows' seeds ('' for none: sweeps only)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--grid", default="7.5e-4,1.5e-3,3e-3")
    p.add_argument("--sweep-steps", type=int, default=400)
    p.add_argument("--sweep-models", default="", help="variants swept per norm besides the baseline; their rows "
                   "take their own lr (per-variant lr)")
    p.add_argument("--recipes", type=Path, default=None, help="a JSON file of named recipes: {name: {overrides, "
                   "grid, norms, models, max_extend}}, each swept per (norm, model) cell")
    p.add_argument("--no-baseline-sweep", action="store_true", help="sweep only the recipes' cells")
    p.add_argument("--only-recipes", default="", help="comma list: use only these recipes of --recipes")
    p.add_argument("--row-recipe", default="", help="a recipe of --recipes: the rows train under its overrides, "
                   "each at its own variant's chosen lr where the recipe sweeps that variant, else the baseline's")
    p.add_argument("--parallel", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=540.0, help="stop every job after this many seconds")
    p.add_argument("--start-until-s", type=float, default=None, help="start no job after this many seconds")
    p.add_argument("--deadline-file", type=Path, default=None,
                   help="read the deadline (epoch seconds) from this file, which table6.sh writes and moves")
    p.add_argument("--run-root", type=Path, default=None, help=f"default {Plan.run_root} (--plan: the committed "
                   "archives)")
    p.add_argument("--log-dir", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")) / "table6")
    p.add_argument("--extra", nargs="*", action="extend", default=[], help="overrides for every job (repeatable)")
    p.add_argument("--sweep-extra", nargs="*", action="extend", default=[], help="overrides for the lr sweep's jobs")
    p.add_argument("--row-extra", nargs="*", action="extend", default=[],
                   help=f"overrides for the rows, after {' '.join(ROW_EXTRA)}")
    p.add_argument("--sweep-packed-dir", default="", help="the data.packed_dir the lr sweeps ran (or run) on, where "
                   "the rows train on another build of the corpus: the rows take the lr those sweeps chose")
    p.add_argument("--row-order", choices=("norm", "seed"), default="norm", help="rows norm by norm (each norm's "
                   "seeds in turn), or seed by seed (every norm's cells of a seed before the next seed)")
    p.add_argument("--plan", action="store_true", help="launch nothing: print the lr choices, the rows done per "
                   "cell and every job left, against the committed archives (COMMITTED) unless --run-root is given")
    return p


COMMITTED = ROOT / "experiments" / "results" / "runs_gpu"  # <sweep>.tar.xz: what earlier sessions brought back


def committed_run_root(plan_name: str, sweep_name: str, into: Path) -> Path:
    """A run root holding the committed archives of the rows' and the sweep's folders (links to their checked
    extraction, moda_lab.analysis.archive.open_archive); ``into`` is an empty folder."""
    from moda_lab.analysis.archive import open_archive

    for name in (plan_name, sweep_name):
        archive = COMMITTED / f"{name}.tar.xz"
        if archive.is_file():
            (into / name).symlink_to(open_archive(archive), target_is_directory=True)
    return into


def packed_dir_of(run_root: Path) -> str | None:
    """The data.packed_dir of the runs under ``run_root`` (part of every run dir's name), from a run's config."""
    import yaml

    for config in sorted(run_root.glob("*/*/config.yaml")):
        packed = (yaml.safe_load(config.read_text()).get("data") or {}).get("packed_dir")
        if packed:
            return str(packed)
    return None


def describe_plan(plan: Plan, jobs: list[Job], choices: dict[str, dict]) -> str:
    """The lr choices, rows done and left per (norm, model) cell, and every job left in launch order (``jobs`` and
    ``choices``: plan_jobs(plan))."""
    lines = ["lr choices (the sweep's best; * at the edge of what was tried):"]
    for key, choice in choices.items():
        lines.append(f"  {key}: {fmt_lr(choice['lr'])}{' *' if choice.get('at_edge') else ''}")
    unchosen = [c.key for c in plan.cells() if c.key not in choices]
    lines += [f"  {key}: not chosen yet (its sweep has runs left)" for key in unchosen]
    lines.append(f"rows (seeds {','.join(map(str, plan.seeds)) or 'none'}), done per cell:")
    for norm in plan.norms:
        for model in plan.models:
            lr = row_lr(plan, choices, norm, model)
            if lr is None:
                lines.append(f"  {norm} {model}: lr not chosen yet; {len(plan.seeds)} rows left")
                continue
            rows = {s: Job("row", norm, lr, model, s, recipe=plan.row_recipe) for s in plan.seeds}
            done = [s for s, job in rows.items() if is_done(plan, job)]
            left = [s for s in plan.seeds if s not in done]
            no_eval = [s for s, job in rows.items() if row_without_eval(plan, job)]
            lost = f" (trained, no evaluation: seeds {no_eval})" if no_eval else ""
            lines.append(f"  {norm} {model} at {fmt_lr(lr)}: done seeds {done or '-'}{lost}, left {left or '-'}")
    lines.append(f"jobs left, in launch order ({len(jobs)}):")
    for job in jobs:
        seed = f" seed {job.seed}" if job.stage == "row" else ""
        lines.append(f"  {job.stage} {job.norm} {job.model} lr {fmt_lr(job.lr)}{seed}")
    return "\n".join(lines)


def plan_from_args(args: argparse.Namespace) -> Plan:
    row_extra = (*ROW_EXTRA, *args.row_extra)
    recipes = load_recipes(args.recipes) if args.recipes else {}
    if args.only_recipes:
        wanted = args.only_recipes.split(",")
        unknown = sorted(set(wanted) - set(recipes))
        if unknown:
            raise SystemExit(f"--only-recipes {unknown} not in --recipes (has: {sorted(recipes)})")
        recipes = {name: recipes[name] for name in wanted}
    if args.row_recipe and args.row_recipe not in recipes:
        raise SystemExit(f"--row-recipe {args.row_recipe!r} is not a recipe of --recipes (has: {sorted(recipes)})")
    return Plan(
        name=args.name or args.experiment,
        experiment=args.experiment or None,
        norms=tuple(args.norms.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",") if s),
        models=tuple(args.models.split(",")),
        grid=tuple(float(x) for x in args.grid.split(",")),
        sweep_steps=args.sweep_steps,
        run_root=args.run_root or Plan.run_root,
        extra=tuple(args.extra),
        sweep_extra=tuple(args.sweep_extra),
        row_extra=row_extra,
        evaluate="eval.after_fit=true" in row_extra and "eval.after_fit=false" not in row_extra,
        recipes=recipes,
        baseline_sweep=not args.no_baseline_sweep,
        sweep_models=tuple(m for m in args.sweep_models.split(",") if m),
        row_recipe=args.row_recipe,
        sweep_packed_dir=args.sweep_packed_dir,
        row_order=args.row_order,
    )


def load_recipes(path: Path) -> dict[str, Recipe]:
    """{name: {"overrides": [...], "grid": [...] or {norm: [...]}, "norms": [...], "models": [...], "max_extend": n}}
    -> Recipes."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"--recipes {path}: cannot read it ({err}); allowed: a JSON file of named recipes") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"--recipes {path}: not a JSON object of named recipes ({{name: {{overrides, grid, ...}}}})")
    known = {f for f in Recipe.__dataclass_fields__}
    out = {}
    for name, spec in raw.items():
        unknown = set(spec) - known
        if unknown:
            raise SystemExit(f"{path}: recipe {name!r} has unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        grid = spec.get("grid")
        if isinstance(grid, dict):
            spec = {**spec, "grid": {norm: tuple(g) for norm, g in grid.items()}}
        out[name] = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    return out


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.plan:
        return print_plan(args)
    status = drive(plan_from_args(args), args.parallel, args.budget_s, args.log_dir, start_until_s=args.start_until_s,
                   deadline_file=args.deadline_file)
    print(json.dumps({k: status[k] for k in ("lr_choice", "failed", "left", "stopped_at_budget", "eval_lost")},
                     indent=1))
    return status


def print_plan(args: argparse.Namespace) -> dict:
    """--plan: what a driver with these arguments would do, against --run-root or the committed archives."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if args.run_root is None:
            plan = plan_from_args(args)
            args.run_root = committed_run_root(plan.name, plan.sweep_name, Path(tmp))
        if not any(e.startswith(PACKED_KEY) for e in args.extra):
            packed = packed_dir_of(args.run_root)
            if packed:
                args.extra = [PACKED_KEY + packed, *args.extra]
        plan = plan_from_args(args)
        jobs, choices = plan_jobs(plan)
        print(describe_plan(plan, jobs, choices))
    return {"left": [job.__dict__ for job in jobs], "lr_choice": choices}


if __name__ == "__main__":
    main()
