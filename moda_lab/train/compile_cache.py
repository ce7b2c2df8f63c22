"""Carry torch.compile's work between processes and machines (trainer.compile_cache: a folder).

A compiled run spends its first step compiling (1 to 3 minutes on a GPU). torch's "mega-cache" holds what that
compile produced, Inductor's FX graphs (with their Triton kernels), AOTAutograd's entries and autotuning results, as
one byte string (torch.compiler.save_cache_artifacts); a later process hands it to
torch.compiler.load_cache_artifacts before compiling, which fills its local caches so the same graphs hit them.

One file per key, ``<folder>/<key>.bin``: the key names what the artifacts depend on, a hash of the compiled
graphs' inputs (model config, resolved attention backend, shapes, precision), then the torch and triton versions
and the device, so two variants never overwrite each other and a file is only loaded where it can hit. Loading
happens before the first compile (Trainer.setup); the file is written, atomically, once the first optimizer step
has run (forward and backward then compiled), and again after a later validation that compiled something the file
lacks (a resumed run, which skips the step-0 validation, compiles the validation graph only then). What happened
is reported as one dict (the run's meta.json ``compile_cache``): what was loaded, what was saved, the first step's
wall time and the cache hit counters of this run. A damaged or foreign file, or an unwritable folder, costs one
warning and a cold compile, never the run.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch._dynamo.utils import counters

log = logging.getLogger(__name__)

# Counters of torch._dynamo.utils.counters[group][name] that tell whether the loaded artifacts served this run's
# compiles: Inductor's FX graph cache (one per forward, backward and inference graph) and AOTAutograd's cache.
HIT_COUNTERS = {
    "fxgraph_cache_hit": "inductor",
    "fxgraph_cache_miss": "inductor",
    "autograd_cache_hit": "aot_autograd",
    "autograd_cache_miss": "aot_autograd",
}


def _field(text: str) -> str:
    """A key field safe in any file name (and in the names a GPU call brings back): [A-Za-z0-9.-] only."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# The code the artifacts are derived from beyond what torch's own keys hash (the traced graph): a custom op's
# signature, its fake implementation and its autograd formula, which AOTAutograd traces into the cached backward
# (seen: "missing value for argument 'lo'" after depth_attnres_bwd gained an argument, from an artifact written
# before). They live in TRACED_PACKAGES and, in KERNEL_PACKAGES, in the files that declare ops (OP_MARKER). The
# rest of KERNEL_PACKAGES (Triton kernels, the dispatch, the hybrid schedule) runs inside the ops at run time and is
# in no artifact: editing it keeps every cached file, which a kernel session would otherwise compile anew.
# Of MIXERS, only the trained variant's module and the modules it imports from its folder (with base.py and
# __init__.py) are hashed: an edit to Hyper-Connections invalidated the residual's and MoDA's files too, and a
# lease with three such rows paid ~150-300 s of cold compile each (2026-12-07).
TRACED_PACKAGES = ("moda_lab/model",)
MIXERS = "moda_lab/model/mixers"
KERNEL_PACKAGES = ("moda_kernels",)
OP_MARKER = b"torch.library"
REPO = Path(__file__).resolve().parents[2]


def mixer_files(folder: Path, module: str) -> set[Path]:
    """The mixer module ``module``'s file in ``folder`` and the files of that folder it imports (``from .x import``,
    ``from . import x``), transitively, with base.py and __init__.py (whose own imports are not followed: it
    imports every variant to register it)."""
    seen = {folder / "__init__.py"}
    todo = [folder / f"{module}.py", folder / "base.py"]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                todo += [folder / f"{name}.py" for name in names]
    return {path for path in seen if path.is_file()}


@functools.cache
def code_fingerprint(root: Path = REPO, mixer_module: str | None = None) -> str:
    """sha1 of every .py file under TRACED_PACKAGES (of MIXERS only ``mixer_files(mixer_module)``, or all of them
    when None) and of those under KERNEL_PACKAGES that contain OP_MARKER (relative path and bytes, path-sorted)."""
    mixers = root / MIXERS
    code = {path: path.read_bytes() for package in TRACED_PACKAGES for path in (root / package).rglob("*.py")}
    if mixer_module is not None:
        keep = mixer_files(mixers, mixer_module)
        code = {path: text for path, text in code.items() if path.parent != mixers or path in keep}
    for package in KERNEL_PACKAGES:
        kernels = {path: path.read_bytes() for path in (root / package).rglob("*.py")}
        code.update({path: text for path, text in kernels.items() if OP_MARKER in text})
    digest = hashlib.sha1()
    for path in sorted(code):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + code[path])
    return digest.hexdigest()[:10]


def mixer_module(graph_config: dict) -> str | None:
    """The module (in MIXERS) of the variant that ``graph_config["model"]`` trains, or None if it names none."""
    from moda_lab.model.mixers import DEPTH_MIXERS

    name = (graph_config.get("model") or {}).get("mixer", {}).get("name")
    return DEPTH_MIXERS[name].__module__.rsplit(".", 1)[-1] if name in DEPTH_MIXERS else None


