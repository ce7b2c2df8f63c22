"""Greedy decoding with the depth-aware KV cache: the workbench's reference for the exported model's generate().

Each step feeds only the new token through ``GPT.forward(..., cache=KVCache())``: it reads the cached sequence
K/V of every layer and rebuilds the depth K/V of that token layer by layer inside the forward (arXiv 2603.15619,
section 3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .attention import KVCache
from .gpt import GPT


@torch.no_grad()
def greedy_tokens(model: GPT, context: Sequence[int], max_length: int | None = None) -> Iterator[int]:
    """Greedy next tokens after context, one per iteration, for as long as the caller reads (so it decides where
    to stop). Each step feeds only the new token through the KV cache; once the sequence outgrows max_length
    (default model.max_seq_len) the window slides: the cache is rebuilt from the last max_length tokens."""
    max_length = max_length or model.cfg.max_seq_len
    device = model.tok_emb.weight.device
    seq = list(context)[-max_length:]
    cache = KVCache()
    logits = model(torch.tensor([seq], device=device), cache=cache)
    while True:
        nxt = int(logits[0, -1].argmax())
        yield nxt
        seq.append(nxt)
        if len(seq) > max_length:  # the window is full: re-encode its last max_length tokens
            cache = KVCache()
            logits = model(torch.tensor([seq[-max_length:]], device=device), cache=cache)
        else:
            logits = model(torch.tensor([[nxt]], device=device), cache=cache)
