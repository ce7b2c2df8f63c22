"""Build a corpus and its packed tokens: python -m moda_lab.data out=data/corpus [sources=python-docs,stdlib,linux-docs]
[vocab_size=8192] [cache_dir=data/cache] [tokenizer=path/to/tokenizer.json], or pack an existing corpus dir
(text/JSONL/Parquet files, saved datasets) with corpus=DIR instead of building one, or a streamed Hugging Face
dataset with hf.path=ID [hf.name=CONFIG] [hf.split=train] [hf.text_field=text] [hf.revision=SHA]; max_tokens=2e9
caps each domain's training tokens, num_proc=N sets the tokenising processes (default min(cores, 8)); an
interrupted packing resumes when the same command is run again. Prints the tokens per domain and the packed folder
(usable as data.packed_dir). A bad argument (out= or sources= beside corpus= or hf.path=, which would leave them
unused, too), a cache_dir at or below a file, a missing Debian package or a bad corpus prints one line naming it
and exits with status 2; the corpus is built beside out (out.partial) and moved into place only when complete.
The Table 6 corpus (conf/data/table6.yaml) is
python -m moda_lab.data out=data/corpus_table6 sources=python-docs,stdlib,linux-docs,manpages,devdocs,site-packages
vocab_size=50304."""

from __future__ import annotations

import logging
import re
import sys

from ..errors import UsageError, exit_on_usage_error
from .corpus import DEFAULT_SOURCES, SOURCES, HubDataset, build_default_corpus
from .packing import cache_dir_problem, prepare, token_budget

HF_KEYS = ("path", "name", "split", "text_field", "revision")


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments over the defaults; a bad key, value or unknown source exits naming it."""
    hub = HubDataset()
    args = {
        "out": "data/corpus",
        "sources": ",".join(DEFAULT_SOURCES),
        "vocab_size": "8192",
        "cache_dir": "data/cache",
        "val_fraction": "0.02",
        "corpus": "",  # an existing corpus dir to pack (out and sources are then refused)
        "tokenizer": "",  # a pretrained tokenizer.json instead of training a BPE
        **{f"hf.{k}": getattr(hub, k) or "" for k in HF_KEYS},  # a streamed dataset (then out, sources, corpus refused)
        "max_tokens": "",  # training tokens per domain at most, e.g. 2e9
        "num_proc": "",  # tokenising processes (default min(cores, 8))
    }
    given = set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args:
            raise UsageError(f"bad argument {arg!r}; allowed: {' '.join(f'{k}=...' for k in args)}")
        args[key] = value
        given.add(key)
    # out= and sources= build a corpus to pack; with corpus= or hf.path= they (and corpus=, for hf.path=) go unused.
    packs = "hf.path" if args["hf.path"] else "corpus" if args["corpus"] else None
    unused = [k for k in ("out", "sources", "corpus") if packs and k != packs and k in given and args[k]]
    if unused:
        key = unused[0]
        raise UsageError(
            f"{key}={args[key]!r} cannot be combined with {packs}={args[packs]!r}: {packs}= is packed instead (into "
            f"cache_dir=), and {key}= would be ignored; allowed: {key}= or {packs}=, not both"
        )
    unknown = [s for s in args["sources"].split(",") if s not in SOURCES]
    if unknown:
        raise UsageError(f"sources: unknown corpus source(s) {unknown}; choose from {sorted(SOURCES)}")
    try:
        hub_dataset(args)
        max_tokens(args)
    except ValueError as err:
        raise UsageError(cli_names(err)) from None
    if not args["vocab_size"].isdigit():
        raise UsageError(f"vocab_size={args['vocab_size']!r} is out of range; allowed: a whole number")
    try:
        float(args["val_fraction"])
    except ValueError:
        raise UsageError(f"val_fraction={args['val_fraction']!r} is not a number; allowed: in (0, 1)") from None
    if args["num_proc"] and not (args["num_proc"].isdigit() and int(args["num_proc"]) >= 1):
        raise UsageError(f"num_proc={args['num_proc']!r} is out of range; allowed: a whole number >= 1")
    problem = cache_dir_problem(args["cache_dir"])  # before a corpus is built into out=
    if problem:
        raise UsageError(cli_names(problem))
    return args


def cli_names(err: Exception | str) -> str:
    """An error of the data pipeline in this CLI's key names (``tokenizer=``, not ``data.tokenizer=``)."""
    named = re.sub(r"\bdata\.(hf\.|max_tokens|tokenizer|vocab_size|num_proc|val_fraction|cache_dir)", r"\1", str(err))
    return re.sub(r"\bdata\.corpus_dir=", "corpus=", named)


def hub_dataset(args: dict[str, str]) -> HubDataset:
    """The streamed dataset the hf.* arguments name (hf.path unset: none)."""
    return HubDataset(
        path=args["hf.path"] or None,
        name=args["hf.name"] or None,
        split=args["hf.split"],
        text_field=args["hf.text_field"],
        revision=args["hf.revision"] or None,
    )


def max_tokens(args: dict[str, str]) -> int | None:
    """max_tokens as a whole number of tokens (2e9 is one), or None."""
    if not args["max_tokens"]:
        return None
    try:
        value = float(args["max_tokens"])
    except ValueError:
        raise ValueError(f"data.max_tokens={args['max_tokens']!r} is not a number (e.g. 2e9)") from None
    return token_budget(value)


def main(argv: list[str]) -> None:
    """Build or pack as the arguments say; a bad input raises UsageError naming it (the CLI prints one line)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hub = hub_dataset(args)
    try:  # bad input (a missing package, a tokenizer, a column, a file): one line, no trace
        if hub.path is not None:
            corpus = hub
        else:
            corpus = args["corpus"] or build_default_corpus(args["out"], args["sources"].split(","))
        packed = prepare(
            corpus,
            args["cache_dir"],
            int(args["vocab_size"]),
            float(args["val_fraction"]),
            args["tokenizer"] or None,
            max_tokens=max_tokens(args),
            num_proc=int(args["num_proc"]) if args["num_proc"] else None,
        )
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(cli_names(err)) from None
    for domain, st in packed.meta.get("train_domains", {}).items():
        val = packed.meta["val"][domain]
        print(
            f"  {domain:>8}: train {st['tokens']:>11,} tokens {st['bytes']:>12,} bytes {st['documents']:>6,} documents;"
            f" val {val['tokens']:>9,} tokens {val['documents']:>4,} documents"
        )
    print(
        f"packed data: {packed.root}  (train {packed.meta['train']['tokens']:,} tokens; val domains {packed.domains})"
    )


if __name__ == "__main__":
    with exit_on_usage_error("moda_lab.data"):
        main(sys.argv[1:])
