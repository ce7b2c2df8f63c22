"""Evaluate one checkpoint the way the paper does: downstream tasks (lm-eval) and per-domain perplexity.

Outputs, one folder per evaluation (evaluation_name: the checkpoint's step and the settings that change the
numbers): ``<run dir or exported folder>/eval/<checkpoint stem>/<evaluation name>/results.json`` (lm-eval's
results dict plus the eval config, perplexity and timing) and ``samples_<task>.jsonl`` (one line per example);
for checkpoints inside a run dir and full evaluations (no eval.limit, no task file short of its full split), rows
appended to the run's metrics.jsonl (``eval/<task>/acc``, ``eval/<task>/acc_norm``, ``eval/<task>/n``: the examples
scored, ``eval/<domain>/ppl``, ``eval/<domain>/bpb``) and, when the run logged to wandb, the same keys logged into
that wandb run (resumed by id). No Hydra here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ConfigError, WandbConfig, from_dict
from ..errors import UsageError
from ..load import resolve_checkpoint
from ..rundir import RunDir
from .device import check_device
from .precision import PRECISIONS
from .tasks import DATA_ENV, SPLIT_SIZES, TASK_DIR, TASK_FIELDS, TASK_PREFIX, data_dir, lm_eval_name, task_file

log = logging.getLogger(__name__)

TASKS = tuple(TASK_FIELDS)
REPORTED_METRICS = ("acc", "acc_norm")


class EvalConfigError(UsageError):
    """An eval.* setting is invalid; the message names the key."""


PPL_SPLITS = ("heldout", "all")


@dataclass(frozen=True)
class PerplexityConfig:
    domains: dict[str, str] | str = field(default_factory=dict)  # {name: file or dir}, or a corpus dir
    split: str = "heldout"  # heldout: the documents the run held out of the corpus dir; all: every document
    max_documents: int | None = None  # per domain
    val_fraction: float | None = None  # heldout: None = the run's data.val_fraction (<run dir>/config.yaml)


@dataclass(frozen=True)
class EvalConfig:
    after_fit: bool = False  # run.py: evaluate the run's last checkpoint after training
    tasks: tuple[str, ...] = TASKS
    data_dir: str | None = None  # holds <task>.jsonl; None: $MODA_EVAL_DATA or <repo>/../shared/data/eval
    batch_size: int | str = 8  # or "auto": the largest power of two that fits on the GPU (ModaLM)
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # fp32, bf16, or auto: bf16 autocast on CUDA (as the models trained), else fp32
    limit: int | None = None  # examples per task (quick checks); None: all
    max_length: int | None = None  # context for scoring; None: model.max_seq_len
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    # After fit: the attention mass on depth slots and on the first token per layer and head, over this many
    # validation windows per domain (attention_stats.py; 0: off). Not part of the task results.
    attention_windows: int = 0
    # Set by eval_config_from_dict for tasks=all: {task: missing file} of the paper tasks left out.
    missing_tasks: dict[str, str] = field(default_factory=dict)


def eval_config_from_dict(d: dict | None) -> EvalConfig:
    """Strict conversion of the eval section (unknown keys, bad task names and missing data are errors)."""
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(EvalConfig)} - {"missing_tasks"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise EvalConfigError(f"unknown key(s) eval.{unknown[0]} (all unknown: {unknown}); known: {sorted(known)}")
    ppl = dict(d.pop("perplexity", None) or {})
    ppl_known = {f.name for f in dataclasses.fields(PerplexityConfig)}
    if set(ppl) - ppl_known:
        raise EvalConfigError(
            f"unknown key(s) eval.perplexity.{sorted(set(ppl) - ppl_known)}; known: {sorted(ppl_known)}"
        )
    tasks = d.get("tasks", TASKS)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    every = list(tasks) == ["all"]
    tasks = tuple(TASKS if every else tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise EvalConfigError(f"eval.tasks: unknown task(s) {bad}; available: {list(TASKS)} (or 'all')")
    if every:
        d["missing_tasks"] = missing_task_files(tasks, d.get("data_dir"))
        tasks = tuple(t for t in tasks if t not in d["missing_tasks"])
        if not tasks:
            raise EvalConfigError(
                f"eval.tasks=all: no task file in {str(data_dir(d.get('data_dir')).resolve())!r}; set eval.data_dir "
                f"(or the environment variable {DATA_ENV}) to the directory holding <task>.jsonl"
            )
        if d["missing_tasks"]:
            log.warning(missing_tasks_message(d["missing_tasks"]))
    d["tasks"] = tasks
    windows = d.get("attention_windows", 0)
    if not isinstance(windows, int) or isinstance(windows, bool) or windows < 0:
        raise EvalConfigError(f"eval.attention_windows must be an integer >= 0 (0: off), got {windows!r}")
    for key in ("batch_size", "limit", "max_length"):
        v = d.get(key)
        if key == "batch_size" and v == "auto":
            continue
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise EvalConfigError(
                f"eval.{key} must be a positive integer{' or null' if key != 'batch_size' else ' or auto'}, got {v!r}"
            )
    if ppl.get("max_documents") is not None and (not isinstance(ppl["max_documents"], int) or ppl["max_documents"] < 1):
        raise EvalConfigError(
            f"eval.perplexity.max_documents must be a positive integer or null, got {ppl['max_documents']!r}"
        )
    split = ppl.get("split", "heldout")
    if split not in PPL_SPLITS:
        raise EvalConfigError(f"eval.perplexity.split={split!r} is not allowed; choose one of {list(PPL_SPLITS)}")
    if split == "heldout" and isinstance(ppl.get("domains"), dict) and ppl["domains"]:
        raise EvalConfigError(
            "eval.perplexity.split=heldout re-derives the documents a run held out of its corpus dir: give "
            "eval.perplexity.domains=<corpus dir> (its subdirectories are the domains), or score files of your "
            "own whole with eval.perplexity.split=all"
        )
    vf = ppl.get("val_fraction")
    if vf is not None and (isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1):
        raise EvalConfigError(f"eval.perplexity.val_fraction must be in (0, 1) or null, got {vf!r}")
    precision = d.get("precision", "auto")
    if precision not in PRECISIONS:
        raise EvalConfigError(f"eval.precision={precision!r} is not allowed; choose one of {list(PRECISIONS)}")
    check_device(d.get("device", "auto"), "eval.device", EvalConfigError)  # before hours of training (run.py)
    if ppl.get("domains") is None:
        ppl["domains"] = {}
    cfg = EvalConfig(**d, perplexity=PerplexityConfig(**ppl))
    check_task_data(cfg)
    if cfg.perplexity.domains:
        from .perplexity import domain_files

        try:
            domain_files(cfg.perplexity.domains)
        except FileNotFoundError as err:
            raise EvalConfigError(str(err)) from None
    return cfg


def missing_task_files(tasks: tuple[str, ...], root: str | None) -> dict[str, str]:
    """{task: its expected file} for each task whose JSONL is absent from the data dir."""
    return {t: str(task_file(t, root)) for t in tasks if not task_file(t, root).is_file()}


def missing_tasks_message(missing: dict[str, str]) -> str:
    return (
        f"eval.tasks=all: NOT EVALUATED (data file missing): {', '.join(missing)}. "
        f"Expected: {', '.join(missing.values())}"
    )


def check_task_data(cfg: EvalConfig) -> None:
    """Every selected task's JSONL must exist: name the path and how to point elsewhere."""
    missing = list(missing_task_files(cfg.tasks, cfg.data_dir).values())
    if missing:
        raise EvalConfigError(
            f"eval data missing: {missing}. Set eval.data_dir (or the environment variable {DATA_ENV}) to the "
            f"directory holding <task>.jsonl (now {str(data_dir(cfg.data_dir).resolve())!r}), or choose other eval.tasks; "
            "docs/EVAL.md lists the fields each task reads"
        )


