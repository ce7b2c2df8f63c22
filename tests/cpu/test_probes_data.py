"""Probes of the data faults of issue 32: damaged caches, binary and too-short corpora, and the data CLI.

Each probe checks what the user sees (one line naming the key or file, exit status 2 where an entry point exits)
and that nothing was written or lost: a damaged cache is rebuilt, never read; a failed corpus build leaves no
output folder and keeps a complete one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CONF, ROOT, tiny_cfg
from moda_lab.config import ConfigError
from moda_lab.data import packing, prepare
from moda_lab.data.corpus import corpus_files
from moda_lab.errors import UsageError
from moda_lab.train.task import train

SPLITS = ("train", "val_code", "val_prose")


def _tokens(packed) -> dict[str, list[int]]:
    return {split: packed.tokens(split).tolist() for split in SPLITS}


def _run(args: list[str], cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    """An entry point as a user runs it (``python -c code`` runs the data CLI with a patched module)."""
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line(stderr: str, prefix: str) -> str:
    """The error: the one line starting with prefix, the last one printed (progress logs may come before)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(prefix)]
    assert errors == lines[-1:] and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.fixture
def packed(tiny_corpus, tmp_path):
    """The tiny corpus packed into a fresh cache, and its tokens."""
    data = prepare(tiny_corpus, tmp_path / "cache", 512, 0.2)
    return data, _tokens(data)


# --- damaged caches -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated train.bin", "missing val file", "overwritten bytes", "cut meta.json"])
def test_damaged_cache_is_named_and_rebuilt_never_read(packed, tiny_corpus, tmp_path, caplog, damage):
    data, before = packed
    named = {
        "truncated train.bin": "train.bin",
        "missing val file": "val_code.bin",
        "overwritten bytes": "train.bin",
        "cut meta.json": "meta.json",
    }[damage]
    path = data.root / named
    if damage == "truncated train.bin":
        os.truncate(path, path.stat().st_size - 3)  # not a whole number of uint16 tokens: numpy's error before
    elif damage == "missing val file":
        path.unlink()
    elif damage == "overwritten bytes":  # same size, other tokens: only the CRC sees it
        with path.open("r+b") as f:
            f.write(b"\xff\xff" * 8)
    else:
        path.write_text(path.read_text()[:40])
    with caplog.at_level(logging.WARNING, logger="moda_lab.data.packing"):
        again = prepare(tiny_corpus, tmp_path / "cache", 512, 0.2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged packed data cache" in warnings[0] and str(path) in warnings[0]
    assert again.root == data.root and _tokens(again) == before and again.meta == data.meta


def test_intact_cache_is_reused_and_old_caches_are_checked_by_size(packed, tiny_corpus, tmp_path, monkeypatch):
    data, _ = packed
    assert set(data.meta["files"]) == {"train.bin", "val_code.bin", "val_prose.bin"}
    assert data.meta["files"]["train.bin"]["bytes"] == 2 * data.meta["train"]["tokens"]
    # A folder packed before the CRC was recorded: sizes alone; overwritten bytes of the same size pass.
    meta = {k: v for k, v in data.meta.items() if k != "files"}
    (data.root / "meta.json").write_text(json.dumps(meta))
    with (data.root / "train.bin").open("r+b") as f:
        f.write(b"\x01\x00")
    monkeypatch.setattr(packing, "_build", lambda *a, **k: pytest.fail("an intact cache was rebuilt"))
    assert prepare(tiny_corpus, tmp_path / "cache", 512, 0.2).meta == meta


def test_damaged_packed_dir_is_one_line_exit_2_and_no_run_dir(packed, tmp_path):
    data, _ = packed
    os.truncate(data.root / "train.bin", 1001)
    runs = tmp_path / "runs"
    args = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2", "data.vocab_size=512",
            f"data.packed_dir={data.root}", f"run_root={runs}", "logger.wandb.enabled=false"]
    proc = _run([str(ROOT / "run.py"), *args], tmp_path)
    line = _one_line(proc.stderr, "config error: ")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"data.packed_dir='{data.root}' is damaged" in line and str(data.root / "train.bin") in line
    assert "holds 1,001 bytes" in line and "cannot be rebuilt" in line
    assert not runs.exists()
    assert (data.root / "train.bin").stat().st_size == 1001  # the folder is left as it was: not ours to rebuild


