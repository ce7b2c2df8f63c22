"""Attention inspection in the manner of the paper's Figure 5 (arXiv 2603.15619): per layer and head, the softmax
over [causal sequence slots | depth slots of the same token], and two summary numbers per layer/head:

- depth mass: probability on the S_l depth slots, averaged over query positions;
- sink mass: probability on the first token's sequence slot, averaged over query positions t >= 1
  (at t = 0 the first token is the only sequence slot, so it would count trivially).

Maps come from ``GPT.attention_maps(idx)``: one tensor per layer, [B, Hq, T, T + S_l], sequence slots first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it, so that sweep/bench analysis starts without it.


@dataclass
class AttentionInspection:
    """Maps of one text: ``maps[l]`` is [B, Hq, T, T + S_l]; ``tokens`` are the T token strings."""

    maps: list[torch.Tensor]
    tokens: list[str]
    config: dict[str, Any]


def validate_maps(maps: list[torch.Tensor], atol: float = 1e-3) -> None:
    """Raise ValueError unless each map is [B, H, T, T + S] with rows summing to 1 and no mass on future tokens."""
    import torch

    if not maps:
        raise ValueError("no attention maps")
    for layer, m in enumerate(maps):
        if m.dim() != 4 or m.shape[-1] < m.shape[-2]:
            raise ValueError(f"layer {layer}: expected [B, H, T, T + S], got {tuple(m.shape)}")
        T = m.shape[-2]
        rows = m.float().sum(-1)
        if not torch.allclose(rows, torch.ones_like(rows), atol=atol):
            raise ValueError(f"layer {layer}: rows sum to {rows.min():.4f}..{rows.max():.4f}, not 1")
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=m.device), diagonal=1)
        leak = m[..., :T].float().masked_select(future).abs().max() if T > 1 else torch.tensor(0.0)
        if leak > atol:
            raise ValueError(f"layer {layer}: {leak:.4f} probability on future tokens")


def attention_summary(maps: list[torch.Tensor]) -> pd.DataFrame:
    """One row per (layer, head): depth_slots, depth_mass, sink_mass, sequence_mass (means over batch, queries)."""
    import torch

    rows = []
    for layer, m in enumerate(maps):
        m = m.float()
        T, S = m.shape[-2], m.shape[-1] - m.shape[-2]
        depth = m[..., T:].sum(-1).mean(dim=(0, 2))  # [H]
        sink = m[..., 1:, 0].mean(dim=(0, 2)) if T > 1 else torch.full((m.shape[1],), float("nan"))
        for head in range(m.shape[1]):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "depth_slots": S,
                    "depth_mass": float(depth[head]),
                    "sink_mass": float(sink[head]),
                    "sequence_mass": 1.0 - float(depth[head]),
                }
            )
    return pd.DataFrame(rows)


def layer_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Per layer: mean and min/max over heads of depth and sink mass."""
    grouped = summary.groupby("layer")
    out = grouped[["depth_slots"]].first()
    for col in ("depth_mass", "sink_mass"):
        out[col] = grouped[col].mean()
        out[f"{col} min"] = grouped[col].min()
        out[f"{col} max"] = grouped[col].max()
    return out.reset_index()


def plot_attention_heatmaps(
    maps: list[torch.Tensor], tokens: list[str], layer: int, heads: list[int] | None = None, batch: int = 0
) -> Figure:
    """Heatmaps of one layer, one panel per head: rows = query tokens, columns = [sequence | depth] slots."""
    m = maps[layer][batch].float().cpu().numpy()  # [H, T, T + S]
    H, T, width = m.shape
    S = width - T
    heads = list(range(H)) if heads is None else heads
    ncols = min(4, len(heads))
    nrows = -(-len(heads) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(0.25 * width * ncols + 2.5, 0.25 * T * nrows + 1.8),
        squeeze=False,
        layout="constrained",  # leaves room for the shared colorbar
    )
    labels = [*tokens, *[f"d{j}" for j in range(S)]]
    show_ticks = width <= 64
    image = None
    for ax, head in zip(axes.flat, heads):
        # PowerNorm(0.5) keeps small probabilities visible next to the attention sink.
        image = ax.imshow(
            m[head], cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), aspect="auto", interpolation="nearest"
        )
        if S:
            ax.axvline(T - 0.5, color="white", linewidth=1.5)
        ax.set_title(f"layer {layer}, head {head}" + (f" ({S} depth slots)" if S else ""), fontsize=9)
        if show_ticks:
            ax.set_xticks(range(width), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), tokens, fontsize=6)
        ax.set_xlabel("key slot: sequence | depth")
        if ax in axes[:, 0]:
            ax.set_ylabel("query token")
    for ax in list(axes.flat)[len(heads) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.9, label="attention probability")
    return fig


