"""experiments/gpu/table6.py: the lr rule (best of the grid, extended past an edge), the job order, and a real
tiny drive on CPU that sweeps, picks, trains the rows, and does nothing when relaunched."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TINY
from moda_lab.analysis.archive import CACHE_ENV, open_archive, pack

spec = importlib.util.spec_from_file_location("table6", ROOT / "experiments" / "gpu" / "table6.py")
table6 = importlib.util.module_from_spec(spec)
sys.modules["table6"] = table6
spec.loader.exec_module(table6)


def fake_run(plan, job, val: dict[int, float], status: str = "finished") -> None:
    """A run dir as train() leaves it: meta.json (status, global_step) and val/loss rows."""
    d = plan.run_dir(job)
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").write_text(json.dumps({"status": status, "global_step": max(val)}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/loss": v}) + "\n" for s, v in val.items()))


def curve(final: float, last: int = 4) -> dict[int, float]:
    return {0: 10.0, last // 2: final + 1.0, last: final}


@pytest.fixture
def plan(tmp_path):
    return table6.Plan(name="t6", experiment=None, norms=("post", "pre"), seeds=(0, 1), models=("moda", "residual"),
                       grid=(1e-3, 2e-3, 4e-3), sweep_steps=4, run_root=tmp_path / "runs")


def test_best_in_the_grid_is_chosen_and_unlocks_that_norms_rows(plan):
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.0), (4e-3, 4.5)):
        fake_run(plan, table6.Job("sweep", "post", lr), curve(loss))
    todo, choices = table6.plan_jobs(plan)
    assert choices["post"]["lr"] == 2e-3 and not choices["post"]["at_edge"]
    assert "pre" not in choices
    # pre's sweep first, then post's rows seed-major, longest model first
    assert [(j.stage, j.norm) for j in todo[:3]] == [("sweep", "pre")] * 3
    assert [(j.model, j.seed, j.lr) for j in todo[3:]] == [("moda", 0, 2e-3), ("residual", 0, 2e-3),
                                                            ("moda", 1, 2e-3), ("residual", 1, 2e-3)]


def test_an_edge_best_adds_the_next_lr_until_the_limit(plan):
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.5), (4e-3, 4.0)):
        fake_run(plan, table6.Job("sweep", "post", lr), curve(loss))
    pending, choice = table6.choose_lr(plan, "post")
    assert choice is None and [j.lr for j in pending] == [8e-3]
    fake_run(plan, table6.Job("sweep", "post", 8e-3), curve(3.9))
    pending, choice = table6.choose_lr(plan, "post")
    assert [j.lr for j in pending] == [1.6e-2]
    fake_run(plan, table6.Job("sweep", "post", 1.6e-2), curve(3.8))
    pending, choice = table6.choose_lr(plan, "post")  # max_extend=2: stops at the edge and says so
    assert pending == [] and choice["lr"] == 1.6e-2 and choice["at_edge"]
    assert set(choice["runs"]) == {"0.001", "0.002", "0.004", "0.008", "0.016"}


def test_unfinished_or_untrained_runs(plan):
    fake_run(plan, table6.Job("sweep", "post", 1e-3), curve(5.0), status="running")
    pending, _ = table6.choose_lr(plan, "post")
    assert [j.lr for j in pending] == [1e-3, 2e-3, 4e-3]
    flat = {0: 10.0, 2: 7.01, 4: 7.0}  # fell 0.01 over its second half: did not train
    for lr in plan.grid:
        fake_run(plan, table6.Job("sweep", "post", lr), flat if lr == 2e-3 else curve(7.5))
    pending, choice = table6.choose_lr(plan, "post")
    assert pending == [] and choice["lr"] is None and not choice["trained"] and "did not train" in choice["why"]
    todo, _ = table6.plan_jobs(plan)
    assert not [j for j in todo if j.stage == "row" and j.norm == "post"]


def test_recipe_cells_sweep_their_own_grid_and_keep_apart(plan, tmp_path):
    recipes = {"muon": table6.Recipe(overrides=("optim=muon_wsd",), grid=(1e-3, 2e-3), norms=("post",),
                                     max_extend=0)}
    plan = table6.Plan(**{**plan.__dict__, "recipes": recipes, "seeds": ()})
    cell = table6.Cell("post", "residual", "muon")
    assert cell.key == "post/residual/muon" and table6.Cell("post").key == "post"
    jobs = [table6.Job("sweep", "post", lr, recipe="muon") for lr in (1e-3, 2e-3)]
    assert "optim=muon_wsd" in plan.overrides(jobs[0])
    assert plan.run_dir(jobs[0]) != plan.run_dir(table6.Job("sweep", "post", 1e-3))  # its own run dirs
    for job, loss in zip(jobs, (4.0, 4.2)):
        fake_run(plan, job, curve(loss))
    todo, choices = table6.plan_jobs(plan)
    assert choices["post/residual/muon"]["lr"] == 1e-3 and choices["post/residual/muon"]["recipe"] == "muon"
    assert choices["post/residual/muon"]["at_edge"]  # max_extend=0: no lr beyond the grid
    assert "post" not in choices and {j.recipe for j in todo} == {""}  # the baseline's own sweep is still to run


def test_swept_variants_take_their_own_lr_and_wait_for_it(plan):
    plan = table6.Plan(**{**plan.__dict__, "norms": ("post",), "seeds": (0,), "sweep_models": ("moda",)})
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.0), (4e-3, 4.5)):
        fake_run(plan, table6.Job("sweep", "post", lr), curve(loss))
    todo, choices = table6.plan_jobs(plan)
    assert [(j.stage, j.model) for j in todo] == [("sweep", "moda")] * 3 + [("row", "residual")]  # moda waits
    for lr, loss in ((1e-3, 3.9), (2e-3, 4.1), (4e-3, 4.6)):
        fake_run(plan, table6.Job("sweep", "post", lr, "moda"), curve(loss))
    pending, _ = table6.choose_lr(plan, table6.Cell("post", "moda"))
    assert [j.lr for j in pending] == [5e-4]  # best at the low edge: extended
    fake_run(plan, table6.Job("sweep", "post", 5e-4, "moda"), curve(4.0))
    todo, choices = table6.plan_jobs(plan)
    assert choices["post/moda"]["lr"] == 1e-3
    assert [(j.model, j.lr) for j in todo] == [("moda", 1e-3), ("residual", 2e-3)]


def test_rows_under_a_recipe_take_each_variants_own_per_norm_grid_choice(plan, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"muon": {"overrides": ["optim=muon_wsd"], "grid": {"post": [1e-3, 2e-3],
                                "pre": [4e-3, 8e-3]}, "models": ["residual", "moda"], "max_extend": 0}}))
    recipes = table6.load_recipes(path)
    plan = table6.Plan(**{**plan.__dict__, "recipes": recipes, "seeds": (0,), "baseline_sweep": False,
                          "row_recipe": "muon"})
    assert plan.grid_of(table6.Cell("pre", "moda", "muon")) == (4e-3, 8e-3)
    losses = {("post", "residual"): (4.0, 4.2), ("post", "moda"): (4.3, 4.1),
              ("pre", "residual"): (3.9, 3.8), ("pre", "moda"): (3.7, 3.9)}
    for (norm, model), pair in losses.items():
        for lr, loss in zip(plan.grid_of(table6.Cell(norm, model, "muon")), pair):
            fake_run(plan, table6.Job("sweep", norm, lr, model, recipe="muon"), curve(loss))
    todo, choices = table6.plan_jobs(plan)
    rows = {(j.norm, j.model): j for j in todo}
    assert {k: j.lr for k, j in rows.items()} == {("post", "residual"): 1e-3, ("post", "moda"): 2e-3,
                                                  ("pre", "residual"): 8e-3, ("pre", "moda"): 4e-3}
    assert all(j.stage == "row" and j.recipe == "muon" for j in todo)
    assert "optim=muon_wsd" in plan.overrides(rows["pre", "moda"])  # the rows train under the recipe
    args = table6.build_parser().parse_args(["--recipes", str(path), "--row-recipe", "adamw"])
    with pytest.raises(SystemExit, match="--row-recipe 'adamw' is not a recipe"):
        table6.plan_from_args(args)


def test_rows_on_a_rebuilt_corpus_take_the_lr_the_sweeps_chose_on_theirs(plan):
    """--sweep-packed-dir: the sweeps are looked up (and would run) on the corpus they ran on; the rows train on
    --extra's. Without it, a new corpus hides every sweep and the driver would sweep again."""
    old, new = "data.packed_dir=data/packed/aaaa", "data.packed_dir=data/packed/bbbb"
    swept = table6.Plan(**{**plan.__dict__, "norms": ("post",), "extra": (old,)})
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.0), (4e-3, 4.5)):
        fake_run(swept, table6.Job("sweep", "post", lr), curve(loss))
    moved = table6.Plan(**{**swept.__dict__, "extra": (new,)})
    assert {j.stage for j in table6.plan_jobs(moved)[0]} == {"sweep"}
    pinned = table6.Plan(**{**moved.__dict__, "sweep_packed_dir": "data/packed/aaaa"})
    todo, choices = table6.plan_jobs(pinned)
    assert choices["post"]["lr"] == 2e-3
    assert {j.stage for j in todo} == {"row"} and len(todo) == 4
    assert all(new in pinned.overrides(j) and old not in pinned.overrides(j) for j in todo)
    assert "bbbb" in pinned.run_dir(todo[0]).name
    args = table6.build_parser().parse_args(["--extra", new, "--sweep-packed-dir", "data/packed/aaaa"])
    assert table6.plan_from_args(args).sweep_packed_dir == "data/packed/aaaa"


