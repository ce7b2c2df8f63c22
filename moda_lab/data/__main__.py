"""Build a corpus and its packed tokens: python -m moda_lab.data out=data/corpus [sources=python-docs,stdlib,linux-docs]
[vocab_size=8192] [cache_dir=data/cache] [tokenizer=path/to/tokenizer.json], or pack an existing corpus dir
(text/JSONL/Parquet files, saved datasets) with corpus=DIR instead of building one. Prints the tokens per domain
and the packed folder (usable as data.packed_dir). The Table 6 corpus (conf/data/table6.yaml) is
python -m moda_lab.data out=data/corpus_table6 sources=python-docs,stdlib,linux-docs,manpages,devdocs,site-packages
vocab_size=50304."""

from __future__ import annotations

import logging
import sys

from .corpus import DEFAULT_SOURCES, SOURCES, build_default_corpus
from .packing import prepare


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments over the defaults; a bad key or an unknown source exits naming it."""
    args = {
        "out": "data/corpus",
        "sources": ",".join(DEFAULT_SOURCES),
        "vocab_size": "8192",
        "cache_dir": "data/cache",
        "val_fraction": "0.02",
        "corpus": "",  # an existing corpus dir to pack (out and sources are then unused)
        "tokenizer": "",  # a pretrained tokenizer.json instead of training a BPE
    }
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args:
            raise SystemExit(
                f"usage: python -m moda_lab.data {' '.join(f'{k}=...' for k in args)}; bad argument {arg!r}"
            )
        args[key] = value
    unknown = [s for s in args["sources"].split(",") if s not in SOURCES]
    if unknown:
        raise SystemExit(f"sources: unknown corpus source(s) {unknown}; choose from {sorted(SOURCES)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = args["corpus"] or build_default_corpus(args["out"], args["sources"].split(","))
    packed = prepare(
        corpus, args["cache_dir"], int(args["vocab_size"]), float(args["val_fraction"]), args["tokenizer"] or None
    )
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
    main(sys.argv[1:])
