"""Hydra entry point: compose the config, train (or resume) one run per job. Logic lives in moda_lab."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from moda_lab.rundir import run_name

OmegaConf.register_new_resolver("run_name", run_name, replace=True)
CONF = Path(__file__).resolve().parent / "conf"


def _pin_argv_to_this_job() -> None:
    """Under -m, Lightning's DDP launcher re-executes sys.argv in each child process, which would re-run the
    whole sweep there. Point sys.argv at this job alone: the children run exactly this job, in its run dir
    (hydra.run.dir resolves to the same path as this job's sweep subdir)."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hc.overrides.task]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from moda_lab.errors import UsageError
    from moda_lab.rundir import remove_stub
    from moda_lab.train.preflight import exit_on_config_error
    from moda_lab.train.task import train  # after Hydra parsed the command line: --help stays fast

    _pin_argv_to_this_job()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if cfg.eval.after_fit:
            from moda_lab.eval import eval_config_from_dict

            eval_config_from_dict(resolved["eval"])  # fail on bad tasks/data before hours of training, not after
        metrics = train(resolved, run_dir)
    except UsageError as err:  # a config found bad only now (the tokenizer's size), a busy or full run dir, a
        remove_stub(run_dir)  # diverged run: one line, and no stub left by Hydra
        exit_on_config_error(err)
    except KeyboardInterrupt as err:  # Ctrl-C: train() saved a checkpoint at the step it stopped after
        sys.stderr.write(f"interrupted: {err or 'stopped before training'}\n")
        raise SystemExit(130) from None
    if cfg.eval.after_fit:
        from moda_lab.errors import exit_on_usage_error
        from moda_lab.eval.hook import evaluate_run

        with exit_on_usage_error("eval error"):  # the trained run stays: a relaunch only evaluates
            evaluate_run(run_dir, resolved["eval"])
    return metrics.get("val/loss")


if __name__ == "__main__":
    from moda_lab.errors import UsageError
    from moda_lab.train.preflight import check_command_line, exit_on_config_error

    try:
        check_command_line(sys.argv[1:], CONF)  # every job, before Hydra makes a run dir
    except UsageError as err:
        exit_on_config_error(err)
    main()
