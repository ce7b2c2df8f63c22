"""trainer.compile_cache (moda_lab/train/compile_cache.py): a run's torch.compile artifacts saved to one file per
key, loaded by a later process so its compile hits the caches; damaged, foreign and unwritable cases cost one
warning and a cold compile, never the run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.compiler._cache import CacheInfo

import moda_lab.train.compile_cache as cc
from helpers import ROOT, TINY, compose_cfg
from moda_lab.config import ConfigError, run_config_from_dict
from moda_lab.model import ModelConfig
from moda_lab.train.compile_cache import HIT_COUNTERS, CompileCache, cache_key

GRAPHS = {"model": dataclasses.asdict(ModelConfig(n_layers=2, d_model=32, n_heads=2)), "seq_len": 32}


def trainer() -> SimpleNamespace:
    """What CompileCache.setup reads of a Lightning Trainer."""
    return SimpleNamespace(precision="32-true", strategy=SimpleNamespace(root_device=torch.device("cpu")))


@pytest.fixture(autouse=True)
def inductor_cache_dir(tmp_path, monkeypatch):
    """Loading fills Inductor's local caches: a folder of the test's own."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


def set_up(folder, graphs: dict = GRAPHS, records: list | None = None) -> CompileCache:
    cache = CompileCache(folder, graphs, report=None if records is None else records.append)
    cache.setup(trainer(), None, "fit")
    return cache


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- the key ------------------------------------------------------------------------------------------------


def test_the_key_names_versions_and_device_and_differs_per_variant():
    key = cache_key(GRAPHS, "NVIDIA H100 80GB HBM3")
    graph_hash, torch_v, triton_v, device = key.split("_")
    assert torch_v == "torch" + torch.__version__.replace("+", "-") and triton_v.startswith("triton")
    assert device == "NVIDIA-H100-80GB-HBM3" and len(graph_hash) == 10
    other = {**GRAPHS, "model": {**GRAPHS["model"], "n_layers": 3}}
    assert cache_key(other, "NVIDIA H100 80GB HBM3") != key  # two variants never share (or overwrite) a file
    assert cache_key(GRAPHS, "NVIDIA H200") != key
    assert cache_key(dict(reversed(GRAPHS.items())), "NVIDIA H100 80GB HBM3") == key  # the order of keys is no input


def test_the_key_changes_with_the_traced_code(tmp_path):
    """An edit to the model code or to a kernel file that declares an op gives a new key (torch's own keys miss a
    custom op's new signature); an edit to a kernel body does not (it is in no artifact)."""
    model, kernels = tmp_path / "moda_lab" / "model", tmp_path / "moda_kernels" / "moda"
    for folder in (model, kernels):
        folder.mkdir(parents=True)
    (model / "op.py").write_text("def f(x): ...\n")
    (kernels / "function.py").write_text("@torch.library.custom_op('ns::f', mutates_args=())\ndef f(x): ...\n")
    (kernels / "triton_fwd.py").write_text("def kernel(x): ...\n")

    def fingerprint() -> str:
        cc.code_fingerprint.cache_clear()
        return cc.code_fingerprint(tmp_path)

    before = fingerprint()
    (kernels / "triton_fwd.py").write_text("def kernel(x, block=64): ...\n")  # a kernel body: same key
    assert fingerprint() == before
    (kernels / "function.py").write_text("@torch.library.custom_op('ns::f', mutates_args=())\ndef f(x, lo): ...\n")
    after = fingerprint()
    assert after != before
    (model / "op.py").write_text("def f(x, lo): ...\n")
    assert fingerprint() not in (before, after)
    after = fingerprint()
    (model / "notes.txt").write_text("not code")  # not a .py file: no change
    assert fingerprint() == after
    cc.code_fingerprint.cache_clear()


