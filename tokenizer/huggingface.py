"""Read a Hugging Face GPT-2 tokenizer (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``), and write ours as one.

Hugging Face stores a byte-level BPE in two pieces:

- ``vocab.json`` maps every token to its id.  A token is a byte string, but JSON
  holds text, so each byte is written as one printable character: bytes that
  already print (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves,
  and the other 68 (control bytes, the space, ...) are moved, in byte order, to
  the characters from U+0100 on.  That is why GPT-2's vocabulary is full of
  ``Ġ`` (U+0120, the space byte 0x20 moved up).
- ``merges.txt`` lists the merges in the order they were learned, one pair per
  line (``Ġ t``), after a ``#version`` line.  Hugging Face encodes a chunk by
  repeatedly applying the earliest-learned merge among adjacent pairs.

Our tokenizer is tiktoken-style: a token's id is its rank, and a chunk is
encoded by repeatedly fusing the adjacent pair whose concatenation has the
lowest rank.  The two agree when every merge's result has a larger id than the
merges learned before it, which is how a BPE trainer numbers its tokens (GPT-2,
and the ``tokenizers`` trainer); ``from_huggingface`` checks that and refuses a
vocabulary that breaks it, rather than encode differently.  The pre-tokenizer is
GPT-2's split (``tokenizer.patterns.GPT2_PATTERN``, tiktoken's faster spelling
of the same regex).  Tokens that are neither a byte, a merge, nor listed as
added tokens are refused too: Hugging Face could never produce them.

``tokenizer.json`` (the ``tokenizers`` library's single file) holds the same
vocabulary and merges plus its added tokens; only a GPT-2-style byte-level
pipeline (ByteLevel pre-tokenizer without a prefix space, no normalizer) is
accepted, since that is what the import reproduces.

``save_huggingface`` goes the other way, for any of our tokenizers: each
token's merge is recovered from the ranks (``recover_merges``), the split
pattern becomes a ``Split`` pre-tokenizer in the Rust engine's dialect
(``huggingface_pattern``; GPT-2's pattern is the ByteLevel pre-tokenizer's
own), and the special tokens become special added tokens.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizer.bpe import ENDOFTEXT, Tokenizer, TokenizerFileError
from tokenizer.patterns import GPT2_PATTERN
from util.files import atomic_write_bytes

__all__ = ["byte_to_unicode", "from_huggingface", "load_huggingface", "huggingface_files", "recover_merges",
           "huggingface_pattern", "huggingface_vocabulary", "tokenizer_json", "save_huggingface"]


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to the printable character that stands for it in ``vocab.json``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    moved = (b for b in range(256) if b not in table)
    table.update((b, chr(256 + n)) for n, b in enumerate(moved))
    return table


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _token_bytes(text: str) -> bytes:
    """A ``vocab.json`` token back to its bytes; ``ValueError`` for a character outside the byte table."""
    table = _unicode_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError as exc:
        raise ValueError(f"token {text!r} has the character {exc.args[0]!r}, which stands for no byte") from None


def from_huggingface(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
                     added_tokens: Iterable[str] = ()) -> Tokenizer:
    """Our tokenizer from a Hugging Face byte-level BPE: ``vocab`` (token -> id), ``merges`` in learned order.

    ``added_tokens`` (``<|endoftext|>`` is always one when the vocabulary holds
    it) become special tokens with their ``vocab`` ids.  Raises ``ValueError``
    for a vocabulary our encoder would not encode exactly as Hugging Face does.
    """
    added = set(added_tokens) | ({ENDOFTEXT} & set(vocab))
    specials = {}
    for name in sorted(added):
        if name not in vocab:
            raise ValueError(f"added token {name!r} has no id in the vocabulary")
        specials[name] = vocab[name]
    ranks: dict[bytes, int] = {}
    for text, i in vocab.items():
        if text in added:
            continue
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"token {text!r} has the id {i!r}, not a non-negative integer")
        ranks[_token_bytes(text)] = i  # the byte table is one-to-one: distinct texts, distinct bytes
    made: set[bytes] = set()
    last_id, last_merge = -1, None
    for number, (left, right) in enumerate(merges, 1):
        if left not in vocab or right not in vocab:
            raise ValueError(f"merge {number} ({left} {right}) joins a token that is not in the vocabulary")
        result = left + right
        if result not in vocab:
            raise ValueError(f"merge {number} ({left} {right}) makes {result!r}, which is not in the vocabulary")
        token = _token_bytes(result)
        if token in made:
            raise ValueError(f"merge {number} ({left} {right}) makes {result!r} a second time")
        made.add(token)
        if vocab[result] <= last_id:
            raise ValueError(f"merge {number} ({left} {right}) has the id {vocab[result]}, below the id {last_id} "
                             f"of the earlier merge {last_merge}: ids are not in merge order, which this "
                             "import needs to encode exactly as Hugging Face does")
        last_id, last_merge = vocab[result], f"{left} {right}"
    strays = [t for t in ranks if len(t) > 1 and t not in made]
    if strays:
        raise ValueError(f"{len(strays)} tokens are neither a byte, a merge nor an added token "
                         f"(e.g. {strays[0]!r}); Hugging Face's encoder would never produce them")
    return Tokenizer(ranks, GPT2_PATTERN, specials)


def huggingface_files(directory: str | os.PathLike[str]) -> list[Path] | None:
    """The tokenizer files a Hugging Face directory holds (``tokenizer.json`` first), or None."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return [directory / "tokenizer.json"]
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return [directory / "vocab.json", directory / "merges.txt"]
    return None