def test_a_cut_meta_json_in_packed_dir_is_refused_before_a_run_dir(packed, tmp_path):
    from moda_lab.config import run_config_from_dict
    from moda_lab.rundata import check_data

    data, _ = packed
    meta = data.root / "meta.json"
    meta.write_text(meta.read_text()[:40])
    run = run_config_from_dict(tiny_cfg(tmp_path / "unused", tmp_path, [f"data.packed_dir={data.root}"]))
    with pytest.raises(ConfigError) as err:
        check_data(run)  # the preflight check, before Hydra makes the run dir
    assert str(err.value) == (
        f"data.packed_dir='{data.root}' is damaged: {meta} is not a JSON object (a cut write?); it cannot be rebuilt "
        "without its corpus: pack the corpus again (python -m moda_lab.data corpus=DIR) or copy the folder again"
    )


# --- corpora that cannot train ------------------------------------------------------------------------------


def _binary(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)


def test_binary_files_are_skipped_with_a_warning_naming_them(tiny_corpus, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    for domain in ("code", "prose"):
        for path in (tiny_corpus / domain).iterdir():
            (corpus / domain).mkdir(parents=True, exist_ok=True)
            (corpus / domain / path.name).write_bytes(path.read_bytes())
    _binary(corpus / "code" / "ls.txt")
    with caplog.at_level(logging.WARNING, logger="moda_lab.data.corpus"):
        files = corpus_files(corpus)
    assert [r.getMessage() for r in caplog.records] == [
        f"data.corpus_dir={str(corpus)!r}: skipping 1 binary file(s), not text: code/ls.txt"
    ]
    assert corpus / "code" / "ls.txt" not in files["code"] and len(files["code"]) == 8


def test_a_corpus_of_binary_files_is_one_config_error_and_writes_nothing(tmp_path):
    for name in ("code/a.txt", "code/b.txt", "prose/c.md", "prose/d.rst"):
        _binary(tmp_path / "bin" / name)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(tmp_path / "bin", tmp_path), run_dir)
    assert str(err.value).startswith(f"data.corpus_dir={str(tmp_path / 'bin')!r} holds no text files")
    assert "(4 binary file(s) skipped)" in str(err.value) and "\n" not in str(err.value)
    assert not run_dir.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case", ["corpus shorter than a window", "seq_len above a domain's tokens"])
def test_too_little_data_for_a_window_is_one_config_error_naming_the_sizes(tiny_corpus, tmp_path, case):
    if case == "corpus shorter than a window":
        corpus = tmp_path / "short"
        for name, text in {"a/x.txt": "hello world", "a/y.txt": "foo bar", "b/z.txt": "baz", "b/w.txt": "qux"}.items():
            (corpus / name).parent.mkdir(parents=True, exist_ok=True)
            (corpus / name).write_text(text)
        cfg, seq_len = tiny_cfg(corpus, tmp_path), 32
    else:
        corpus, seq_len = tiny_corpus, 100_000
        cfg = tiny_cfg(corpus, tmp_path, [f"data.seq_len={seq_len}", f"model.max_seq_len={seq_len}"])
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train(cfg, run_dir)
    msg = str(err.value)
    assert msg.startswith(f"data.seq_len={seq_len} is out of range: data.corpus_dir={str(corpus)!r} holds ")
    assert f"fewer than one window of data.seq_len + 1 = {seq_len + 1:,}" in msg and "\n" not in msg
    assert not run_dir.exists()  # refused before the run dir is made


