"""Encode/decode API, save/load in our format, and tiktoken export/import."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import GPT2_PATTERN, Tokenizer, TokenizerFileError

tiktoken = pytest.importorskip("tiktoken")


@pytest.fixture(scope="module")
def tok(trained) -> Tokenizer:
    return trained["gpt4", 8192]


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.decode_bytes(tok.encode_ordinary(text)) == text.encode()


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None, categories=["Cs", "Ll", "Zs", "So"])))
def test_lone_surrogates_decode_as_tiktoken_does(tok, text):
    """Surrogates cannot be UTF-8: like tiktoken, pairs are joined and lone ones become U+FFFD."""
    want = tiktoken.Encoding("ref", pat_str=tok.pattern, mergeable_ranks=tok.to_tiktoken_ranks(),
                             special_tokens={}).encode_ordinary(text)
    assert tok.encode_ordinary(text) == want
    assert tok.decode(want) == text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def test_lone_surrogate_examples(tok):
    assert tok.decode(tok.encode_ordinary("a\ud800b")) == "a\ufffdb"
    assert tok.decode(tok.encode_ordinary("\ud83d\ude00")) == "\U0001F600"


def test_decode_partial_utf8_and_errors(tok):
    cut = [i for i in range(256) if tok.token_bytes(i) == b"\xc3"]
    assert tok.decode(cut) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(cut, errors="strict")
    with pytest.raises(KeyError, match="unknown token id"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(KeyError):
        tok.token_bytes(-1)


def test_special_tokens_api(tok):
    eot = tok.eot_token
    assert tok.token_bytes(eot) == b"<|endoftext|>"
    assert tok.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})[1] == eot
    with pytest.raises(ValueError, match="disallowed special token '<\\|endoftext\\|>'"):
        tok.encode("a<|endoftext|>b")
    assert eot not in tok.encode("a<|endoftext|>b", disallowed_special=())
    assert tok.encode_ordinary("<|endoftext|>") == tok.encode("<|endoftext|>", disallowed_special=())
    assert tok.vocab_size == 8192


def test_encode_batch_in_processes_equals_serial(tok, stdlib_docs):
    docs = stdlib_docs[:40] + ["", "<|endoftext|>"]
    serial = [tok.encode(d, allowed_special="all") for d in docs]
    assert tok.encode_batch(docs, num_workers=2, allowed_special="all") == serial
    assert tok.encode_batch(docs, num_workers=1, allowed_special="all") == serial
    with pytest.raises(ValueError):
        tok.encode_batch(["x", "<|endoftext|>"], num_workers=2)


def test_save_load_round_trip(tok, tmp_path, stdlib_docs):
    path = tmp_path / "tok.txt"
    tok.save(path)
    again = Tokenizer.load(path)
    assert again.to_tiktoken_ranks() == tok.to_tiktoken_ranks()
    assert again.special_tokens == tok.special_tokens and again.pattern == tok.pattern
    for doc in stdlib_docs[:20]:
        assert again.encode(doc, allowed_special="all") == tok.encode(doc, allowed_special="all")
    assert list(tmp_path.iterdir()) == [path]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("tinygrad-llm-tokenizer 1\n") and text.endswith("\nend\n")
    assert "\n256 " in text


@pytest.mark.parametrize("damage, message", [
    (lambda t: "hello world\n", "not a tinygrad-llm tokenizer"),
    (lambda t: "", "not a tinygrad-llm tokenizer"),
    (lambda t: t.replace("tinygrad-llm-tokenizer 1", "tinygrad-llm-tokenizer 2", 1), "newer"),
    (lambda t: t[: len(t) // 2], "truncated"),
    (lambda t: t[:-4], "truncated"),
    (lambda t: t.replace("\nend\n", "\n"), "truncated"),
    (lambda t: t.replace('"num_tokens"', '"num_tokenz"'), "metadata"),
    (lambda t: t.replace("\n300 ", "\n300 \\xZZ"), "line 303"),
    (lambda t: re.sub(r"\n(30[01]) [^\n]*", r"\n\1 zz!", t), "line 304 repeats the bytes of token 300"),
])
def test_corrupt_files_fail_clearly(tok, tmp_path, damage, message):
    path = tmp_path / "tok.txt"
    tok.save(path)
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=message):
        Tokenizer.load(path)


def test_binary_file_fails_clearly(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(TokenizerFileError, match="not a text file|not a tinygrad-llm"):
        Tokenizer.load(path)


def test_tiktoken_file_round_trip(tok, tmp_path, monkeypatch):
    """Our export loads in tiktoken; a tiktoken-format file drives our tokenizer."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "ours.tiktoken"
    tok.save_tiktoken(path)
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(path))
    assert ranks == tok.to_tiktoken_ranks()
    # A tiktoken-style vocabulary whose single bytes are not in byte order (like cl100k).
    order = list(range(255, -1, -1))
    foreign = {bytes([b]): i for i, b in enumerate(order)} | {b"ab": 256, b"abc": 257, b" a": 258}
    file = tmp_path / "foreign.tiktoken"
    file.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in foreign.items()))
    ours = Tokenizer.load_tiktoken(file, pattern=GPT2_PATTERN, special_tokens={"<|endoftext|>": 300})
    ref = tiktoken.Encoding("foreign", pat_str=GPT2_PATTERN, mergeable_ranks=foreign,
                            special_tokens={"<|endoftext|>": 300})
    for text in ["abc abcd a bab", "x<|endoftext|>abc", "\u00e9\U0001F600"]:
        assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
        assert ours.decode(ref.encode(text, allowed_special="all")) == text


def test_to_tiktoken_encoding(tok):
    enc = tok.to_tiktoken()
    assert enc.encode("def f(x):\n    return x\n") == tok.encode("def f(x):\n    return x\n")
    assert enc.n_vocab == tok.vocab_size


def test_bad_tiktoken_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("not base64!! 0\n")
    with pytest.raises(TokenizerFileError, match="line 1"):
        Tokenizer.load_tiktoken(path)


@pytest.mark.parametrize("ranks, specials, message", [
    ({bytes([i]): i for i in range(255)}, {}, "lacks 1 of the 256"),
    ({bytes([i]): i for i in range(256)} | {b"ab": 3}, {}, "share an id"),
    ({bytes([i]): i for i in range(256)}, {"a": 256}, "same bytes"),
    ({bytes([i]): i for i in range(256)}, {"<|x|>": 5}, "share an id"),
])
def test_invalid_vocabularies_are_rejected(ranks, specials, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer(ranks, special_tokens=specials)
