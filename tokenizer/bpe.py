"""A byte-level BPE tokenizer that encodes exactly like tiktoken.

Vocabulary.  Every token is a byte string; its id is its merge rank.  A trained
vocabulary starts with the 256 single bytes in byte order (ids 0..255), so every
string is encodable and there is no unknown token; merge i has id 256 + i; the
special tokens (``<|endoftext|>``, ...) come after the last merge.  No two tokens
have the same bytes.  A vocabulary read from a tiktoken file may have gaps in its
ids and may hold the empty byte string as a token; the GPT-2 and GPT-4 patterns
never cut an empty chunk, so encoding never produces it, and it decodes to nothing.

Encoding.  Text is first cut out around the allowed special tokens, the rest is
split into chunks with the pre-tokenization regex, and each chunk is encoded on its
own, the way tiktoken's ``CoreBPE`` does it: start from single bytes and, while some
adjacent pair of parts concatenates to a token, merge the pair whose concatenation
has the lowest rank (the leftmost one on a tie).  Three things keep this fast in
pure Python:

- a cache from chunk string to ids (most chunks of real text repeat: indentation,
  keywords, common words), which also serves the "whole chunk is a token" case;
- for chunks under ``LARGE_CHUNK`` bytes, a linear scan for the lowest rank (the
  scan is C-level ``min``/``index`` over a short list);
- for longer chunks, a heap over a linked list of parts, so that a pathological
  chunk (a megabyte of spaces) costs O(n log n), not O(n^2).

Files.  ``save``/``load`` use our own versioned text format (see ``save``).
``to_tiktoken_ranks``/``from_tiktoken`` convert to and from tiktoken's
``{token_bytes: rank}`` form, and ``save_tiktoken``/``load_tiktoken`` read and write
tiktoken's ``.tiktoken`` vocabulary files (one ``base64(token) rank`` per line);
``load_tiktoken_ranks`` reads such a file exactly as tiktoken's ``load_tiktoken_bpe``.
"""

from __future__ import annotations

import base64
import functools
import gc
import heapq
import json
import os
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal

from tokenizer.patterns import GPT4_PATTERN, compile_pattern, replace_lone_surrogates, resolve_pattern
from tokenizer.train import count_chunks, learn_merges, special_token_regex
from util.files import atomic_write_bytes
from util.workers import WorkerPool, default_workers

ENDOFTEXT = "<|endoftext|>"
"""The end-of-text special token, placed between documents."""

FORMAT_MAGIC = "tinygrad-llm-tokenizer"
"""First word of every tokenizer file we write."""

FORMAT_VERSION = 1
"""Version of the file format; loading a file with a higher version is refused."""

LARGE_CHUNK = 128
"""Chunks of at least this many bytes are merged with the heap algorithm."""

CACHE_LIMIT = 1 << 18
"""The chunk cache is emptied when it holds this many entries (bounds memory)."""

_INF = float("inf")

AllowedSpecial = Literal["all"] | Collection[str]


class TokenizerFileError(ValueError):
    """A tokenizer file is not ours, is damaged or truncated, or is from a newer version."""