def test_a_corpus_that_cannot_be_packed_leaves_no_half_built_cache(tmp_path):
    corpus = tmp_path / "corpus"
    for name, text in {"a/only.txt": "a single document", "b/1.txt": "one", "b/2.txt": "two"}.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    with pytest.raises(ValueError, match="^domain 'a' has a single document: nothing to hold out for validation$"):
        prepare(corpus, tmp_path / "cache", 512, 0.2)
    assert list((tmp_path / "cache").iterdir()) == []


# --- a data.cache_dir where no folder can be made ------------------------------------------------------------


def _tree(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


@pytest.mark.parametrize("below", [False, True])
def test_a_cache_dir_at_or_below_a_file_is_refused_before_a_run_dir(tiny_corpus, tmp_path, monkeypatch, below):
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    cache = notes / "cache" if below else notes
    expected = (
        f"data.cache_dir='{cache}': {notes} is a file, not a directory; allowed: a directory path this user can write"
    )
    before = _tree(tmp_path)
    args = [f"data.corpus_dir={tiny_corpus}", f"data.cache_dir={cache}", f"run_root={tmp_path / 'runs'}"]
    with pytest.raises(ConfigError) as err:
        check_command_line(args, CONF)  # run.py's preflight, before Hydra makes the run dir
    assert str(err.value) == expected
    with pytest.raises(ConfigError) as err:  # a command line the preflight leaves to the task: refused there too
        train(tiny_cfg(tiny_corpus, tmp_path, [f"data.cache_dir={cache}"]), tmp_path / "run")
    assert str(err.value) == expected
    assert _tree(tmp_path) == before and notes.read_text() == "mine"


def test_a_read_only_cache_dir_is_refused_by_prepare(tiny_corpus, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    with pytest.raises(ValueError, match=rf"^data.cache_dir='{ro}/cache': {ro} is read-only for this user; allowed: "):
        prepare(tiny_corpus, ro / "cache", 512, 0.2)
    assert not any(ro.iterdir())


# --- python -m moda_lab.data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, named",
    [
        (["colour=blue"], "bad argument 'colour=blue'"),
        (["sources=python-docs,nope"], "unknown corpus source(s) ['nope']"),
        (["vocab_size=big"], "vocab_size='big' is out of range"),
        (["max_tokens=0.5"], "max_tokens=0.5 is out of range"),
        (["corpus=/nonexistent/corpus"], "corpus='/nonexistent/corpus' does not exist"),
    ],
)
def test_data_cli_usage_errors_are_one_line_exit_2(tmp_path, args, named):
    proc = _run(["-m", "moda_lab.data", f"cache_dir={tmp_path / 'cache'}", *args], tmp_path)
    assert proc.returncode == 2 and _one_line(proc.stderr, "moda_lab.data: ")
    assert named in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("case", ["corpus", "build", "below"])
def test_data_cli_cache_dir_at_or_below_a_file_writes_nothing(tiny_corpus, tmp_path, monkeypatch, case):
    from moda_lab.data import corpus
    from moda_lab.data.__main__ import main

    monkeypatch.setitem(corpus.SOURCES, "python-docs", ("prose", lambda: iter(["a prose document", "another one"])))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    cache = notes / "cache" if case == "below" else notes
    source = [f"out={tmp_path / 'built'}", "sources=python-docs"] if case == "build" else [f"corpus={tiny_corpus}"]
    before = _tree(tmp_path)
    with pytest.raises(UsageError) as err:
        main([*source, f"cache_dir={cache}", "vocab_size=300"])
    assert str(err.value) == (
        f"cache_dir='{cache}': {notes} is a file, not a directory; allowed: a directory path this user can write"
    )
    assert _tree(tmp_path) == before  # no corpus built into out=, no cache folder


@pytest.mark.parametrize(
    "args, unused, packs",
    [
        (["out=built"], "out='built'", "corpus='corp'"),
        (["sources=stdlib"], "sources='stdlib'", "corpus='corp'"),
        (["hf.path=org/ds", "out=built"], "out='built'", "hf.path='org/ds'"),
        (["hf.path=org/ds"], "corpus='corp'", "hf.path='org/ds'"),
    ],
)
def test_data_cli_refuses_out_or_sources_it_would_ignore(tmp_path, monkeypatch, args, unused, packs):
    from moda_lab.data import __main__ as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "prepare", lambda *a, **k: pytest.fail("nothing is packed"))
    with pytest.raises(UsageError) as err:
        cli.main(["corpus=corp", *args, "cache_dir=cache"])
    key, pack = unused.partition("=")[0], packs.partition("=")[0]
    assert str(err.value) == (
        f"{unused} cannot be combined with {packs}: {pack}= is packed instead (into cache_dir=), and {key}= would be "
        f"ignored; allowed: {key}= or {pack}=, not both"
    )
    assert list(tmp_path.iterdir()) == []