def run_val_fraction(src: Path, corpus: str) -> float:
    """data.val_fraction of the run a checkpoint belongs to (<run dir>/config.yaml), checked against its corpus."""
    rundir = RunDir.of_checkpoint(src)
    if rundir is None or not rundir.config_path.is_file():
        raise EvalConfigError(
            f"eval.perplexity.split=heldout needs the run's data.val_fraction, but {src} is not a checkpoint inside a "
            "run dir with config.yaml; set eval.perplexity.val_fraction (or use eval.perplexity.split=all)"
        )
    cfg_path = rundir.config_path
    data = rundir.read_config().get("data") or {}
    if "val_fraction" not in data:
        raise EvalConfigError(f"{cfg_path} has no data.val_fraction; set eval.perplexity.val_fraction")
    if data.get("packed_dir"):
        raise EvalConfigError(
            f"{cfg_path}: the run trained on data.packed_dir={data['packed_dir']!r}, not a corpus dir, so its held-out "
            "documents cannot be re-derived; use eval.perplexity.split=all on a validation file"
        )
    if data.get("corpus_dir") and Path(data["corpus_dir"]).resolve() != Path(corpus).resolve():
        log.warning(
            "eval.perplexity.domains=%s is not the run's data.corpus_dir=%s: its 'held-out' documents were "
            "not necessarily held out of training",
            *(corpus, data["corpus_dir"]),
        )
    return float(data["val_fraction"])


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