class Tokenizer:
    """A byte-level BPE tokenizer: ``encode`` text to ids and ``decode`` ids to text.

    Build one with ``Tokenizer.train``, ``Tokenizer.load``, ``Tokenizer.from_tiktoken``
    or ``Tokenizer.load_tiktoken``; the constructor takes the raw vocabulary.

    Args:
        mergeable_ranks: every ordinary token's bytes and its id (= merge rank).
        pattern: the pre-tokenization regex (``regex`` syntax).
        special_tokens: special token strings and their ids.
    """

    def __init__(self, mergeable_ranks: Mapping[bytes, int], pattern: str = GPT4_PATTERN,
                 special_tokens: Mapping[str, int] | None = None) -> None:
        special_tokens = dict(special_tokens or {})
        _validate_vocabulary(mergeable_ranks, special_tokens)
        self.pattern = pattern
        self._split = compile_pattern(pattern).findall
        self._ranks: dict[bytes, int] = dict(mergeable_ranks)
        self._special_tokens = special_tokens
        self._decoder: dict[int, bytes] = {rank: token for token, rank in self._ranks.items()}
        self._decoder.update((i, s.encode("utf-8")) for s, i in special_tokens.items())
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, texts: Iterable[str] | str, vocab_size: int, pattern: str = GPT4_PATTERN,
              special_tokens: Collection[str] = (ENDOFTEXT,), progress: bool | None = None) -> Tokenizer:
        """Learn a vocabulary of ``vocab_size`` tokens (specials included) from ``texts``.

        ``texts`` is one string or an iterable of documents (read lazily).  ``pattern``
        is a regex or a name from ``tokenizer.patterns.PATTERNS`` (``"gpt4"``, the
        default, or ``"gpt2"``).  Special tokens get the ids after the last merge, in
        the order given.  ``progress`` shows a progress line on stderr (default: only
        when stderr is a terminal).  If the corpus runs out of pairs before
        ``vocab_size`` is reached, the vocabulary is smaller.
        """
        pattern = resolve_pattern(pattern)
        specials = list(dict.fromkeys(special_tokens))
        n_ordinary = vocab_size - len(specials)
        if n_ordinary < 256:
            raise ValueError(f"vocab_size {vocab_size} leaves fewer than 256 ordinary tokens "
                             f"after {len(specials)} special tokens")
        if isinstance(texts, str):
            texts = [texts]
        if progress is None:
            progress = _stderr_is_tty()
        counts = count_chunks(texts, pattern, specials)
        vocab = learn_merges(counts, n_ordinary, progress=progress)
        ranks = {token: i for i, token in enumerate(vocab)}
        return cls(ranks, pattern, {s: len(vocab) + i for i, s in enumerate(specials)})

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Number of ids, i.e. the largest id + 1 (the embedding table's row count)."""
        return max(self._decoder) + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special tokens and their ids (a copy)."""
        return dict(self._special_tokens)

    @property
    def eot_token(self) -> int:
        """The id of ``<|endoftext|>``; ``KeyError`` if this vocabulary has none."""
        try:
            return self._special_tokens[ENDOFTEXT]
        except KeyError:
            raise KeyError(f"this tokenizer has no {ENDOFTEXT} special token") from None

    def with_special_tokens(self, names: Sequence[str]) -> Tokenizer:
        """A new tokenizer with this one's tokens plus the special tokens ``names``.

        Fine-tuning adds control tokens to a trained vocabulary (the chat turn
        markers, say).  A model trained on this tokenizer must keep working, so
        no existing id moves: the ordinary tokens and the existing special tokens
        keep theirs, and each new name gets the next free id after the current
        largest (``vocab_size``, ``vocab_size + 1``, ... in the order given).  A name
        that is already a special token keeps its id, so adding the same names
        twice changes nothing.  Ordinary text encodes exactly as before: special
        tokens are only recognised where ``encode`` allows them.  The result is an
        ordinary tokenizer, saved and loaded by ``save``/``load`` like any other.

        Raises ``ValueError`` for an empty name, a name that is not valid Unicode
        text, or a name whose bytes are an ordinary token (its id would then be
        ambiguous to decode back).
        """
        if isinstance(names, str):
            raise TypeError("names must be a sequence of special-token strings, not one string")
        specials = dict(self._special_tokens)
        next_id = self.vocab_size
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a special token must be a non-empty string, not {name!r}")
            try:
                data = name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"special token {name!r} is not valid Unicode text") from None
            if data in self._ranks:
                raise ValueError(f"special token {name!r} has the bytes of the ordinary token {self._ranks[data]}")
            if name not in specials:
                specials[name] = next_id
                next_id += 1
        return type(self)(self._ranks, self.pattern, specials)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's are its UTF-8 string)."""
        try:
            return self._decoder[token_id]
        except (KeyError, TypeError):
            raise KeyError(f"unknown token id {token_id!r}") from None

    # ------------------------------------------------------------------ encoding

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text``, treating special-token strings as ordinary text."""
        try:
            return self._encode_text(text)
        except UnicodeEncodeError:
            return self._encode_text(replace_lone_surrogates(text))

    def encode(self, text: str, allowed_special: AllowedSpecial = frozenset(),
               disallowed_special: AllowedSpecial = "all") -> list[int]:
        """Encode ``text`` with tiktoken's special-token rules.

        A special token in ``allowed_special`` (``"all"`` for every one) is encoded as
        its id.  A special token in ``disallowed_special`` (default ``"all"``: every
        special not allowed) makes this raise ``ValueError``: text from users must not
        smuggle in control tokens by accident.  A special token in neither set is
        encoded as ordinary text.  Lone surrogates become U+FFFD, as in tiktoken.
        """
        allowed = self._special_set(allowed_special)
        disallowed = (self._special_set("all") - allowed if disallowed_special == "all"
                      else self._special_set(disallowed_special))
        if disallowed:
            match = _special_regex(disallowed).search(text)
            if match:
                raise ValueError(
                    f"text contains the disallowed special token {match.group()!r}; pass it in "
                    "allowed_special to encode it as a special token, or exclude it from "
                    "disallowed_special (disallowed_special=()) to encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        try:
            return self._encode_with_specials(text, allowed)
        except UnicodeEncodeError:
            return self._encode_with_specials(replace_lone_surrogates(text), allowed)

    def encode_batch(self, texts: Sequence[str], num_workers: int | None = None,
                     allowed_special: AllowedSpecial = frozenset(),
                     disallowed_special: AllowedSpecial = "all") -> list[list[int]]:
        """``encode`` every text, in ``num_workers`` processes (default: one per CPU).

        Processes, not threads: the encoder is Python code, which threads cannot run
        in parallel (``util.workers``; the tokenizer is sent to each process once).
        Each process gets about eight chunks of texts.  With ``num_workers`` of 1 (or
        one text) no process is started.
        """
        texts = list(texts)
        if num_workers is None:
            num_workers = default_workers()
        workers = num_workers if len(texts) > 1 else 1
        encode = functools.partial(self.encode, allowed_special=allowed_special,
                                   disallowed_special=disallowed_special)
        with WorkerPool(encode, workers) as pool:
            return list(pool.map(texts, chunk_size=max(1, len(texts) // (workers * 8))))

    def _encode_with_specials(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Encode the text between allowed special tokens; emit each special's id."""
        ids: list[int] = []
        start = 0
        for match in _special_regex(allowed).finditer(text):
            ids += self._encode_text(text[start:match.start()])
            ids.append(self._special_tokens[match.group()])
            start = match.end()
        ids += self._encode_text(text[start:])
        return ids

    def _encode_text(self, text: str) -> list[int]:
        """Split ``text`` with the pattern and encode each chunk, through the cache.

        Raises ``UnicodeEncodeError`` on surrogates; the callers then retry on the
        cleaned text, exactly as tiktoken does.
        """
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        # The loops run inside C builtins: a set difference finds the chunks not yet cached, and
        # chain/map assemble the ids. New cache entries would otherwise trigger the cyclic garbage
        # collector again and again, each full pass walking the growing cache (measured: a fifth
        # of a cold encode of the stdlib); nothing here makes cycles, so it is paused meanwhile.
        collecting = gc.isenabled()
        gc.disable()
        try:
            chunks = self._split(text)
            for chunk in set(chunks).difference(cache):
                cache[chunk] = self._encode_chunk(chunk.encode("utf-8"))
            return list(chain.from_iterable(map(cache.__getitem__, chunks)))
        finally:
            if collecting:
                gc.enable()

    def _encode_chunk(self, data: bytes) -> list[int]:
        """BPE-encode one pre-tokenized chunk (not through the cache)."""
        rank = self._ranks.get(data)
        if rank is not None:
            return [rank]
        if len(data) < LARGE_CHUNK:
            return _merge_by_scan(data, self._ranks)
        return _merge_by_heap(data, self._ranks)

    def _special_set(self, which: AllowedSpecial) -> frozenset[str]:
        """Resolve ``"all"`` or a collection of special-token strings to a set."""
        if which == "all":
            return frozenset(self._special_tokens)
        return frozenset(which)

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that ``ids`` stand for; ``KeyError`` on an unknown id."""
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except KeyError as exc:
            raise KeyError(f"unknown token id {exc.args[0]!r}") from None
        except TypeError:
            raise TypeError("token ids must be integers") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text that ``ids`` stand for.

        A token sequence may cut a UTF-8 character in half (a prefix of a generated
        text, say); ``errors="replace"`` turns such bytes into U+FFFD, ``"strict"``
        raises.  ``decode(encode(s)) == s`` for every ``s`` without lone surrogates.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ------------------------------------------------------------------ tiktoken

    def to_tiktoken_ranks(self) -> dict[bytes, int]:
        """The ordinary tokens in tiktoken's ``mergeable_ranks`` form ``{bytes: rank}``."""
        return dict(self._ranks)

    @classmethod
    def from_tiktoken(cls, mergeable_ranks: Mapping[bytes, int], pattern: str = GPT4_PATTERN,
                      special_tokens: Mapping[str, int] | None = None) -> Tokenizer:
        """A tokenizer driven by a tiktoken vocabulary (``{bytes: rank}``, pattern, specials)."""
        return cls(mergeable_ranks, resolve_pattern(pattern), special_tokens)

    def to_tiktoken(self, name: str = "tinygrad-llm") -> Any:
        """A ``tiktoken.Encoding`` with our ranks, pattern and specials (needs tiktoken)."""
        import tiktoken

        return tiktoken.Encoding(name, pat_str=self.pattern, mergeable_ranks=self.to_tiktoken_ranks(),
                                 special_tokens=self.special_tokens)

    def save_tiktoken(self, path: str | os.PathLike[str]) -> None:
        """Write the ordinary tokens as a ``.tiktoken`` file (``base64(bytes) rank`` lines).

        That format holds neither the pattern nor the special tokens; pass them to
        ``load_tiktoken`` or ``tiktoken.Encoding`` yourself.  The empty token is
        written as ``=``: its base64 is empty, and a line with an empty first field
        would not load (in tiktoken either).
        """
        lines = (f"{base64.b64encode(token).decode('ascii') or '='} {rank}\n"
                 for token, rank in sorted(self._ranks.items(), key=lambda item: item[1]))
        atomic_write_bytes(path, "".join(lines).encode("utf-8"))

    @classmethod
    def load_tiktoken(cls, path: str | os.PathLike[str], pattern: str = GPT4_PATTERN,
                      special_tokens: Mapping[str, int] | None = None) -> Tokenizer:
        """Read a ``.tiktoken`` vocabulary file (the format of ``cl100k_base.tiktoken``).

        The file is read by ``load_tiktoken_ranks``, which accepts what tiktoken
        accepts.  A vocabulary that no tokenizer can use (a single byte missing,
        two tokens with one id, a negative id) is a ``TokenizerFileError`` too.
        """
        ranks = load_tiktoken_ranks(path)
        try:
            return cls.from_tiktoken(ranks, pattern, special_tokens)
        except ValueError as exc:
            raise TokenizerFileError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ our file format

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer to ``path`` in our versioned, human-readable format.

        The file is written to a temporary file next to ``path`` and renamed over it,
        so a crash never leaves a half-written tokenizer.  Layout::

            tinygrad-llm-tokenizer 1
            {"pattern": "...", "special_tokens": {"<|endoftext|>": 8191}, "num_tokens": 8191}
            0 \\x00
            ...
            256 \\x20\\x20
            257 in
            ...
            end

        Line 1 names the format and its version, line 2 is JSON metadata, then one
        line per ordinary token: its id and its bytes, printable ASCII as itself and
        every other byte (space and backslash included) as ``\\xNN``.  The final
        ``end`` line shows the file is complete.
        """
        meta = {"pattern": self.pattern, "special_tokens": self._special_tokens,
                "num_tokens": len(self._ranks)}
        lines = [f"{FORMAT_MAGIC} {FORMAT_VERSION}", json.dumps(meta, ensure_ascii=False)]
        lines += [f"{rank} {_escape_bytes(token)}"
                  for token, rank in sorted(self._ranks.items(), key=lambda item: item[1])]
        lines.append("end")
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by ``save``.

        Raises ``TokenizerFileError`` (a ``ValueError``) with a one-line reason if the
        file is not ours, is truncated or damaged, or comes from a newer version;
        ``OSError`` if it cannot be read.
        """
        lines = _read_text(path).split("\n")
        header = lines[0].split(" ")
        if len(header) != 2 or header[0] != FORMAT_MAGIC:
            raise TokenizerFileError(f"{path}: not a tinygrad-llm tokenizer file")
        try:
            version = int(header[1])
        except ValueError:
            raise TokenizerFileError(f"{path}: bad format version {header[1]!r}") from None
        if version > FORMAT_VERSION:
            raise TokenizerFileError(f"{path}: format version {version} is newer than this "
                                     f"program's ({FORMAT_VERSION}); upgrade tinygrad-llm")
        try:
            meta = json.loads(lines[1])
            pattern, specials, n = meta["pattern"], meta["special_tokens"], meta["num_tokens"]
        except (IndexError, ValueError, KeyError, TypeError):
            raise TokenizerFileError(f"{path}: damaged metadata line") from None
        if not (isinstance(pattern, str) and isinstance(specials, dict) and isinstance(n, int)):
            raise TokenizerFileError(f"{path}: damaged metadata line")
        body = lines[2:2 + n]
        if len(body) != n or lines[2 + n:] != ["end", ""]:
            raise TokenizerFileError(f"{path}: file is truncated or has trailing garbage "
                                     f"(expected {n} tokens and an 'end' line)")
        ranks: dict[bytes, int] = {}
        for lineno, line in enumerate(body, 3):
            try:
                rank_text, escaped = line.split(" ", 1)
                token, rank = _unescape_bytes(escaped), int(rank_text)
            except ValueError:
                raise TokenizerFileError(f"{path}: line {lineno} is not 'id token-bytes'") from None
            if ranks.setdefault(token, rank) != rank:
                raise TokenizerFileError(f"{path}: line {lineno} repeats the bytes of token {ranks[token]}")
        try:
            compile_pattern(pattern)
            return cls(ranks, pattern, specials)
        except ValueError as exc:
            raise TokenizerFileError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the vocabulary only (the cache and compiled regex are rebuilt)."""
        return {"ranks": self._ranks, "pattern": self.pattern, "special_tokens": self._special_tokens}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["ranks"], state["pattern"], state["special_tokens"])

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={len(self._special_tokens)}, "
                f"pattern={self.pattern[:24]!r}...)")


# ---------------------------------------------------------------------- BPE merging


def _merge_by_scan(data: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """tiktoken's merge for short chunks: repeatedly fuse the lowest-rank adjacent pair.

    ``pair_ranks[i]`` is the rank of ``parts[i] + parts[i + 1]`` (inf if not a token).
    After a merge at i only the pairs at i - 1 and i change.  ``min`` then ``index``
    finds the leftmost lowest rank, tiktoken's tie-break.
    """
    get = ranks.get
    parts = [data[i:i + 1] for i in range(len(data))]
    pair_ranks = [get(parts[i] + parts[i + 1], _INF) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _INF:
            break
        i = pair_ranks.index(best)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + parts[i], _INF)
        if i < len(pair_ranks):
            pair_ranks[i] = get(parts[i] + parts[i + 1], _INF)
    return [ranks[p] for p in parts]


def _merge_by_heap(data: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """The same merge in O(n log n), for long chunks.

    Parts are a doubly linked list over their start offsets (``nxt``/``prv``);
    ``pair_rank[i]`` is the rank of the part starting at i joined with its right
    neighbour.  A min-heap of ``(rank, start)`` gives the lowest rank, leftmost
    first; an entry whose rank no longer matches ``pair_rank`` is stale and skipped.
    """
    n = len(data)
    get = ranks.get
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))

    def rank_at(i: int) -> float:
        j = nxt[i]
        return _INF if j >= n else get(data[i:nxt[j]], _INF)

    pair_rank: list[float | None] = [rank_at(i) for i in range(n)]
    heap = [(r, i) for i, r in enumerate(pair_rank) if r != _INF]
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        if pair_rank[i] != r:
            continue
        j = nxt[i]
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        pair_rank[j] = None
        for k in (i, prv[i]):
            if k >= 0:
                pair_rank[k] = rk = rank_at(k)
                if rk != _INF:
                    heapq.heappush(heap, (rk, k))
    ids = []
    i = 0
    while i < n:
        ids.append(ranks[data[i:nxt[i]]])
        i = nxt[i]
    return ids


@functools.lru_cache(maxsize=64)
def _special_regex(specials: frozenset[str]) -> Any:
    """Compiled alternation of ``specials`` (longest first); cached per set."""
    return special_token_regex(specials)


# ---------------------------------------------------------------------- validation and I/O


def _validate_vocabulary(ranks: Mapping[bytes, int], specials: Mapping[str, int]) -> None:
    """Raise ``ValueError`` unless the vocabulary is usable and unambiguous.

    Every single byte must be a token (so every string is encodable); ids must be
    non-negative and distinct across ordinary and special tokens; no two tokens may
    have the same bytes (else decoding would be ambiguous).  The empty byte string
    may be a token, as tiktoken allows.
    """
    for token, rank in ranks.items():
        if not isinstance(token, bytes) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"bad vocabulary entry {token!r}: {rank!r}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"vocabulary lacks {len(missing)} of the 256 single bytes (e.g. {missing[0]})")
    ids = list(ranks.values())
    for name, i in specials.items():
        if not isinstance(name, str) or not name or not isinstance(i, int) or i < 0:
            raise ValueError(f"bad special token {name!r}: {i!r}")
        if name.encode("utf-8") in ranks:
            raise ValueError(f"special token {name!r} has the same bytes as an ordinary token")
        ids.append(i)
    if len(set(ids)) != len(ids):
        raise ValueError("two tokens share an id")


def _escape_bytes(token: bytes) -> str:
    r"""Printable ASCII (except space and backslash) as itself, other bytes as ``\xNN``."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}" for b in token)


