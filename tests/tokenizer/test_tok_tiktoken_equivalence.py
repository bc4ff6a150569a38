"""Our encoder equals tiktoken built from our own vocabulary, token for token.

tiktoken is the reference: ``tiktoken.Encoding(pat_str=<our pattern>,
mergeable_ranks=<our ranks>, special_tokens=<ours>)``.  Compared on the whole Python
standard library, on hypothesis-generated text, on raw bytes (invalid UTF-8
included), and with special tokens allowed and disallowed, for both split patterns
and two vocabulary sizes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tok_settings import CONFIGS, SPECIALS

tiktoken = pytest.importorskip("tiktoken")

CONFIG_IDS = [f"{name}-{size}" for name, size in CONFIGS]
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that stress the split patterns: whitespace runs, newline + space endings,
# digits, contractions in both cases, combining marks, emoji, other scripts, specials.
TRICKY_PIECES = [" ", "  ", "   \n", "\n ", "\n\n", "\r\n", "\t", "\u00a0", "\u3000", "\u2028",
                 "123", "4567890", "'s", "'S", "'ll", "'LL", "'re", "x", "Hello", " world", "e\u0301",
                 "\u0301", "\U0001F600", "\U0001F468\u200d\U0001F469", "\u4e2d\u6587",
                 "\u0645\u0631\u062d\u0628\u0627", "\u0928\u092e", "\u00e9", "...", "!!", "):\n", "def ",
                 "    ", "\ufeff", "\x00", "<|", "|>", *SPECIALS]

texts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8")),
    st.lists(st.sampled_from(TRICKY_PIECES), max_size=30).map("".join),
    st.lists(st.one_of(st.sampled_from(TRICKY_PIECES), st.text(max_size=5)), max_size=20).map("".join),
    st.lists(st.sampled_from(TRICKY_PIECES), min_size=1, max_size=10).map("".join).map(lambda s: s + "\n "),
)


def reference(tok, name: str = "ours"):
    """tiktoken driven by ``tok``'s ranks, pattern and special tokens."""
    return tiktoken.Encoding(name, pat_str=tok.pattern, mergeable_ranks=tok.to_tiktoken_ranks(),
                             special_tokens=tok.special_tokens)


@pytest.fixture(scope="module")
def pairs(trained):
    """(ours, tiktoken) for every trained configuration."""
    return {key: (tok, reference(tok)) for key, tok in trained.items()}


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_whole_stdlib_equals_tiktoken(pairs, stdlib_docs, config):
    ours, ref = pairs[config]
    assert len(stdlib_docs) > 1000
    for i, doc in enumerate(stdlib_docs):
        got, want = ours.encode_ordinary(doc), ref.encode_ordinary(doc)
        assert got == want, f"document {i} differs first at token {_first_difference(got, want)}"


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@HYPOTHESIS
@given(text=texts)
def test_random_text_equals_tiktoken(pairs, config, text):
    ours, ref = pairs[config]
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    assert ours.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
    one = {SPECIALS[1]}
    assert (ours.encode(text, allowed_special=one, disallowed_special=()) ==
            ref.encode(text, allowed_special=one, disallowed_special=()))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@HYPOTHESIS
@given(text=texts)
def test_disallowed_special_raises_like_tiktoken(pairs, config, text):
    ours, ref = pairs[config]
    try:
        want = ref.encode(text, allowed_special={SPECIALS[0]})
    except ValueError:
        with pytest.raises(ValueError, match="disallowed special token"):
            ours.encode(text, allowed_special={SPECIALS[0]})
    else:
        assert ours.encode(text, allowed_special={SPECIALS[0]}) == want


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@HYPOTHESIS
@given(data=st.binary(min_size=1, max_size=300))
def test_any_bytes_chunk_equals_tiktoken(pairs, config, data):
    """The BPE core on an arbitrary byte string (invalid UTF-8 too), as tiktoken merges it."""
    ours, ref = pairs[config]
    assert ours._encode_chunk(data) == ref._encode_single_piece(data)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("text", [
    "a" * 5000, " " * 10_000, "\n" * 3000 + " ", "9" * 1001, "x" * 300 + "y" * 300,
    "abc" * 2000, "\U0001F600" * 500, "e\u0301" * 700, "self." * 1000,
])
def test_long_runs_equal_tiktoken(pairs, config, text):
    """Long chunks take the heap path; it must merge exactly like the short-chunk scan."""
    ours, ref = pairs[config]
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    assert ours._encode_chunk(text.encode()) == ref._encode_single_piece(text.encode())


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "x\ud83d\ude00y", "\ud83d", "<|endoftext|>\udc80 "])
def test_surrogates_are_handled_like_tiktoken(pairs, text):
    ours, ref = pairs["gpt4", 8192]
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
