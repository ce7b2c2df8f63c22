"""The optimizers and schedules of moda_lab.train.optim, and the DeepNorm placement."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from moda_lab.config import ConfigError, TrainerConfig
from moda_lab.model import GPT, ModelConfig
from moda_lab.model.norms import NORM_PLACEMENTS
from moda_lab.train.muon import GroupedMuon
from moda_lab.train.optim import Chained, build_optimizer, build_schedule, lr_lambda


def tiny(norm: str = "pre", tie: bool = True, mixer: str = "residual") -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layers=3, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=16, norm=norm,
                      tie_embeddings=tie, attn_backend="naive",
                      mixer={"name": mixer, "ffn_kv": mixer == "moda", "depth_kv": mixer == "moda"})
    return GPT(cfg)


def test_wsd_is_flat_then_decays_linearly_to_min():
    f = [lr_lambda(s, 10, 100, 0.0, "wsd", 0.3) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[10:70])  # stable until the last 30%
    assert f[85] == pytest.approx(0.5) and f[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(f[70:], f[71:]))


def test_cosine_is_the_old_schedule():
    warm, total, lo = 20, 200, 0.1
    for s in (0, 19, 20, 110, 199, 250):
        old = (s + 1) / warm if s < warm else lo + (1 - lo) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, (s - warm) / (total - warm))))
        assert lr_lambda(s, warm, total, lo) == pytest.approx(old, abs=0)


def _ids(groups) -> list[int]:
    return [id(p) for g in groups for p in g["params"]]


@pytest.mark.parametrize("tie", [True, False])
def test_every_parameter_is_optimised_once(tie):
    model = tiny(tie=tie, mixer="moda")
    for t in (TrainerConfig(), TrainerConfig(optimizer="muon"), TrainerConfig(embed_lr_scale=0.1)):
        opt = build_optimizer(model, t)
        ids = _ids(opt.param_groups)
        assert sorted(ids) == sorted(id(p) for p in model.parameters()), t.optimizer
        assert len(ids) == len(set(ids))


def test_adamw_keeps_the_two_group_layout_of_earlier_checkpoints():
    model = tiny()
    opt = build_optimizer(model, TrainerConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert _ids(opt.param_groups[:1]) == [id(p) for p in model.parameters() if p.ndim >= 2]


def test_table_gets_its_own_lr_and_decay():
    model = tiny(tie=False)
    opt = build_optimizer(model, TrainerConfig(lr=1e-3, embed_lr_scale=0.25, embed_weight_decay=0.0))
    table = opt.param_groups[-1]
    assert table["lr"] == pytest.approx(2.5e-4) and table["weight_decay"] == 0.0
    assert set(_ids([table])) == {id(model.tok_emb.weight), id(model.lm_head.weight)}
    sched = build_schedule(opt, TrainerConfig(lr=1e-3, warmup_steps=4, embed_lr_scale=0.25))
    assert opt.param_groups[-1]["lr"] == pytest.approx(2.5e-4 / 4)  # the schedule scales every group
    opt.step()
    sched.step()
    assert opt.param_groups[-1]["lr"] == pytest.approx(2.5e-4 / 2)


def test_muon_takes_the_hidden_matrices_only():
    model = tiny(tie=False)
    opt = build_optimizer(model, TrainerConfig(optimizer="muon"))
    assert isinstance(opt, Chained) and isinstance(opt.optimizers[0], GroupedMuon)
    muon = set(_ids(opt.optimizers[0].param_groups))
    assert id(model.tok_emb.weight) not in muon and id(model.lm_head.weight) not in muon
    assert id(model.blocks[0].attn.wq.weight) in muon and id(model.blocks[0].ffn.w2.weight) in muon
    assert all(p.ndim == 2 for g in opt.optimizers[0].param_groups for p in g["params"])


def _train(model: GPT, opt, steps: int, seed: int = 1) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        start = torch.randint(0, 64, (4, 1), generator=g)
        x = (start + 3 * torch.arange(17)) % 64  # a learnable sequence: each token decides the next
        opt.zero_grad()
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_muon_trains_and_its_state_round_trips():
    t = TrainerConfig(optimizer="muon", lr=3e-3)
    model = tiny()
    opt = build_optimizer(model, t)
    losses = _train(model, opt, 30)
    assert losses[-1] < losses[0] - 0.5
    # Resume: a copy of the weights and the optimizer state continues exactly as the original does.
    twin = tiny()
    twin.load_state_dict(model.state_dict())
    twin_opt = build_optimizer(twin, t)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # a state dict holds the live tensors
    assert twin_opt.param_groups[0] is twin_opt.optimizers[0].param_groups[0]  # the scheduler sees the new dicts
    _train(model, opt, 3, seed=7)
    _train(twin, twin_opt, 3, seed=7)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_chained_state_does_not_load_into_another_count():
    opt = build_optimizer(tiny(), TrainerConfig(optimizer="muon"))
    with pytest.raises(ValueError, match="2 chained"):
        Chained([opt.optimizers[1]]).load_state_dict(opt.state_dict())


@pytest.mark.parametrize(
    "kw, key",
    [({"optimizer": "sgd"}, "trainer.optimizer"), ({"schedule": "linear"}, "trainer.schedule"),
     ({"decay_frac": 0.0}, "trainer.decay_frac"), ({"embed_lr_scale": -1.0}, "trainer.embed_lr_scale"),
     ({"embed_weight_decay": -0.1}, "trainer.embed_weight_decay"),
     ({"optimizer": "muon", "strategy": "fsdp", "accelerator": "gpu"}, "trainer.optimizer='muon'")],
)
def test_bad_optimizer_settings_name_their_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        TrainerConfig(**kw)


def test_deepnorm_up_weights_the_stream_and_scales_the_init():
    n = 3
    model = tiny(norm="deepnorm")
    place = model.blocks[0].attn_norm
    alpha, beta = (2 * n) ** 0.25, (8 * n) ** -0.25
    assert place.alpha == pytest.approx(alpha)
    x = torch.randn(2, 5, 32)
    f = torch.nn.Linear(32, 32)
    mixer = model.blocks[0].mixer  # the residual's combine, with the placement's roles: norm(alpha x + f(x))
    assert place.gain == pytest.approx(alpha) and place.norm_input(x) is x
    combined = mixer.combine(mixer.skip(x, place, "attn", None), f(x), place, "attn", None)
    torch.testing.assert_close(combined, place.norm(alpha * x + f(x)))
    assert not NORM_PLACEMENTS["deepnorm"].final_norm
    # Same draws as post-norm, then x beta on the value half of wkv, wo, w13 and w2; wq and the keys unchanged.
    post = tiny(norm="post")
    a, p = model.blocks[1].attn, post.blocks[1].attn
    assert a.kv.wkv.weight is not None
    half = a.kv.wkv.weight.shape[0] // 2
    torch.testing.assert_close(a.kv.wkv.weight[:half], p.kv.wkv.weight[:half])
    torch.testing.assert_close(a.kv.wkv.weight[half:], p.kv.wkv.weight[half:] * beta)
    torch.testing.assert_close(a.wq.weight, p.wq.weight)
    torch.testing.assert_close(model.blocks[1].ffn.w13.weight, post.blocks[1].ffn.w13.weight * beta)
    depth_scaled = post.blocks[1].ffn.w2.weight * math.sqrt(2 * n)  # post-norm's GPT-2 depth scaling undone
    torch.testing.assert_close(model.blocks[1].ffn.w2.weight, depth_scaled * beta)


def test_the_optim_group_sets_the_trainer(tmp_path):
    from hydra import compose, initialize_config_dir

    from helpers import CONF
    from moda_lab.config import run_config_from_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["optim=muon_wsd", "trainer.lr=2e-3"])
    from omegaconf import OmegaConf

    run = run_config_from_dict(OmegaConf.to_container(cfg, resolve=True))
    assert (run.trainer.optimizer, run.trainer.schedule, run.trainer.min_lr_ratio) == ("muon", "wsd", 0.0)
    assert run.trainer.lr == 2e-3
    assert dataclasses.asdict(run.trainer)["decay_frac"] == 0.3
