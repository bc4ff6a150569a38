"""Tokenizer.with_special_tokens: new control tokens after the last id, nothing else changes."""

from __future__ import annotations

from itertools import islice

import pytest

from tinygrad_llm.data.sources import StdlibCorpus
from tokenizer import ENDOFTEXT, Tokenizer

NEW = ("<|user_start|>", "<|user_end|>", "<|assistant_start|>")


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """Twelve real documents: ten to train on, two that the tokenizer has never seen."""
    return list(islice(StdlibCorpus("all").texts(), 12))


@pytest.fixture(scope="module")
def base(docs: list[str]) -> Tokenizer:
    return Tokenizer.train(docs[:10], 400, special_tokens=(ENDOFTEXT, "<|fim_prefix|>"), progress=False)


@pytest.fixture(scope="module")
def grown(base: Tokenizer) -> Tokenizer:
    return base.with_special_tokens(NEW)


def test_new_ids_follow_the_last_id_and_old_ids_stay(base, grown):
    assert base.special_tokens == {ENDOFTEXT: 398, "<|fim_prefix|>": 399}
    assert grown.special_tokens == {**base.special_tokens, "<|user_start|>": 400, "<|user_end|>": 401,
                                    "<|assistant_start|>": 402}
    assert grown.to_tiktoken_ranks() == base.to_tiktoken_ranks()
    assert grown.vocab_size == base.vocab_size + len(NEW)
    assert all(grown.token_bytes(i) == base.token_bytes(i) for i in range(base.vocab_size))
    assert len(base.special_tokens) == 2, "the original tokenizer is not changed"


def test_ordinary_text_encodes_as_before(base, grown, docs):
    for text in docs[10:]:
        assert grown.encode_ordinary(text) == base.encode_ordinary(text)
        assert grown.encode(text) == base.encode(text)


def test_new_specials_encode_only_where_allowed(base, grown):
    text = "<|user_start|>hello world<|user_end|><|assistant_start|>"
    hello = base.encode_ordinary("hello world")
    assert grown.encode(text, allowed_special="all") == [400, *hello, 401, 402]
    assert grown.encode(text, allowed_special={"<|user_end|>"}, disallowed_special=()) == \
        [*base.encode_ordinary("<|user_start|>hello world"), 401, *base.encode_ordinary("<|assistant_start|>")]
    assert grown.encode_ordinary(text) == base.encode_ordinary(text)
    with pytest.raises(ValueError, match="disallowed special token '<\\|user_start\\|>'"):
        grown.encode(text)
    assert grown.decode(grown.encode(text, allowed_special="all")) == text


def test_adding_again_changes_nothing(base, grown):
    assert grown.with_special_tokens(NEW).special_tokens == grown.special_tokens
    again = base.with_special_tokens([*NEW, NEW[0], ENDOFTEXT])
    assert again.special_tokens == grown.special_tokens
    more = grown.with_special_tokens(["<|assistant_end|>", NEW[1]])
    assert more.special_tokens == {**grown.special_tokens, "<|assistant_end|>": 403}


def test_save_and_load_round_trip(grown, docs, tmp_path):
    path = tmp_path / "tok.txt"
    grown.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.special_tokens == grown.special_tokens
    assert loaded.to_tiktoken_ranks() == grown.to_tiktoken_ranks()
    text = "<|user_start|>" + docs[11][:2000] + "<|assistant_start|>"
    assert loaded.encode(text, allowed_special="all") == grown.encode(text, allowed_special="all")


@pytest.mark.parametrize("names, error, message", [
    ([""], ValueError, "non-empty string"),
    (["<|ok|>", None], ValueError, "non-empty string"),
    (["a"], ValueError, "bytes of the ordinary token 97"),
    (["\ud800"], ValueError, "not valid Unicode"),
    ("<|user_start|>", TypeError, "not one string"),
])
def test_bad_names_are_refused(grown, names, error, message):
    with pytest.raises(error, match=message):
        grown.with_special_tokens(names)


def test_a_name_equal_to_a_merged_token_is_refused(base):
    merged = next(base.token_bytes(i) for i in range(256, 398) if base.token_bytes(i).isascii())
    with pytest.raises(ValueError, match="bytes of the ordinary token"):
        base.with_special_tokens([merged.decode()])