def _unescape_bytes(text: str) -> bytes:
    """Invert ``_escape_bytes``; ``ValueError`` on anything it could not have written."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if text[i + 1:i + 2] != "x" or len(text) < i + 4:
                raise ValueError(f"bad escape in {text!r}")
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif 0x21 <= ord(c) <= 0x7E:
            out.append(ord(c))
            i += 1
        else:
            raise ValueError(f"unexpected character in {text!r}")
    return bytes(out)


def load_tiktoken_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file into ``{token_bytes: rank}`` exactly as tiktoken's ``load_tiktoken_bpe`` does.

    The file is bytes, not text.  Every line (ended by ``\\n``, ``\\r\\n`` or
    ``\\r``) that is not empty must split at ASCII whitespace into two fields: the
    token's base64 and its rank.  The base64 is decoded leniently, as tiktoken
    does: characters outside its alphabet are skipped and padding alone decodes
    to nothing, so the line ``= 5`` is the empty token with rank 5 (the strict
    base64 of the empty token is empty, and the line `` 5`` has one field only,
    which tiktoken rejects).  The rank is Python's ``int()`` of the field, so
    ``+5`` and ``1_000`` are ranks too (whether a rank is usable is the
    ``Tokenizer``'s business).  A later line with the same bytes replaces the rank
    of the earlier one.  Any other line (one of spaces only, say) is a
    ``TokenizerFileError`` naming its number.
    """
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token_b64, rank_text = line.split()
            ranks[base64.b64decode(token_b64)] = int(rank_text)
        except ValueError:  # from the unpacking, int(), or b64decode (binascii.Error is a ValueError)
            raise TokenizerFileError(f"{path}: line {lineno} is not 'base64-token rank'") from None
    return ranks


def _read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file; ``TokenizerFileError`` if it is not UTF-8 text."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerFileError(f"{path}: not a text file (invalid UTF-8)") from None


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()
