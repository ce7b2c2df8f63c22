"""model.init_rng: "per_parameter" starts two variants of one seed from the same values in every weight they share
(common random numbers for paired comparisons); "sequential", the old way, does not once a variant adds modules.
Old run dirs, without the key, read as "sequential" and still resume."""

from __future__ import annotations

import pytest
import torch

from moda_lab.model.config import MixerConfig, ModelConfig
from moda_lab.model.gpt import GPT

SHAPE = dict(vocab_size=256, n_layers=4, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=32)
RESIDUAL = MixerConfig(name="residual")
MODA_FFN = MixerConfig(name="moda", depth_kv=True, ffn_kv=True)


def weights(mixer: MixerConfig, init_rng: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in GPT(ModelConfig(**SHAPE, mixer=mixer, init_rng=init_rng)).state_dict().items()}


def test_per_parameter_init_gives_shared_weights_equal_values_across_variants():
    res, moda = weights(RESIDUAL, "per_parameter", 0), weights(MODA_FFN, "per_parameter", 0)
    shared = sorted(set(res) & set(moda))
    extra = sorted(set(moda) - set(res))
    assert extra and any("mixer" in k for k in extra)  # the FFN K/V projections: the test has something to skip
    random = [k for k in shared if res[k].std() > 0]  # norms' ones and RoPE tables are equal either way
    assert len(random) >= 4 * 5  # per block: wq, wkv, wo, w13, w2
    for k in shared:
        assert torch.equal(res[k], moda[k]), k
    # The old way: the FFN K/V projections take draws in module order, so the weights after them differ.
    res_seq, moda_seq = weights(RESIDUAL, "sequential", 0), weights(MODA_FFN, "sequential", 0)
    assert [k for k in random if not torch.equal(res_seq[k], moda_seq[k])]


def test_per_parameter_init_follows_the_seed_and_keeps_the_distribution():
    a, again, b = (weights(MODA_FFN, "per_parameter", s) for s in (0, 0, 1))
    for k in a:
        assert torch.equal(a[k], again[k]), k
    w = "blocks.1.ffn.w13.weight"
    assert w in a and not torch.equal(a[w], b[w])
    assert not torch.equal(a["blocks.0.ffn.w13.weight"], a["blocks.1.ffn.w13.weight"])  # each weight its own draws
    seq = weights(MODA_FFN, "sequential", 0)
    for k in ("tok_emb.weight", w, "blocks.2.attn.wo.weight"):
        assert a[k].std().item() == pytest.approx(seq[k].std().item(), rel=0.1), k  # same std, other draws


def test_bad_init_rng_names_the_key():
    with pytest.raises(ValueError, match="model.init_rng"):
        ModelConfig(**SHAPE, init_rng="random")


def test_a_run_dir_from_before_the_key_reads_as_sequential_and_resumes(tmp_path):
    import yaml

    from moda_lab.rundir import RunDir

    old = {"model": {"d_model": 32, "n_layers": 4, "init_std": 0.02}, "seed": 0}
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(old))
    rundir = RunDir(d)
    assert rundir.read_config()["model"]["init_rng"] == "sequential"
    new = {"model": {**old["model"], "init_rng": "sequential"}, "seed": 0}
    rundir.open(new)  # the same run: no ConfigError
    from moda_lab.config import ConfigError

    with pytest.raises(ConfigError, match="model.init_rng"):
        rundir.open({"model": {**old["model"], "init_rng": "per_parameter"}, "seed": 0})


@pytest.mark.parametrize("init_rng", ["sequential", "per_parameter"])
def test_depth_kv_alone_starts_from_the_residuals_weights_either_way(init_rng):
    """MoDA depth KV adds no weights: a seed's pair with the residual starts equal under both modes (what makes the
    committed post-norm depth-KV pairs common-random-number pairs)."""
    res, dkv = weights(RESIDUAL, init_rng, 3), weights(MixerConfig(name="moda", depth_kv=True), init_rng, 3)
    assert set(res) == set(dkv) and all(torch.equal(res[k], dkv[k]) for k in res)
