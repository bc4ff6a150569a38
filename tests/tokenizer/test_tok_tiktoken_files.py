"""tiktoken-format rank files as found in the wild: we read exactly what tiktoken's loader reads.

The reference is ``tiktoken.load.load_tiktoken_bpe``.  Every file it accepts must
give the same ``{bytes: rank}`` in ``tokenizer.load_tiktoken_ranks``, every file it
rejects must be one ``TokenizerFileError``; then a ``Tokenizer.load_tiktoken`` of
the file must encode like the ``tiktoken.Encoding`` built from the same ranks,
wherever tiktoken can build one.
"""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, TokenizerFileError, load_tiktoken_ranks

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

TEXTS = ["def f(x):\n    return x + 1\n", "abc abcd a bab  \n\n\t x", "\u00e9\U0001F600 \u4e2d\u6587", "\x00\ufeff",
         "a<|endoftext|>b<|s7|>c<|s999|>", "  <|s3|><|s3|>   ", "x" * 300, "'s 'LL 12345"]
"""Texts every pair of encoders is compared on (special tokens appear in some)."""


@pytest.fixture(autouse=True)
def no_tiktoken_cache(monkeypatch):
    """tiktoken caches files by path; the tests reuse paths with new contents, so caching is turned off."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")


def b64(token: bytes) -> bytes:
    return base64.b64encode(token)


def file_of(ranks: dict[bytes, int]) -> bytes:
    """A tiktoken file of ``ranks`` (the empty token as ``=``, since its base64 is empty)."""
    return b"".join((b64(t) or b"=") + b" " + str(r).encode() + b"\n" for t, r in ranks.items())


def same_as_tiktoken(path) -> dict[bytes, int] | None:
    """Our ranks of the file at ``path``, after checking they are tiktoken's; None if both reject it."""
    try:
        want = load_tiktoken_bpe(str(path))
    except ValueError:
        with pytest.raises(TokenizerFileError, match=r"line \d+ is not 'base64-token rank'"):
            load_tiktoken_ranks(path)
        return None
    got = load_tiktoken_ranks(path)
    assert got == want
    assert list(got.items()) == list(want.items())  # same order too
    return got


def assert_encodes_like_tiktoken(path, pattern: str, specials: dict[str, int]) -> Tokenizer:
    """``Tokenizer.load_tiktoken(path)`` against tiktoken's Encoding of the same file, on TEXTS."""
    ours = Tokenizer.load_tiktoken(path, pattern=pattern, special_tokens=specials)
    ranks = load_tiktoken_bpe(str(path))
    assert ours.to_tiktoken_ranks() == ranks
    ref = tiktoken.Encoding("wild", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    assert ours.vocab_size == ref.n_vocab
    for text in TEXTS:
        assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all"), text
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text), text
        ids = ref.encode(text, allowed_special="all")
        assert ours.decode_bytes(ids) == ref.decode_bytes(ids)
    everything = sorted(ranks.values()) + sorted(specials.values())
    assert ours.decode_bytes(everything) == ref.decode_bytes(everything)
    return ours


@pytest.fixture(scope="module")
def small() -> Tokenizer:
    """A 400-token vocabulary whose merges are used by TEXTS."""
    return Tokenizer.train(TEXTS[:3] * 5 + ["abc abcd bab " * 10], 400, special_tokens=(), progress=False)


# ---------------------------------------------------------------------- the file syntax

