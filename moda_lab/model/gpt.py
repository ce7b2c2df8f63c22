"""The one decoder skeleton: embeddings -> N blocks -> norm -> head.

Depth mixing (mixers.DEPTH_MIXERS) and norm placement (norms.NORM_PLACEMENTS) are chosen by name from two
orthogonal registries; nothing else differs between variants.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, ForwardCtx, KVCache
from .backends import resolve_backend
from .config import ModelConfig
from .depth import DepthStream, new_stream_buffers
from .layers import RMSNorm, Rotary, SwiGLU
from .mixers import DEPTH_MIXERS
from .norms import NORM_PLACEMENTS


class Block(nn.Module):
    """One layer under the depth-flow contract (mixers/base.py): the mixer reads the stream, says what each
    sublayer reads and how its output joins the stream; the placements only place the norms."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.mixer = DEPTH_MIXERS[cfg.mixer.name](cfg, layer)
        self.attn = Attention(cfg, layer)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_dim)
        place = NORM_PLACEMENTS[cfg.norm]
        self.attn_norm = place(cfg.d_model, cfg.norm_eps, cfg.n_layers)
        self.ffn_norm = place(cfg.d_model, cfg.norm_eps, cfg.n_layers)

    def forward(self, x, ctx: ForwardCtx):
        mixer = self.mixer
        x = mixer.read(x, ctx)
        skip = mixer.skip(x, self.attn_norm, "attn", ctx)
        xq, xk, xv = mixer.attn_inputs(x, skip, self.attn_norm, ctx)
        out, k, v = self.attn(xq, ctx, mixer.attn_depth(), xk, xv, mixer.mix_values)
        mixer.after_attn(xk, k, v, ctx)
        x = mixer.combine(skip, out, self.attn_norm, "attn", ctx)
        skip = mixer.skip(x, self.ffn_norm, "ffn", ctx)
        h = mixer.ffn_input(x, skip, self.ffn_norm, ctx)
        mixer.before_ffn(h, ctx)
        x = mixer.combine(skip, self.ffn(h), self.ffn_norm, "ffn", ctx)
        return mixer.write(x, ctx)