def test_only_the_trained_variants_mixer_files_are_hashed(tmp_path):
    """Of the mixers folder, a variant's key covers its own module, what it imports from the folder (transitively)
    and base.py: an edit to another variant's module keeps it (three rows once compiled cold after an edit to
    Hyper-Connections), an edit to a module it imports does not."""
    mixers = tmp_path / "moda_lab" / "model" / "mixers"
    mixers.mkdir(parents=True)
    (tmp_path / "moda_lab" / "model" / "gpt.py").write_text("def gpt(): ...\n")
    (mixers / "__init__.py").write_text("from . import moda, hc, mhc\n")
    (mixers / "base.py").write_text("class DepthMixer: ...\n")
    (mixers / "moda.py").write_text("from .base import DepthMixer\n")
    (mixers / "hc.py").write_text("from .base import DepthMixer\nfrom .combine import f\n")
    (mixers / "combine.py").write_text("def f(): ...\n")
    (mixers / "mhc.py").write_text("from .hc import DepthMixer\n")

    def fingerprints() -> dict:
        cc.code_fingerprint.cache_clear()
        return {m: cc.code_fingerprint(tmp_path, m) for m in ("base", "moda", "hc", "mhc", None)}

    before = fingerprints()
    assert sorted(p.name for p in cc.mixer_files(mixers, "mhc")) == \
        ["__init__.py", "base.py", "combine.py", "hc.py", "mhc.py"]
    (mixers / "combine.py").write_text("def f(x): ...\n")  # imported by hc, through hc by mhc
    after = fingerprints()
    assert [after[m] == before[m] for m in ("base", "moda", "hc", "mhc", None)] == [True, True, False, False, False]
    (mixers / "base.py").write_text("class DepthMixer:\n    pass\n")  # every variant's
    assert all(a != b for a, b in zip(fingerprints().values(), after.values()))
    cc.code_fingerprint.cache_clear()


def test_the_key_names_the_variants_module():
    assert cc.mixer_module({"model": {"mixer": {"name": "residual"}}}) == "base"
    assert cc.mixer_module({"model": {"mixer": {"name": "mhc"}}}) == "mhc"
    assert cc.mixer_module({"seq_len": 8}) is None


def test_the_real_kernel_files_that_declare_ops_are_hashed():
    """The repository's own op declarations are found: function.py declares moda_attn_fwd/bwd; the Triton kernels
    and the hybrid schedule are not hashed."""
    declaring = {p.relative_to(cc.REPO).as_posix() for package in cc.KERNEL_PACKAGES
                 for p in (cc.REPO / package).rglob("*.py") if cc.OP_MARKER in p.read_bytes()}
    assert "moda_kernels/moda/function.py" in declaring
    assert not declaring & {"moda_kernels/moda/hybrid.py", "moda_kernels/moda/triton_fwd.py",
                            "moda_kernels/moda/triton_bwd.py", "moda_kernels/dispatch.py"}


def test_the_setup_key_includes_the_precision(tmp_path):
    a = set_up(tmp_path).key
    bf16 = CompileCache(tmp_path, GRAPHS)
    bf16.setup(SimpleNamespace(precision="bf16-mixed", strategy=trainer().strategy), None, "fit")
    assert bf16.key != a and a.endswith("_cpu")


def test_compile_cache_needs_compile():
    cfg = compose_cfg([*TINY, "trainer.compile_cache=cc"])
    with pytest.raises(ConfigError, match=r"^trainer.compile_cache='cc' is not allowed with trainer.compile=false"):
        run_config_from_dict(cfg)
    assert run_config_from_dict(compose_cfg([*TINY, "trainer.compile_cache=cc", "trainer.compile=true"]))


# --- loading ------------------------------------------------------------------------------------------------


