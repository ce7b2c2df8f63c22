"""Corpus building, BPE training and packed, memory-mapped token data (no Lightning here)."""

from .corpus import HubDataset, build_default_corpus, corpus_files, read_documents
from .packing import PackedData, prepare
from .tokenizer import EOS, load_tokenizer, train_tokenizer

__all__ = [
    "EOS",
    "HubDataset",
    "PackedData",
    "build_default_corpus",
    "corpus_files",
    "load_tokenizer",
    "prepare",
    "read_documents",
    "train_tokenizer",
]
