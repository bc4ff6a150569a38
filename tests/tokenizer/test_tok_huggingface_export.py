"""Our tokenizer written as a Hugging Face tokenizer encodes and decodes exactly as ours, in ``transformers``.

Tokenizers trained by ``Tokenizer.train`` under GPT-2's and GPT-4's patterns
(vocabulary 1000, with ``<|endoftext|>``, two FIM tokens and a chat marker) are
saved by ``save_huggingface`` and read back by ``transformers.AutoTokenizer``:
the ids of stdlib sources, unicode, whitespace runs and special tokens are
ours, and so is the text of any ids. GPT-2's pattern also reads back into our
own import (``load_huggingface``) with the same ranks.
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
from tok_settings import PATTERNS, SPECIALS

from tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, TokenizerFileError
from tokenizer.huggingface import (
    byte_to_unicode,
    huggingface_pattern,
    load_huggingface,
    recover_merges,
    save_huggingface,
)
from tokenizer.patterns import compile_pattern

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHAT = "<|user_start|>"
FUZZ_PIECES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u2028", "\u3000", "'s", "'ll", "'VE",
               "don't", "<|endoftext|>", "<|endoftext", "<|fim_prefix|>", CHAT, "def", " return", "0", "123456",
               "1234567", "é", "e\u0301", "东京", "🙂", "👍🏽", "Ġ", "ĊĊ", "\x00", "\x7f", "...", "__init__", "x=1;y=2",
               "  # comment\n", "Ω", "ß", "İ", "١٢٣", "½", "\ufeff", "\u200b", "ﬁ"]


def reference_texts(stdlib_docs: list[str]) -> list[str]:
    """Real files (stdlib sources, not in the training subset), awkward strings and random mixtures."""
    texts = stdlib_docs[1::97][:12]
    texts += ["", " ", "\n", "Hello world", "Größe naïve café", "東京は日本の首都です。", "a  b   c    \n\n  d ",
              " " * 50, "\n" * 7 + " x", "\t\t\n  \n", "12345678901", "x" * 300, "<|endoftext|><|endoftext|>",
              f"{CHAT}Hi<|endoftext|>", "trailing space ", "trailing newline\n", "I'D YOU'LL we've"]
    rng = random.Random(0)
    texts += ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    return texts


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def exported(request, stdlib_docs, tmp_path_factory) -> tuple[Tokenizer, Path]:
    """(ours, the directory it was exported to), for each pattern."""
    ours = Tokenizer.train(stdlib_docs[::32], 1000, pattern=PATTERNS[request.param],
                           special_tokens=(*SPECIALS, CHAT), progress=False)
    directory = tmp_path_factory.mktemp(f"hf-{request.param}")
    save_huggingface(ours, directory)
    return ours, directory


def test_transformers_encodes_every_text_to_our_ids(exported, stdlib_docs):
    ours, directory = exported
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    texts = reference_texts(stdlib_docs)
    mismatches = [t for t in texts if theirs.encode(t) != ours.encode(t, allowed_special="all")]
    assert mismatches == []
    assert sum(len(ours.encode(t, allowed_special="all")) for t in texts) > 50_000  # enough BPE to be a test
    assert ours.vocab_size == 1000 and len(theirs) == 1000
    assert theirs.eos_token == theirs.bos_token == "<|endoftext|>"
    assert theirs.convert_tokens_to_ids(CHAT) == ours.special_tokens[CHAT]


def test_transformers_decodes_ids_to_our_text(exported, stdlib_docs):
    ours, directory = exported
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    for text in reference_texts(stdlib_docs)[:60]:
        ids = ours.encode(text, allowed_special="all")
        assert theirs.decode(ids) == ours.decode(ids) == text
    rng = random.Random(1)  # any ids, also ones that cut a character's bytes apart
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 20))]
        assert theirs.decode(ids) == ours.decode(ids)


def test_the_tokenizers_library_reads_tokenizer_json_alike(exported, stdlib_docs):
    ours, directory = exported
    theirs = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text in reference_texts(stdlib_docs)[::5]:
        assert theirs.encode(text).ids == ours.encode(text, allowed_special="all")


def test_gpt2_pattern_also_gets_vocab_and_merges_which_read_alike(exported, stdlib_docs, tmp_path):
    ours, directory = exported
    names = {p.name for p in directory.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    if ours.pattern != GPT2_PATTERN:
        assert "vocab.json" not in names and "merges.txt" not in names
        return
    for name in names - {"tokenizer.json"}:  # the older two-file form alone
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in reference_texts(stdlib_docs)[::3]:
        assert theirs.encode(text) == ours.encode(text, allowed_special="all")


def test_our_import_reads_an_exported_gpt2_tokenizer_back(exported, tmp_path):
    ours, directory = exported
    if ours.pattern != GPT2_PATTERN:
        with pytest.raises(TokenizerFileError, match="pre-tokenizer") as error:
            load_huggingface(directory)  # a Split on another pattern is not GPT-2's tokenizer
        assert "\n" not in str(error.value)
        return
    back = load_huggingface(directory)
    assert back.to_tiktoken_ranks() == ours.to_tiktoken_ranks()
    assert back.special_tokens == ours.special_tokens and back.pattern == GPT2_PATTERN
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):  # the two-file form, without tokenizer.json
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    two_files = load_huggingface(tmp_path)
    assert two_files.to_tiktoken_ranks() == ours.to_tiktoken_ranks()
    assert two_files.special_tokens == ours.special_tokens


def test_files_describe_a_byte_level_bpe_with_special_added_tokens(exported):
    ours, directory = exported
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE" and data["model"]["ignore_merges"] and data["normalizer"] is None
    assert len(data["model"]["vocab"]) == len(ours.to_tiktoken_ranks()) == len(data["model"]["merges"]) + 256
    assert {t["content"]: t["id"] for t in data["added_tokens"]} == ours.special_tokens
    assert all(t["special"] and not t["normalized"] for t in data["added_tokens"])
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert not config["clean_up_tokenization_spaces"]
    gpt2 = ours.pattern == GPT2_PATTERN
    assert config["tokenizer_class"] == ("GPT2Tokenizer" if gpt2 else "PreTrainedTokenizerFast")
    if ours.pattern == GPT4_PATTERN:
        split = data["pre_tokenizer"]["pretokenizers"][0]
        assert split["pattern"]["Regex"] == huggingface_pattern(GPT4_PATTERN) != GPT4_PATTERN


# ---------------------------------------------------------------------- the split pattern in Rust's dialect


def test_gpt4_pattern_needs_one_rewrite_and_gpt2_pattern_none():
    assert huggingface_pattern(GPT2_PATTERN) == GPT2_PATTERN
    assert huggingface_pattern(GPT4_PATTERN) == GPT4_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(GPT4_PATTERN), behavior="isolated")
    assert [p for p, _ in split.pre_tokenize_str("x 12345678")] == ["x", " ", "12345678"]  # read as (\d{1,3})+


@pytest.mark.parametrize("pattern", [r"(a{1,3}+)b", r"a{2}+b|c", r"(?:x|\d{1,3}+)"])
def test_a_possessive_counted_repeat_that_could_matter_is_refused(pattern):
    with pytest.raises(ValueError, match="possessive counted repeat"):
        huggingface_pattern(pattern)


def test_escapes_and_classes_are_copied_untouched():
    pattern = r"\p{L}++|[{}+]+|\x{41}+|[]{]|a{1,2}+"
    assert huggingface_pattern(pattern) == r"\p{L}++|[{}+]+|\x{41}+|[]{]|a{1,2}"


@pytest.mark.parametrize("name", ["gpt2", "gpt4"])
def test_the_rust_split_equals_ours_on_every_sampled_character(name):
    """Each sampled code point in letter, digit, space, newline and apostrophe contexts, split by both engines.

    The one difference found: code points that Unicode assigned after the
    version of ``unicodedata`` (Python 3.11: Unicode 14) are letters or digits
    to the ``regex`` module's newer tables but unknown to the Rust engine's;
    text made in those scripts splits differently."""
    ours = compile_pattern(PATTERNS[name]).findall
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(huggingface_pattern(PATTERNS[name])),
                                            behavior="isolated")
    points = [chr(c) for c in [*range(0x300), *range(0x300, 0x110000, 61)] if not 0xD800 <= c < 0xE000]
    differ = []
    for start in range(0, len(points), 2048):
        block = points[start:start + 2048]
        if [p for p, _ in split.pre_tokenize_str(context(block))] != ours(context(block)):
            differ += [c for c in block if [p for p, _ in split.pre_tokenize_str(context([c]))] != ours(context([c]))]
    assert all(unicodedata.category(c) == "Cn" for c in differ), [hex(ord(c)) for c in differ[:5]]
    assert len(differ) < 400


def context(characters: list[str]) -> str:
    return "".join(f"a{c}1 {c}{c}\n{c}'s{c}  {c}\r\n9{c}" for c in characters)


# ---------------------------------------------------------------------- merges and refusals


def test_merges_are_recovered_from_ranks_in_rank_order():
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257, b"cab": 258, b"abcab": 259}
    assert recover_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"c", b"ab"), (b"abc", b"ab")]


def test_a_token_no_two_lower_tokens_make_is_refused():
    ranks = {bytes([b]): b for b in range(256)} | {b"abc": 256}
    with pytest.raises(ValueError, match=r"b'abc' \(id 256\) is not the merge of two tokens"):
        recover_merges(ranks)


def test_unexportable_vocabularies_are_refused_in_one_line(tmp_path):
    base = {bytes([b]): b for b in range(256)}
    empty = Tokenizer({**base, b"": 300}, GPT2_PATTERN)
    with pytest.raises(ValueError, match="empty token"):
        save_huggingface(empty, tmp_path / "a")
    table = byte_to_unicode()
    clash = Tokenizer({**base, b" x": 257}, GPT2_PATTERN, {table[ord(" ")] + "x": 256})  # b" x" is 'Ġx'
    with pytest.raises(ValueError, match="spelled like the ordinary token 257"):
        save_huggingface(clash, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
