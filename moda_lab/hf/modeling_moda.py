"""Hugging Face causal LM over moda-lab's GPT (``trust_remote_code``; copied into every exported folder).

``MoDAForCausalLM.model`` is the workbench's own ``moda_lab.model.GPT``: every depth-flow variant (residual,
dense, depth_attn, moda with its switches) and norm placement is the same code as in training, so logits equal
the workbench's. This code imports moda_lab: the package must be installed where the folder is loaded.

Generation uses the workbench's depth-aware KV cache (``moda_lab.model.attention.KVCache``: per layer the
sequence K/V; the depth K/V of a new token is rebuilt layer by layer inside its forward, arXiv 2603.15619
section 3), wrapped in ``MoDACache`` and handed through ``generate()`` as its ``cache``; transformers' own
cache classes are not used (``_supports_default_dynamic_cache`` is False). ``generate(use_cache=False)``
recomputes the whole prefix at every step instead; both give the same greedy tokens.

Inputs longer than the model's context (max_seq_len; config.n_positions is the longest input scored) are run in
disjoint windows of max_seq_len tokens counted back from the last one, each from position 0 (the first window may
be shorter): the last max_seq_len positions see exactly what an input cut to its last max_seq_len tokens sees, and
every earlier position is predicted from its own window, as lm-eval's rolling log-likelihood predicts a long
document. moda_lab's scorer (moda_lab.eval.lm.score_continuations) applies the same rule, so lm-eval's stock hf
model and moda_lab's agree on a continuation longer than the model's context. Padding cannot be told from
tokens without an attention_mask, so a batch of several such rows needs one (or one row at a time: lm-eval's
batch_size=1, its default).

Padding: the model has no padding mask. A batch whose ``attention_mask`` has zeros is run row by row on each
row's unpadded tokens (positions count from the row's first real token, as in an unpadded call), so
right-padded scoring and left-padded generation give what each row gives alone. Rows whose real tokens are not
one contiguous run (right padding during generation) are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_moda import MoDAConfig

try:
    from moda_lab.model import GPT
    from moda_lab.model.attention import KVCache
    from moda_lab.model.layers import Rotary
except ImportError as err:  # pragma: no cover - the folder is useless without the workbench
    raise ImportError(
        "this model folder holds a moda-lab (Mixture-of-Depths Attention) decoder; its remote code imports the "
        f"moda_lab package: install moda-lab (pip install -e <moda-lab checkout>) ({err})"
    ) from err


class MoDACache:
    """The workbench's KVCache behind ``generate()``: one for the batch, or one per row of a padded batch.

    ``seen`` counts the columns (padding included) of the inputs fed so far, what transformers calls the
    cache's sequence length.
    """

    is_compileable = False  # transformers' generate checks these two before compiling or cropping a cache
    is_croppable = False

    def __init__(self) -> None:
        self.batch: KVCache | None = None
        self.rows: list[KVCache] | None = None
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


def _real_tokens(mask: torch.Tensor, new: int) -> torch.Tensor:
    """[B, new] bool: which of the last ``new`` columns are real tokens; every row's real tokens one run."""
    m = mask.bool()
    for row in m:
        idx = row.nonzero().flatten()
        if len(idx) and int(idx[-1] - idx[0]) + 1 != len(idx):
            raise ValueError(
                "attention_mask: each row's real tokens must be one contiguous run (pad on the left to generate "
                f"from a padded batch); got {row.int().tolist()}"
            )
    return m[:, -new:]


class MoDAPreTrainedModel(PreTrainedModel):
    config_class = MoDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        # Parameters are initialised by GPT itself or loaded; only RoPE's tables are not saved (non-persistent
        # buffers), and transformers leaves them uninitialised when it builds the model on the meta device.
        if isinstance(module, Rotary):
            d = 2 * module.cos.shape[1]
            fresh = Rotary(d, module.max_seq_len, self.config.rope_theta)
            module.cos.copy_(fresh.cos)
            module.sin.copy_(fresh.sin)