def test_no_file_loads_nothing_and_warns_nothing(tmp_path, caplog):
    records = []
    cache = set_up(tmp_path / "absent", records=records)
    assert records == [{"file": str(cache.path), "loaded": "none", "loaded_bytes": 0}]
    assert warnings(caplog) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_file_warns_once_naming_it_and_loads_nothing(tmp_path, caplog, damage):
    key = set_up(tmp_path).key
    good = artifacts("g1", "g2")
    data = {"garbage": b"not a cache" * 50, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    (tmp_path / f"{key}.bin").write_bytes(data)
    records = []
    cache = set_up(tmp_path, records=records)
    (line,) = warnings(caplog)
    assert line.startswith(f"compile cache: cannot load {cache.path} (") and line.endswith("); compiling cold")
    assert records[0]["loaded"].startswith("failed: ") and records[0]["loaded_bytes"] == 0
    assert "\n" not in caplog.text.strip()  # torch's own warning and traceback stay silent


def test_a_file_of_another_torch_or_device_is_named_and_not_loaded(tmp_path, caplog):
    key = set_up(tmp_path).key
    foreign = key.split("_")[0] + "_torch2.99.0_triton9.9.9_NVIDIA-H200.bin"
    (tmp_path / foreign).write_bytes(artifacts("g1", "g2"))
    (tmp_path / "0123456789_other-variant.bin").write_bytes(b"x")  # another variant's: no business of this run
    records = []
    set_up(tmp_path, records=records)
    assert warnings(caplog) == [
        f"compile cache: {tmp_path} holds no file for this torch, triton and device ({key}.bin) but {foreign}; "
        "compiling cold"
    ]
    assert records[0]["loaded"] == "none"


# --- saving -------------------------------------------------------------------------------------------------


def fake_artifacts(monkeypatch, *keys: str, data: bytes = b"artifacts") -> None:
    """What save_cache_artifacts returns after this process compiled these (autotuning) keys."""
    info = CacheInfo()
    info.artifacts["autotune"].extend(keys)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (data, info))


def first_step(cache: CompileCache) -> None:
    t = SimpleNamespace(global_step=0, state=SimpleNamespace(fn="fit"))
    cache.on_train_start(t, None)
    cache.on_train_batch_start(t, None, None, 0)
    t.global_step = 1
    cache.on_train_batch_end(t, None, None, None, 0)


def test_the_first_step_writes_the_file_atomically_and_records_it(tmp_path, monkeypatch):
    fake_artifacts(monkeypatch, "g1", "g2")
    records = []
    cache = set_up(tmp_path / "new" / "folder", records=records)
    first_step(cache)
    assert cache.path.read_bytes() == b"artifacts" and [p.name for p in cache.folder.iterdir()] == [cache.path.name]
    rec = records[-1]
    assert rec["saved"] == "written" and rec["saved_bytes"] == 9 and rec["first_step_s"] >= 0
    assert rec["until_first_step_s"] >= rec["first_step_s"] and set(HIT_COUNTERS) <= set(rec)


def test_a_file_holding_every_artifact_is_kept_and_a_new_graph_is_added(tmp_path, monkeypatch):
    """A resumed run compiles its training graphs first and its validation graph later: the file it loaded stays
    as it is until this process compiled a graph the file lacks, then holds that one too."""
    loaded = artifacts("g1", "g2")
    set_up(tmp_path).path.write_bytes(loaded)
    records = []
    cache = set_up(tmp_path, records=records)
    fake_artifacts(monkeypatch, "g1")
    first_step(cache)
    assert records[-1]["saved"] == "unchanged" and cache.path.read_bytes() == loaded
    fake_artifacts(monkeypatch, "g1", "g2", "validation", data=b"more")
    cache.on_validation_end(SimpleNamespace(state=SimpleNamespace(fn="fit")), None)
    assert records[-1]["saved"] == "written" and cache.path.read_bytes() == b"more"