def load_huggingface(directory: str | os.PathLike[str]) -> Tokenizer:
    """Read the GPT-2 tokenizer of a Hugging Face directory; ``TokenizerFileError`` with a one-line reason."""
    files = huggingface_files(directory)
    if files is None:
        raise TokenizerFileError(f"{directory}: no Hugging Face tokenizer (tokenizer.json, or vocab.json "
                                 "and merges.txt)")
    try:
        if files[0].name == "tokenizer.json":
            vocab, merges, added = _read_tokenizer_json(files[0])
        else:
            vocab = _read_json(files[0])
            if not isinstance(vocab, dict):
                raise ValueError("vocab.json: not a JSON object of token -> id")
            merges = _read_merges(files[1])
            added = _added_tokens_from_config(Path(directory))
        return from_huggingface(vocab, merges, added)
    except ValueError as exc:
        raise TokenizerFileError(f"{directory}: {exc}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path.name}: not a text file (invalid UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON ({exc})") from None


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """``merges.txt``: an optional ``#version`` line, then one ``left right`` pair per line."""
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path.name}: not a text file (invalid UTF-8)") from None
    merges = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"{path.name}: line {lineno} is not a merge ('left right')")
        merges.append((pair[0], pair[1]))
    return merges


def _added_tokens_from_config(directory: Path) -> list[str]:
    """Special tokens named in ``tokenizer_config.json`` or ``special_tokens_map.json``, when present."""
    names: list[str] = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if not path.is_file():
            continue
        config = _read_json(path)
        if not isinstance(config, dict):
            raise ValueError(f"{name}: not a JSON object")
        for entry in (config.get("added_tokens_decoder") or {}).values():
            names.append(entry["content"] if isinstance(entry, dict) else entry)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            names.append(value.get("content") if isinstance(value, dict) else value)
    return [n for n in names if isinstance(n, str) and n]


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
    """The vocabulary, merges and added tokens of a ``tokenizers`` file, if its pipeline is GPT-2's."""
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise ValueError("tokenizer.json: not a BPE tokenizer")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        raise ValueError(f"tokenizer.json: pre-tokenizer {pre.get('type')!r} is not GPT-2's byte-level split "
                         "(ByteLevel, no prefix space)")
    if data.get("normalizer"):
        raise ValueError(f"tokenizer.json: has a normalizer ({data['normalizer'].get('type')}), "
                         "which GPT-2's tokenizer does not")
    merges = []
    for number, merge in enumerate(model.get("merges", []), 1):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
            raise ValueError(f"tokenizer.json: merge {number} is not a pair of tokens")
        merges.append((pair[0], pair[1]))
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError("tokenizer.json: the model has no vocabulary")
    added = [t["content"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and "content" in t]
    for token in data.get("added_tokens") or []:
        vocab.setdefault(token["content"], token["id"])
    return vocab, merges, added


# ---------------------------------------------------------------------- export

_INF_RANK = float("inf")
_COUNTED_POSSESSIVE = re.compile(r"\{\d*,?\d*\}\+")


def recover_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each token of two or more bytes, in rank order: tiktoken ranks as Hugging Face merges.

    A token's merge is found by encoding its own bytes with the tokens of lower
    rank only: the encoder stops at two parts, whose merge (the lowest-ranked
    pair from then on) makes the token.  For a vocabulary a BPE trainer made,
    applying these merges earliest first encodes as our encoder (and tiktoken)
    does with the ranks: the tests check it on text.  ``ValueError``
    names a token that no two lower-ranked tokens make: no list of merges can
    produce it as Hugging Face does.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pairs = [ranks.get(a + b, _INF_RANK) for a, b in zip(parts, parts[1:], strict=False)]
            best = min(pairs)
            if best >= rank:
                break
            i = pairs.index(best)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2 or ranks.get(parts[0], rank) >= rank or ranks.get(parts[1], rank) >= rank:
            raise ValueError(f"token {token!r} (id {rank}) is not the merge of two tokens of lower rank; "
                             "Hugging Face's merges cannot make it")
        merges.append((parts[0], parts[1]))
    return merges


def huggingface_pattern(pattern: str) -> str:
    """``pattern`` in the dialect of the ``tokenizers`` library's regex engine (Oniguruma, Ruby syntax).

    The two dialects differ in one construct our patterns use: ``X{1,3}+`` is a
    possessive repeat in ``regex`` but means ``(X{1,3})+`` in Oniguruma.  At the
    end of a top-level alternative nothing follows that could make the engine
    back off, so there it is the plain greedy ``X{1,3}``, which both read alike;
    anywhere else ``ValueError``.  Possessive ``?+``, ``*+`` and ``++`` mean the
    same in both.
    """
    out, depth, i = [], 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":  # an escape, with its braces (\\p{L}) if it has them
            end = i + 2
            if pattern[i + 1:i + 2] in ("p", "P", "x", "N") and pattern[end:end + 1] == "{":
                end = pattern.index("}", end) + 1
            out.append(pattern[i:end])
            i = end
            continue
        if c == "[":  # a character class, copied whole: ']' first (after any '^') is a member
            end = i + 1 + (pattern[i + 1:i + 2] == "^")
            end += pattern[end:end + 1] == "]"
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            out.append(pattern[i:end + 1])
            i = end + 1
            continue
        repeat = _COUNTED_POSSESSIVE.match(pattern, i)
        if repeat:
            if depth or pattern[repeat.end():repeat.end() + 1] not in ("|", ""):
                raise ValueError(f"the pre-tokenization pattern has a possessive counted repeat "
                                 f"({repeat.group()} at {i}) that the tokenizers library reads differently: "
                                 f"{pattern!r}")
            out.append(repeat.group()[:-1])
            i = repeat.end()
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        out.append(c)
        i += 1
    return "".join(out)


def _byte_level(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def huggingface_vocabulary(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Our ordinary tokens as Hugging Face's byte-level ``vocab`` (token -> id) and ``merges``, in rank order."""
    ranks = tokenizer.to_tiktoken_ranks()
    if b"" in ranks:
        raise ValueError(f"the empty token (id {ranks[b'']}) has no Hugging Face form")
    vocab = {_byte_level(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    clash = sorted(set(tokenizer.special_tokens) & set(vocab))
    if clash:
        raise ValueError(f"special token {clash[0]!r} is spelled like the ordinary token {vocab[clash[0]]} in "
                         "Hugging Face's byte-level vocabulary")
    merges = [(_byte_level(a), _byte_level(b)) for a, b in recover_merges(ranks)]
    return vocab, merges


def _added_token(name: str, token_id: int) -> dict[str, Any]:
    return {"id": token_id, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The ``tokenizers`` library's description of ``tokenizer`` (the content of ``tokenizer.json``).

    GPT-2's pattern is the ``ByteLevel`` pre-tokenizer's own regex, written as
    GPT-2's ``tokenizer.json`` writes it (and so read back by
    ``load_huggingface``); any other pattern is a ``Split`` on it (in the
    engine's dialect, ``huggingface_pattern``) followed by the byte-to-character
    map.  ``ignore_merges`` is tiktoken's rule that a chunk which is a token
    whole is that token.
    """
    vocab, merges = huggingface_vocabulary(tokenizer)
    if tokenizer.pattern == GPT2_PATTERN:
        pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    else:
        split = {"type": "Split", "pattern": {"Regex": huggingface_pattern(tokenizer.pattern)},
                 "behavior": "Isolated", "invert": False}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            split, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [_added_token(name, i) for name, i in specials],
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }


def save_huggingface(tokenizer: Tokenizer, directory: str | os.PathLike[str],
                     model_max_length: int | None = None) -> list[Path]:
    """Write ``tokenizer`` as a Hugging Face tokenizer into ``directory`` (created if missing); the files written.

    ``tokenizer.json`` (see :func:`tokenizer_json`), ``tokenizer_config.json``
    (``<|endoftext|>`` as the BOS and EOS token when there is one, every special
    token, ``model_max_length`` when given, no clean-up of spaces when decoding)
    and ``special_tokens_map.json``.  With GPT-2's pattern also ``vocab.json``
    and ``merges.txt``, the older two-file form, and the tokenizer class is
    ``GPT2Tokenizer``, which reads either form; with another pattern it is
    ``PreTrainedTokenizerFast``, which reads ``tokenizer.json``.  Then
    ``transformers.AutoTokenizer.from_pretrained(directory)`` encodes every text
    to our ``encode(text, allowed_special="all")`` ids and decodes ids to our
    text.  Each file is written atomically.  ``ValueError`` (one line) for a
    tokenizer Hugging Face cannot express.
    """
    directory = Path(directory)
    data = tokenizer_json(tokenizer)
    specials = tokenizer.special_tokens
    special_map: dict[str, Any] = {}
    if ENDOFTEXT in specials:
        special_map = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}
    extra = [name for name in specials if name != ENDOFTEXT]
    if extra:
        special_map["additional_special_tokens"] = extra
    gpt2 = tokenizer.pattern == GPT2_PATTERN
    config: dict[str, Any] = {
        "tokenizer_class": "GPT2Tokenizer" if gpt2 else "PreTrainedTokenizerFast", **special_map,
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                 for t in data["added_tokens"]},
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    files = {"tokenizer.json": data, "tokenizer_config.json": config, "special_tokens_map.json": special_map}
    directory.mkdir(parents=True, exist_ok=True)
    written = [_write_json(directory / name, content) for name, content in files.items()]
    if gpt2:
        vocab = {**data["model"]["vocab"], **specials}
        merges = "".join(f"{m}\n" for m in data["model"]["merges"])
        written.append(_write_json(directory / "vocab.json", vocab))
        atomic_write_bytes(directory / "merges.txt", f"#version: 0.2\n{merges}".encode())
        written.append(directory / "merges.txt")
    return written


def _write_json(path: Path, content: Any) -> Path:
    atomic_write_bytes(path, json.dumps(content, ensure_ascii=False, indent=2).encode("utf-8"))
    return path
