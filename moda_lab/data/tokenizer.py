"""Tokenizers with HuggingFace `tokenizers`: a byte-level BPE trained on the corpus (no downloads needed), or a
pretrained tokenizer.json from a path or the Hugging Face hub (``data.tokenizer``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """From a tokenizer.json file or a directory holding one (a data cache dir or an exported checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return Tokenizer.from_file(str(path))


def looks_like_hub_name(name: str) -> bool:
    """'gpt2' or 'org/name': what the Hugging Face hub calls a repository (never an existing local path)."""
    parts = str(name).split("/")
    return (not Path(name).exists() and len(parts) <= 2 and all(parts)
            and all(c.isalnum() or c in "-_." for part in parts for c in part) and not str(name).startswith("."))


def hub_tokenizer(name: str) -> Tokenizer:
    """The tokenizer.json of a Hugging Face hub repository (downloads it; fails offline)."""
    return Tokenizer.from_pretrained(name)


def pretrained_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json (or a folder holding one), or the tokenizer.json of a hub repository by name (e.g. 'gpt2',
    when the hub is reachable), with the EOS every document ends with (added if missing)."""
    try:
        tok = load_tokenizer(path)
    except FileNotFoundError:
        if not looks_like_hub_name(str(path)):
            raise FileNotFoundError(f"data.tokenizer={str(path)!r}: no tokenizer.json there") from None
        try:
            tok = hub_tokenizer(str(path))
        except Exception as err:  # offline, unknown repository, no tokenizer.json in it
            raise FileNotFoundError(
                f"data.tokenizer={str(path)!r}: no tokenizer.json at that path, and loading it as a Hugging Face hub "
                f"tokenizer failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from None
    if tok.token_to_id(EOS) is None:
        tok.add_special_tokens([EOS])
        log.info("data.tokenizer=%s has no %s token: added it as id %d", path, EOS, tok.token_to_id(EOS))
    return tok