def test_rows_seed_by_seed_across_norms(plan):
    """--row-order seed: each seed's rows of every norm before the next seed's (a lease's three rows then add a
    pair to the norm that has fewer), where the default finishes one norm's seeds first."""
    for norm in ("post", "pre"):
        for lr, loss in ((1e-3, 5.0), (2e-3, 4.0), (4e-3, 4.5)):
            fake_run(plan, table6.Job("sweep", norm, lr), curve(loss))
    default = [(j.norm, j.seed) for j in table6.plan_jobs(plan)[0]]
    assert default == [("post", 0)] * 2 + [("post", 1)] * 2 + [("pre", 0)] * 2 + [("pre", 1)] * 2
    by_seed = table6.Plan(**{**plan.__dict__, "row_order": "seed"})
    assert [(j.norm, j.seed) for j in table6.plan_jobs(by_seed)[0]] == [
        ("post", 0)] * 2 + [("pre", 0)] * 2 + [("post", 1)] * 2 + [("pre", 1)] * 2
    args = table6.build_parser().parse_args(["--row-order", "seed"])
    assert table6.plan_from_args(args).row_order == "seed"


def test_only_recipes_keeps_the_named_recipes_and_refuses_unknown_ones(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"a": {"overrides": ["optim=muon_wsd"]}, "b": {"overrides": ["seed=1"]}}))
    plan = table6.plan_from_args(table6.build_parser().parse_args(["--recipes", str(path), "--only-recipes", "b"]))
    assert list(plan.recipes) == ["b"]
    args = table6.build_parser().parse_args(["--recipes", str(path), "--only-recipes", "b,c"])
    with pytest.raises(SystemExit, match=r"--only-recipes \['c'\] not in --recipes"):
        table6.plan_from_args(args)


