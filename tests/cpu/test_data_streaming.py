"""Streamed Hugging Face datasets with a token budget, multi-process tokenisation and resumable packing.

The hub source runs the real ``datasets.load_dataset(path, streaming=True)`` code on a local folder of Parquet
files (how load_dataset reads a directory), so no network is needed. Every packed result is checked against the
definition of the packed format: each domain's documents in stream order, a CRC coin per document index holding
documents out, tokens then EOS per document, a domain's stream cut at the document reaching data.max_tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from helpers import ROOT, TINY, compose_cfg
from moda_lab.config import ConfigError, run_config_from_dict
from moda_lab.data import EOS, packing, prepare, train_tokenizer
from moda_lab.data.corpus import HubDataset, corpus_files, stream_documents

datasets = pytest.importorskip("datasets")

WORDS = "river stone paper glass bread cloth metal sugar cloud field north light".split()


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120))) + f" #{seed}-{i}" for i in range(n)]


def _parquet(path: Path, docs: list[str], rows_per_group: int = 7) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), path, row_group_size=rows_per_group)


def _jsonl(path: Path, docs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


@pytest.fixture(scope="module")
def hub_docs() -> list[str]:
    return _docs(150, 0)


@pytest.fixture
def hub_dir(tmp_path, hub_docs) -> Path:
    """A 'hub' dataset as load_dataset sees a local folder: two Parquet shards (-> split 'train')."""
    root = tmp_path / "webtext"
    _parquet(root / "train-00000.parquet", hub_docs[:80])
    _parquet(root / "train-00001.parquet", hub_docs[80:])
    return root


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, hub_docs) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(hub_docs + _docs(40, 1), 400).save(str(path))
    return path


def _held_out(domain: str, index: int, val_fraction: float) -> bool:
    """The documented coin: CRC-32 of '<domain>/<index in the domain's stream>'."""
    return zlib.crc32(f"{domain}/{index}".encode()) % 10_000 < val_fraction * 10_000


def expected_tokens(
    domains: dict[str, list[str]], tok: Tokenizer, val_fraction: float, max_tokens: int | None = None
) -> dict[str, list[int]]:
    """The packed files by definition (see the module docstring); a domain that holds nothing out gives up its
    last training document."""
    eos = tok.token_to_id(EOS)
    out: dict[str, list[int]] = {"train": []}
    for domain, docs in domains.items():
        train, val, n_train = [], [], 0
        for i, doc in enumerate(docs):
            ids = [*tok.encode(doc).ids, eos]
            if _held_out(domain, i, val_fraction):
                val.append(ids)
            else:
                train.append(ids)
                n_train += len(ids)
            if max_tokens is not None and n_train >= max_tokens:
                break
        if not val:
            val.append(train.pop())
        out["train"] += [t for ids in train for t in ids]
        out[f"val_{domain}"] = [t for ids in val for t in ids]
    return out


def _files(packed) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(packed.root.iterdir()) if p.name != ".lock"}


# --- the hub source -------------------------------------------------------------------------------------------


def test_hub_dataset_streams_with_a_token_budget(hub_dir, hub_docs, tok_path, tmp_path, small_batches):
    tok = Tokenizer.from_file(str(tok_path))
    hub = HubDataset(path=str(hub_dir))
    total = len(expected_tokens({"webtext": hub_docs}, tok, 0.1)["train"])
    budget = total // 2
    packed = prepare(hub, tmp_path / "cache", 512, 0.1, tok_path, max_tokens=budget, num_proc=1)
    assert packed.domains == ["webtext"] and packed.meta["max_tokens"] == budget
    assert packed.meta["hf"] == {
        "path": str(hub_dir),
        "name": None,
        "split": "train",
        "text_field": "text",
        "revision": None,
    }
    ref = expected_tokens({"webtext": hub_docs}, tok, 0.1, budget)
    for split, tokens in ref.items():
        assert packed.tokens(split).tolist() == tokens, split
    train = packed.meta["train"]
    assert train["tokens"] >= budget  # stopped at the document that reached the budget, kept whole
    eos = packed.meta["eos_id"]
    last_doc = np.flatnonzero(packed.tokens("train")[:-1] == eos)[-1]  # where the last training document begins
    assert last_doc + 1 < budget <= train["tokens"]
    # Deterministic held-out split: a longer budget holds out the same first documents, then more.
    more = prepare(hub, tmp_path / "cache", 512, 0.1, tok_path, max_tokens=budget + 2000, num_proc=1)
    assert more.root != packed.root
    short, long = packed.tokens("val_webtext").tolist(), more.tokens("val_webtext").tolist()
    assert len(long) > len(short) and long[: len(short)] == short