LINES = {
    "plain": b"IQ== 0\nIg== 1\n",
    "no final newline": b"IQ== 0\nIg== 1",
    "blank lines": b"\n\nIQ== 0\n\n\nIg== 1\n\n",
    "CRLF": b"IQ== 0\r\nIg== 1\r\n",
    "CR only": b"IQ== 0\rIg== 1\r",
    "tabs and runs of spaces": b"IQ==\t0\nIg==   1\n",
    "leading and trailing whitespace": b"  IQ== 0 \t\n\tIg== 1   \n",
    "vertical tab and form feed separate fields": b"IQ==\x0b0\nIg==\x0c1\n",
    "UTF-8 byte order mark": b"\xef\xbb\xbfIQ== 0\n",
    "empty token as =": b"= 5\n",
    "empty token as ==": b"== 5\n",
    "empty token as ====": b"==== 5\n",
    "empty token as a non-base64 character": b"! 5\n",
    "empty token beside others": b"IQ== 0\n= 1\nIg== 2\n",
    "characters outside base64 are skipped": b"Q!Q== 0\n",
    "a non-ASCII byte in the base64": b"QQ==\xff 0\n",
    "data after the padding": b"QQ==QQ== 0\n",
    "plus sign rank": b"IQ== +3\n",
    "underscore rank": b"IQ== 1_0\n",
    "leading zeros": b"IQ== 007\n",
    "negative rank": b"IQ== -3\n",
    "huge rank": b"IQ== 99999999999\n",
    "gaps and no order": b"IQ== 900\nIg== 3\nIw== 77\n",
    "two tokens, one rank": b"IQ== 0\nIg== 0\n",
    "the same bytes twice: the last wins": b"IQ== 0\nIQ== 1\n",
    "empty file": b"",
    "only newlines": b"\n\n\r\n",
    # rejected by tiktoken:
    "empty base64 field": b" 5\n",
    "whitespace-only line": b"IQ== 0\n   \n",
    "three fields": b"IQ== 0 1\n",
    "one field": b"IQ==\n",
    "missing padding": b"QQ 0\n",
    "URL-safe alphabet": b"-_8= 0\n",
    "hex rank": b"IQ== 0x10\n",
    "float rank": b"IQ== 1.0\n",
    "non-ASCII digit": "IQ== \u0660\n".encode(),
    "no-break space separator": "IQ==\u00a00\n".encode(),
    "next-line separator": "IQ==\u00850\n".encode(),
    "line separator": "IQ== 0\u2028Ig== 1\n".encode(),
    "file separator": b"IQ==\x1c0\n",
    "NUL separator": b"IQ==\x000\n",
}

REJECTED = {"empty base64 field", "whitespace-only line", "three fields", "one field", "missing padding",
            "URL-safe alphabet", "hex rank", "float rank", "non-ASCII digit", "no-break space separator",
            "next-line separator", "line separator", "file separator", "NUL separator"}


@pytest.mark.parametrize("case", LINES)
def test_each_kind_of_line_reads_as_in_tiktoken(tmp_path, case):
    path = tmp_path / "vocab.tiktoken"
    path.write_bytes(LINES[case])
    ranks = same_as_tiktoken(path)
    assert (ranks is None) == (case in REJECTED)


def test_the_error_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "vocab.tiktoken"
    path.write_bytes(b"IQ== 0\n\nIg== 1\n  \nIw== 2\n")
    with pytest.raises(TokenizerFileError) as info:
        load_tiktoken_ranks(path)
    assert str(info.value) == f"{path}: line 4 is not 'base64-token rank'"


FIELD_BYTES = [b"IQ==", b"Ig", b"QQ==", b"=", b"==", b"A", b"+/", b"-_", b"!", b"\xff", b"\xef\xbb\xbf", b"\x00",
               b"0", b"7", b"12", b"-", b"+", b"_", b".", b"x", "\u0660".encode(), "\u00a0".encode(),
               "\u0085".encode(), "\u2028".encode(), b" ", b"  ", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\r", b"\n",
               b"\r\n"]


BLANKS = [b"", b" ", b"\t", b"  ", b"\x0b", b"\x0c", b"\r"]

good_lines = st.builds(lambda before, token, gap, rank, after: before + token + gap + str(rank).encode() + after,
                       st.sampled_from(BLANKS), st.binary(max_size=6).map(lambda t: b64(t) or b"="),
                       st.sampled_from(BLANKS[1:6]), st.integers(-5, 10**6), st.sampled_from(BLANKS))
odd_lines = st.one_of(st.lists(st.sampled_from(FIELD_BYTES), max_size=6).map(b"".join), st.binary(max_size=10))


