"""Hydra entry: ``python -m moda_lab.eval checkpoint=<ckpt|run dir|export> tasks=[piqa,arc_easy] batch_size=16``.

Several checkpoints: ``python -m moda_lab.eval -m checkpoint=runs/a/x,runs/a/y`` (a path with commas needs
quoting: ``'checkpoint="runs/sweep/model=moda,norm=post"'``). Config: conf/eval_cli.yaml (= conf/eval/default.yaml
at the top level, plus ``checkpoint``).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval_cli")
def main(cfg: DictConfig) -> None:
    from moda_lab.eval.evaluate import evaluate_checkpoint

    resolved = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = resolved.pop("checkpoint")
    resolved.pop("after_fit", None)  # a run.py switch: meaningless when evaluating a checkpoint directly
    evaluate_checkpoint(checkpoint, resolved)


if __name__ == "__main__":
    main()