def graph_hash(graph_config: dict) -> str:
    """A short hash of what the compiled graphs are traced from: the dict (JSON, keys sorted) and the code of
    TRACED_PACKAGES that the variant runs."""
    code = code_fingerprint(REPO, mixer_module(graph_config))
    text = json.dumps({**graph_config, "code": code}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def cache_key(graph_config: dict, device: str) -> str:
    """``<graph hash>_torch<version>_triton<version>_<device>``, e.g.
    ``3f2a9c1b7d_torch2.13.0-cu130_triton3.7.1_NVIDIA-H100-80GB-HBM3``."""
    fields = [graph_hash(graph_config), f"torch{torch.__version__}", f"triton{_triton_version()}", device]
    return "_".join(_field(f) for f in fields)


def _counts() -> dict[str, int]:
    return {name: int(counters[group][name]) for name, group in HIT_COUNTERS.items()}


def _artifact_keys(info) -> set[tuple[str, str]]:
    """(type, key) of every artifact a torch CacheInfo lists."""
    return {(kind, key) for kind, keys in info.artifacts.items() for key in keys}


def _why(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


class CompileCache(L.Callback):
    """Loads ``<folder>/<key>.bin`` before the first compile, writes it once the first optimizer step has run.

    graph_config: what the compiled graphs depend on besides the versions and the device (the trainer's precision
    is added at setup, once resolved). save: whether this process writes the file (rank zero; every rank loads).
    report: called with the record (a dict) whenever it changes; None on processes that report nothing.
    """

    def __init__(
        self, folder: str | Path, graph_config: dict, save: bool = True, report: Callable[[dict], None] | None = None
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.graph_config = graph_config
        self.save = save
        self.report = report
        self.key: str | None = None
        self.record: dict = {}
        self._known: set[tuple[str, str]] = set()  # artifacts the file on disk holds (loaded or written here)
        self._counts0: dict[str, int] = {}
        self._t_setup = self._t_first = 0.0
        self._step0: int | None = None
        self._first_done = False

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.bin"

    # --- loading --------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.key is not None:  # trainer.validate (step 0) and trainer.fit both set up: load once
            return
        self.key = cache_key({**self.graph_config, "precision": str(trainer.precision)},
                             device_name(trainer.strategy.root_device))
        _forget_recorded_artifacts()
        self._counts0 = _counts()
        loaded, size = self._load()
        self.record = {"file": str(self.path), "loaded": loaded, "loaded_bytes": size}
        self._t_setup = time.perf_counter()
        self._report()

    def _load(self) -> tuple[str, int]:
        """("<path>" | "none" | "failed: <why>", bytes loaded) after loading this key's file, if any."""
        if not self.path.is_file():
            others = sorted(self.folder.glob(f"{self.key.split('_')[0]}_*.bin")) if self.folder.is_dir() else []
            if others:
                log.warning(
                    "compile cache: %s holds no file for this torch, triton and device (%s.bin) but %s; compiling "
                    "cold", self.folder, self.key, ", ".join(p.name for p in others),
                )
            return "none", 0
        try:
            data = self.path.read_bytes()
            info = load_artifacts(data)
        except Exception as err:  # a damaged file: whatever torch's reader raised
            return self._load_failed(_why(err)), 0
        if info is None or info.empty():
            return self._load_failed("torch could not read it (damaged, or saved by another torch version)"), 0
        self._known = _artifact_keys(info)
        log.info("compile cache: loaded %s (%d bytes, %d artifacts)", self.path, len(data), len(self._known))
        return str(self.path), len(data)

    def _load_failed(self, why: str) -> str:
        log.warning("compile cache: cannot load %s (%s); compiling cold", self.path, why)
        return f"failed: {why}"

    # --- the first step, and saving -------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step0 = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._t_first:
            self._t_first = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._first_done or trainer.global_step == self._step0:  # a micro-batch before the first optimizer step
            return
        self._first_done = True
        now = time.perf_counter()
        self.record["first_step_s"] = round(now - self._t_first, 3)  # its batches: the train graphs' compile
        self.record["until_first_step_s"] = round(now - self._t_setup, 3)  # + the step-0 validation's
        self._save()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first_done and trainer.state.fn == "fit":  # not the validation train() runs after fit
            self._save()

    def _save(self) -> None:
        """Write what this process compiled when it is not already in the file (tmp + replace); record it with
        this run's cache counters so far."""
        if not self.save:
            return
        done = _counts()
        self.record.update({name: done[name] - self._counts0[name] for name in HIT_COUNTERS})
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            self.record.setdefault("saved", "nothing compiled")
        elif _artifact_keys(saved[1]) <= self._known:
            self.record.setdefault("saved", "unchanged")
        else:
            data, info = saved
            try:
                write_artifacts(self.path, data)
            except OSError as err:
                why = f"{err.strerror or err} ({err.filename or self.path})"
                log.warning("compile cache: cannot write %s: %s; the run goes on without saving", self.path, why)
                self.record["saved"] = f"failed: {why}"
                self.save = False  # one warning
            else:
                self._known = _artifact_keys(info)
                self.record.update(saved="written", saved_bytes=len(data))
        self._report()

    def _report(self) -> None:
        if self.report is not None:
            self.report(dict(self.record))


def write_artifacts(path: Path, data: bytes) -> None:
    """Write a cache-artifacts file atomically (a temp file beside it, then renamed); an OSError leaves no temp."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def load_artifacts(data: bytes):
    """torch.compiler.load_cache_artifacts, with torch's own warning and traceback for unreadable bytes silenced
    (the caller prints one line): its CacheInfo, or None."""
    torch_log = logging.getLogger("torch.compiler._cache")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        return torch.compiler.load_cache_artifacts(data)
    finally:
        torch_log.setLevel(level)


def _forget_recorded_artifacts() -> None:
    """torch records every artifact compiled in this process, and save_cache_artifacts returns them all: drop an
    earlier run's (a -m sweep trains one run after another in one process) so a file holds its own key's only."""
    from torch.compiler._cache import CacheArtifactManager  # no public way to clear the record

    CacheArtifactManager.clear()
