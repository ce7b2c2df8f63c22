"""Hydra composition of every variant x norm, and clear errors for bad configs and bad data."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from hydra.errors import HydraException

from helpers import CONF, compose_cfg
from moda_lab.config import ConfigError, run_config_from_dict
from moda_lab.data import corpus_files, prepare, read_documents
from moda_lab.model import DEPTH_MIXERS, GPT, NORM_PLACEMENTS
from variants import VARIANTS


def _names(registry: dict) -> str:
    """The registry's names as the error message lists them, as a regex."""
    return re.escape(str(list(registry)))


def _options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_")}


def test_config_files_are_the_variants_and_the_registered_norms():
    assert _options("model") == set(VARIANTS)  # a new variant: its conf/model file and its tests/variants.py entry
    assert _options("norm") == set(NORM_PLACEMENTS)


def test_a_registered_mixer_is_a_config_choice_without_other_edits(monkeypatch):
    """Registering a class in DEPTH_MIXERS is all a new depth-flow variant needs to be configured and built
    (its conf/model file only names it: model.mixer.name=<name> is the same)."""
    import torch

    from moda_lab.model.mixers import DepthMixer

    class HalvingMixer(DepthMixer):
        """The residual stream, halved after each block: enough to see that the blocks run this mixer."""

        def write(self, x, ctx):
            return 0.5 * x

    name = "halving_test_mixer"
    override = ["model=residual", f"model.mixer.name={name}", "model.n_layers=2"]
    with pytest.raises(ConfigError, match=rf"model.mixer.name='{name}' is not allowed"):
        run_config_from_dict(compose_cfg(override))
    monkeypatch.setitem(DEPTH_MIXERS, name, HalvingMixer)
    run = run_config_from_dict(compose_cfg(override))
    model = GPT(run.model)
    assert all(isinstance(b.mixer, HalvingMixer) for b in model.blocks)
    assert model(torch.randint(0, 64, (2, 8))).shape == (2, 8, run.model.vocab_size)
    with pytest.raises(ConfigError, match=f"choose one of {_names(DEPTH_MIXERS)}") as err:
        run_config_from_dict(compose_cfg(["model.mixer.name=bar"]))
    assert repr(name) in str(err.value)  # the error lists it with the others