# --- where an evaluation's files go ---------------------------------------------------------------------------
# <results_dir>/<evaluation name>/results.json and samples_<task>.jsonl: one folder per evaluation, named by the
# checkpoint's step and the settings that change its numbers, so no evaluation overwrites another. Checkpoints
# evaluated before this layout hold <results_dir>/results.json, read as well (hook.py, analysis/local_runs.py).
RESULTS_FILE = "results.json"


def samples_file(task: str) -> str:
    """samples_<task>.jsonl: one line per scored example (samples_records), beside the evaluation's results."""
    return f"samples_{task}.jsonl"


def result_settings(cfg: EvalConfig, precision: str) -> dict:
    """What changes an evaluation's numbers: the tasks and their data dir, limit, scoring context, precision
    (resolved: fp32 or bf16) and the perplexity settings. Batch size, device and attention_windows do not."""
    return {
        "tasks": list(cfg.tasks),
        "data_dir": str(data_dir(cfg.data_dir).resolve()),
        "limit": cfg.limit,
        "max_length": cfg.max_length,
        "precision": precision,
        "perplexity": dataclasses.asdict(cfg.perplexity),
    }


def evaluation_name(cfg: EvalConfig, step: int | None, precision: str) -> str:
    """``step<N>_<k>tasks_<hash of result_settings>[_limit<L>]`` (``ppl`` for perplexity alone), e.g.
    ``step4000_9tasks_1c0e5b2a`` and ``step4000_2tasks_7f3d9e10_limit100``."""
    settings = json.dumps(result_settings(cfg, precision), sort_keys=True, default=str)
    parts = [f"step{step}"] if step is not None else []
    parts += [f"{len(cfg.tasks)}tasks" if cfg.tasks else "ppl", hashlib.sha1(settings.encode()).hexdigest()[:8]]
    if cfg.limit:
        parts.append(f"limit{cfg.limit}")
    return "_".join(parts)


def results_dir(checkpoint: str | Path) -> Path:
    """<run dir>/eval/<ckpt stem> for run checkpoints, <folder>/eval/<folder name> for exported ones."""
    src = resolve_checkpoint(checkpoint)
    if src.is_dir():
        return src / "eval" / src.name
    rundir = RunDir.of_checkpoint(src)
    return (rundir.path if rundir else src.parent) / "eval" / src.stem


def metric_row(results: dict, ppl: dict) -> dict:
    """Flat eval/<task>/<metric>, eval/<task>/n (the examples scored) and eval/<domain>/{ppl,bpb} floats from
    lm-eval results and perplexity."""
    row = {}
    counts = results.get("n-samples") or {}
    for name, res in results.get("results", {}).items():
        task = name.removeprefix("moda_")
        for metric in REPORTED_METRICS:
            value = res.get(f"{metric},none")
            if isinstance(value, (int, float)):
                row[f"eval/{task}/{metric}"] = float(value)
        scored = (counts.get(name) or {}).get("effective")
        if isinstance(scored, int):
            row[f"eval/{task}/n"] = float(scored)
    for domain, stats in ppl.items():
        row[f"eval/{domain}/ppl"] = float(stats["ppl"])
        row[f"eval/{domain}/bpb"] = float(stats["bpb"])
    return row


