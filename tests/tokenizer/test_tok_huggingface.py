"""A Hugging Face GPT-2 tokenizer imported into ours encodes and decodes exactly as ``transformers``' does.

The vocabulary is trained by Hugging Face's ``tokenizers`` (the ``hf_tokenizer_dir``
fixture); the reference is ``transformers``' GPT-2 tokenizer read from the same files.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tokenizer import GPT2_PATTERN, TokenizerFileError
from tokenizer.huggingface import byte_to_unicode, from_huggingface, load_huggingface

transformers = pytest.importorskip("transformers")

FUZZ_PIECES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u2028", "'s", "'ll", "'VE", "don't",
               "<|endoftext|>", "<|endoftext", "def", " return", "0", "123456", "é", "东京", "🙂", "Ġ", "ĊĊ",
               "\x00", "\x7f", "...", "__init__", "x=1;y=2", "  # comment\n"]


def reference_texts() -> list[str]:
    """Real files (Python source and prose) and random mixtures of awkward pieces."""
    texts = [Path(m.__file__).read_text(encoding="utf-8") for m in (random, json, shutil)]
    texts += ["", " ", "\n", "Hello world", "Größe naïve café", "東京は日本の首都です。", "a  b   c    \n\n  d "]
    rng = random.Random(0)
    texts += ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    return texts


@pytest.fixture(scope="module", params=["vocab.json+merges.txt", "tokenizer.json"])
def pair(request, hf_tokenizer_dir, tmp_path_factory):
    """(ours, transformers') loaded from one of the two file layouts of the same trained vocabulary."""
    directory = tmp_path_factory.mktemp("layout")
    if request.param == "tokenizer.json":
        shutil.copy(hf_tokenizer_dir / "tokenizer.json", directory)
        theirs = transformers.GPT2TokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    else:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(hf_tokenizer_dir / name, directory)
        theirs = transformers.GPT2Tokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    return load_huggingface(directory), theirs


def test_the_vocabulary_arrives_whole(pair, hf_tokenizer_dir):
    ours, _ = pair
    vocab = json.loads((hf_tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    assert ours.vocab_size == len(vocab) == 1000
    assert ours.special_tokens == {"<|endoftext|>": vocab["<|endoftext|>"]}
    assert ours.pattern == GPT2_PATTERN
    assert ours.token_bytes(vocab["Ġ"]) == b" " and ours.token_bytes(vocab["Ċ"]) == b"\n"


def test_encodes_exactly_as_transformers(pair):
    ours, theirs = pair
    texts = reference_texts()
    mismatches = [t for t in texts if ours.encode(t, allowed_special="all") != theirs.encode(t)]
    assert mismatches == []
    assert sum(len(theirs.encode(t)) for t in texts) > 10_000   # enough real tokenization to be a test
    assert any(t != t.strip() for t in texts) and any("<|endoftext|>" in t for t in texts)


def test_decodes_exactly_as_transformers(pair):
    ours, theirs = pair
    for text in reference_texts()[:50]:
        ids = theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids) == text


def test_byte_table_is_gpt2s():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A" and table[0] == "Ā"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


# ---------------------------------------------------------------------- refusals


def write(directory: Path, vocab: dict, merges: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    return directory


def byte_vocab() -> dict[str, int]:
    return {c: i for i, c in enumerate(byte_to_unicode().values())}


def test_a_hand_written_vocabulary_encodes_by_merge_order(tmp_path):
    vocab = {**byte_vocab(), "ab": 256, "Ġa": 257, "Ġab": 258, "<|endoftext|>": 259}
    ours = load_huggingface(write(tmp_path, vocab, ["a b", "Ġ a", "Ġa b"]))
    assert ours.encode(" ab ab<|endoftext|>", allowed_special="all") == [258, 258, 259]
    assert ours.encode("abab") == [256, 256]


@pytest.mark.parametrize("vocab_extra, merges, message", [
    ({"ab": 257, "bc": 256}, ["a b", "b c"], "not in merge order"),
    ({"ab": 256}, ["a b", "a c"], "makes 'ac', which is not in the vocabulary"),
    ({"ab": 256}, ["a x1"], "joins a token that is not in the vocabulary"),
    ({"ab": 256, "zz": 257}, ["a b"], "neither a byte, a merge nor an added token"),
    ({"ab": 256, "a\u4e00": 257}, ["a b"], "stands for no byte"),
    ({"ab": 256, "c": 3}, ["a b"], "share an id"),
])
def test_vocabularies_we_would_encode_differently_are_refused(tmp_path, vocab_extra, merges, message):
    vocab = {**byte_vocab(), **vocab_extra}
    with pytest.raises(TokenizerFileError, match=message):
        load_huggingface(write(tmp_path, vocab, merges))


def test_damaged_and_missing_files_are_one_clear_error(tmp_path, hf_tokenizer_dir):
    with pytest.raises(TokenizerFileError, match="no Hugging Face tokenizer"):
        load_huggingface(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b"\xff\xfe not json")
    (tmp_path / "merges.txt").write_text("a b\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="vocab.json: not a text file"):
        load_huggingface(tmp_path)
    (tmp_path / "vocab.json").write_text("{\"a\": 1", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="vocab.json: not valid JSON"):
        load_huggingface(tmp_path)
    write(tmp_path, byte_vocab(), ["a b c"])
    with pytest.raises(TokenizerFileError, match="merges.txt: line 2 is not a merge"):
        load_huggingface(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "not GPT-2's byte-level split"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "has a normalizer"),
    (lambda d: d["model"].update(type="WordPiece"), "not a BPE tokenizer"),
])
def test_tokenizer_json_with_another_pipeline_is_refused(tmp_path, hf_tokenizer_dir, change, message):
    data = json.loads((hf_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    change(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=message):
        load_huggingface(tmp_path)


def test_from_huggingface_takes_added_tokens_as_specials():
    vocab = {**byte_vocab(), "ab": 256, "<pad>": 257}
    ours = from_huggingface(vocab, [("a", "b")], added_tokens=["<pad>"])
    assert ours.special_tokens == {"<pad>": 257}
    assert ours.encode("ab<pad>", allowed_special="all") == [256, 257]
