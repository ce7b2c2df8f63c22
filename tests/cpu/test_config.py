"""Hydra composition of every variant x norm, and clear errors for bad configs and bad data."""

from __future__ import annotations

import json

import pytest
from hydra.errors import HydraException

from helpers import compose_cfg
from moda_lab.config import ConfigError, run_config_from_dict
from moda_lab.data import corpus_files, prepare, read_documents
from moda_lab.model import GPT

VARIANTS = ["residual", "dense", "depth_attn", "moda", "moda_depth_kv", "moda_full"]
NORMS = ["pre", "post", "reordered"]


@pytest.mark.parametrize("model", VARIANTS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_variant_and_norm_composes_and_builds(model, norm):
    cfg = compose_cfg([f"model={model}", f"norm={norm}", "model.n_layers=2", "model.d_model=32"])
    run = run_config_from_dict(cfg)
    assert run.model.norm == norm
    expected = {"moda_depth_kv": "moda", "moda_full": "moda"}.get(model, model)
    assert run.model.mixer.name == expected
    gpt = GPT(run.model)
    assert gpt.num_params() > 0 and gpt.flops_per_token(run.data.seq_len) > 0


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.mixer.name=moda2",
            r"model.mixer.name='moda2' is not allowed; choose one of \['residual', 'dense', 'depth_attn', 'moda'\]",
        ),
        ("model.n_heads=3", r"model.n_heads=3 must be a multiple of model.n_kv_heads=2"),
        (
            "model.attn_backend=cuda",
            r"model.attn_backend='cuda' is not allowed; choose one of \['auto', 'naive', 'sdpa', 'triton'\]",
        ),
        ("+model.n_layer=3", r"unknown config key 'model.n_layer'; did you mean 'n_layers'\?"),
        ("trainer.lr=fast", r"trainer.lr='fast' has the wrong type"),
        (
            "norm.placement=middle",
            r"norm.placement='middle' is not allowed; choose one of \['pre', 'post', 'reordered'\]",
        ),
        ("trainer.precision=fp8", r"trainer.precision='fp8' is not allowed"),
        ("trainer.strategy=horovod", r"trainer.strategy='horovod' is not allowed"),
    ],
)
def test_bad_values_name_key_and_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict(compose_cfg([override]))


def test_unknown_group_option_lists_available():
    with pytest.raises(HydraException, match=r"moda_typo"):
        compose_cfg(["model=moda_typo"])


def test_missing_and_empty_corpus_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.corpus_dir='.*nope' does not exist"):
        corpus_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no text files"):
        prepare(tmp_path / "empty", tmp_path / "cache", 512, 0.1)


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        list(read_documents(path))


def test_missing_corpus_without_default_build_is_clear(tmp_path):
    from moda_lab.train.task import load_data

    cfg = compose_cfg([f"data.corpus_dir={tmp_path / 'absent'}", "data.build_default=false"])
    with pytest.raises(
        FileNotFoundError, match=r"data.corpus_dir=.*absent' does not exist \(data.build_default=false\)"
    ):
        load_data(run_config_from_dict(cfg))