def partial_tasks(results: dict, root: str | None) -> dict[str, dict]:
    """{task: {"file", "examples", "full"}} for each task whose file held fewer examples than its full split
    (SPLIT_SIZES): its scores are a partial evaluation, as under eval.limit, never the full task's."""
    out = {}
    for name, counts in (results.get("n-samples") or {}).items():
        task, held = name.removeprefix(TASK_PREFIX), (counts or {}).get("original")
        full = SPLIT_SIZES.get(task)
        if full and isinstance(held, int) and held < full:
            out[task] = {"file": str(task_file(task, root)), "examples": held, "full": full}
    return out


def _log_to_wandb(rundir: RunDir, metrics: dict, step: int | None) -> bool:
    """Resume the run's wandb run (in the mode its training used) and log metrics; False when skipped."""
    meta = rundir.read_meta()
    try:
        wcfg = from_dict(WandbConfig, (rundir.read_config().get("logger") or {}).get("wandb") or {}, "logger.wandb")
    except ConfigError as err:
        log.warning("%s: %s; eval metrics go to %s only", rundir.config_path, err, rundir.metrics_path)
        return False
    if not meta.get("wandb_id") or wcfg.run_mode is None:
        return False  # the run never logged to wandb: do not create a wandb run for it now
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: eval metrics go to %s only", rundir.metrics_path)
        return False
    run = wandb.init(
        id=meta["wandb_id"],
        resume="allow",
        dir=str(rundir.path),
        mode=wcfg.run_mode,
        project=wcfg.project,
        entity=wcfg.entity,
    )
    try:
        # Lightning's WandbLogger plots against trainer/global_step: eval points land on the same x-axis.
        run.log({**metrics, "trainer/global_step": step if step is not None else 0})
    finally:
        wandb.finish()
    return True


