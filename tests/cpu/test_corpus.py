"""Corpus sources and packing: de-duplication, per-domain token counts, clear errors for missing packages."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from helpers import CONF
from moda_lab.data import corpus, prepare
from moda_lab.data.corpus import (
    DEBIAN_PACKAGES,
    SOURCES,
    _package_files,
    _site_code,
    _write_jsonl,
    build_default_corpus,
)


def test_write_jsonl_keeps_one_copy_of_each_text(tmp_path):
    n, nbytes = _write_jsonl(tmp_path / "d" / "d.jsonl", iter(["a b", "", "a b", "c", "  "]))
    assert (n, nbytes) == (2, 4)
    assert [json.loads(line)["text"] for line in (tmp_path / "d" / "d.jsonl").open()] == ["a b", "c"]


def test_sources_have_distinct_domains_and_a_source_twice_is_an_error(tmp_path):
    domains = [domain for domain, _ in SOURCES.values()]
    assert len(set(domains)) == len(domains)  # each source is its own validation domain
    with pytest.raises(ValueError, match="unknown corpus source 'wiki'"):
        build_default_corpus(tmp_path, ["wiki"])
    with pytest.raises(ValueError, match="name a source twice"):
        build_default_corpus(tmp_path, ["stdlib", "stdlib"])


def test_missing_debian_package_names_its_install_command(monkeypatch, tmp_path):
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg")
    with pytest.raises(FileNotFoundError, match=r"apt-get install --no-install-recommends moda-no-such-package"):
        _package_files("moda-no-such-package")
    monkeypatch.setitem(corpus.DEVDOCS, "moda-no-such-package", lambda p: True)
    need = r"is not installed.*need, as root: apt-get install -y --no-install-recommends llvm-15-doc cmake-doc"
    with pytest.raises(FileNotFoundError, match=need):
        build_default_corpus(tmp_path, ["devdocs"])


def test_table6_data_config_lists_every_package_its_sources_need():
    import yaml

    text = (CONF / "data" / "table6.yaml").read_text()
    for source in yaml.safe_load(text)["sources"]:
        for package in DEBIAN_PACKAGES[source]:
            assert f" {package}" in text, f"{package} (source {source}) missing from the install command"


def test_site_code_reads_a_pinned_distribution_without_its_tests():
    docs = list(_site_code(("lightning",)))
    assert len(docs) > 100 and any("class LightningModule" in d for d in docs)
    with pytest.raises(FileNotFoundError, match=r"pip install moda-no-such-dist"):
        list(_site_code(("moda-no-such-dist",)))


@pytest.mark.skipif(shutil.which("man") is None, reason="no man-db")
def test_man_pages_render_to_plain_text(monkeypatch):
    if subprocess.run(["dpkg", "-s", "manpages"], capture_output=True).returncode:
        pytest.skip("Debian's manpages is not installed")
    # One page is enough to check the rendering: take the package's intro(2) only.
    real = corpus._package_files
    monkeypatch.setattr(corpus, "_package_files", lambda p: [f for f in real(p) if f.name == "intro.2.gz"])
    (text,) = list(corpus._man_pages(("manpages",)))
    assert "NAME" in text and "system calls" in text and "\b" not in text and ".TH" not in text


def test_packing_counts_training_tokens_per_domain(tiny_corpus, tmp_path):
    packed = prepare(tiny_corpus, tmp_path / "cache", 512, 0.2)
    per_domain = packed.meta["train_domains"]
    assert sorted(per_domain) == packed.domains == ["code", "prose"]
    for key in ("tokens", "bytes", "documents"):
        assert packed.meta["train"][key] == sum(d[key] for d in per_domain.values())
    train = packed.tokens("train")
    assert train.dtype == np.uint16 and train.size == packed.meta["train"]["tokens"]
    assert int((train == packed.meta["eos_id"]).sum()) == packed.meta["train"]["documents"]