def test_hub_source_is_the_saved_dataset_code_path(hub_dir, hub_docs, tok_path, tmp_path):
    """The same documents streamed from a folder and loaded from a save_to_disk folder pack to the same bytes."""
    saved = tmp_path / "corpus" / "webtext"
    datasets.Dataset.from_dict({"text": hub_docs}).save_to_disk(str(saved))
    streamed = prepare(HubDataset(path=str(hub_dir)), tmp_path / "a", 512, 0.1, tok_path, num_proc=1)
    local = prepare(saved.parent, tmp_path / "b", 512, 0.1, tok_path, num_proc=1)
    for split in ("train", "val_webtext"):
        assert np.array_equal(streamed.tokens(split), local.tokens(split)), split
    assert {k: v for k, v in streamed.meta.items() if k != "hf"} == local.meta


def test_trained_bpe_under_a_budget_learns_only_packed_documents(hub_dir, hub_docs, tmp_path):
    budget = 1500
    packed = prepare(HubDataset(path=str(hub_dir)), tmp_path / "cache", 300, 0.1, max_tokens=budget, num_proc=1)
    learned, left = [], budget
    for i, doc in enumerate(hub_docs):  # training documents up to `budget` UTF-8 bytes (+1 per document)
        if not _held_out("webtext", i, 0.1):
            learned.append(doc)
            left -= len(doc.encode()) + 1
            if left <= 0:
                break
    tok = Tokenizer.from_file(str(packed.root / "tokenizer.json"))
    assert tok.to_str() == train_tokenizer(learned, 300).to_str()
    assert packed.meta["train"]["documents"] >= len(learned)  # every learned document is packed
    ref = expected_tokens({"webtext": hub_docs}, tok, 0.1, budget)
    assert packed.tokens("train").tolist() == ref["train"]


def test_bad_hub_input_names_the_key(hub_dir, tok_path, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError,
        match=r"^data.hf.text_field='content' is not a column of data.hf.path='.*webtext' \(split='train'\); "
        r"columns found: \['text', 'id'\]$",
    ):
        prepare(HubDataset(path=str(hub_dir), text_field="content"), cache, 512, 0.1, tok_path, num_proc=1)
    with pytest.raises(ValueError, match=r"^data.hf.path='.*webtext' \(split='test'\): load_dataset failed: .*split"):
        prepare(HubDataset(path=str(hub_dir), split="test"), cache, 512, 0.1, tok_path, num_proc=1)
    with pytest.raises(ValueError, match=r"^data.hf.path='.*absent' \(name='sample-10BT', split='train'\): load_dat"):
        prepare(HubDataset(path=str(tmp_path / "absent"), name="sample-10BT"), cache, 512, 0.1, tok_path)
    with pytest.raises(ValueError, match=r"^data.max_tokens=1.5 is out of range; allowed: a whole number >= 1"):
        prepare(HubDataset(path=str(hub_dir)), cache, 512, 0.1, tok_path, max_tokens=1.5)
    with pytest.raises(ValueError, match=r"^data.num_proc=0 is out of range; allowed: >= 1"):
        prepare(HubDataset(path=str(hub_dir)), cache, 512, 0.1, tok_path, num_proc=0)
    # A JSONL folder whose rows lack the field: features are known from the file, the error lists them.
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "a.jsonl").write_text(json.dumps({"body": "x", "lang": "en"}) + "\n")
    with pytest.raises(
        ValueError, match=r"data.hf.text_field='text' is not a column .*columns found: \['body', 'lang'\]"
    ):
        prepare(HubDataset(path=str(tmp_path / "jsonl")), cache, 512, 0.1, tok_path, num_proc=1)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.max_tokens=1.5"], r"^data.max_tokens=1.5 is out of range; allowed: a whole number >= 1 \(e.g. 2e9\)"),
        (["data.max_tokens=0"], r"^data.max_tokens=0 is out of range"),
        (["data.num_proc=0"], r"^data.num_proc=0 is out of range; allowed: >= 1, or null \(min\(cores, 8\)\)"),
        (["data.hf.name=sample-10BT"], r"^data.hf.name='sample-10BT' without data.hf.path; allowed: set data.hf.path"),
        (["data.hf.path=a/b", "data.hf.text_field="], r"^data.hf.text_field='' is not allowed"),
        (["+data.hf.subset=x"], r"^unknown config key 'data.hf.subset'"),
    ],
)
def test_bad_data_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict(compose_cfg(overrides))