def evaluate_checkpoint(checkpoint: str | Path, eval_cfg: EvalConfig | dict, progress: bool = True) -> dict:
    """Evaluate one checkpoint (.ckpt, run dir or exported folder); returns the results dict written to disk."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    from .lm import ModaLM
    from .perplexity import perplexity

    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else eval_config_from_dict(eval_cfg)
    if not cfg.tasks and not cfg.perplexity.domains:
        raise EvalConfigError("nothing to evaluate: eval.tasks is empty and eval.perplexity.domains is empty")
    src = resolve_checkpoint(checkpoint)
    t0 = time.time()
    ppl_cfg = cfg.perplexity
    val_fraction = None
    if ppl_cfg.domains and ppl_cfg.split == "heldout":
        val_fraction = ppl_cfg.val_fraction
        if val_fraction is None:
            val_fraction = run_val_fraction(src, ppl_cfg.domains)
    lm = ModaLM(
        checkpoint=src,
        batch_size=cfg.batch_size,
        device=resolve_device(cfg.device),
        max_length=cfg.max_length,
        precision=cfg.precision,
    )
    t_load = time.time() - t0
    results: dict = {"results": {}}
    if cfg.tasks:
        manager = TaskManager(
            include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(data_dir(cfg.data_dir))}
        )
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[lm_eval_name(t) for t in cfg.tasks],
            task_manager=manager,
            limit=cfg.limit,
            num_fewshot=0,
            log_samples=True,
        ) or {"results": {}}
        log.info("lm-eval results of %s:\n%s", src, make_table(results))
        if results.get("groups"):
            log.info("\n%s", make_table(results, "groups"))
    t_tasks = time.time() - t0 - t_load
    ppl = {}
    if ppl_cfg.domains:
        ppl = perplexity(lm, ppl_cfg.domains, ppl_cfg.max_documents, progress, val_fraction)
        for domain, stats in ppl.items():
            log.info(
                "perplexity %s (%s split, %d documents): ppl %.2f, bpb %.4f, loss %.4f",
                *(domain, ppl_cfg.split, stats["documents"], stats["ppl"], stats["bpb"], stats["loss"]),
            )
    t_ppl = time.time() - t0 - t_load - t_tasks
    row = metric_row(results, ppl)
    partial = partial_tasks(results, cfg.data_dir)
    samples = results.pop("samples", None) or {}
    results["moda"] = {
        "checkpoint": str(src),
        "step": lm.step,
        "eval_config": dataclasses.asdict(cfg),
        "perplexity": ppl,
        "missing_tasks": dict(cfg.missing_tasks),
        "partial_tasks": partial,
        "batch_size": lm.batch_size,
        "device": str(lm.device),
        "precision": lm.precision,
        "metrics": row,
        "timing": {"load_s": t_load, "tasks_s": t_tasks, "perplexity_s": t_ppl, "total_s": time.time() - t0},
    }
    out_dir = results_dir(src) / evaluation_name(cfg, lm.step, lm.precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in samples.items():
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in samples_records(records)]
        _write_atomic(out_dir / samples_file(name.removeprefix("moda_")), "".join(lines))
    # Last: a results.json means the evaluation is complete (the hook's check), its samples beside it.
    text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
    _write_atomic(out_dir / RESULTS_FILE, text)
    log.info("eval results of %s: %s", src, out_dir / RESULTS_FILE)
    if cfg.missing_tasks:
        log.warning(missing_tasks_message(cfg.missing_tasks))

    rundir = RunDir.of_checkpoint(src)
    if rundir is not None and row:
        if cfg.limit:
            log.warning(
                "eval.limit=%d: a partial evaluation (the first %d examples per task), kept in %s only; the run's "
                "metrics.jsonl and wandb get full evaluations alone", cfg.limit, cfg.limit, out_dir
            )
        elif partial:
            short = ", ".join(f"{t} {p['examples']} of {p['full']}" for t, p in partial.items())
            log.warning(
                "task files with fewer examples than the full split (%s): a partial evaluation, kept in %s only; "
                "the run's metrics.jsonl and wandb get full evaluations alone", short, out_dir
            )
        else:
            step = int(lm.step or 0)
            rundir.log_metrics(step, rundir.tokens_at(step), row)
            _log_to_wandb(rundir, row, step)
    return results


DOC_HASH_CHARS = 16  # of lm-eval's 64-hex doc_hash: 64 bits tell two questions apart; the rest cost ~30 B a line


def samples_records(records: list[dict]) -> list[dict]:
    """lm-eval's logged samples of one task, one small record per example in doc_id order: ``doc_id``, ``target``
    (the gold choice's index), ``acc`` and ``acc_norm`` (0/1 where the task reports it), ``pred`` (the choice of
    highest log-likelihood, for multiple choice) and ``doc_hash`` (the first DOC_HASH_CHARS of lm-eval's hash of the
    example): what paired tests between checkpoints read. Per-choice log-likelihoods are not kept: at full
    precision they were ~85% of a compressed Table 6 row (1.6 MB of ten tasks, 27 rows still to come into a
    repository that travels to the GPU machine whole, 64 MiB at most)."""
    out = []
    for r in sorted(records, key=lambda r: r["doc_id"]):
        rec = {"doc_id": r["doc_id"], "target": r.get("target")}
        rec.update({m: r[m] for m in REPORTED_METRICS if m in r})
        resps = r.get("filtered_resps") or []
        if resps and all(isinstance(x, (list, tuple)) and x for x in resps):  # multiple choice: (loglik, is_greedy)
            lls = [float(x[0]) for x in resps]
            rec["pred"] = max(range(len(lls)), key=lls.__getitem__)
        if r.get("doc_hash"):
            rec["doc_hash"] = str(r["doc_hash"])[:DOC_HASH_CHARS]
        out.append(rec)
    return out


def _write_atomic(path: Path, text: str) -> None:
    """A temp file beside path renamed over it: a killed evaluation leaves no torn file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