# The CLI with a source that builds in milliseconds and linux-docs pointing at a folder that is not there.
PATCHED_CLI = """
import runpy, sys
from pathlib import Path
from moda_lab.data import corpus
corpus.SOURCES["python-docs"] = ("prose", lambda: iter(["new prose document", "another one"]))
corpus.LINUX_DOCS = Path("/nonexistent/linux-doc")
sys.argv = ["moda_lab.data", *sys.argv[1:]]
runpy.run_module("moda_lab.data", run_name="__main__")
"""


@pytest.mark.parametrize("existing", [False, True])
def test_failed_corpus_build_leaves_no_output_and_keeps_a_complete_one(tmp_path, existing):
    out = tmp_path / "corpus_large"
    before = {}
    if existing:  # a complete corpus from an earlier build
        (out / "prose").mkdir(parents=True)
        (out / "prose" / "prose.jsonl").write_text(json.dumps({"text": "old prose"}) + "\n")
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = [f"out={out}", "sources=python-docs,linux-docs", f"cache_dir={tmp_path / 'cache'}"]
    proc = _run(args, tmp_path, PATCHED_CLI)
    line = _one_line(proc.stderr, "moda_lab.data: ")
    assert proc.returncode == 2
    assert line.startswith("moda_lab.data: corpus source 'linux-docs': /nonexistent/linux-doc not found")
    assert "apt-get install" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["corpus_large"] if existing else [])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_corpus_build_replaces_the_domains_it_built_only(tmp_path):
    from moda_lab.data import corpus

    out = tmp_path / "corpus"
    (out / "prose").mkdir(parents=True)
    (out / "prose" / "prose.jsonl").write_text(json.dumps({"text": "old"}) + "\n")
    (out / "notes").mkdir()
    (out / "notes" / "n.txt").write_text("kept")
    sources = {**corpus.SOURCES, "python-docs": ("prose", lambda: iter(["new"]))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus, "SOURCES", sources)
        corpus.build_default_corpus(out, ["python-docs"])
    assert (out / "prose" / "prose.jsonl").read_text() == json.dumps({"text": "new"}) + "\n"
    assert (out / "notes" / "n.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no .partial left


def test_window_check_counts_the_tokens_of_each_split():
    meta = {"train": {"tokens": 1000}, "val": {"a": {"tokens": 40}, "b": {"tokens": 200}}}
    packing.check_windows(meta, 39, "data.corpus_dir='c'")
    with pytest.raises(ValueError, match=r"holds 40 'a' validation tokens.*allowed: data.seq_len <= 39, or"):
        packing.check_windows(meta, 40, "data.corpus_dir='c'")
    with pytest.raises(ValueError, match=r"holds 25 training windows of data.seq_len=39, fewer than the 32"):
        packing.check_windows(meta, 39, "data.corpus_dir='c'", batch_windows=32)
