"""Corpus sources beyond text/JSONL files (Parquet, saved Hugging Face datasets) and pretrained tokenizers: the same
documents pack to the same tokens whatever the format; a pretrained tokenizer.json is used as is (EOS added if
missing); vocabularies over 65,536 tokens pack as uint32; bad sources fail naming the file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from helpers import TINY, compose_cfg
from moda_lab.data import EOS, corpus_files, prepare, read_documents, train_tokenizer

datasets = pytest.importorskip("datasets")

WORDS = ["water", "paper", "stone", "glass", "bread", "cloth", "metal", "sugar"]
DOCS = [
    f"The {WORDS[i % 8]} is next to the {WORDS[(i + 3) % 8]}. def f{i}(x):\n    return x * {i}\n" for i in range(24)
]


def _jsonl(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def _parquet(path, docs, column="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Small row groups: the reader streams them, as it must for multi-GB files.
    pq.write_table(pa.table({column: docs, "id": list(range(len(docs)))}), path, row_group_size=5)


def _unpack(packed, tok: Tokenizer) -> list[str]:
    """Every packed document (train and held-out), decoded."""
    docs = []
    for split in ["train", *(f"val_{d}" for d in packed.domains)]:
        ids = packed.tokens(split).tolist()
        eos = packed.meta["eos_id"]
        while ids:
            end = ids.index(eos)
            docs.append(tok.decode(ids[:end]))
            ids = ids[end + 1 :]
    return docs


def test_jsonl_parquet_and_saved_datasets_pack_to_the_same_tokens(tmp_path):
    """One domain 'web' of the same documents as JSONL, Parquet, a saved Dataset and a saved DatasetDict."""
    corpora = {name: tmp_path / name / "corpus" for name in ("jsonl", "parquet", "dataset", "dataset_dict")}
    _jsonl(corpora["jsonl"] / "web" / "a.jsonl", DOCS[:10])
    _jsonl(corpora["jsonl"] / "web" / "b.jsonl", DOCS[10:])
    _parquet(corpora["parquet"] / "web" / "a.parquet", DOCS[:10])
    _parquet(corpora["parquet"] / "web" / "b.parquet", DOCS[10:])
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(corpora["dataset"] / "web"))
    splits = {
        "a": datasets.Dataset.from_dict({"text": DOCS[:10]}),
        "b": datasets.Dataset.from_dict({"text": DOCS[10:]}),
    }
    datasets.DatasetDict(splits).save_to_disk(str(corpora["dataset_dict"] / "web"))

    packed = {}
    for name, corpus in corpora.items():
        files = corpus_files(corpus)
        assert list(files) == ["web"], (name, files)
        assert [d for f in files["web"] for d in read_documents(f)] == DOCS, name
        packed[name] = prepare(corpus, tmp_path / name / "cache", 300, 0.2)
    ref = packed["jsonl"]
    for name, p in packed.items():
        assert p.meta["dtype"] == "uint16" and p.domains == ["web"]
        assert (p.root / "tokenizer.json").read_text() == (ref.root / "tokenizer.json").read_text(), name
        for split in ("train", "val_web"):
            assert np.array_equal(p.tokens(split), ref.tokens(split)), (name, split)
    tok = Tokenizer.from_file(str(ref.root / "tokenizer.json"))
    assert sorted(_unpack(ref, tok)) == sorted(DOCS)
    # A corpus dir that is itself a saved dataset is the domain "default"; next to files, a dataset dir is its own.
    assert list(corpus_files(corpora["dataset"] / "web")) == ["default"]
    _jsonl(corpora["dataset"] / "code" / "c.jsonl", DOCS[:3])
    assert sorted(corpus_files(corpora["dataset"])) == ["code", "web"]


def test_pretrained_tokenizer_is_used_as_is(tmp_path):
    corpus = tmp_path / "corpus"
    _parquet(corpus / "web" / "docs.parquet", DOCS)
    tok = train_tokenizer(["a completely different text about clouds and rivers"] * 50 + DOCS[:2], 400)
    tok_path = tmp_path / "pretrained" / "tokenizer.json"
    tok_path.parent.mkdir()
    tok.save(str(tok_path))
    packed = prepare(corpus, tmp_path / "cache", 512, 0.2, tokenizer=tok_path)
    assert Tokenizer.from_file(str(packed.root / "tokenizer.json")).to_str() == tok.to_str()  # not retrained
    assert packed.vocab_size == tok.get_vocab_size() and packed.meta["eos_id"] == tok.token_to_id(EOS)
    assert sorted(_unpack(packed, tok)) == sorted(DOCS)
    # The folder works too, and the cache key follows the tokenizer: another tokenizer, another folder.
    assert prepare(corpus, tmp_path / "cache", 512, 0.2, tokenizer=tok_path.parent).root == packed.root
    other = tmp_path / "other.json"
    train_tokenizer(DOCS * 5, 300).save(str(other))
    assert prepare(corpus, tmp_path / "cache", 512, 0.2, tokenizer=other).root != packed.root
    with pytest.raises(ValueError, match=r"has \d+ tokens, more than data.vocab_size=300"):
        prepare(corpus, tmp_path / "cache", 300, 0.2, tokenizer=tok_path)
    with pytest.raises(FileNotFoundError, match="data.tokenizer=.*no tokenizer.json"):
        prepare(corpus, tmp_path / "cache", 512, 0.2, tokenizer=tmp_path / "absent")


def test_tokenizer_by_hub_name(tmp_path, monkeypatch):
    """data.tokenizer=gpt2 (no such path) loads the hub repository's tokenizer.json; offline, the error names the
    key and says both what was looked for and why the hub failed."""
    from moda_lab.data import tokenizer as tok_module

    corpus = tmp_path / "corpus"
    _parquet(corpus / "web" / "docs.parquet", DOCS)
    hub = train_tokenizer(DOCS * 3, 350)
    asked = []
    monkeypatch.setattr(tok_module, "hub_tokenizer", lambda name: asked.append(name) or hub)
    monkeypatch.chdir(tmp_path)
    packed = prepare(corpus, tmp_path / "cache", 512, 0.2, tokenizer="openai-community/gpt2")
    assert asked == ["openai-community/gpt2"]
    assert Tokenizer.from_file(str(packed.root / "tokenizer.json")).to_str() == hub.to_str()
    assert tok_module.looks_like_hub_name("gpt2") and not tok_module.looks_like_hub_name("a/b/c")
    assert not tok_module.looks_like_hub_name("./tok.json") and not tok_module.looks_like_hub_name(str(tmp_path / "x"))

    def offline(name):
        raise OSError("could not reach huggingface.co")

    monkeypatch.setattr(tok_module, "hub_tokenizer", offline)
    with pytest.raises(FileNotFoundError, match=r"data.tokenizer='gpt2': no tokenizer.json .* hub .*OSError: could not"):
        prepare(corpus, tmp_path / "cache", 512, 0.2, tokenizer="gpt2")


def _word_level(n: int, eos: bool) -> Tokenizer:
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(n)}}
    if eos:
        vocab[EOS] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_vocab_over_65536_packs_uint32_and_eos_is_added(tmp_path):
    n = 70_000
    docs = [" ".join(f"w{(i * 7919 + j * 104729) % n}" for j in range(40)) for i in range(12)]
    corpus = tmp_path / "corpus"
    _jsonl(corpus / "web" / "docs.jsonl", docs)
    tok_path = tmp_path / "tokenizer.json"
    _word_level(n, eos=False).save(str(tok_path))
    packed = prepare(corpus, tmp_path / "cache", 70_016, 0.2, tokenizer=tok_path)
    assert packed.meta["dtype"] == "uint32" and packed.tokens("train").dtype == np.uint32
    eos = packed.meta["eos_id"]
    assert eos == n + 1  # appended after the pretrained vocabulary
    stream = np.concatenate([packed.tokens("train"), packed.tokens("val_web")])
    assert stream.max() > 65_535 and (stream == eos).sum() == len(docs)
    expected = sorted(tuple(_word_level(n, eos=False).encode(d).ids) for d in docs)
    got = []
    for split in ("train", "val_web"):
        ids = packed.tokens(split).tolist()
        while ids:
            end = ids.index(eos)
            got.append(tuple(ids[:end]))
            ids = ids[end + 1 :]
    assert sorted(got) == expected
    # Training windows read the uint32 tokens as they are.
    from moda_lab.train.datamodule import TokenWindows

    windows = TokenWindows(packed.tokens("train"), 16)
    inputs = torch.cat([windows[i][0] for i in range(len(windows))])
    assert inputs.dtype == torch.int64 and int(inputs.max()) > 65_535
    assert inputs.tolist() == packed.tokens("train")[: len(inputs)].tolist()


def test_bad_sources_name_the_file(tmp_path):
    _parquet(tmp_path / "a" / "web" / "docs.parquet", DOCS, column="content")
    with pytest.raises(ValueError, match=r"docs.parquet: no 'text' column \(columns: \['content', 'id'\]\)"):
        prepare(tmp_path / "a", tmp_path / "cache", 300, 0.2)
    path = tmp_path / "b" / "web"
    datasets.Dataset.from_dict({"text": ["fine", None]}).save_to_disk(str(path))
    with pytest.raises(ValueError, match=r"web \(dataset\): row 1: 'text' must be a string, got NoneType"):
        list(read_documents(path))


def test_training_run_on_parquet_with_a_pretrained_tokenizer(tmp_path):
    """run.py's config: data.corpus_dir of Parquet files, data.tokenizer; the checkpoint carries that tokenizer."""
    from moda_lab.train.task import train

    corpus = tmp_path / "corpus"
    _parquet(corpus / "web" / "docs.parquet", DOCS * 4)
    tok = train_tokenizer(DOCS, 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    overrides = [
        *TINY,
        f"data.corpus_dir={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.tokenizer={tmp_path / 'tokenizer.json'}",
        "data.vocab_size=320",  # the model's embedding rows: the tokenizer's 300 plus padding
        "data.val_fraction=0.2",
        "trainer.max_steps=2",
        "trainer.val_every=2",
        "trainer.ckpt_every=2",
    ]
    run_dir = tmp_path / "run"
    train(compose_cfg(overrides), run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert Tokenizer.from_str(ckpt["tokenizer"]).to_str() == tok.to_str()
    assert ckpt["hyper_parameters"]["model_cfg"]["vocab_size"] == 320
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/web/loss" in r for r in rows) and any("train/loss" in r for r in rows)


def test_streaming_build_equals_packing_the_whole_split_at_once(tmp_path, monkeypatch):
    """Batches of 3 documents streamed through the files give the bytes of tokenising each split in one go."""
    from moda_lab.data import packing

    corpus = tmp_path / "corpus"
    _parquet(corpus / "web" / "a.parquet", DOCS[:17])
    _jsonl(corpus / "code" / "b.jsonl", DOCS[17:])
    _jsonl(corpus / "tiny" / "c.jsonl", DOCS[:2])  # no coin holds one out: its last document is held out
    monkeypatch.setattr(packing, "ENCODE_BATCH", 3)
    packed = prepare(corpus, tmp_path / "cache", 300, 0.2)
    files = corpus_files(corpus)
    splits = {"train": []}
    for domain, paths in files.items():
        train, val = packing.split_documents(domain, paths, 0.2)
        splits["train"] += train
        splits[f"val_{domain}"] = val
    assert splits["val_tiny"] == DOCS[1:2]
    tok = train_tokenizer(splits["train"], 300)
    assert Tokenizer.from_file(str(packed.root / "tokenizer.json")).to_str() == tok.to_str()
    eos = tok.token_to_id(EOS)
    for split, docs in splits.items():
        ref = [i for enc in tok.encode_batch(docs) for i in (*enc.ids, eos)]
        assert packed.tokens(split).tolist() == ref, split
        stats = packed.meta["train"] if split == "train" else packed.meta["val"][split.removeprefix("val_")]
        assert stats == {"tokens": len(ref), "bytes": sum(len(d.encode()) for d in docs), "documents": len(docs)}
