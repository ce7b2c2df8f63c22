"""Every fenced shell command in README.md and docs/*.md parses with its real entry point and refers to what exists.

Per command (one test each, named <file>:<line>): Hydra entry points (run.py, moda_lab.eval) get their command
line parsed by Hydra's override parser (after moda_lab.eval's own checkpoint quoting), every job of a -m sweep
composed and validated as the entry point does (run_config_from_dict / eval_config_from_dict); lm-eval's CLI is
parsed by lm-eval's parser with the moda model, its arguments and the task files checked; moda_lab.data,
moda_lab.eval.data, moda_lab.analysis and experiment scripts by their own parsers; bash scripts by ``bash -n``.
Paths a command reads must exist, or be what another documented command writes (run dirs computed from the
documented run.py commands by Hydra, as run.py names them, the default corpus, output dirs). A program without a
checker fails, and so does a command in an indented code block (it would escape this test).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf

from helpers import CONF, ROOT, job_run_dir

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
MULTIRUN = ("-m", "--multirun")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass
class Command:
    where: str  # <file>:<line>
    argv: list[str]


@dataclass
class Outputs:
    """What the documented commands write: run dirs (checkpoints live there) and other files or dirs."""

    run_dirs: set[Path] = field(default_factory=set)
    paths: set[Path] = field(default_factory=set)

    def has(self, path: str | Path) -> bool:
        p = Path(path)
        return (ROOT / p).exists() or p in self.run_dirs or any(p == q or q in p.parents for q in self.paths)

    def has_checkpoint(self, path: str | Path) -> bool:
        p = Path(path)
        if (ROOT / p).exists():
            return True
        return p in self.run_dirs or (p.parent.parent in self.run_dirs and p.parts[-2:] == ("checkpoints", "last.ckpt"))


def fenced_commands(doc: Path) -> list[Command]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) not in SHELLS:
            continue
        first = text[: m.start(2)].count("\n") + 1
        lines = m.group(2).split("\n")
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                part, tokens = tokens[:cut], tokens[cut + 1 :]
                while part and re.fullmatch(r"[A-Z_]+=\S*", part[0]):  # VAR=value prefixes
                    part = part[1:]
                if part:
                    out.append(Command(f"{doc.relative_to(ROOT)}:{first + start}", part))
    return out


COMMANDS = [c for doc in DOCS for c in fenced_commands(doc)]


# --- Hydra entry points -----------------------------------------------------------------------------------


def hydra_jobs(args: list[str]) -> list[list[str]]:
    """The override list of every job the command line launches; a parse error fails naming the override."""
    multirun = any(a in MULTIRUN for a in args)
    overrides = [a for a in args if a not in MULTIRUN]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        pytest.fail(f"Hydra cannot parse {overrides}: {err}")
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        assert not sweeps, f"sweep override(s) {sweeps} without -m"
        return [overrides]
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def composed(config_name: str, job: list[str], hydra_cfg: bool = False):
    import run  # noqa: F401 - registers the run_name resolver of conf/config.yaml

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=job, return_hydra_config=hydra_cfg)




def check_run_py(args: list[str], outputs: Outputs) -> None:
    from moda_lab.config import run_config_from_dict
    from moda_lab.eval import eval_config_from_dict

    for job in hydra_jobs(args):
        resolved = OmegaConf.to_container(composed("config", job), resolve=True)
        run_config_from_dict(resolved)
        if resolved["eval"]["after_fit"]:
            _need_eval_data(resolved["eval"].get("data_dir"))
            eval_config_from_dict(resolved["eval"])


def _need_eval_data(data_dir: str | None) -> None:
    from moda_lab.eval.tasks import DEFAULT_DATA_DIR
    from moda_lab.eval.tasks import data_dir as eval_data_dir

    if Path(eval_data_dir(data_dir)).resolve() == DEFAULT_DATA_DIR.resolve() and not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(
            f"{DEFAULT_DATA_DIR} (the read-only ../shared/data/eval) is absent: the task files cannot be checked"
        )


def check_eval(args: list[str], outputs: Outputs) -> None:
    from moda_lab.eval import eval_config_from_dict
    from moda_lab.eval.__main__ import quote_checkpoint

    for job in hydra_jobs(quote_checkpoint(args)):
        resolved = OmegaConf.to_container(composed("eval_cli", job), resolve=True)
        ckpt = resolved.pop("checkpoint")
        assert outputs.has_checkpoint(ckpt), (
            f"checkpoint={ckpt} is neither a file nor a run dir a documented command writes"
        )
        resolved.pop("after_fit")
        domains = (resolved.get("perplexity") or {}).get("domains")
        for where in [domains] if isinstance(domains, str) else (domains or {}).values():
            assert outputs.has(where), (
                f"perplexity.domains: {where} neither exists nor is written by a documented command"
            )
            if not (ROOT / where).exists():
                resolved["perplexity"]["domains"] = None  # written later: only its existence check is skipped
        _need_eval_data(resolved.get("data_dir"))
        eval_config_from_dict(resolved)


# --- the other entry points ---------------------------------------------------------------------------------


def check_lm_eval_cli(args: list[str], outputs: Outputs) -> None:
    from lm_eval._cli import HarnessCLI

    from moda_lab.eval.cli import split_data_dir
    from moda_lab.eval.tasks import PAPER_TAG, TASK_FIELDS, lm_eval_name, task_file

    args, data_dir = split_data_dir(args)
    ns = HarnessCLI()._parser.parse_args(["run", *args])
    assert ns.model in ("moda", "hf"), f"--model {ns.model}: the documented models are moda and hf (an export)"
    if ns.model == "moda":
        known = {"checkpoint", "batch_size", "device", "max_length", "max_gen_toks", "backend"}
        assert set(ns.model_args) <= known, f"unknown --model_args {sorted(set(ns.model_args) - known)}"
        assert outputs.has_checkpoint(ns.model_args["checkpoint"]), (
            f"checkpoint {ns.model_args['checkpoint']} is not written"
        )
    else:  # lm-eval's stock model over a folder of moda_lab.hf
        assert ns.model_args.get("trust_remote_code") is True, "--model hf needs trust_remote_code=True"
        assert outputs.has(ns.model_args["pretrained"]), f"pretrained={ns.model_args['pretrained']} is not written"
    names = {lm_eval_name(t): t for t in TASK_FIELDS}
    tasks = [t for name in ns.tasks for t in (TASK_FIELDS if name == PAPER_TAG else [names.get(name, name)])]
    assert all(t in TASK_FIELDS for t in tasks), f"--tasks {ns.tasks}: known are {sorted(names)} and {PAPER_TAG}"
    _need_eval_data(data_dir)
    missing = [str(task_file(t, data_dir)) for t in tasks if not task_file(t, data_dir).is_file()]
    assert not missing, f"--tasks {ns.tasks} reads missing file(s) {missing}"


def check_analysis(args: list[str], outputs: Outputs) -> None:
    from moda_lab.analysis.__main__ import parse_args

    parsed = parse_args(args)
    for key in ("sweep_dir", "wandb_offline", "ckpt", "bench", "tokenizer"):
        if key in parsed:
            assert outputs.has(parsed[key]), (
                f"{key}={parsed[key]} neither exists nor is written by a documented command"
            )
    assert "wandb" not in parsed, (
        "wandb=ENTITY/PROJECT needs credentials and network: document it outside fenced commands"
    )


def check_data(args: list[str], outputs: Outputs) -> None:
    from moda_lab.data.__main__ import parse_args

    parse_args(args)


def check_eval_data(args: list[str], outputs: Outputs) -> None:
    from moda_lab.eval.data import build_parser, parse_tasks

    parse_tasks(build_parser().parse_args(args).tasks)


def check_export(args: list[str], outputs: Outputs) -> None:
    from moda_lab.hf.__main__ import build_parser

    parsed = build_parser().parse_args(args)
    assert outputs.has_checkpoint(parsed.checkpoint) or outputs.has(parsed.checkpoint), (
        f"{parsed.checkpoint} neither exists nor is written by a documented command"
    )


def check_pip(args: list[str], outputs: Outputs) -> None:
    """pip install of this project: constraint files exist, extras are declared, torch is never pulled unpinned."""
    import tomllib

    assert args[:1] == ["install"], f"pip {args[:1]}: only pip install is documented"
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    it = iter(args[1:])
    for arg in it:
        if arg in ("-c", "--constraint", "-r", "--requirement"):
            path = next(it)
            assert (ROOT / path).is_file(), f"pip {arg} {path}: no such file"
        elif arg in ("-e", "--editable") or arg.startswith("."):
            target = arg if arg.startswith(".") else next(it)
            m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
            assert m, f"pip install {target}: only this checkout (., .[extras]) is documented"
            unknown = set((m.group(1) or "").split(",")) - extras - {""}
            assert not unknown, f"pip install {target}: unknown extras {sorted(unknown)}"
        elif not arg.startswith("-"):
            assert not arg.startswith(("torch", "triton")) or "==" in arg, f"pip install {arg}: pin torch/triton"


def check_venv(args: list[str], outputs: Outputs) -> None:
    assert args and not args[-1].startswith("-"), f"python -m venv {args}: name the venv directory"
    assert set(args[:-1]) <= {"--system-site-packages", "--upgrade-deps", "--clear"}, args


def check_pytest(args: list[str], outputs: Outputs) -> None:
    rest = iter(args)
    for arg in rest:
        if arg in ("-m", "-k"):
            expr = next(rest, "")
            names = set(re.findall(r"[A-Za-z_]\w*", expr)) - {"and", "or", "not"}
            assert expr and (arg == "-k" or names <= pytest_markers()), f"pytest {arg} {expr!r}: not a registered marker"
        elif arg.startswith("-"):
            assert arg.split("=")[0] in pytest_options(), f"pytest has no option {arg}"
        else:
            assert (ROOT / arg.split("::")[0]).exists(), f"pytest path {arg} does not exist"


def pytest_markers() -> set[str]:
    import tomllib

    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    return {m.split(":")[0].split("(")[0] for m in ini["markers"]}


@functools.cache
def pytest_options() -> set[str]:
    text = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def check_script(script: str, args: list[str], outputs: Outputs) -> None:
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    if script == "run.py":
        return check_run_py(args, outputs)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "build_parser"), f"{script}: no build_parser() for this test to parse its arguments"
    module.build_parser().parse_args(args)


MODULES = {
    "moda_lab.eval": check_eval,
    "moda_lab.eval.cli": check_lm_eval_cli,
    "moda_lab.analysis": check_analysis,
    "moda_lab.data": check_data,
    "moda_lab.eval.data": check_eval_data,
    "moda_lab.hf": check_export,
    "pip": check_pip,
    "venv": check_venv,
    "pytest": check_pytest,
}


def check(cmd: Command, outputs: Outputs) -> None:
    prog, *args = cmd.argv
    if prog == "bash":
        assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
        res = subprocess.run(["bash", "-n", str(ROOT / args[0])], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    elif prog in PYTHONS and args[:1] == ["-m"]:
        assert args[1] in MODULES, f"no checker for python -m {args[1]}: add one to {__file__}"
        MODULES[args[1]](args[2:], outputs)
    elif prog in PYTHONS:
        check_script(args[0], args[1:], outputs)
    else:
        pytest.fail(f"no checker for program {prog!r}: add one to {__file__}")


# --- what the documented commands write ----------------------------------------------------------------------


@functools.cache
def documented_outputs() -> Outputs:
    out = Outputs(paths={Path(".venv")})
    for cmd in COMMANDS:
        prog, *args = cmd.argv
        if prog not in PYTHONS:
            continue
        if args[:1] == ["run.py"]:
            try:
                jobs = hydra_jobs(args[1:])
            except pytest.fail.Exception:
                continue  # that command's own test reports it
            for job in jobs:
                try:
                    resolved = OmegaConf.to_container(composed("config", job), resolve=True)
                except Exception:  # noqa: BLE001 - reported by the command's own test
                    continue
                out.run_dirs.add(job_run_dir(job))
                out.paths.add(Path(resolved["run_root"]) / resolved["name"])
                if resolved["data"]["build_default"]:
                    out.paths.add(Path(resolved["data"]["corpus_dir"]))
        elif args[:2] == ["-m", "moda_lab.data"]:
            from moda_lab.data.__main__ import parse_args

            parsed = parse_args(args[2:])
            out.paths |= {Path(parsed["out"]), Path(parsed["cache_dir"])}
        elif args[:2] == ["-m", "moda_lab.eval.data"]:
            from moda_lab.eval.data import build_parser

            out.paths.add(Path(build_parser().parse_args(args[2:]).out))
        elif args[:2] == ["-m", "moda_lab.analysis"]:
            from moda_lab.analysis.__main__ import parse_args

            out.paths.add(Path(parse_args(args[2:])["out"]))
        elif args[:2] == ["-m", "moda_lab.hf"]:
            from moda_lab.hf.__main__ import build_parser

            out.paths.add(Path(build_parser().parse_args(args[2:]).out))
    return out


def test_documented_commands_were_found():
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/EVAL.md"} <= where, where
    programs = [c.argv[1:3] for c in COMMANDS]
    assert ["-m", "moda_lab.eval"] in programs and ["run.py"] in [p[:1] for p in programs]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command(cmd: Command):
    check(cmd, documented_outputs())


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_no_command_outside_fenced_blocks(doc: Path):
    """An indented code block holding a command would escape the checks above."""
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    hidden = [line for line in text.splitlines() if re.match(r"( {4}|\t)\s*(\.venv/bin/)?python3? ", line)]
    assert not hidden, f"{doc.name}: commands outside fenced shell blocks: {hidden}"


def test_pytest_marker_expressions_name_registered_markers():
    check_pytest(["-q", "-m", "not slow"], Outputs())
    with pytest.raises(AssertionError, match="not a registered marker"):
        check_pytest(["-q", "-m", "not sloww"], Outputs())


def test_the_readme_eval_command_needed_quoting():
    """The failure this test exists for: a run dir's '=' and ',' break Hydra's grammar unless quoted."""
    from moda_lab.eval.__main__ import quote_checkpoint

    raw = ["checkpoint=runs/default/model=moda,norm=post,trainer=smoke", "tasks=[piqa]"]
    with pytest.raises(pytest.fail.Exception, match="Hydra cannot parse"):
        hydra_jobs(raw)
    (job,) = hydra_jobs(quote_checkpoint(raw))
    assert OmegaConf.to_container(composed("eval_cli", job))["checkpoint"] == raw[0].removeprefix("checkpoint=")
    assert json.dumps(quote_checkpoint(["-m", "checkpoint=runs/a,runs/b"])) == '["-m", "checkpoint=runs/a,runs/b"]'


def test_readme_layout_lists_every_package_and_module():
    """The Layout block names each package of moda_lab and moda_kernels and each top-level module of moda_lab."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout") :].split("```")[1]
    listed = {line.split()[0] for line in block.splitlines() if line.strip()}
    parts = []
    for pkg in ("moda_lab", "moda_kernels"):
        parts += [f"{pkg}/{d.name}" for d in sorted((ROOT / pkg).iterdir()) if d.is_dir() and any(d.glob("*.py"))]
    parts += [f"moda_lab/{f.name}" for f in sorted((ROOT / "moda_lab").glob("*.py")) if f.name != "__init__.py"]
    missing = [p for p in parts if p not in listed]
    assert not missing, f"README.md's Layout leaves out {missing}"
