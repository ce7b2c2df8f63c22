"""Test helpers: a tiny real corpus and Hydra-composed configs shrunk to test size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small enough for seconds per run on 2 CPU cores.
TINY = [
    "model.n_layers=3",
    "model.d_model=32",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "data.vocab_size=512",
    "data.seq_len=32",
    "data.val_windows=4",
    "trainer.batch_size=4",
    "trainer.log_every=2",
    "logger.wandb.enabled=false",
]


def write_tiny_corpus(root: Path) -> Path:
    from pydoc_data.topics import topics

    prose = [topics[k] for k in sorted(topics)][:60]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [
        (stdlib / name).read_text()
        for name in (
            "bisect.py",
            "colorsys.py",
            "fnmatch.py",
            "keyword.py",
            "shlex.py",
            "textwrap.py",
            "glob.py",
            "heapq.py",
        )
    ]
    (root / "prose").mkdir(parents=True, exist_ok=True)
    (root / "code").mkdir(exist_ok=True)
    with (root / "prose" / "topics.jsonl").open("w") as f:
        for text in prose:
            f.write(json.dumps({"text": text}) + "\n")
    for i, text in enumerate(code):
        (root / "code" / f"file{i}.txt").write_text(text)
    return root


def compose_cfg(overrides: list[str]) -> dict:
    """The resolved config run.py would build for these overrides (Hydra's own composition)."""
    import run  # noqa: F401 - importing the entry point registers the run_name resolver

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def job_run_dir(overrides: list[str]) -> Path:
    """hydra.run.dir of the job these overrides launch (conf/config.yaml: <run_root>/<name>/<run_name(...)>)."""
    from hydra.core.hydra_config import HydraConfig

    import run  # noqa: F401 - importing the entry point registers the run_name resolver

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return Path(OmegaConf.select(cfg, "hydra.run.dir"))


def tiny_cfg(corpus: Path, tmp: Path, extra: list[str] = ()) -> dict:
    return compose_cfg(
        [*TINY, f"data.corpus_dir={corpus}", f"data.cache_dir={tmp / 'cache'}", f"run_root={tmp / 'runs'}", *extra]
    )


def run_main(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python run.py <args>`` as a user runs it (offline wandb, unbuffered); asserts it exits 0."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