@st.composite
def files(draw) -> bytes:
    """Up to six well-formed lines, and in about half of the files one odd line among them."""
    lines = draw(st.lists(good_lines, max_size=6))
    odd = draw(st.one_of(st.none(), odd_lines))
    if odd is not None:
        lines.insert(draw(st.integers(0, len(lines))), odd)
    return b"\n".join(lines)


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(files())
def test_any_bytes_read_as_in_tiktoken(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "fuzz.tiktoken"
    path.write_bytes(content)
    same_as_tiktoken(path)


# ---------------------------------------------------------------------- vocabularies in the wild


def test_an_empty_token_beside_the_others(small, tmp_path):
    ranks = small.to_tiktoken_ranks() | {b"": 400}
    path = tmp_path / "empty.tiktoken"
    path.write_bytes(file_of(ranks))
    ours = assert_encodes_like_tiktoken(path, GPT4_PATTERN, {"<|endoftext|>": 401})
    assert ours.token_bytes(400) == b"" and ours.decode([400, 65, 400]) == "A"
    assert 400 not in ours.encode(" ".join(TEXTS), allowed_special="all")


def test_the_empty_token_survives_both_file_formats(small, tmp_path):
    tok = Tokenizer({b"": 0} | {t: r + 1 for t, r in small.to_tiktoken_ranks().items()}, special_tokens={"<|x|>": 401})
    tok.save_tiktoken(tmp_path / "v.tiktoken")
    assert load_tiktoken_bpe(str(tmp_path / "v.tiktoken")) == tok.to_tiktoken_ranks()
    assert Tokenizer.load_tiktoken(tmp_path / "v.tiktoken").to_tiktoken_ranks() == tok.to_tiktoken_ranks()
    tok.save(tmp_path / "v.txt")
    again = Tokenizer.load(tmp_path / "v.txt")
    assert again.to_tiktoken_ranks() == tok.to_tiktoken_ranks() and again.special_tokens == tok.special_tokens


def test_gaps_in_the_ranks_with_specials_inside_them(small, tmp_path):
    """Ranks 0, 3, 6, ... in merge order; special tokens take some of the free ids."""
    ranks = {t: 3 * r for t, r in small.to_tiktoken_ranks().items()}
    path = tmp_path / "gaps.tiktoken"
    path.write_bytes(file_of(ranks))
    specials = {"<|endoftext|>": 1, "<|s3|>": 500, "<|s7|>": 5000}
    ours = assert_encodes_like_tiktoken(path, GPT2_PATTERN, specials)
    assert ours.vocab_size == 5001


def test_shuffled_non_contiguous_ranks(small, tmp_path):
    """Lines in random order, single bytes not in byte order, ranks a random sparse set (merge order changes)."""
    rng = random.Random(0)
    tokens = list(small.to_tiktoken_ranks())
    rng.shuffle(tokens)
    ranks = dict(zip(tokens, sorted(rng.sample(range(10**6), len(tokens))), strict=True))
    lines = file_of(ranks).splitlines(keepends=True)
    rng.shuffle(lines)
    path = tmp_path / "shuffled.tiktoken"
    path.write_bytes(b"".join(lines).replace(b"\n", b"\r\n"))
    assert_encodes_like_tiktoken(path, GPT4_PATTERN, {"<|endoftext|>": 10**6 + 5})


def test_many_special_tokens_alongside(small, tmp_path):
    """A thousand special tokens, in a gap of the ranks and after them, as in Llama-3-style vocabularies."""
    ranks = {t: (r if r < 300 else r + 1000) for t, r in small.to_tiktoken_ranks().items()}
    path = tmp_path / "many.tiktoken"
    path.write_bytes(file_of(ranks))
    specials = {"<|endoftext|>": 300} | {f"<|s{i}|>": 301 + i for i in range(999)}
    specials |= {f"<|t{i}|>": 2000 + i for i in range(1000)}
    assert_encodes_like_tiktoken(path, GPT4_PATTERN, specials)


@pytest.mark.slow
def test_a_cl100k_sized_file_from_our_own_merges(stdlib_docs, tmp_path):
    """100,256 ranks learnt from the whole corpus, cl100k's special tokens (with its gap) beside them."""
    tok = Tokenizer.train(stdlib_docs, 100256, special_tokens=(), progress=False)
    path = tmp_path / "big.tiktoken"
    tok.save_tiktoken(path)
    assert same_as_tiktoken(path) == tok.to_tiktoken_ranks()
    specials = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
    ours = Tokenizer.load_tiktoken(path, special_tokens=specials)
    ref = tiktoken.Encoding("big", pat_str=GPT4_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                            special_tokens=specials)
    for doc in stdlib_docs[::25]:
        text = doc + "<|fim_prefix|>x<|endofprompt|>"
        assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


# ---------------------------------------------------------------------- what no tokenizer can use


SINGLES = {bytes([b]): b for b in range(256)}


@pytest.mark.parametrize("ranks, message", [
    (SINGLES | {b"ab": -1}, "bad vocabulary entry"),             # tiktoken's Encoding: OverflowError
    (SINGLES | {b"ab": 256, b"cd": 256}, "share an id"),         # tiktoken's Encoding: a Rust panic
    ({b"!": 0, b"": 1}, "lacks 255 of the 256 single bytes"),  # tiktoken's Encoding: panics on most text
])
def test_an_unusable_vocabulary_is_one_clear_error(tmp_path, ranks, message):
    path = tmp_path / "vocab.tiktoken"
    path.write_bytes(file_of(ranks))
    assert same_as_tiktoken(path) == ranks  # tiktoken's loader takes it
    with pytest.raises(TokenizerFileError, match=f"^{path}: .*{message}"):
        Tokenizer.load_tiktoken(path)
