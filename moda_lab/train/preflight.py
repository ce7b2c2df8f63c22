"""Check every job of a command line before Hydra creates a run dir: a config error writes nothing.

Hydra makes each job's output dir (with .hydra/ and run.log) before the task function runs, so errors found
inside the task leave stub run dirs behind. ``check_command_line`` composes each job the way Hydra will (the same
config dir and overrides, sweeps expanded like Hydra's basic sweeper) and validates it: every group choice
(``experiment=`` too, which Hydra skips silently as an optional default), the RunConfig, the device, the data
paths, the eval section, a run_root that cannot be written, a run dir another launch is training in, and a
relaunch into an existing run dir. Nothing here writes a file.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from ..config import ConfigError, run_config_from_dict
from ..errors import UsageError
from ..rundir import RunDir, RunLock

# Flags after which Hydra prints or composes something else than this app's jobs: nothing to check.
_OTHER_MODES = ("help", "hydra_help", "version", "cfg", "info", "shell_completion", "experimental_rerun")
_MAX_JOBS = 512  # larger sweeps are checked job by job as they start


def _jobs(overrides: list[str], multirun: bool) -> list[tuple[list[str], str]] | None:
    """(each job's override list in Hydra's basic sweeper order, its swept values as a label), or None when
    Hydra itself should report."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra prints its own message for a malformed override
        return None
    choices, swept = [], []
    for o in parsed:
        if o.is_sweep_override():
            if not multirun:
                return None  # Hydra refuses sweeps without -m and says so
            try:
                key = o.get_key_element()
                choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
                swept.append(len(choices) - 1)
            except Exception:  # interval sweeps and other sweeper-specific syntax
                return None
        else:
            choices.append([o.input_line])
    jobs = [list(job) for job in itertools.islice(itertools.product(*choices), _MAX_JOBS + 1)]
    if len(jobs) > _MAX_JOBS:
        return None
    return [(job, ",".join(job[i] for i in swept)) for job in jobs]


def _run_dir(cfg, multirun: bool) -> Path | None:
    HydraConfig.instance().set_config(cfg)
    try:
        if multirun:
            return Path(OmegaConf.select(cfg, "hydra.sweep.dir")) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        return Path(OmegaConf.select(cfg, "hydra.run.dir"))
    except Exception:  # a hydra.* override this check cannot resolve: the task checks the run dir itself
        return None


