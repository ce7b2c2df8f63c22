"""After-fit attention statistics of a run (``eval.attention_windows``): on the first N validation windows of each
domain, the softmax mass per layer and head on the depth slots and on the first token (analysis.attention, the
paper's Figure 5 numbers). A lent GPU keeps a run's checkpoints; these few kilobytes come back with its run dir,
so how a variant spreads its attention over [sequence | depth] can still be read once the checkpoint is gone.

Written to ``<run>/eval/<ckpt stem>/attention.csv`` (one row per domain, layer and head: the mean over windows) and
``attention.png``/``.pdf`` (per layer, mean over heads and domains), by this module only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ..config import run_config_from_dict
from ..load import CheckpointError, load_checkpoint, run_checkpoint
from ..rundir import RunDir
from .evaluate import resolve_device, results_dir

log = logging.getLogger(__name__)
COLUMNS = ["step", "asked", "domain", "windows", "layer", "head", "depth_slots", "depth_mass", "sink_mass", "sequence_mass"]


@torch.no_grad()
def attention_stats(model, windows_by_domain: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    """Per domain, layer and head: depth, sink and sequence mass averaged over the domain's windows (token ids)."""
    from moda_lab.analysis.attention import attention_summary

    model.eval()
    device = next(model.parameters()).device
    frames = []
    for domain, windows in windows_by_domain.items():
        per_window = [
            attention_summary(model.attention_maps(torch.as_tensor(w, dtype=torch.long, device=device)[None]))
            for w in windows
        ]
        mean = pd.concat(per_window).groupby(["layer", "head"], as_index=False).mean()
        frames.append(mean.assign(domain=domain, windows=len(windows)))
    return pd.concat(frames, ignore_index=True)


def validation_windows(run_dir: str | Path, n: int) -> dict[str, list[np.ndarray]]:
    """The first ``n`` validation windows (data.seq_len tokens, the inputs of training's validation batches) of
    each domain of the run's data (its config.yaml)."""
    from moda_lab.rundata import load_data  # the run's own data path: packed folder, corpus or dataset
    from moda_lab.train.datamodule import TokenWindows

    run = run_config_from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))
    data = load_data(run)
    out = {}
    for domain in data.domains:
        windows = TokenWindows(data.tokens(f"val_{domain}"), run.data.seq_len, n)
        out[domain] = [windows[i][0].numpy() for i in range(len(windows))]
    return out


def write_run_attention(run_dir: str | Path, windows: int, device: str = "auto") -> Path | None:
    """attention.csv and attention.png of the run's last checkpoint (the newest intact one when last.ckpt is damaged;
    the csv's ``step`` says which), unless they exist for its final step with this many windows. Returns the csv
    (None when the run has no intact checkpoint)."""
    from moda_lab.analysis.attention import plot_attention_summary
    from moda_lab.figures import save_figure

    rundir = RunDir(run_dir)
    ckpt = rundir.last_ckpt
    if ckpt is None:
        log.warning("eval.attention_windows: %s has no last.ckpt; no attention statistics", rundir.path)
        return None
    out = results_dir(ckpt)
    csv = out / "attention.csv"
    step = rundir.read_meta().get("global_step")
    if csv.is_file():
        old = pd.read_csv(csv)
        if not old.empty and old["step"].iloc[0] == step and old["asked"].iloc[0] == windows:
            return csv
    try:  # a damaged last.ckpt: the newest intact checkpoint, as training and evaluation take (one warning)
        source, _ = run_checkpoint(rundir.path)
    except CheckpointError as err:
        log.warning("eval.attention_windows: %s; no attention statistics", err)
        return None
    model, _, extras = load_checkpoint(source)
    stats = attention_stats(model.to(resolve_device(device)), validation_windows(run_dir, windows))
    stats = stats.assign(step=extras["step"], asked=windows)[COLUMNS]
    out.mkdir(parents=True, exist_ok=True)
    tmp = csv.with_suffix(".tmp")
    stats.to_csv(tmp, index=False)
    tmp.replace(csv)
    save_figure(plot_attention_summary(stats), out, "attention")
    log.info("attention statistics of %s (%d domains): %s", ckpt, stats["domain"].nunique(), csv)
    return csv