def _weight_generators(mode: str):
    """name, module -> the generator its weight is drawn from (config.INIT_RNGS): None (the global RNG, in module
    order) for "sequential"; for "per_parameter", one seeded by the CRC-32 of the module's name started from a
    number drawn once from the global RNG (so the run's seed decides it). 32 bits: the CPU generator keeps only
    the low 32 bits of a seed."""
    if mode == "sequential":
        return lambda name, mod: None
    base = int(torch.randint(0, 2**32, (), dtype=torch.int64))

    def generator(name: str, mod: nn.Module) -> torch.Generator | None:
        device = mod.weight.device
        if device.type == "meta":  # transformers builds the model on the meta device, then loads the weights
            return None
        return torch.Generator(device).manual_seed(zlib.crc32(name.encode(), base))

    return generator


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Drawn before any module exists: building a variant's extra modules consumes the global RNG too.
        rng = _weight_generators(cfg.init_rng)
        self.attn_backend = resolve_backend(cfg.attn_backend)
        self._run = self._forward
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        final = NORM_PLACEMENTS[cfg.norm].final_norm
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps) if final else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.rope = Rotary(cfg.hd, cfg.max_seq_len, cfg.rope_theta)
        self.init_weights(rng)

    def init_weights(self, rng) -> None:
        """Every Linear and the embedding from N(0, init_std) (zero-init and depth-scaled ones aside), each drawn
        from the generator ``rng(name, module)`` gives (``_weight_generators``)."""
        std = self.cfg.init_std
        gain = NORM_PLACEMENTS[self.cfg.norm].init_gain(self.cfg.n_layers)  # DeepNorm's beta, else None
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                if getattr(mod, "zero_init", False):
                    nn.init.zeros_(mod.weight)
                elif gain is not None and name.endswith(("attn.wo", "ffn.w2", "ffn.w13", "attn.kv.wkv")):
                    nn.init.normal_(mod.weight, std=std, generator=rng(name, mod))
                    with torch.no_grad():  # DeepNet scales the value projection, not the key: wkv's second half
                        scaled = mod.weight[mod.weight.shape[0] // 2 :] if name.endswith("wkv") else mod.weight
                        scaled.mul_(gain)
                elif name.endswith(("attn.wo", "ffn.w2")):
                    # GPT-2 style: residual-branch outputs scaled by depth so the stream's variance stays O(1).
                    nn.init.normal_(mod.weight, std=std / math.sqrt(2 * self.cfg.n_layers), generator=rng(name, mod))
                else:
                    nn.init.normal_(mod.weight, std=std, generator=rng(name, mod))
        nn.init.normal_(self.tok_emb.weight, std=std, generator=rng("tok_emb", self.tok_emb))

    @property
    def backend(self) -> str:
        """The resolved attention backend's name (naive, sdpa or triton)."""
        return self.attn_backend.name

    def set_backend(self, name: str) -> None:
        """Switch the attention backend (no parameters change)."""
        self.attn_backend = resolve_backend(name)

    def compile(self, **kwargs) -> None:
        """torch.compile the whole forward (every block, the head and the loss) as one graph, in place:
        parameters and state_dict keys stay those of the eager model. The depth stream's buffers are
        allocated inside the graph (see depth.py), whose only inputs besides the model's own parameters and
        buffers are idx and targets: with mode="reduce-overhead" (CUDA graphs) nothing is copied in per replay.
        kwargs go to torch.compile."""
        self._run = torch.compile(self._forward, **kwargs)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        probs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, V], or the mean cross-entropy when targets [B, T] are given.

        With a KVCache, idx holds only the new tokens; the cache grows in place (decoding uses the reference
        attention, whose causal mask handles more keys than queries).
        """
        layout = self._stream_layout(idx)
        if cache is not None or probs is not None:
            return self._forward(idx, targets, layout, cache, probs)  # inference paths stay eager
        return self._run(idx, targets, layout)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] -> the final normed hidden states [B, T, D], lm_head's input (eager).

        For callers that need the logits of a few positions only (scoring continuations): they apply lm_head to
        those rows instead of materialising [B, T, V].
        """
        return self._hidden(idx, self._stream_layout(idx))

    def _stream_layout(self, idx: torch.Tensor) -> tuple | None:
        """(parts, slots, feature, dtype) of the depth stream of one forward over idx (None for mixers without a
        stream), in the dtype the stream's writers produce: the autocast dtype for activations under autocast.
        Plain values, decided outside the compiled step; _hidden allocates the buffers inside it."""
        spec = DEPTH_MIXERS[self.cfg.mixer.name].stream_spec(self.cfg)
        if spec is None:
            return None
        device = idx.device
        dtype = self.tok_emb.weight.dtype
        if spec.activations and torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)  # what the projections produce under autocast
        return spec.parts, spec.slots, spec.feature, dtype

    def _hidden(self, idx, layout, cache=None, probs=None) -> torch.Tensor:
        offset = cache.length if cache is not None else 0
        stream = None
        if layout is not None:
            parts, slots, feature, dtype = layout  # [parts, B, T, slots, *feature]
            stream = DepthStream(*new_stream_buffers(parts, slots, *idx.shape, feature, idx.device, dtype))
        ctx = ForwardCtx(self.rope, self.attn_backend, offset, stream, cache, probs)
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, ctx)
        return self.norm(x)

    def _forward(self, idx, targets, layout, cache=None, probs=None) -> torch.Tensor:
        logits = self.lm_head(self._hidden(idx, layout, cache, probs))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Softmax maps per layer, each [B, Hq, T, T + S_l]: causal sequence slots, then the S_l depth slots."""
        probs: list[torch.Tensor] = []
        self(idx, probs=probs)
        return probs

    # --- size and cost --------------------------------------------------------------------------------

    def num_params(self, embedding: bool = True) -> int:
        """Unique parameters; with embedding=False the token-embedding table is left out."""
        n = sum(p.numel() for p in self.parameters())
        return n if embedding else n - self.tok_emb.weight.numel()

    def matmul_params(self) -> int:
        """Weights used once per token in a matmul: every Linear (a tied head counts: it still multiplies)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def forward_flops_per_token(self, seq_len: int) -> int:
        """Analytic forward FLOPs per token at context seq_len.

        2 per matmul weight, plus per layer QK^T and PV over seq_len sequence keys (full, un-masked count, the
        PaLM convention and what the reference materialises) and over the layer's depth slots, plus the
        mixers' own work (DWA combinations, depth-attention reads). Norms, RoPE and softmax are not counted.
        """
        total = 2 * self.matmul_params()
        for block in self.blocks:
            total += block.attn.flops_per_token(seq_len, block.mixer.depth_slots())
            total += block.mixer.flops_per_token()
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 3x forward)."""
        return 3 * self.forward_flops_per_token(seq_len)