def test_a_missing_or_broken_recipes_file_is_one_line_naming_it(tmp_path):
    for text in (None, "{not json", "[1, 2]"):
        path = tmp_path / "recipes.json"
        if text is not None:
            path.write_text(text)
        with pytest.raises(SystemExit, match=f"--recipes {path}: "):
            table6.load_recipes(path)


def test_recipes_file_rejects_unknown_keys(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"x": {"overrides": ["a=b"], "gird": [1e-3]}}))
    with pytest.raises(SystemExit, match="gird"):
        table6.load_recipes(path)
    path.write_text(json.dumps({"x": {"overrides": ["a=b"], "grid": [1e-3], "norms": ["post"]}}))
    assert table6.load_recipes(path)["x"] == table6.Recipe(("a=b",), (1e-3,), ("post",))


@pytest.mark.slow
def test_drive_sweeps_picks_trains_and_resumes(tmp_path, tiny_corpus):
    extra = [*TINY, f"data.corpus_dir={tiny_corpus}", f"data.cache_dir={tmp_path / 'cache'}", "trainer=smoke",
             "trainer.threads=1"]
    plan = table6.Plan(name="t6", experiment=None, norms=("pre",), seeds=(0,), models=("moda", "residual"),
                       grid=(1e-3, 3e-3), sweep_steps=12, max_extend=0, run_root=tmp_path / "runs", extra=tuple(extra),
                       row_extra=("trainer.max_steps=6",))
    status = table6.drive(plan, parallel=2, budget_s=600, log_dir=tmp_path / "logs", poll_s=0.5)
    assert status["failed"] == {} and status["left"] == [] and len(status["finished_this_call"]) == 4
    choice = json.loads((plan.run_root / "t6_lr" / "lr_choice.json").read_text())["pre"]
    losses = {lr: r["val_loss"] for lr, r in choice["runs"].items()}
    assert choice["lr"] == float(min(losses, key=losses.get))
    rows = sorted((plan.run_root / "t6").iterdir())
    assert len(rows) == 2 and all(json.loads((r / "meta.json").read_text())["global_step"] == 6 for r in rows)
    import yaml

    assert all(yaml.safe_load((r / "config.yaml").read_text())["trainer"]["lr"] == choice["lr"] for r in rows)
    again = table6.drive(plan, parallel=2, budget_s=600, log_dir=tmp_path / "logs2", poll_s=0.5)
    assert again["finished_this_call"] == [] and again["left"] == []
    assert json.loads((tmp_path / "logs2" / "status.json").read_text())["lr_choice"]["pre"]["lr"] == choice["lr"]


