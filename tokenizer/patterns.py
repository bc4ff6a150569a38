"""Pre-tokenization patterns: how text is cut into chunks before BPE sees it.

BPE never merges across a chunk boundary, so the split pattern decides what a token
can be: a word with its leading space, a run of at most three digits, a run of
punctuation, a run of whitespace.  The two patterns below are, character for
character, the ``pat_str`` of tiktoken's ``r50k_base`` (GPT-2) and ``cl100k_base``
(GPT-4) encodings (``tiktoken_ext/openai_public.py``).  They must stay identical to
those strings: the test suite compares our encoder with tiktoken built from the same
pattern, and two "equivalent" spellings of a pattern do not always split alike.

Both need the third-party ``regex`` package (``\\p{L}``, possessive ``++``); the
standard-library ``re`` cannot compile them.
"""

from __future__ import annotations

import functools

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
"""GPT-2's split (tiktoken ``r50k_base``): contractions, optionally space-prefixed
letter / digit / punctuation runs, and whitespace."""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
"""GPT-4's split (tiktoken ``cl100k_base``): like GPT-2's, but case-insensitive
contractions, numbers cut into runs of at most three digits, and newlines kept
with the punctuation or whitespace before them.  This is the default."""

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
"""The named patterns, as accepted by ``Tokenizer.train(pattern=...)`` and the CLI."""


def resolve_pattern(pattern: str) -> str:
    """Return the regex for ``pattern``: a name from ``PATTERNS`` or a regex itself."""
    return PATTERNS.get(pattern, pattern)


@functools.lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile a split pattern once (``regex`` syntax); raise ``ValueError`` if invalid."""
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"invalid pre-tokenization pattern {pattern!r}: {exc}") from None


def replace_lone_surrogates(text: str) -> str:
    """Make ``text`` encodable as UTF-8 exactly the way tiktoken does.

    A Python ``str`` may hold surrogate code points (U+D800..U+DFFF), which UTF-8
    cannot represent.  tiktoken round-trips such text through UTF-16 with
    ``surrogatepass`` and decodes it back with ``errors="replace"``: a high surrogate
    followed by a low one becomes the astral character they spell, and every other
    (lone) surrogate becomes U+FFFD.  We do the same, so that both encoders see the
    same text.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
