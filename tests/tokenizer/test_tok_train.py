"""The trainer: known answers, agreement with a naive recount-everything trainer, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer
from tokenizer.train import learn_merges


def naive_vocab(texts: list[str], pattern: str, num_tokens: int) -> list[bytes]:
    """Textbook BPE: recount every pair over every chunk occurrence before each merge.

    Same rules as the specification: highest count first, ties to the smaller
    (left id, right id); a pair whose bytes are already a token merges into it.
    """
    words = [list(chunk.encode()) for t in texts for chunk in regex.findall(pattern, t)]
    vocab = [bytes([i]) for i in range(256)]
    while len(vocab) < num_tokens:
        counts = Counter(p for w in words for p in zip(w, w[1:], strict=False))
        if not counts:
            break
        (a, b), _ = min(counts.items(), key=lambda item: (-item[1], item[0]))
        token = vocab[a] + vocab[b]
        if token not in vocab:
            vocab.append(token)
        new = vocab.index(token)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return vocab


def ordinary_tokens(tok: Tokenizer) -> list[bytes]:
    ranks = tok.to_tiktoken_ranks()
    return sorted(ranks, key=ranks.__getitem__)


def test_wikipedia_example():
    """The classic example (Wikipedia "Byte pair encoding", minbpe's test): aaabdaaabac."""
    tok = Tokenizer.train("aaabdaaabac", 256 + 3, special_tokens=())
    assert tok.encode_ordinary("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(alphabet="ab c\n1é😀'sS", max_size=40), min_size=1, max_size=8),
       extra=st.integers(0, 40), pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]))
def test_incremental_counts_match_naive_trainer(texts, extra, pattern):
    tok = Tokenizer.train(texts, 256 + extra, pattern=pattern, special_tokens=(), progress=False)
    assert ordinary_tokens(tok) == naive_vocab(texts, pattern, 256 + extra)


def test_layout_bytes_first_then_merges_then_specials():
    text = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs " * 5
    tok = Tokenizer.train(text, 280, special_tokens=("<|endoftext|>", "<|pad|>"))
    assert tok.vocab_size == 280
    assert [tok.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    assert tok.special_tokens == {"<|endoftext|>": 278, "<|pad|>": 279}
    assert tok.eot_token == 278
    tokens = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    assert len(set(tokens)) == len(tokens)
    # Every merged token is the concatenation of two earlier tokens.
    for i in range(256, 278):
        earlier = set(tokens[:i])
        assert any(tokens[i][:k] in earlier and tokens[i][k:] in earlier for k in range(1, len(tokens[i])))


def test_no_duplicate_token_bytes_on_real_text(trained):
    for tok in trained.values():
        tokens = [tok.token_bytes(i) for i in range(tok.vocab_size)]
        assert len(set(tokens)) == len(tokens)


def test_same_input_same_vocabulary_in_any_document_order(stdlib_docs):
    docs = stdlib_docs[::97]
    first = Tokenizer.train(docs, 1500, progress=False)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    again = Tokenizer.train(iter(shuffled), 1500, progress=False)
    assert first.to_tiktoken_ranks() == again.to_tiktoken_ranks()


def test_smaller_vocabulary_is_a_prefix_of_larger(stdlib_docs):
    docs = stdlib_docs[::97]
    small, large = (ordinary_tokens(Tokenizer.train(docs, n, progress=False)) for n in (600, 1400))
    assert large[:len(small)] == small


def test_special_strings_never_become_ordinary_tokens():
    text = "hello hello hello world <|x|> hello"
    tok = Tokenizer.train(text, 300, special_tokens=(" hello", "<|x|>"))
    assert b" hello" not in tok.to_tiktoken_ranks()
    assert tok.encode(text, allowed_special="all").count(tok.special_tokens[" hello"]) == 3


def test_stops_when_pairs_run_out():
    tok = Tokenizer.train("abc", 1000, special_tokens=("<|endoftext|>",))
    assert ordinary_tokens(tok)[256:] == [b"ab", b"abc"]
    assert tok.eot_token == 258


def test_vocab_too_small_is_an_error():
    with pytest.raises(ValueError, match="fewer than 256"):
        Tokenizer.train("abc", 256, special_tokens=("<|endoftext|>",))
    with pytest.raises(ValueError):
        learn_merges({"ab": 1}, 100)


def test_progress_line_reports_rate_and_eta(capsys):
    Tokenizer.train("the cat sat on the mat " * 50, 290, progress=True)
    err = capsys.readouterr().err
    assert "training BPE merges" in err and "/s" in err and "ETA" in err


def test_training_texts_must_be_strings():
    with pytest.raises(TypeError):
        Tokenizer.train([b"bytes"], 300)
