"""pyproject.toml declares ranges, constraints.txt pins each declared dependency inside its range, setup.sh installs
torch from its CPU pin and everything else through the constraints; the running environment is the pinned one."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETUP = (ROOT / "setup.sh").read_text()
# The environment's torch: setup.sh's CPU pin, or the cluster's on a GPU machine (not in constraints.txt).
TORCH_OWNED = {"torch", "triton", "filelock", "fsspec", "jinja2", "markupsafe", "mpmath", "networkx", "setuptools",
               "sympy", "typing-extensions"}  # fmt: skip


def _declared() -> list[Requirement]:
    reqs = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            assert canonicalize_name(name) not in pins, f"constraints.txt pins {name} twice"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _setup_pins() -> dict[str, Version]:
    return {canonicalize_name(n): Version(v) for n, v in re.findall(r'"(torch|triton)==([\w.]+)"', SETUP)}


def test_pyproject_declares_ranges_not_pins():
    for req in _declared():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req}: declare a range"
    torch = next(r for r in _declared() if r.name == "torch")
    assert torch.specifier.contains("2.11.0+cu130") and torch.specifier.contains("2.13.0+cpu"), torch


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _constraints()
    assert not TORCH_OWNED & set(pins), "torch and its requirements come from setup.sh or the cluster"
    for req in _declared():
        name = canonicalize_name(req.name)
        if name in TORCH_OWNED - {"torch", "triton"}:
            continue
        pin = _setup_pins()[name] if name in ("torch", "triton") else pins.get(name)
        assert pin is not None, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pin, prereleases=True), f"{req.name}=={pin} is outside {req}"


def test_setup_sh_installs_torch_first_then_the_project_through_the_constraints():
    torch_at = SETUP.index('"torch==')
    project_at = SETUP.index('-c constraints.txt -e ".[dev]"')
    assert torch_at < project_at
    assert _setup_pins() == {"torch": Version("2.13.0"), "triton": Version("3.7.1")}


def test_the_environment_has_the_pinned_versions():
    """What setup.sh installs is what the constraints say (declared dependencies that are installed)."""
    pins = {**_constraints(), **_setup_pins()}
    for req in _declared():
        name = canonicalize_name(req.name)
        try:
            installed = Version(metadata.version(req.name))
        except metadata.PackageNotFoundError:
            continue  # an extra not installed here (slurm)
        if name not in pins:
            continue
        if installed.public != str(pins[name]) and installed != pins[name]:
            pytest.fail(f"{req.name} {installed} is installed, constraints.txt / setup.sh pin {pins[name]}")


def test_every_package_of_the_repository_is_installed():
    """pyproject's package discovery finds each top-level package (a folder with __init__.py: moda_lab,
    moda_kernels, moda_paper) and every package under it, so `pip install .` ships what the repository imports."""
    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(where=str(ROOT), include=include))
    top = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert {"moda_lab", "moda_kernels", "moda_paper"} <= top
    every = {".".join(p.parent.relative_to(ROOT).parts) for t in top for p in (ROOT / t).rglob("__init__.py")}
    assert every <= found, f"not installed: {sorted(every - found)}"