class MoDAForCausalLM(MoDAPreTrainedModel, GenerationMixin):
    """logits = moda_lab's GPT(input_ids); ``generate()`` with the depth-aware KV cache (see the module doc)."""

    _tied_weights_keys = {"model.lm_head.weight": "model.tok_emb.weight"}  # applied when tie_embeddings

    def __init__(self, config: MoDAConfig, model: GPT | None = None) -> None:
        """A new GPT of the config, or ``model``: a workbench GPT in memory (its weights kept, its config the
        config's)."""
        super().__init__(config)
        if model is not None and model.cfg != config.moda_config():
            raise ValueError(f"model.cfg {model.cfg} is not the config's {config.moda_config()}")
        self.model = GPT(config.moda_config()) if model is None else model
        self.post_init()  # initialises only RoPE's tables (_init_weights), so a given model keeps its weights

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # MoDACache, made by forward on the first generation step

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.tok_emb

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MoDACache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids [B, T] -> logits [B, T, V]. With ``cache`` (or use_cache=True, which makes one) input_ids
        holds only the tokens after the cached ones and attention_mask, if given, covers cached + new columns.
        ``labels`` [B, T] give the mean next-token cross-entropy (shifted here; -100 is ignored)."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("MoDAForCausalLM takes input_ids (inputs_embeds are not supported)")
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise ValueError(f"MoDAForCausalLM.forward does not support {unsupported}")
        if cache is None and use_cache:
            cache = MoDACache()
        B, T = input_ids.shape
        real = None if attention_mask is None or bool(attention_mask.all()) else _real_tokens(attention_mask, T)
        if cache is None:
            if real is None:
                logits = self._windowed(input_ids, unpadded=attention_mask is not None or B == 1)
            else:
                logits = self._by_row(input_ids, real, [None] * B)
        else:
            if cache.seen == 0:  # the prefill decides: one batched cache, or one per row of a padded batch
                if real is None:
                    cache.batch = KVCache()
                else:
                    cache.rows = [KVCache() for _ in range(B)]
            if cache.batch is not None:
                if real is not None:
                    raise ValueError("padding appeared after an unpadded prefill; pad the prompts on the left")
                logits = self.model(input_ids, cache=cache.batch)
            else:
                if real is None:
                    real = torch.ones_like(input_ids, dtype=torch.bool)
                logits = self._by_row(input_ids, real, cache.rows)
            cache.seen += T
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        if return_dict is False:  # transformers' tuple convention: the set fields, in order
            return tuple(x for x in (loss, logits, cache) if x is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def _by_row(self, input_ids: torch.Tensor, real: torch.Tensor, caches: list[KVCache | None]) -> torch.Tensor:
        """Each row on its real tokens alone; padded positions get zero logits."""
        B, T = input_ids.shape
        out = None
        for b in range(B):
            ids = input_ids[b][real[b]]
            if not len(ids):
                continue
            row = self.model(ids[None], cache=caches[b]) if caches[b] is not None else self._windowed(ids[None], unpadded=True)
            if out is None:
                out = row.new_zeros(B, T, row.shape[-1])
            out[b, real[b]] = row[0]
        if out is None:
            raise ValueError("attention_mask masks every input token")
        return out

    def _windowed(self, input_ids: torch.Tensor, unpadded: bool) -> torch.Tensor:
        """[B, T] -> logits [B, T, V]; past max_seq_len in windows counted back from the end (see the module doc).
        ``unpadded``: every row's tokens are real (an attention_mask said so, or there is one row)."""
        B, T = input_ids.shape
        L = self.model.cfg.max_seq_len
        if T <= L:
            return self.model(input_ids)
        if not unpadded:
            raise ValueError(
                f"{B} rows of {T} tokens, longer than max_seq_len={L}, without attention_mask: right padding cannot "
                "be told from tokens, so the windows cannot be placed; pass attention_mask or one row at a time "
                "(lm-eval: batch_size=1)"
            )
        head = T % L  # the first, shorter window; the others are full and run as one batch
        full = self.model(input_ids[:, head:].reshape(-1, L)).reshape(B, T - head, -1)  # [B, T - head, V]
        return full if head == 0 else torch.cat([self.model(input_ids[:, :head]), full], dim=1)
