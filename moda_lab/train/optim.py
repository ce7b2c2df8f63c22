"""The optimizer and lr schedule of a run (trainer.optimizer, trainer.schedule; the optim group sets both).

* ``adamw``: AdamW on every parameter; matrices decay, vectors (norm gains, DWA weights) do not.
* ``muon``: Muon on the blocks' Linear weights (the hidden matrices), AdamW on the rest (the embedding table, an
  untied head, vectors), as in the paper authors' released training code (BlaGPT). Muon's update is rescaled to
  AdamW's RMS (``adjust_lr_fn="match_rms_adamw"``, Moonlight), so both groups take one lr, ``trainer.lr``, and
  the lr grids of the two optimizers are comparable. Muon is torch.optim.Muon's algorithm and state, stepped a
  matrix shape at a time (moda_lab/train/muon.py, GroupedMuon; torch's took 43-71 ms a step at the Table 6 shape,
  host-bound: experiments/bench/results/muon_step_h100.md).

The embedding table (and an untied head) can take its own lr and weight decay: ``trainer.embed_lr_scale``
multiplies trainer.lr for it, ``trainer.embed_weight_decay`` (null: trainer.weight_decay) replaces the decay.

Schedules (multipliers of each group's lr): ``cosine`` -- linear warm-up, then cosine to min_lr_ratio at
max_steps; ``wsd`` -- linear warm-up, constant, then linear decay to min_lr_ratio over the last decay_frac of the
steps (warm-up / stable / decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config import TrainerConfig
from .muon import GroupedMuon


def lr_lambda(
    step: int, warmup: int, total: int, min_ratio: float, schedule: str = "cosine", decay_frac: float = 0.2
) -> float:
    """Multiplier of the peak lr at optimizer step `step` (see the module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        decay_start = max(warmup, round(total * (1.0 - decay_frac)))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return 1.0 - (1.0 - min_ratio) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _roles(model: nn.Module) -> tuple[set[int], set[int]]:
    """ids of the embedding tables (token embedding, untied head) and of the blocks' other Linear weights."""
    tables = {id(p) for name, p in model.named_parameters() if name.endswith(("tok_emb.weight", "lm_head.weight"))}
    hidden = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - tables
    return tables, hidden


def _adamw_groups(params: list[nn.Parameter], t: TrainerConfig, tables: set[int]) -> list[dict]:
    """Matrices decay, vectors do not; the tables get their own group only when their lr or decay differs (the
    two-group layout of every earlier run, whose optimizer state a resume loads)."""
    own_table = t.embed_lr_scale != 1.0 or t.embed_weight_decay is not None
    decay, no_decay, table = [], [], []
    for p in params:
        (table if own_table and id(p) in tables else decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if table:
        wd = t.weight_decay if t.embed_weight_decay is None else t.embed_weight_decay
        groups.append({"params": table, "weight_decay": wd, "lr": t.lr * t.embed_lr_scale})
    return [g for g in groups if g["params"]]


class Chained(torch.optim.Optimizer):
    """Several optimizers stepped as one, so that Lightning, gradient clipping and one LambdaLR see a single
    optimizer: ``param_groups`` is the list of theirs (the same dicts), the state dict holds each one's."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        super().__init__([p for o in self.optimizers for g in o.param_groups for p in g["params"]], {})
        self._link_groups()

    def _link_groups(self) -> None:
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"chained": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict["chained"]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"a checkpoint of {len(parts)} chained optimizers cannot load into {len(self.optimizers)}")
        for opt, part in zip(self.optimizers, parts):
            opt.load_state_dict(part)
        self._link_groups()  # load_state_dict makes new group dicts: the scheduler must see those


def build_optimizer(model: nn.Module, t: TrainerConfig) -> torch.optim.Optimizer:
    """The optimizer trainer.optimizer names, over the model's parameters (each tensor once, in module order)."""
    tables, hidden = _roles(model)
    params = list(model.parameters())
    adam_kw = {"lr": t.lr, "betas": (t.beta1, t.beta2)}  # not fused: Lightning's AMP clipping needs unscaled grads
    if t.optimizer == "adamw":
        return torch.optim.AdamW(_adamw_groups(params, t, tables), **adam_kw)
    muon = GroupedMuon(
        [p for p in params if id(p) in hidden], lr=t.lr, weight_decay=t.weight_decay, momentum=0.95, nesterov=True,
        adjust_lr_fn="match_rms_adamw",
    )
    rest = [p for p in params if id(p) not in hidden]
    return Chained([muon, torch.optim.AdamW(_adamw_groups(rest, t, tables), **adam_kw)])


def build_schedule(opt: torch.optim.Optimizer, t: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, t.warmup_steps, t.max_steps, t.min_lr_ratio, t.schedule, t.decay_frac)
    )