@pytest.mark.parametrize("model", VARIANTS)
@pytest.mark.parametrize("norm", NORM_PLACEMENTS)
def test_every_variant_and_norm_composes_and_builds(model, norm):
    cfg = compose_cfg([f"model={model}", f"norm={norm}", "model.n_layers=2", "model.d_model=32"])
    assert "norm" not in cfg  # the norm group sets model.norm, the placement's one key
    run = run_config_from_dict(cfg)
    assert run.model.norm == norm
    assert run.model.mixer == VARIANTS[model]
    gpt = GPT(run.model)
    assert gpt.num_params() > 0 and gpt.flops_per_token(run.data.seq_len) > 0


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.mixer.name=moda2", rf"model.mixer.name='moda2' is not allowed; choose one of {_names(DEPTH_MIXERS)}"),
        ("model.n_heads=3", r"model.n_heads=3 must be a multiple of model.n_kv_heads=2"),
        (
            "model.attn_backend=cuda",
            r"model.attn_backend='cuda' is not allowed; choose one of \['auto', 'naive', 'sdpa', 'triton'\]",
        ),
        ("+model.n_layer=3", r"unknown config key 'model.n_layer'; did you mean 'n_layers'\?"),
        ("trainer.lr=fast", r"trainer.lr='fast' has the wrong type"),
        ("model.norm=middle", rf"model.norm='middle' is not allowed; choose one of {_names(NORM_PLACEMENTS)}"),
        ("trainer.precision=fp8", r"trainer.precision='fp8' is not allowed"),
        ("trainer.strategy=horovod", r"trainer.strategy='horovod' is not allowed"),
        (
            "trainer.strategy=fsdp trainer.accelerator=cpu",
            r"trainer.strategy='fsdp' is not allowed with trainer.accelerator='cpu'; allowed: fsdp on GPUs",
        ),
        ("trainer.warmup_steps=-5", r"trainer.warmup_steps=-5 is out of range; allowed: >= 0$"),
        ("trainer.grad_clip=-1", r"trainer.grad_clip=-1 is out of range; allowed: >= 0 \(0: no clipping\)"),
        ("trainer.lr=-1e-3", r"trainer.lr=-0.001 is out of range; allowed: > 0"),
        ("trainer.lr=0", r"trainer.lr=0 is out of range; allowed: > 0"),
        ("trainer.lr=nan", r"trainer.lr=nan is out of range"),
        ("trainer.beta2=1.0", r"trainer.beta2=1.0 is out of range; allowed: 0 <= x < 1"),
        ("trainer.min_lr_ratio=2", r"trainer.min_lr_ratio=2 is out of range; allowed: 0 <= x <= 1"),
        ("trainer.weight_decay=-0.1", r"trainer.weight_decay=-0.1 is out of range"),
        ("trainer.keep_checkpoints=-2", r"trainer.keep_checkpoints=-2 is out of range; allowed: >= 0, or -1"),
        ("trainer.max_steps=0", r"trainer.max_steps=0 is out of range; allowed: >= 1"),
        ("trainer.ckpt_every=30", r"trainer.ckpt_every=30 is not allowed with trainer.val_every=50; allowed: a mult"),
        (
            "model.d_model=100",
            r"model.d_model=100 / model.n_heads=4 gives head dim 25; allowed: an even head dim .*model.head_dim",
        ),
        ("model.head_dim=5", r"model.head_dim=5 is out of range; allowed: an even number >= 2"),
        ("model.max_seq_len=64", r"model.max_seq_len=64 is out of range; allowed: >= data.seq_len=128"),
        ("model.vocab_size=4096", r"model.vocab_size=4096 is out of range; allowed: >= data.vocab_size=8192"),
        ("model.norm_eps=0", r"model.norm_eps=0 is out of range; allowed: > 0"),
        ("model.n_kv_heads=0", r"model.n_kv_heads=0 is out of range; allowed: >= 1"),
        ("data.val_fraction=1.5", r"data.val_fraction=1.5 is out of range; allowed: 0 < x < 1"),
        ("data.seq_len=0", r"data.seq_len=0 is out of range; allowed: >= 1"),
        ("data.vocab_size=100", r"data.vocab_size=100 is out of range; allowed: 257..65535"),
        ("data.num_workers=-1", r"data.num_workers=-1 is out of range; allowed: >= 0"),
        ("data.sources=[wikipedia]", r"data.sources=\['wikipedia'\] is not allowed; choose a non-empty list from \["),
        ("logger.wandb.mode=cloud", r"logger.wandb.mode='cloud' is not allowed; choose one of \['auto'"),
        ("seed=-1", r"seed=-1 is out of range; allowed: 0 to 2\*\*32 - 1"),
        ("seed=4294967296", r"seed=4294967296 is out of range"),
        ("run_root=", r"run_root='' is not allowed; allowed: a directory path"),  # once: runs at the fs root
        ("name=", r"name='' is not allowed; allowed: a sweep name"),
        ("name=../../escape", r"name='../../escape' is not allowed; allowed: a sweep name, a relative path inside"),
        ("name=/abs", r"name='/abs' is not allowed"),
    ],
)
def test_bad_values_name_key_and_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict(compose_cfg(override.split()))


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
    from moda_lab.train.task import load_data

    path = tmp_path / "corpus" / "bad.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        list(read_documents(path))
    cfg = compose_cfg([f"data.corpus_dir={path.parent}", f"data.cache_dir={tmp_path / 'cache'}", "data.vocab_size=512"])
    with pytest.raises(ConfigError, match=r"^data.corpus_dir='.*corpus': .*bad.jsonl:2: expected a JSON object"):
        load_data(run_config_from_dict(cfg))


def test_missing_corpus_without_default_build_is_clear(tmp_path):
    from moda_lab.train.task import load_data

    cfg = compose_cfg([f"data.default_corpus_dir={tmp_path / 'absent'}", "data.build_default=false"])
    with pytest.raises(ConfigError, match=r"data.corpus_dir=.*absent' does not exist \(data.build_default=false\)"):
        load_data(run_config_from_dict(cfg))