def test_an_unwritable_folder_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    fake_artifacts(monkeypatch, "g1")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    records = []
    cache = set_up(blocker / "cc", records=records)
    first_step(cache)
    fake_artifacts(monkeypatch, "g1", "g2")
    cache.on_validation_end(SimpleNamespace(state=SimpleNamespace(fn="fit")), None)  # no second try, no warning
    (line,) = warnings(caplog)
    assert line.startswith(f"compile cache: cannot write {cache.path}: ") and "the run goes on" in line
    assert records[-1]["saved"].startswith("failed: ") and "first_step_s" in records[-1]


def artifacts(*keys: str) -> bytes:
    """Bytes in torch's mega-cache format holding autotuning entries of these keys (quick to make and to load)."""
    from torch.compiler._cache import CacheArtifactManager

    with CacheArtifactManager.with_fresh_cache():
        CacheArtifactManager._ensure_cache_artifacts_registered()
        for key in keys:
            CacheArtifactManager.record_artifact("autotune", key, {"best": key})
        return torch.compiler.save_cache_artifacts()[0]


# --- end to end: save in one process, load in a fresh one ---------------------------------------------------

RUN = [
    *TINY,
    "model=moda",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "trainer.max_steps=2",
    "trainer.val_every=2",
    "trainer.ckpt_every=2",
    "trainer.warmup_steps=1",
    "trainer.compile=true",
]


FX = ("fxgraph_cache_hit", "fxgraph_cache_miss")
AOT = ("autograd_cache_hit", "autograd_cache_miss")


def launch(tmp_path, corpus, name: str, folder) -> tuple[dict, str]:
    """run.py in a fresh process with an empty Inductor cache dir of its own (only the carried file can help);
    returns its meta.json's compile_cache record and its output."""
    env = {**os.environ, "WANDB_MODE": "offline", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}")}
    args = [*RUN, f"data.corpus_dir={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"run_root={tmp_path}",
            f"name={name}", f"trainer.compile_cache={folder}"]
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (meta,) = (tmp_path / name).glob("*/meta.json")
    return json.loads(meta.read_text())["compile_cache"], proc.stdout + proc.stderr


@pytest.mark.slow  # three compiled runs, 25-35 s each on two cores
def test_a_fresh_process_compiles_from_the_saved_file_and_a_damaged_one_compiles_cold(tiny_corpus, tmp_path):
    folder = tmp_path / "compile_cache"
    cold, _ = launch(tmp_path, tiny_corpus, "cold", folder)
    (saved,) = folder.iterdir()
    assert cold["loaded"] == "none" and cold["saved"] == "written" and cold["saved_bytes"] == saved.stat().st_size
    # Forward and backward of the training step and the validation forward: three FX graphs, two AOT entries,
    # compiled once each (the validations inside fit reuse the step-0 validation's graph: no third trace).
    assert cold["fxgraph_cache_miss"] == 3 and cold["autograd_cache_miss"] == 2

    warm, _ = launch(tmp_path, tiny_corpus, "warm", folder)
    assert warm["loaded"] == str(saved) and warm["loaded_bytes"] == saved.stat().st_size
    # Every lookup of the cold run hits the loaded artifacts; none misses.
    assert (warm["fxgraph_cache_hit"], warm["fxgraph_cache_miss"]) == (sum(cold[k] for k in FX), 0)
    assert (warm["autograd_cache_hit"], warm["autograd_cache_miss"]) == (sum(cold[k] for k in AOT), 0)
    assert warm["saved"] == "unchanged" and warm["first_step_s"] < cold["first_step_s"]

    saved.write_bytes(saved.read_bytes()[:1000])  # a copy cut short
    damaged, out = launch(tmp_path, tiny_corpus, "damaged", folder)
    assert out.count("compile cache: cannot load") == 1 and str(saved) in out
    assert damaged["loaded"].startswith("failed: ") and damaged["fxgraph_cache_miss"] == 3
    # A whole file again (the bytes of two cold compiles differ by a few temp-dir names).
    assert damaged["saved"] == "written" and damaged["saved_bytes"] == saved.stat().st_size > 1000
