"""The token-shard directory that ``prepare`` writes and the loader reads.

One directory holds one dataset::

    meta.json        what the directory holds (below); written last
    tokenizer.txt    the tokenizer the tokens come from (``Tokenizer.load``)
    train_000.bin    the train split's tokens, in shards of at most ``shard_tokens``
    train_001.bin    ...
    val_000.bin      the validation split's tokens

A shard is raw little-endian ``uint16`` when the vocabulary has at most 65,536 ids,
else ``uint32`` (``token_dtype``), with no header, so ``np.memmap`` reads it directly.
A split's shards, in order, form one token stream in which every document is preceded
by the end-of-text token (``eot_position`` in ``meta.json``).

``meta.json`` records: ``format`` and ``format_version`` (a reader refuses a newer
version), ``tool_version``, ``created``, the ``fingerprint`` of the inputs, ``source``
(what was read and skipped), ``cleaning`` (what was dropped and why), ``tokenizer``
(file, SHA-256, how it was made), ``vocab_size``, ``eot_token``, ``dtype``,
``byte_order``, ``eot_position`` and ``splits``: for each split its counts of
documents, bytes and tokens and its list of shards ``{"file", "tokens"}``.

Writing is atomic per dataset: the files are made in a staging directory (with
``ShardWriter``, each shard fsynced) and ``commit_dataset`` moves them in, ``meta.json``
last.  A directory without ``meta.json`` is therefore never mistaken for a finished
dataset, and ``read_meta`` + ``shard_paths`` check that every shard listed is there
with the size ``meta.json`` gives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tinygrad_llm.data import DataError
from util.files import atomic_write_bytes, fsync_directory

FORMAT = "tinygrad-llm-shards"
"""``meta.json``'s ``format`` field: what kind of directory this is."""

FORMAT_VERSION = 1
"""Version of the shard layout; a reader refuses a higher one."""

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.txt"
SPLITS = ("train", "val")
"""Split names, also the shard file prefixes (``train_000.bin``, ``val_000.bin``)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian ``uint16`` if every id of a ``vocab_size`` vocabulary fits, else ``uint32``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, index: int) -> str:
    """The file name of shard ``index`` of ``split``: ``train_000.bin``."""
    return f"{split}_{index:03d}.bin"


# ---------------------------------------------------------------------- writing


class ShardWriter:
    """Append tokens to ``{split}_000.bin``, ``{split}_001.bin``, ... of at most ``shard_tokens`` each.

    Each finished shard is fsynced; ``finish`` returns ``[{"file", "tokens"}, ...]``.
    Leaving the ``with`` block early (an error) just closes the open file: the caller
    throws the staging directory away.
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.tokens = 0
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._in_shard = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append ``tokens``, starting new shards as they fill."""
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None:
                self._file = open(self.directory / shard_name(self.split, len(self.shards)), "wb")
                self._in_shard = 0
            part, tokens = tokens[:self.shard_tokens - self._in_shard], tokens[self.shard_tokens - self._in_shard:]
            self._file.write(part.tobytes())
            self._in_shard += len(part)
            self.tokens += len(part)
            if self._in_shard == self.shard_tokens:
                self._close_shard()

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard; the list of shards written."""
        if self._file is not None:
            self._close_shard()
        return self.shards

    def _close_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.shards.append({"file": shard_name(self.split, len(self.shards)), "tokens": self._in_shard})
        self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()


def commit_dataset(staging: Path, directory: Path, meta: dict[str, Any]) -> None:
    """Replace ``directory``'s dataset by the files in ``staging`` and ``meta``; ``meta.json`` goes last.

    The old ``meta.json`` is removed first and the new one written atomically at the
    end, so an interruption leaves a directory without ``meta.json``, never a mixture
    that claims to be complete.
    """
    (directory / META_FILE).unlink(missing_ok=True)
    for split in SPLITS:
        for old in directory.glob(f"{split}_*.bin"):
            old.unlink()
    for staged in sorted(staging.iterdir()):
        os.replace(staged, directory / staged.name)
    fsync_directory(directory)
    atomic_write_bytes(directory / META_FILE, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------- reading


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``directory/meta.json``; ``DataError`` if missing, corrupt or not ours."""
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{directory}: no {META_FILE}: run `tinygrad-llm prepare --out {directory}` "
                        "(an interrupted prepare leaves none)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: corrupt ({exc})") from None
    problem = _meta_problem(meta)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    return meta


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed ``meta.json``, or None if its structure is sound."""
    try:
        if meta["format"] != FORMAT:
            return f"not a token-shard directory (format {meta['format']!r})"
        if meta["format_version"] > FORMAT_VERSION:
            return (f"format version {meta['format_version']} is newer than this program's ({FORMAT_VERSION}); "
                    "upgrade tinygrad-llm")
        if meta["dtype"] not in ("uint16", "uint32"):
            return f"unknown dtype {meta['dtype']!r}"
        if not all(isinstance(meta[key], int) for key in ("vocab_size", "eot_token")):
            return "corrupt (vocab_size and eot_token must be integers)"
        for split in SPLITS:
            for shard in meta["splits"][split]["shards"]:
                if not (isinstance(shard["file"], str) and isinstance(shard["tokens"], int) and shard["tokens"] > 0):
                    return f"corrupt (bad shard entry {shard!r})"
    except (KeyError, TypeError) as exc:
        return f"corrupt (missing or malformed field {exc})"
    return None


def shard_paths(directory: str | os.PathLike[str], meta: dict[str, Any], split: str) -> list[Path]:
    """The shard files of ``split``, each checked to exist with the size ``meta.json`` gives it."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    paths = []
    for shard in meta["splits"][split]["shards"]:
        path = Path(directory) / shard["file"]
        expected = shard["tokens"] * itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{path}: shard missing (re-run prepare)") from None
        if size != expected:
            raise DataError(f"{path}: {size:,} bytes, expected {expected:,}: truncated or damaged (re-run prepare)")
        paths.append(path)
    return paths