def plot_attention_summary(summary: pd.DataFrame) -> Figure:
    """Depth mass and first-token (sink) mass per layer: mean over heads, with the head range as error bars."""
    per_layer = layer_summary(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(per_layer) + 3), 4.0))
    x = per_layer["layer"].to_numpy()
    for col, label, marker in (
        ("depth_mass", "mass on depth slots", "o"),
        ("sink_mass", "mass on first token (sink)", "s"),
    ):
        mean = per_layer[col].to_numpy()
        err = np.vstack([mean - per_layer[f"{col} min"], per_layer[f"{col} max"] - mean])
        ax.errorbar(x, mean, yerr=err, marker=marker, capsize=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention mass")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        "Mass on depth slots and on the first token per layer\n(mean over heads and queries; bars: head range)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def synthetic_attention_maps(
    T: int = 12, n_layers: int = 4, n_heads: int = 4, slots_per_layer: int = 1, sink: float = 2.0, seed: int = 0
) -> list[torch.Tensor]:
    """Valid maps shaped like a MoDA model's (S_l = l * slots_per_layer), for notebooks and tests.

    Logits are random with a ``sink`` bonus on the first token and a depth bonus growing with layer index.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    maps = []
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for layer in range(n_layers):
        S = layer * slots_per_layer
        logits = torch.randn(1, n_heads, T, T + S, generator=gen)
        logits[..., 0] += sink
        logits[..., T:] += 0.5 * layer
        logits[..., :T] = logits[..., :T].masked_fill(causal, float("-inf"))
        maps.append(torch.softmax(logits, dim=-1))
    return maps


def synthetic_inspection(
    T: int = 12, n_layers: int = 4, n_heads: int = 4, slots_per_layer: int = 1, seed: int = 0
) -> AttentionInspection:
    """An :class:`AttentionInspection` of synthetic maps with placeholder tokens ``t0 .. t{T-1}``."""
    maps = synthetic_attention_maps(T, n_layers, n_heads, slots_per_layer, seed=seed)
    return AttentionInspection(maps=maps, tokens=[f"t{i}" for i in range(T)], config={"synthetic": True})


def inspect_checkpoint(
    ckpt: str | Path, text: str, tokenizer: str | Path | None = None, max_tokens: int = 64
) -> AttentionInspection:
    """Load a checkpoint (.ckpt, run dir or exported folder), encode ``text``, return its attention maps.

    The tokenizer is the one stored with the checkpoint unless ``tokenizer`` (a tokenizer.json or its dir) is given.
    """
    from moda_lab.data.tokenizer import load_tokenizer
    from moda_lab.load import checkpoint_tokenizer, load_checkpoint

    model, cfg, extras = load_checkpoint(ckpt)  # read once: model, config and the stored tokenizer
    tok = load_tokenizer(tokenizer) if tokenizer is not None else checkpoint_tokenizer(extras, ckpt)
    ids = tok.encode(text).ids[:max_tokens]
    if not ids:
        raise ValueError("text encodes to zero tokens")
    return inspect_model(model, ids, [tok.id_to_token(i) for i in ids], cfg)


def inspect_model(
    model: Any, ids: list[int], tokens: list[str], config: dict[str, Any] | None = None
) -> AttentionInspection:
    """Run ``model.attention_maps`` on one token sequence and validate the result."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    maps = [m.detach().float().cpu() for m in model.attention_maps(torch.tensor([ids], device=device))]
    validate_maps(maps)
    # Byte-level BPE marks a leading space with "Ġ"; show it as a space-like dot for readability.
    return AttentionInspection(maps=maps, tokens=[t.replace("Ġ", "·") for t in tokens], config=config or {})


def save_inspection(
    inspection: AttentionInspection, out_dir: str | Path, layers: list[int] | None = None
) -> list[Path]:
    """Heatmaps per layer, the summary plot and ``attention_summary.csv`` under ``out_dir``."""
    from moda_lab.analysis.plots import save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for layer in layers if layers is not None else range(len(inspection.maps)):
        fig = plot_attention_heatmaps(inspection.maps, inspection.tokens, layer)
        written += save_figure(fig, out, f"attention_layer{layer:02d}")
    summary = attention_summary(inspection.maps)
    written += save_figure(plot_attention_summary(summary), out, "attention_summary")
    csv = out / "attention_summary.csv"
    summary.to_csv(csv, index=False)
    return [*written, csv]
