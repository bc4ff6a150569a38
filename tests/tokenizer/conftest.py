"""Shared fixtures: the stdlib corpus and tokenizers trained on part of it, once per session."""

from __future__ import annotations

import pytest
from tok_settings import CONFIGS, PATTERNS, SPECIALS

from tinygrad_llm.data.sources import StdlibCorpus
from tokenizer import Tokenizer


@pytest.fixture(scope="session")
def stdlib_docs() -> list[str]:
    """Every document of the stdlib corpus (both splits), in corpus order."""
    return list(StdlibCorpus("all").texts())


@pytest.fixture(scope="session")
def trained(stdlib_docs: list[str]) -> dict[tuple[str, int], Tokenizer]:
    """One tokenizer per (pattern, vocab size) in CONFIGS, trained on 1/16 of the corpus."""
    subset = stdlib_docs[::16]
    return {(name, size): Tokenizer.train(subset, size, pattern=PATTERNS[name], special_tokens=SPECIALS,
                                          progress=False)
            for name, size in CONFIGS}