def test_budget_stops_the_jobs_whole_process_group(tmp_path, monkeypatch):
    """A job still running at the budget is stopped with its children (compile workers, data loaders)."""
    fake_root = tmp_path / "repo"
    fake_root.mkdir()
    child_pid = tmp_path / "child.pid"
    (fake_root / "run.py").write_text(
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen(['sleep', '300'])\nopen({str(child_pid)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    monkeypatch.setattr(table6, "ROOT", fake_root)
    plan = table6.Plan(name="t6", experiment=None, norms=("pre",), seeds=(0,), grid=(1e-3,), sweep_steps=4,
                       max_extend=0, run_root=tmp_path / "runs")
    status = table6.drive(plan, parallel=1, budget_s=3, log_dir=tmp_path / "logs", poll_s=0.2)
    assert status["stopped_at_budget"] == [str(plan.run_dir(table6.Job("sweep", "pre", 1e-3)))]
    assert status["failed"] == {} and len(status["left"]) == 1
    stat = Path(f"/proc/{int(child_pid.read_text())}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or a zombie nobody reaped yet


def test_every_job_of_the_gpu_call_composes_into_a_valid_run(tmp_path):
    """The jobs experiments/gpu/table6.sh launches (its default arguments), sweep and rows, pass the run config's
    checks here, where a config error costs no device time (a call once lost its rows to ckpt_every=100 with
    val_every=200)."""
    from helpers import compose_cfg
    from moda_lab.config import run_config_from_dict

    args = table6.build_parser().parse_args(  # the --extra of experiments/gpu/table6_chain.sh
        ["--run-root", str(tmp_path / "runs"), "--extra", "logger.wandb.enabled=false",
         "trainer.compile_cache=.compile_cache"]
    )
    plan = table6.plan_from_args(args)
    assert plan.evaluate and plan.experiment == "table6_24l"
    for norm in plan.norms:
        for lr in plan.grid:
            fake_run(plan, table6.Job("sweep", norm, lr), curve(5.0 + abs(lr - 1.5e-3), last=400))  # the middle wins
    todo, choices = table6.plan_jobs(plan)
    assert {n: c["lr"] for n, c in choices.items()} == {"post": 1.5e-3, "pre": 1.5e-3}
    jobs = [*(table6.Job("sweep", n, lr) for n in plan.norms for lr in plan.grid), *todo]
    assert len(todo) == len(plan.norms) * len(plan.seeds) * len(plan.models) == 18
    for job in jobs:
        run = run_config_from_dict(compose_cfg(plan.overrides(job)))
        assert run.trainer.batch_size * run.trainer.accumulate * run.data.seq_len == 65536
        assert run.trainer.max_steps == (400 if job.stage == "sweep" else 1600)
        assert (job.stage == "row") == bool(run.extra["eval"]["after_fit"])
        assert run.model.init_rng == "sequential"  # every row of the table initialised as the first ones were
        assert run.trainer.compile and run.trainer.compile_cache == ".compile_cache"
    # The committed rows keep their names under today's code, so they count as done (their archive's manifest
    # lists every member; table6.sh extracts it into runs_gpu/table6_24l/).
    manifest = ROOT / "experiments" / "results" / "runs_gpu" / "table6_24l.sha256"
    post = table6.Job("row", "post", 3.75e-4, "residual", 0)
    post_plan = table6.plan_from_args(table6.build_parser().parse_args(
        ["--extra", "data.packed_dir=data/packed/c963835a0ef70777", "logger.wandb.enabled=false",
         "trainer.compile_cache=.compile_cache"]))
    assert f"  table6_24l/{post_plan.run_dir(post).name}/meta.json\n" in manifest.read_text()


def _three_second_job(tmp_path, monkeypatch) -> table6.Plan:
    """A plan of one job whose run.py sleeps 3 s, then marks itself done."""
    fake_root = tmp_path / "repo"
    fake_root.mkdir()
    (fake_root / "run.py").write_text("import time\ntime.sleep(3)\nopen('done', 'w').close()\n")
    monkeypatch.setattr(table6, "ROOT", fake_root)
    monkeypatch.setattr(table6, "is_done", lambda plan, job: (fake_root / "done").exists())
    return table6.Plan(name="t6", experiment=None, norms=("pre",), seeds=(0,), grid=(1e-3,), sweep_steps=4,
                       max_extend=0, run_root=tmp_path / "runs")


def test_a_later_call_moves_the_deadline_and_the_running_job_finishes(tmp_path, monkeypatch, capsys):
    """table6.sh's DEADLINE_IN_S rewrites the driver's deadline file: the driver re-reads it every poll, so a job
    that would have been stopped at the first budget runs to its end."""
    import threading

    plan = _three_second_job(tmp_path, monkeypatch)
    logs = tmp_path / "logs"

    def move():
        time.sleep(0.5)
        (logs / "deadline").write_text(f"{time.time() + 30:.0f}\n")

    mover = threading.Thread(target=move)
    mover.start()
    status = table6.drive(plan, parallel=1, budget_s=1.5, log_dir=logs, poll_s=0.1)
    mover.join()
    assert status["stopped_at_budget"] == [] and len(status["finished_this_call"]) == 1
    # ~30 s left (the mover rounds to whole seconds, so 29 or 30 is printed), printed once
    moves = re.findall(r"deadline moved: (\d+) s left", capsys.readouterr().out)
    assert len(moves) == 1 and 25 <= int(moves[0]) <= 31, moves
    assert table6.read_deadline(logs / "missing", 5.0) == 5.0
    (logs / "deadline").write_text("not a number")
    assert table6.read_deadline(logs / "deadline", 5.0) == 5.0


def test_no_job_starts_after_start_until_s(tmp_path):
    plan = table6.Plan(name="t6", experiment=None, norms=("pre",), seeds=(0,), grid=(1e-3, 2e-3), sweep_steps=4,
                       max_extend=0, run_root=tmp_path / "runs")
    status = table6.drive(plan, parallel=2, budget_s=60, log_dir=tmp_path / "logs", poll_s=0.1, start_until_s=0)
    assert status["finished_this_call"] == [] and status["stopped_at_budget"] == [] and len(status["left"]) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # 7-20 s end to end; the fast tier covers the module with quicker tests
def test_no_job_starts_with_less_time_left_than_a_finished_one_took(tmp_path, monkeypatch, capsys):
    """After a job finishes, one of its stage starts only if the time left is at least what the finished one took;
    a job that exits 0 without finishing (stopped from outside) is logged as unfinished, not done."""
    fake_root = tmp_path / "repo"
    fake_root.mkdir()
    # A fake job sleeps SLEEP seconds, then marks itself done unless UNFINISHED is set.
    (fake_root / "run.py").write_text(
        "import os, sys, time\n"
        "lr = next(a.split('=')[1] for a in sys.argv if a.startswith('trainer.lr='))\n"
        "time.sleep(float(os.environ['SLEEP']))\n"
        "os.environ.get('UNFINISHED') or open(f'done_{lr}', 'w').close()\n"
    )
    monkeypatch.setattr(table6, "ROOT", fake_root)
    monkeypatch.setattr(table6, "JOB_ENV", {**os.environ, "SLEEP": "8"})
    monkeypatch.setattr(table6, "is_done", lambda plan, job: (fake_root / f"done_{table6.fmt_lr(job.lr)}").exists())
    plan = table6.Plan(name="t6", experiment=None, norms=("pre",), seeds=(0,), grid=(1e-3, 2e-3), sweep_steps=4,
                       max_extend=0, run_root=tmp_path / "runs")
    # The first job takes 8 s: it ends with less than 14 - 8 = 6 s left, so the second does not start.
    status = table6.drive(plan, parallel=1, budget_s=14.0, log_dir=tmp_path / "logs", poll_s=0.1)
    out = capsys.readouterr().out
    assert (fake_root / "done_0.001").exists() and not (fake_root / "done_0.002").exists()
    assert "done rc=0 in 8 s" in out and "not starting" in out and "the shortest sweep of this drive took 8 s" in out
    assert status["stopped_at_budget"] == [] and len(status["left"]) == 1

    monkeypatch.setattr(table6, "JOB_ENV", {**os.environ, "SLEEP": "0", "UNFINISHED": "1"})
    table6.drive(plan, parallel=1, budget_s=20.0, log_dir=tmp_path / "logs2", poll_s=0.1, start_until_s=1.0)
    assert "ended unfinished rc=0" in capsys.readouterr().out


def test_a_job_out_of_gpu_memory_beside_others_is_queued_again_with_fewer_at_once(tmp_path, monkeypatch, capsys):
    """Four MoDA runs at once overran an 80 GiB H100 (2026-12-06): the run out of memory beside others is run
    again once fewer share the GPU; one out of memory alone has failed."""
    fake_root = tmp_path / "repo"
    fake_root.mkdir()
    # lr 2e-3 runs out of memory on its first launch; lr 1e-3 takes 2 s. lr 4e-3 always runs out of memory.
    (fake_root / "run.py").write_text(
        "import os, sys, time\n"
        "lr = next(a.split('=')[1] for a in sys.argv if a.startswith('trainer.lr='))\n"
        "if lr == '0.004' or (lr == '0.002' and not os.path.exists('oom_once')):\n"
        "    open('oom_once', 'w').close()\n"
        "    sys.exit('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.07 GiB.')\n"
        "time.sleep(2 if lr == '0.001' else 0)\n"
        "open(f'done_{lr}', 'w').close()\n"
    )
    monkeypatch.setattr(table6, "ROOT", fake_root)
    monkeypatch.setattr(table6, "is_done", lambda plan, job: (fake_root / f"done_{table6.fmt_lr(job.lr)}").exists())
    plan = table6.Plan(name="t6", experiment=None, norms=("pre",), seeds=(), grid=(1e-3, 2e-3), sweep_steps=4,
                       max_extend=0, run_root=tmp_path / "runs")
    status = table6.drive(plan, parallel=2, budget_s=60.0, log_dir=tmp_path / "logs", poll_s=0.1)
    out = capsys.readouterr().out
    assert (fake_root / "done_0.001").exists() and (fake_root / "done_0.002").exists()
    assert "out of GPU memory beside 1 other run(s): queued again, at most 1 at once from now" in out
    assert status["failed"] == {} and status["left"] == [] and status["parallel_at_end"] == 1

    alone = table6.Plan(**{**plan.__dict__, "grid": (4e-3,)})
    status = table6.drive(alone, parallel=2, budget_s=60.0, log_dir=tmp_path / "logs2", poll_s=0.1)
    assert list(status["failed"].values()) == [1] and "queued again" not in capsys.readouterr().out


def test_rows_that_evaluate_do_not_start_where_lm_eval_does_not_import(plan, monkeypatch, capsys):
    """The GPU image has no `datasets`: a row evaluating after fit would train for minutes, then fail. The driver
    says so once and starts no row; the sweeps still run."""
    plan = table6.Plan(**{**plan.__dict__, "norms": ("post",), "seeds": (0,), "evaluate": True})
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.0), (4e-3, 4.5)):
        fake_run(plan, table6.Job("sweep", "post", lr), curve(loss))
    monkeypatch.setattr(table6, "eval_import_error", lambda: "ModuleNotFoundError: No module named 'datasets'")
    started = []
    monkeypatch.setattr(table6.subprocess, "Popen", lambda *a, **k: started.append(a) or None)
    status = table6.drive(plan, parallel=2, budget_s=30.0, log_dir=plan.run_root / "logs", poll_s=0.01)
    out = capsys.readouterr().out
    assert started == [] and "lm-eval does not import here (ModuleNotFoundError" in out and "no row starts" in out
    assert "datasets" in status["rows_held"] and len(status["left"]) == 2  # the two rows (moda, residual)


def test_rows_go_norm_by_norm_and_a_row_whose_eval_was_lost_is_not_trained_again(plan):
    """Both norms chosen: every seed of the first norm before the second. A row that finished training but not its
    eval, with its checkpoint gone (a fresh machine), counts as done and is listed; with the checkpoint there, its
    eval is still to run."""
    evaluating = table6.Plan(**{**plan.__dict__, "evaluate": True})
    for norm in evaluating.norms:
        for lr in evaluating.grid:
            fake_run(evaluating, table6.Job("sweep", norm, lr), curve(5.0 + abs(lr - 2e-3)))
    todo, choices = table6.plan_jobs(evaluating)
    assert [(j.norm, j.seed, j.model) for j in todo] == [
        (n, s, m) for n in ("post", "pre") for s in (0, 1) for m in ("moda", "residual")
    ]
    lost = table6.Job("row", "post", 2e-3, "moda", 0)
    fake_run(evaluating, lost, curve(4.0))
    assert table6.is_done(evaluating, lost)
    ckpt = evaluating.run_dir(lost) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    assert not table6.is_done(evaluating, lost)  # the eval can still run from it
    ckpt.unlink()
    status = table6.drive(evaluating, parallel=1, budget_s=30, log_dir=evaluating.run_root / "logs", poll_s=0.1,
                          start_until_s=0)
    assert status["eval_lost"] == [str(evaluating.run_dir(lost))]
    assert str(evaluating.run_dir(lost)) not in status["left"]
    todo, choices = table6.plan_jobs(evaluating)
    text = table6.describe_plan(evaluating, todo, choices)
    assert "post moda at 0.002: done seeds [0] (trained, no evaluation: seeds [0]), left [1]" in text, text
    assert "post residual at 0.002: done seeds -, left [0, 1]" in text, text


FAKE_DRIVER = """import json, os, sys, time
args = sys.argv[1:]
print("driver up", os.getpid(), flush=True)
time.sleep(float(os.environ["FAKE_DRIVER_S"]))
log_dir = args[args.index("--log-dir") + 1]
json.dump({"args": args}, open(os.path.join(log_dir, "status.json"), "w"))
print("driver done", flush=True)
"""


@pytest.mark.slow  # the real table6.sh over several calls of a stand-in repo
def test_gpu_call_driver_outlives_the_call_and_later_calls_collect(tmp_path):
    """table6.sh on a stand-in repo (the real script, a fake table6.py): the driver survives the end of the call
    that started it (the device tool kills the call's process group), the next call waits for it and brings back
    its status and the run dirs, a call after its end starts no other, and committed runs never overwrite what the
    machine holds."""
    import os
    import shutil
    import signal
    import subprocess
    import tarfile
    import time

    repo = tmp_path / "repo"
    (repo / "experiments" / "gpu").mkdir(parents=True)
    for name in ("table6.sh", "table6_chain.sh", "env.sh"):
        shutil.copy(ROOT / "experiments" / "gpu" / name, repo / "experiments" / "gpu" / name)
    (repo / "experiments" / "gpu" / "table6.py").write_text(FAKE_DRIVER)
    (repo / "data" / "packed" / "abc").mkdir(parents=True)
    (repo / "data" / "eval").mkdir()
    # Committed: the sweep's archive (runs a, b) and a dated snapshot of it (run c), which is not extracted.
    for root, text, runs in ((tmp_path / "committed", "committed", "ab"), (tmp_path / "snapshot", "old", "c"),
                             (repo / "runs_gpu", "on machine", "a")):
        for run in runs:
            (root / "t6" / run).mkdir(parents=True)
            (root / "t6" / run / "meta.json").write_text(text)
    pack(tmp_path / "committed" / "t6", repo / "experiments" / "results" / "runs_gpu" / "t6.tar.xz")
    pack(tmp_path / "snapshot" / "t6", repo / "experiments" / "results" / "runs_gpu" / "t6.2026-01-01.tar.xz")
    # A committed record of an earlier machine's GPU tests must not stop this machine's (it once would have).
    (repo / "experiments" / "results" / "runs_gpu" / "gpu_tests.txt").write_text("an earlier machine's tests\n")
    (repo / "tests" / "gpu").mkdir(parents=True)
    # One stand-in test fails: its error comes back in a file of its own, written as it happened (failure_log.py).
    (repo / "tests" / "gpu" / "test_stand_in.py").write_text(
        "def test_ok():\n    pass\n\ndef test_broken():\n    assert 0, 'stand-in failure'\n")
    shutil.copy(ROOT / "tests" / "failure_log.py", repo / "tests" / "failure_log.py")
    (repo / "tests" / "conftest.py").write_text("from failure_log import pytest_runtest_logreport  # noqa: F401\n")
    # The runs' compile artifacts come back gzipped with every call, files still over 15 MiB listed instead (random
    # bytes do not compress); a carried <key>.bin.gz is unpacked before the jobs start.
    import gzip

    (repo / ".compile_cache").mkdir()
    (repo / ".compile_cache" / "small.bin").write_bytes(b"artifacts")
    (repo / ".compile_cache" / "big.bin").write_bytes(os.urandom(15 * 2**20))
    (repo / ".compile_cache" / "carried.bin.gz").write_bytes(gzip.compress(b"from an earlier call"))
    driver_dir = tmp_path / "driver"
    env = {**os.environ, "TABLE6_DRIVER_DIR": str(driver_dir), "FAKE_DRIVER_S": "6", "PYTHONPATH": "",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "GPU_TESTS": "tests/gpu/test_stand_in.py",
           "AFTER_ROWS": 'test -f "$DRIVER/status.json" && echo bench row > "$AFTER_ROWS_OUT/bench.md"'}

    def call(out: str, wait_s: int, new_session: bool = False) -> subprocess.Popen:
        (tmp_path / out).mkdir()
        return subprocess.Popen(["bash", "experiments/gpu/table6.sh", "--norms", "post"], cwd=repo,
                                env={**env, "OUT": str(tmp_path / out), "WAIT_S": str(wait_s)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=new_session)

    first = call("out1", 1, new_session=True)
    log = first.communicate(timeout=60)[0]
    assert "driver" in log and "compile cache: big.bin not brought back: " in log and "gzipped, over 15 MiB" in log
    back = tmp_path / "out1" / "compile_cache"
    assert sorted(p.name for p in back.iterdir()) == ["carried.bin.gz", "small.bin.gz"]
    assert gzip.decompress((back / "small.bin.gz").read_bytes()) == b"artifacts"
    assert (repo / ".compile_cache" / "carried.bin").read_bytes() == b"from an earlier call"
    assert not (repo / ".compile_cache" / "carried.bin.gz").exists()
    assert "1 passed" in _call_file(tmp_path / "out1", "gpu_tests.txt")  # ran once on this machine, came back
    assert len([p for p in (tmp_path / "out1").rglob("*") if p.is_file()]) <= 8  # what a call may bring back
    if _group_alive(first.pid):  # what the device tool does to a finished call
        os.killpg(first.pid, signal.SIGKILL)
    pid = int((driver_dir / "pid").read_text())
    os.kill(pid, 0)  # still running after its call ended
    second = call("out2", 60)
    log = second.communicate(timeout=90)[0]
    assert "running since" in log and "driver done" in log
    driver_args = json.loads(_call_file(tmp_path / "out2", "status.json"))["args"]
    assert driver_args[:2] == ["--norms", "post"] and "trainer.compile_cache=.compile_cache" in driver_args
    with tarfile.open(tmp_path / "out2" / "runs.tar.gz") as tar:
        names = set(tar.getnames())
        meta_a = tar.extractfile("runs_gpu/t6/a/meta.json").read().decode()
        meta_b = tar.extractfile("runs_gpu/t6/b/meta.json").read().decode()
    assert {"runs_gpu/t6/a/meta.json", "runs_gpu/t6/b/meta.json"} <= names and "runs_gpu/t6/c/meta.json" not in names
    assert (meta_a, meta_b) == ("on machine", "committed")
    assert _call_file(tmp_path / "out2", "after_rows/bench.md") == "bench row\n"  # ran after the rows, came back
    time.sleep(0.5)
    third = call("out3", 5)
    log = third.communicate(timeout=60)[0]
    assert "collecting only" in log and log.count("driver up") == 1  # the first driver's log, brought back again
    assert "1 failed, 1 passed" in _call_file(tmp_path / "out3", "gpu_tests.txt")  # every call brings it back
    failures = _call_file(tmp_path / "out3", "gpu_test_failures.txt")
    assert failures.startswith("=== tests/gpu/test_stand_in.py::test_broken (call)") and "stand-in failure" in failures
    assert (driver_dir / "gpu_tests.txt").read_text().count("passed") == 1  # and the tests ran once
    assert int((driver_dir / "pid").read_text()) == pid  # no second driver


def _call_file(out: Path, name: str) -> str:
    """A call's small file, which comes back inside runs.tar.gz under call/."""
    import tarfile

    with tarfile.open(out / "runs.tar.gz") as tar:
        return tar.extractfile(f"call/{name}").read().decode()


def _group_alive(pgid: int) -> bool:
    import os

    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_unpack_adds_finished_runs_to_the_archive_and_keeps_committed_ones(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("unpack_runs", ROOT / "experiments" / "gpu" / "unpack_runs.py")
    unpack_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unpack_runs)

    def run_dir(root: Path, name: str, status: str, step: int, text: str = "new") -> None:
        d = root / "runs_gpu" / "t6" / name
        (d / "checkpoints").mkdir(parents=True)
        (d / "checkpoints" / "last.ckpt").write_text("weights")
        (d / "meta.json").write_text(json.dumps({"status": status, "global_step": step}))
        (d / "config.yaml").write_text("trainer:\n  max_steps: 8\n")
        (d / "metrics.jsonl").write_text(text)

    machine = tmp_path / "machine"
    run_dir(machine, "done", "finished", 8)
    run_dir(machine, "cut", "running", 5)
    run_dir(machine, "committed", "finished", 8)
    (machine / "runs_gpu" / "t6" / "lr_choice.json").write_text('{"post": 2, "pre": 3}')
    with tarfile.open(tmp_path / "runs.tar.gz", "w:gz") as tar:
        tar.add(machine / "runs_gpu", "runs_gpu")
    into = tmp_path / "results"
    run_dir(tmp_path / "before", "committed", "finished", 8, text="old")
    (tmp_path / "before" / "runs_gpu" / "t6" / "lr_choice.json").write_text('{"post": 1, "reordered": 4}')
    archive = into / "runs_gpu" / "t6.tar.xz"
    pack(tmp_path / "before" / "runs_gpu" / "t6", archive)
    report = unpack_runs.main([str(tmp_path / "runs.tar.gz"), "--into", str(into)])
    assert report["copied"] == ["runs_gpu/t6/done"] and report["kept"] == ["runs_gpu/t6/committed"]
    assert report["unfinished"] == ["runs_gpu/t6/cut (step 5)"] and report["files"] == ["runs_gpu/t6/lr_choice.json"]
    runs = open_archive(archive)
    assert sorted(p.name for p in runs.iterdir()) == ["committed", "done", "lr_choice.json"]
    assert (runs / "committed" / "metrics.jsonl").read_text() == "old"
    # the call's driver chose its cells from every committed run plus its own: its entries win, the others stay
    assert json.loads((runs / "lr_choice.json").read_text()) == {"post": 2, "reordered": 4, "pre": 3}
    assert not (runs / "done" / "checkpoints").exists()
    assert sorted(p.name for p in (into / "runs_gpu").iterdir()) == ["t6.sha256", "t6.tar.xz"]  # no folder left
    packed = archive.read_bytes()
    again = unpack_runs.main([str(tmp_path / "runs.tar.gz"), "--into", str(into)])
    assert again["copied"] == again["files"] == [] and archive.read_bytes() == packed  # nothing new: unchanged


def test_repeated_override_options_accumulate():
    """table6.sh passes data.packed_dir in its own --extra before the caller's arguments."""
    args = table6.build_parser().parse_args(["--extra", "data.packed_dir=p", "--norms", "post", "--extra", "a.b=1",
                                             "--row-extra", "x=1", "--row-extra", "y=2"])
    plan = table6.plan_from_args(args)
    assert plan.extra == ("data.packed_dir=p", "a.b=1") and plan.row_extra[-2:] == ("x=1", "y=2")


def test_plan_prints_the_choices_the_rows_left_per_cell_and_the_jobs_left(plan, capsys):
    """--plan launches nothing: it says which lr each cell chose, which seeds each cell still needs and every job
    left, in launch order (what a closing note lists as the cells that remain)."""
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.0), (4e-3, 4.5)):
        fake_run(plan, table6.Job("sweep", "post", lr), curve(loss))
    fake_run(plan, table6.Job("row", "post", 2e-3, "residual", 1), curve(3.0))
    text = table6.describe_plan(plan, *table6.plan_jobs(plan))
    assert "  post: 0.002\n" in text and "  pre: not chosen yet (its sweep has runs left)" in text
    assert "  post residual at 0.002: done seeds [1], left [0]" in text
    assert "  post moda at 0.002: done seeds -, left [0, 1]" in text
    assert "  pre residual: lr not chosen yet; 2 rows left" in text
    assert text.endswith("jobs left, in launch order (6):\n  sweep pre residual lr 0.001\n  sweep pre residual lr "
                         "0.002\n  sweep pre residual lr 0.004\n  row post moda lr 0.002 seed 0\n  row post residual "
                         "lr 0.002 seed 0\n  row post moda lr 0.002 seed 1")
    args = ["--plan", "--run-root", str(plan.run_root), "--name", "t6", "--experiment", "", "--norms", "post",
            "--seeds", "0,1", "--models", "moda,residual", "--grid", "1e-3,2e-3,4e-3", "--sweep-steps", "4"]
    assert len(table6.main(args)["left"]) == 3  # post only: its three rows left
    # From the command line the rows evaluate after fit, and this one has neither an evaluation nor a checkpoint.
    out = capsys.readouterr().out
    assert "  post residual at 0.002: done seeds [1] (trained, no evaluation: seeds [1]), left [0]" in out


# What a GPU call carries besides the working tree, measured 2026-12-07: .whl (experiments/gpu/fetch_wheels.sh,
# 3,244,361 bytes with lm-eval's bundled tasks left out), data/eval.tar.xz (4,718,660 bytes) and two compile-cache
# files (.compile_cache, up to 5,171,641 bytes each gzipped: a variant's compile saves ~180 s of each row of it);
# the device tool takes 64 MiB a call in all.
CALL_BYTES = 64 * 2**20
CARRIED_BESIDE_TREE = 3_244_361 + 4_718_660 + 2 * 5_171_641
MARGIN = 2 * 2**20


def test_the_tracked_tree_leaves_room_for_a_gpu_calls_wheels_and_eval_data():
    """Every tracked file travels with each GPU call; results archives grow with every row (~0.2 MB an evaluated
    Table 6 row). Past this, a call could not carry its wheels, the eval data and two compile-cache files, and
    would fail at the start."""
    import subprocess

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    paths = [ROOT / n.decode() for n in names if n]
    tree = sum(p.stat().st_size for p in paths if p.is_file())
    room = CALL_BYTES - CARRIED_BESIDE_TREE - MARGIN
    assert tree <= room, (f"the tracked tree is {tree / 2**20:.1f} MiB, over the {room / 2**20:.1f} MiB a GPU call "
                          "leaves it; compact results archives (experiments/results/README.md) before adding more")


def test_a_given_deadline_file_is_read_never_written(tmp_path, monkeypatch, capsys):
    """With --deadline-file (table6_chain.sh passes table6.sh's), the driver takes the lease's deadline from it, so
    a move that lands while the driver starts is not overwritten, and it writes no deadline of its own."""
    plan = _three_second_job(tmp_path, monkeypatch)
    lease = tmp_path / "deadline"
    lease.write_text(f"{time.time() + 30:.0f}\n")  # moved to 30 s before the driver read it; its budget says 1.5
    status = table6.drive(plan, parallel=1, budget_s=1.5, log_dir=tmp_path / "logs", poll_s=0.1,
                          deadline_file=lease)
    assert status["stopped_at_budget"] == [] and len(status["finished_this_call"]) == 1
    assert not (tmp_path / "logs" / "deadline").exists()
    assert float(lease.read_text()) == pytest.approx(time.time() + 30, abs=10)
    assert "deadline moved" not in capsys.readouterr().out  # read at the start, not reported as a move