def test_hub_config_reaches_the_data(hub_dir, tmp_path):
    from moda_lab.rundata import check_data, load_data

    run = run_config_from_dict(compose_cfg([f"data.hf.path={hub_dir}", "data.max_tokens=2e3", "data.hf.name=x"]))
    assert run.data.max_tokens == 2000 and isinstance(run.data.max_tokens, int)
    assert run.data.hf == HubDataset(path=str(hub_dir), name="x") and not run.data.uses_default_corpus
    check_data(run)  # no local corpus dir is needed
    bad = [f"data.hf.path={hub_dir}", "data.hf.text_field=body", f"data.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(
        ConfigError, match=r"^data.hf.text_field='body' is not a column .*columns found: \['text', 'id'\]"
    ):
        load_data(run_config_from_dict(compose_cfg(bad)))


def test_training_run_streams_a_hub_dataset(hub_dir, tok_path, tmp_path):
    """run.py's keys: data.hf.path (a local folder standing in for the hub), data.max_tokens, data.num_proc."""
    from moda_lab.train.task import train

    overrides = [
        *TINY,
        f"data.hf.path={hub_dir}",
        "data.max_tokens=3e3",
        "data.num_proc=2",
        f"data.tokenizer={tok_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_fraction=0.1",
        "trainer.max_steps=2",
        "trainer.val_every=2",
        "trainer.ckpt_every=2",
    ]
    train(compose_cfg(overrides), tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/webtext/loss" in r for r in rows)
    (key,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert json.loads((key / "meta.json").read_text())["train"]["tokens"] in range(3000, 3200)


def test_data_cli_packs_a_hub_dataset(hub_dir, tok_path, tmp_path, capsys):
    from moda_lab.data.__main__ import main
    from moda_lab.errors import UsageError

    cache = tmp_path / "cache"
    main([f"hf.path={hub_dir}", f"tokenizer={tok_path}", "vocab_size=512", f"cache_dir={cache}", "max_tokens=2e3"])
    out = capsys.readouterr().out
    assert "webtext: train" in out and "packed data:" in out
    with pytest.raises(UsageError, match=r"^max_tokens=0.5 is out of range"):
        main([f"hf.path={hub_dir}", "max_tokens=0.5"])
    # What prepare() refuses (a missing tokenizer, a column that is not there) ends the CLI in one line, in its names.
    with pytest.raises(UsageError, match=r"^tokenizer='[^']*absent.json': no tokenizer.json there$"):
        main([f"hf.path={hub_dir}", f"tokenizer={tmp_path / 'absent.json'}", f"cache_dir={cache}"])
    with pytest.raises(UsageError, match=r"^hf.text_field='content' is not a column"):
        main([f"hf.path={hub_dir}", "hf.text_field=content", f"tokenizer={tok_path}", "vocab_size=512",
              f"cache_dir={cache}", "max_tokens=2e3"])


# --- multi-process tokenisation and resumable packing -------------------------------------------------------


@pytest.fixture
def mixed_corpus(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    """Four domains in every local format: Parquet, JSONL + text, a saved DatasetDict, a two-document one."""
    root = tmp_path / "corpus"
    docs = {"code": _docs(60, 2), "prose": _docs(50, 3), "web": _docs(70, 4), "tiny": _docs(2, 5)}
    _parquet(root / "code" / "a.parquet", docs["code"][:30])
    _parquet(root / "code" / "b.parquet", docs["code"][30:])
    _jsonl(root / "prose" / "a.jsonl", docs["prose"][:49])
    (root / "prose" / "b.txt").write_text(docs["prose"][49])
    splits = {
        "a": datasets.Dataset.from_dict({"text": docs["web"][:40]}),
        "b": datasets.Dataset.from_dict({"text": docs["web"][40:]}),
    }
    datasets.DatasetDict(splits).save_to_disk(str(root / "web"))
    _jsonl(root / "tiny" / "t.jsonl", docs["tiny"])
    return root, {d: docs[d] for d in corpus_files(root)}


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 4 documents: every domain spans several batches (and commits)."""
    monkeypatch.setattr(packing, "ENCODE_BATCH", 4)


@pytest.mark.parametrize("num_proc", [1, 2, 3])
def test_num_proc_packs_the_same_bytes(mixed_corpus, tok_path, tmp_path, small_batches, num_proc):
    corpus, docs = mixed_corpus
    packed = prepare(corpus, tmp_path / "cache", 512, 0.1, tok_path, num_proc=num_proc)
    ref = expected_tokens(docs, Tokenizer.from_file(str(tok_path)), 0.1)
    assert packed.domains == sorted(docs)
    for split, tokens in ref.items():
        assert packed.tokens(split).tolist() == tokens, split
    reference = tmp_path / "reference"
    if num_proc > 1:
        single = prepare(corpus, reference, 512, 0.1, tok_path, num_proc=1)
        assert single.root.name == packed.root.name and _files(single) == _files(packed)


def test_cache_keys_and_meta_of_earlier_builds_are_unchanged(tiny_corpus, tmp_path, monkeypatch):
    """A corpus packed before budgets and streaming existed keeps its folder name, files and meta.json keys."""
    h = hashlib.sha256(b"v2|512|0.2")  # the key as the packer computed it before (file names and sizes)
    for domain, paths in corpus_files(tiny_corpus).items():
        for p in paths:
            h.update(f"{domain}|{p.name}|{p.stat().st_size}".encode())
    packed = prepare(tiny_corpus, tmp_path / "cache", 512, 0.2)
    assert packed.root.name == h.hexdigest()[:16]
    # The same keys, then each token file's size and CRC (recorded since damaged caches are detected).
    assert list(packed.meta) == ["vocab_size", "eos_id", "dtype", "train", "val", "train_domains", "files"]
    assert sorted(p.name for p in packed.root.iterdir()) == [
        ".lock",
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val_code.bin",
        "val_prose.bin",
    ]
    monkeypatch.setattr(packing, "_build", lambda *a, **k: pytest.fail("a complete cache was rebuilt"))
    assert prepare(tiny_corpus, tmp_path / "cache", 512, 0.2).meta == packed.meta


class Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, commits: int) -> None:
    seen = []

    def hook(progress: dict) -> None:
        seen.append(1)
        if len(seen) == commits:
            raise Interrupt

    monkeypatch.setattr(packing, "_on_commit", hook)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_interrupted_packing_resumes_to_the_uninterrupted_bytes(mixed_corpus, tmp_path, monkeypatch, num_proc):
    """Interrupt after 7 commits, again and again, with garbage appended after each last commit; every rerun
    continues from the progress manifest (the BPE is not retrained, the streams start where they stopped)."""
    corpus, _ = mixed_corpus
    monkeypatch.setattr(packing, "ENCODE_BATCH", 4)
    whole = prepare(corpus, tmp_path / "whole", 400, 0.1, num_proc=num_proc)
    cache = tmp_path / "cache"
    starts = []
    real_stream = packing.stream_documents

    def stream(sources, start=None):
        starts.append(start)
        return real_stream(sources, start)

    monkeypatch.setattr(packing, "stream_documents", stream)
    interrupts = 0
    for _ in range(40):  # a build that started over every time would never finish
        _interrupt_after(monkeypatch, 7)
        try:
            packed = prepare(corpus, cache, 400, 0.1, num_proc=num_proc)
            break
        except Interrupt:
            interrupts += 1
        (key,) = [p for p in cache.iterdir() if p.is_dir()]
        # Only the manifest and partial files: the finished names appear when the whole build is done.
        assert not list(key.glob("*.bin")) and not (key / "meta.json").exists()
        assert (key / "progress.json").is_file() and (key / "train.bin.partial").is_file()
        with open(key / "train.bin.partial", "ab") as f:  # written after the last commit: must be dropped
            f.write(b"\x07" * 6)
        # Reruns continue: no BPE training (the saved tokenizer is used) ...
        monkeypatch.setattr(packing, "train_tokenizer", lambda *a: pytest.fail("the BPE was trained again"))
    else:
        pytest.fail("40 interrupted reruns did not finish the build")
    assert interrupts >= 5
    assert any(s is not None for s in starts)  # ... and a domain's stream resumed mid-way
    assert not (packed.root / "progress.json").exists() and not list(packed.root.glob("*.partial"))
    assert packed.root.name == whole.root.name and _files(packed) == _files(whole)


def test_interrupted_while_a_domain_gives_up_its_last_document(mixed_corpus, tmp_path, monkeypatch):
    """The commit that moves the tiny domain's last training document to its held-out file, interrupted before the
    training file is cut: the rerun cuts it."""
    corpus, _ = mixed_corpus
    monkeypatch.setattr(packing, "ENCODE_BATCH", 4)
    whole = prepare(corpus, tmp_path / "whole", 400, 0.1, num_proc=1)

    def hook(progress: dict) -> None:
        tiny = progress["domains"]["tiny"]
        if tiny["done"]:
            assert tiny["val"]["documents"] == 1 and tiny["train"]["documents"] == 1  # no coin held one out
            raise Interrupt

    monkeypatch.setattr(packing, "_on_commit", hook)
    with pytest.raises(Interrupt):
        prepare(corpus, tmp_path / "cache", 400, 0.1, num_proc=1)
    monkeypatch.setattr(packing, "_on_commit", None)
    assert _files(prepare(corpus, tmp_path / "cache", 400, 0.1, num_proc=1)) == _files(whole)


def test_interrupted_hub_stream_resumes_from_its_state(hub_dir, hub_docs, tok_path, tmp_path, monkeypatch):
    """A streamed dataset resumes from the iterator's state_dict (its finished shard is not read again)."""
    monkeypatch.setattr(packing, "ENCODE_BATCH", 10)
    hub = HubDataset(path=str(hub_dir))
    budget = len(expected_tokens({"webtext": hub_docs}, Tokenizer.from_file(str(tok_path)), 0.1)["train"]) - 500
    whole = prepare(hub, tmp_path / "whole", 512, 0.1, tok_path, max_tokens=budget, num_proc=2)
    assert whole.meta["train"]["documents"] + whole.meta["val"]["webtext"]["documents"] < len(hub_docs)
    _interrupt_after(monkeypatch, 10)  # the tokenizer commit, then 9 batches: 90 documents, into the 2nd shard
    with pytest.raises(Interrupt):
        prepare(hub, tmp_path / "cache", 512, 0.1, tok_path, max_tokens=budget, num_proc=2)
    (key,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    position = json.loads((key / "progress.json").read_text())["domains"]["webtext"]["position"]
    assert position[:2] == [0, 90] and position[2] is not None
    resumed = list(stream_documents([hub], position))
    assert [d for d, _ in resumed] == hub_docs[90:]
    monkeypatch.setattr(packing, "_on_commit", None)
    packed = prepare(hub, tmp_path / "cache", 512, 0.1, tok_path, max_tokens=budget, num_proc=2)
    assert _files(packed) == _files(whole)


KILLED_BUILD = """
import json, multiprocessing, os, signal, sys
sys.path.insert(0, {root!r})
from moda_lab.data import packing
commits = []
def kill(progress):
    commits.append(1)
    if len(commits) == 6:
        with open({workers!r}, "w") as f:
            json.dump([p.pid for p in multiprocessing.active_children()], f)
        os.kill(os.getpid(), signal.SIGKILL)
packing.ENCODE_BATCH = 4
packing._on_commit = kill
packing.prepare({corpus!r}, {cache!r}, 400, 0.1, num_proc=2)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_packing_killed_by_sigkill_resumes(mixed_corpus, tmp_path, monkeypatch):
    """A packer killed mid-build (SIGKILL, no cleanup) takes its workers with it and is resumed by the next call."""
    corpus, _ = mixed_corpus
    workers = tmp_path / "workers.json"
    code = KILLED_BUILD.format(root=str(ROOT), corpus=str(corpus), cache=str(tmp_path / "cache"), workers=str(workers))
    log = (tmp_path / "log").open("w")  # not a pipe: a surviving worker would hold it open
    res = subprocess.run([sys.executable, "-c", code], stdout=log, stderr=log, timeout=120)
    assert res.returncode == -9, (tmp_path / "log").read_text()
    pids = json.loads(workers.read_text())
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "workers outlived the killed packer"
    (key,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert (key / "progress.json").is_file() and not (key / "meta.json").exists()
    monkeypatch.setattr(packing, "ENCODE_BATCH", 4)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    packed = prepare(corpus, tmp_path / "cache", 400, 0.1, num_proc=2)
    whole = prepare(corpus, tmp_path / "whole", 400, 0.1, num_proc=1)
    assert _files(packed) == _files(whole)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before  # the packer restores what it set