def test_mistyped_corpus_dir_is_an_error_not_a_new_default_corpus(tmp_path):
    from moda_lab.rundata import check_data, load_data

    cfg = compose_cfg([f"data.corpus_dir={tmp_path / 'corpsu'}", f"data.default_corpus_dir={tmp_path / 'corpus'}"])
    with pytest.raises(ConfigError, match=r"data.corpus_dir='.*corpsu' does not exist; allowed: an existing dir"):
        load_data(run_config_from_dict(cfg))
    assert not (tmp_path / "corpsu").exists()
    # The default location (not built yet) stays valid: it is built on first use.
    check_data(run_config_from_dict(compose_cfg([f"data.default_corpus_dir={tmp_path / 'corpus'}"])))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no text files"):
        check_data(run_config_from_dict(compose_cfg([f"data.corpus_dir={tmp_path / 'empty'}"])))
    with pytest.raises(ConfigError, match=r"data.packed_dir='.*empty' is not a packed data folder"):
        check_data(run_config_from_dict(compose_cfg([f"data.packed_dir={tmp_path / 'empty'}"])))


def test_command_line_is_checked_job_by_job_before_anything_is_written(tmp_path, monkeypatch):
    from helpers import CONF
    from moda_lab.train.preflight import check_command_line

    monkeypatch.chdir(tmp_path)
    root = f"run_root={tmp_path / 'runs'}"
    with pytest.raises(
        ConfigError, match=r"^trainer.lr=-1 is out of range; allowed: > 0 \(job model=moda,trainer.lr=-1\)$"
    ):
        check_command_line(["-m", root, "model=moda,dense", "trainer.lr=0.01,-1"], CONF)
    check_command_line(["-m", root, "model=moda,dense", "trainer.lr=0.01,0.02"], CONF)
    check_command_line([root, "--cfg", "job", "trainer.lr=-1"], CONF)  # Hydra prints; nothing runs
    with pytest.raises(ConfigError, match=r"^-m and --cfg cannot be combined"):
        check_command_line(["-m", root, "model=moda,dense", "--cfg", "job"], CONF)
    with pytest.raises(ConfigError, match=r"^model=moda_typo is not allowed; choose one of \['attnres', .*'dense', "):
        check_command_line([root, "model=moda_typo"], CONF)
    with pytest.raises(ConfigError, match=r"^Could not override 'trainer.lrr'. To append to your config use \+"):
        check_command_line([root, "trainer.lrr=1"], CONF)
    assert list(tmp_path.iterdir()) == []

    # A relaunch into an existing run dir with another config is refused before Hydra rewrites its .hydra/.
    run_dir = tmp_path / "runs" / "default" / "model=dense"
    run_dir.mkdir(parents=True)
    old = compose_cfg([root, "model=dense", "trainer.lr=0.5"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"already holds a run with a different config \(trainer.lr: 0.5 -> 0.0015\)"):
        check_command_line([root, "model=dense"], CONF)
    check_command_line([root, "model=dense", "trainer.lr=0.5"], CONF)

    # Two jobs of a sweep that differ only in keys that do not name a run would share one run dir: the second
    # resumed the first and overwrote its result, its lr schedule restarted mid-run.
    with pytest.raises(ConfigError, match=r"^jobs trainer.max_steps=10 and trainer.max_steps=20 would train the same "
                       rf"run dir {tmp_path}/runs/default/default: .* give each job its own name=$"):
        check_command_line(["-m", root, "trainer.max_steps=10,20"], CONF)
    with pytest.raises(ConfigError, match=r"^jobs model=moda,data.val_windows=8 and model=moda,data.val_windows=16 "):
        check_command_line(["-m", root, "model=moda,dense", "data.val_windows=8,16"], CONF)
    check_command_line(["-m", root, "model=moda,dense", "seed=0,1"], CONF)  # four run dirs

def test_config_error_prints_one_line_and_writes_nothing(tmp_path):
    from helpers import ROOT

    cmd = [sys.executable, str(ROOT / "run.py"), f"run_root={tmp_path / 'runs'}", "trainer.warmup_steps=-5"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "config error: trainer.warmup_steps=-5 is out of range; allowed: >= 0\n"
    assert list(tmp_path.iterdir()) == []


def test_stub_run_dirs_are_removed_and_real_ones_kept(tmp_path):
    from moda_lab.rundir import remove_stub

    stub = tmp_path / "runs" / "default" / "stub"
    (stub / ".hydra").mkdir(parents=True)
    (stub / "run.log").write_text("")
    assert remove_stub(stub) and not (tmp_path / "runs").exists()  # with the parents Hydra made for it
    real = tmp_path / "real"
    (real / ".hydra").mkdir(parents=True)
    (real / "metrics.jsonl").write_text("{}\n")
    assert not remove_stub(real) and (real / "metrics.jsonl").is_file()
