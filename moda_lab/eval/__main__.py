"""Hydra entry: ``python -m moda_lab.eval checkpoint=<ckpt|run dir|export> tasks=[piqa,arc_easy] batch_size=16``.

``checkpoint=`` takes a path as written, also a Hydra run dir such as ``runs/default/model=moda,norm=post``:
its ``=`` and ``,`` would break Hydra's override grammar, so quote_checkpoint quotes the value before Hydra
parses the command line. Several checkpoints (a multirun): ``python -m moda_lab.eval -m
'checkpoint="runs/a/model=moda,norm=post","runs/a/model=residual,norm=post"'`` (quoted by hand: there the commas
separate the sweep's values). Config: conf/eval_cli.yaml (= conf/eval/default.yaml at the top level, plus
``checkpoint``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from moda_lab.errors import exit_on_usage_error  # noqa: E402

CONF = str(Path(__file__).resolve().parents[2] / "conf")
MULTIRUN_FLAGS = ("-m", "--multirun")
HYDRA_SPECIAL = set("=,[]{}()'\"\\ $")


def quote_checkpoint(argv: list[str]) -> list[str]:
    """argv with ``checkpoint=<path>`` quoted for Hydra where the path holds characters of its grammar.

    Left alone: values already quoted, and under -m values that are not one existing path (a sweep).
    """
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        needs = sep and key.lstrip("+~") == "checkpoint" and HYDRA_SPECIAL & set(value)
        if needs and value[0] not in "'\"" and (not multirun or Path(value).exists()):
            quote = '"' if '"' not in value else "'"
            if quote not in value:
                arg = f"{key}={quote}{value}{quote}"
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval_cli")
def main(cfg: DictConfig) -> None:
    # Inside the task: Hydra would wrap a UsageError raised out of it into its own traceback.
    with exit_on_usage_error("eval error"):
        evaluate(cfg)


def evaluate(cfg: DictConfig) -> None:
    from moda_lab.eval.evaluate import EvalConfigError, evaluate_checkpoint

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise EvalConfigError("checkpoint= is required: a .ckpt file, a run dir or an exported model folder")
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # e.g. ${oc.env:...} or a value that does not resolve
        raise EvalConfigError(f"{err.full_key}: {err.msg}") from None
    checkpoint = resolved.pop("checkpoint")
    resolved.pop("after_fit", None)  # a run.py switch: meaningless when evaluating a checkpoint directly
    evaluate_checkpoint(str(checkpoint), resolved)


def check_overrides(argv: list[str]) -> None:
    """A key the eval config does not have (``taks=[piqa]``): one line naming it and the keys there are, instead of
    Hydra's message and exit status 1. Sweeps (-m) and Hydra's own flags are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from moda_lab.eval.evaluate import EvalConfigError

    if any(a.startswith("-") for a in argv):
        return
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        try:
            cfg = compose(config_name="eval_cli")
            compose(config_name="eval_cli", overrides=argv)
        except ConfigCompositionException as err:
            key = re.match(r"Could not override '([^']+)'", str(err))
            what = f"unknown key {key.group(1)}" if key else " ".join(str(err).split())
            raise EvalConfigError(f"{what}; the keys are {sorted(cfg)} (perplexity.*: see docs/EVAL.md)") from None
        except OverrideParseException as err:  # tasks=[piqa: Hydra's grammar
            first = str(err).splitlines()[0]
            raise EvalConfigError(f"cannot parse the command line ({first}); see docs/EVAL.md for the syntax") from None
        except Exception:  # anything else Hydra reports itself, as it does without this check
            return


def run(argv: list[str]) -> None:
    """The command line ``python -m moda_lab.eval <argv>``."""
    sys.argv = [sys.argv[0], *quote_checkpoint(argv)]
    with exit_on_usage_error("eval error"):
        check_overrides(sys.argv[1:])
    main()


if __name__ == "__main__":
    run(sys.argv[1:])