def check_job(cfg, multirun: bool, data_checked: set | None = None) -> Path | None:
    """Validate one composed job config (with its hydra section); raise ConfigError. Data settings already in
    data_checked (jobs of one sweep mostly share them) are not walked again. Returns the job's run dir (None where
    a hydra.* override hides it)."""
    from ..eval import eval_config_from_dict
    from ..rundata import check_data
    from .task import check_accelerator

    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(task_cfg, resolve=True)
    run = run_config_from_dict(resolved)
    check_accelerator(run.trainer.accelerator, run.trainer.cudagraphs, run.model.attn_backend)
    data_key = (run.data, run.model.vocab_size)
    if data_checked is None or data_key not in data_checked:
        check_data(run)
        if data_checked is not None:
            data_checked.add(data_key)
    if run.extra.get("eval", {}).get("after_fit"):
        try:
            eval_config_from_dict(run.extra["eval"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    run_dir = _run_dir(cfg, multirun)
    if run_dir is None:
        return None
    _check_writable(run_dir, run.run_root)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP children re-run this command inside the parent's lock
        RunLock(run_dir).check()
    RunDir(run_dir).check_relaunch(resolved)
    return run_dir


def _check_writable(run_dir: Path, run_root: str) -> None:
    """The run dir, or the nearest existing folder above it, must be a writable directory."""
    from .task import RunDirWriteError

    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run_root={run_root!r}: {existing} is not a directory; allowed: a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirWriteError(
            f"cannot write {run_dir}: {existing} is read-only for this user; nothing was written; "
            f"set run_root= to a writable directory (now run_root={run_root!r})"
        )


def _check_group_choices(overrides: list[str]) -> None:
    """A config group's choice must name one of its files. Hydra reports a missing one for required groups, but
    not for optional defaults such as ``experiment``: experiment=depth_flw would train the default model."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    for o in OverridesParser.create().parse_overrides(overrides):
        value = o.value()
        if o.is_delete() or not isinstance(value, str):
            continue
        group = o.key_or_group
        options = [x for x in loader.get_group_options(group) if not x.startswith("_")]
        if options and value not in options:
            raise ConfigError(f"{group}={value} is not allowed; choose one of {options}")


def check_command_line(argv: list[str], config_dir: str | Path, config_name: str = "config") -> None:
    """Compose and validate every job argv describes; raise ConfigError naming the job and the key.

    Command lines this cannot mirror (other config dirs or names, --cfg/--help, sweeper plugins' syntax) are left
    to Hydra and to the task's own checks.
    """
    from hydra._internal.utils import get_args_parser  # Hydra's own command-line grammar

    args, _ = get_args_parser().parse_known_args(argv)
    modes = [
        flag
        for flag, on in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg), ("--info", args.info))
        if on
    ]
    if len(modes) > 1:  # Hydra refuses this too, with a traceback
        raise ConfigError(f"{' and '.join(modes)} cannot be combined; give one of --run, -m/--multirun, --cfg, --info")
    if any(getattr(args, a, None) for a in _OTHER_MODES) or args.config_path or args.config_name or args.config_dir:
        return
    jobs = _jobs(args.overrides, args.multirun)
    if jobs is None:
        return
    data_checked: set = set()
    run_dirs: dict[Path, str] = {}  # a sweep's run dir -> the first job that trains it
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        for job, label in jobs:
            where = f" (job {label})" if label else ""
            try:
                _check_group_choices(job)
            except ConfigError as err:
                raise ConfigError(f"{err}{where}") from None
            try:
                cfg = compose(config_name=config_name, overrides=job, return_hydra_config=True)
            except MissingConfigException as err:  # model=moda_typo: the options of that group, on one line
                group, _, name = str(err.missing_cfg_file).rpartition("/")
                options = [o for o in (err.options or []) if not o.startswith("_")]
                raise ConfigError(f"{group}={name} is not allowed; choose one of {options}") from None
            except ConfigCompositionException as err:  # e.g. overriding a key that does not exist
                raise ConfigError(" ".join(str(err).split("\n"))) from None
            except Exception:  # anything else Hydra reports itself
                return
            try:
                run_dir = check_job(cfg, args.multirun, data_checked)
            except UsageError as err:
                raise type(err)(f"{err}{where}") from None
            if run_dir is not None and run_dir in run_dirs:
                # A swept key that does not name a run (trainer.max_steps, data.val_windows ...): the later job
                # would resume the earlier one's run and overwrite its result, its lr schedule restarted.
                raise ConfigError(
                    f"jobs {run_dirs[run_dir]} and {label} would train the same run dir {run_dir}: what they differ "
                    "in does not name a run (rundir.RUN_INDEPENDENT_KEYS), so the second would resume the first; "
                    "allowed: sweep those keys in separate commands, or give each job its own name="
                )
            if run_dir is not None:
                run_dirs[run_dir] = label


def exit_on_config_error(err: Exception) -> None:
    """One line on stderr, exit status 2: the message names the key (or file), the value and what is allowed.
    Config errors say "config error:"; faults of the run dir or of training (moda_lab.errors.UsageError) "error:"."""
    from ..errors import exit_usage
    from ..rundir import DamagedRunFile, RunDirLocked
    from .divergence import DivergedError
    from .task import RunDirWriteError

    faults = (RunDirLocked, RunDirWriteError, DivergedError, DamagedRunFile)
    exit_usage(err, "error" if isinstance(err, faults) else "config error")
