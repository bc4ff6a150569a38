"""``prepare``: raw text -> cleaned documents -> a tokenizer -> token shards on disk.

The steps, in order:

1. Read the source (``sources.open_source``: the stdlib corpus, text files, JSON Lines),
   optionally only its first ``max_documents`` documents.
2. Clean: Unicode NFC, ``\\n`` newlines, no control characters; empty documents dropped;
   then, by default, the quality filters (code filters for source code, prose filters
   otherwise) and exact + near-duplicate removal (``clean.clean_and_dedup``).
3. Split the kept documents into train and validation by the stable hash of their
   names (``sources.is_validation``).  Both splits must be non-empty: if the hash puts
   no document in validation, the last train document moves there (and if the corpus
   holds no train document, the first validation one moves to train); a corpus of one
   document is cut at the last line break before 90% of its length.
4. Train a byte-level BPE tokenizer on the train split (GPT-4 split pattern,
   ``<|endoftext|>`` special token, 4,096 tokens by default) or reuse a tokenizer file.
   Training reads at most about ``TOKENIZER_BUDGET_BYTES`` of text: every k-th train
   document, so that the sample spans the whole corpus (files come sorted by path, so
   the first megabytes would be a few packages only).  On the stdlib an 8 MB sample
   costs a third of the time of the full 31 MB and gives 3.18 instead of 3.23 bytes per
   token on the validation split.
5. Tokenize in ``workers`` processes (``util.workers``), in chunks of about
   ``CHUNK_BYTES`` of documents, results in corpus order.  Every document is preceded
   by the end-of-text token, as in GPT-2's training data: the model sees "start of a
   new document" before the first token of each one, and a window that begins
   mid-stream still knows where documents join.  Documents are encoded with
   ``encode_ordinary``: a literal ``<|endoftext|>`` in the text is ordinary text,
   never a control token.
6. Write shards ``train_000.bin, train_001.bin, ...`` and ``val_000.bin, ...`` of at most
   ``shard_tokens`` tokens each, the tokenizer file and ``meta.json``: the directory
   layout and ``meta.json``'s fields are described in ``tinygrad_llm.data.shards``.

Progress.  Each slow stage shows a progress line on stderr (``util.progress``):
cleaning counts documents, tokenizing counts bytes; tokenizer training prints a line
before and after.

Atomicity.  Everything is first written into a hidden staging directory inside the
output directory and fsynced.  Only when all of it is complete does
``shards.commit_dataset`` remove the old ``meta.json`` and shards, rename the new files
into place and, last, write ``meta.json`` atomically.  An interrupted ``prepare``
therefore leaves either the previous dataset intact or a directory without
``meta.json``, which nothing mistakes for a finished one; a staging directory left by a
killed run is removed by the next run.

Reuse.  The fingerprint hashes the source spec, the resolved root, every input file's
size and modification time, the options that change the output and the tokenizer file's
hash.  When ``meta.json`` already holds that fingerprint and the files it lists are
intact, ``prepare`` returns at once and says so (``force`` redoes it anyway).

Memory: the cleaned corpus is held in memory between cleaning and tokenizing (the
tokenizer must be trained on it before anything can be encoded); that is 30 MB for
the default corpus.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tinygrad_llm.data import DataError
from tinygrad_llm.data.clean import CleaningConfig, clean_and_dedup
from tinygrad_llm.data.filters import CODE_FILTERS, PROSE_FILTERS, Filter, first_failure, with_thresholds
from tinygrad_llm.data.normalize import normalize_text
from tinygrad_llm.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    SPLITS,
    TOKENIZER_FILE,
    ShardWriter,
    commit_dataset,
    read_meta,
    shard_paths,
    token_dtype,
)
from tinygrad_llm.data.sources import Document, Source, is_validation, open_source
from tokenizer import ENDOFTEXT, Tokenizer, TokenizerFileError
from util.files import atomic_write_bytes, file_sha256
from util.progress import Progress
from util.workers import WorkerPool, default_workers

DEFAULT_OUT = Path("data/stdlib")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_SHARD_TOKENS = 100_000_000
TOKENIZER_BUDGET_BYTES = 8_000_000
"""About how many bytes of train text the tokenizer is trained on (see step 4)."""

CHUNK_BYTES = 1 << 19
"""Documents are sent to the tokenizing processes in chunks of about this many bytes."""

SINGLE_DOCUMENT_TRAIN_FRACTION = 0.9
"""A one-document corpus is cut here: the first 90% trains, the rest validates."""

STAGING_PREFIX = ".prepare-"

FilterChoice = Literal["auto", "code", "prose", "none"]


def _tool_version() -> str:
    try:
        return importlib.metadata.version("tinygrad-llm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


TOOL_VERSION = _tool_version()


@dataclass(frozen=True)
class PrepareConfig:
    """What ``prepare`` reads, how it cleans and tokenizes, and where it writes.

    Attributes:
        source: ``"stdlib"``, a directory, a glob, a text file or a ``.jsonl`` file.
        out: the output directory (created if missing).
        vocab_size: size of the tokenizer to train (ignored when ``tokenizer`` is given).
        tokenizer: a tokenizer file to reuse instead of training one.
        max_documents: read only the first N documents of the source.
        workers: processes for cleaning and tokenizing (default: one per CPU).
        filters: ``"auto"`` (code filters for source code, prose filters otherwise),
            ``"code"``, ``"prose"`` or ``"none"`` (then only empty documents are dropped).
        filter_thresholds: (name, value) pairs that change the chosen filters'
            thresholds (``filters.with_thresholds``), e.g. ``(("max_digit_fraction", 1.0),)``.
        dedup: remove exact and near duplicates.
        shard_tokens: the most tokens in one shard file.
        tokenizer_budget: about how many bytes of train text the tokenizer learns from.
        force: redo everything even if the output is up to date.
    """

    source: str = "stdlib"
    out: Path = DEFAULT_OUT
    vocab_size: int = DEFAULT_VOCAB_SIZE
    tokenizer: Path | None = None
    max_documents: int | None = None
    workers: int | None = None
    filters: FilterChoice = "auto"
    filter_thresholds: tuple[tuple[str, float], ...] = ()
    dedup: bool = True
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    tokenizer_budget: int = TOKENIZER_BUDGET_BYTES
    force: bool = False

    def __post_init__(self) -> None:
        if self.vocab_size < 257:
            raise DataError(f"vocab_size must be at least 257 (256 bytes + {ENDOFTEXT}), got {self.vocab_size}")
        for name in ("max_documents", "workers", "shard_tokens", "tokenizer_budget"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name} must be at least 1, got {value}")
        if self.filters not in ("auto", "code", "prose", "none"):
            raise DataError(f"filters must be auto, code, prose or none, got {self.filters!r}")


@dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` made: the directory, its ``meta.json`` contents, whether it was reused."""

    directory: Path
    meta: dict[str, Any]
    reused: bool
    seconds: float

    def summary(self) -> str:
        """A human-readable account: what was read, dropped and kept, and the files written."""
        meta = self.meta
        source, cleaning, tok = meta["source"], meta["cleaning"], meta["tokenizer"]
        lines = [f"{'reused' if self.reused else 'prepared'} {source['spec']} -> {self.directory} "
                 f"in {self.seconds:.1f}s",
                 f"read: {source['documents']:,} documents ({_size(source['bytes'])}) from {source['root']}; "
                 f"{source['skipped']:,} skipped as unreadable"
                 + (f" (e.g. {', '.join(source['skipped_examples'][:3])})" if source["skipped"] else ""),
                 f"cleaning (filters: {cleaning['filters']}, dedup: {'on' if cleaning['dedup'] else 'off'}): "
                 f"kept {cleaning['kept_documents']:,} documents ({_size(cleaning['kept_bytes'])})"]
        for reason, drop in sorted(cleaning["dropped"].items(), key=lambda item: -item[1]["documents"]):
            lines.append(f"  dropped {drop['documents']:6,} ({_size(drop['bytes'])}) {reason}: "
                         f"e.g. {', '.join(drop['examples'][:2])}")
        if cleaning["dedup"]:
            lines.append(f"  near-duplicate clusters: {len(cleaning['near_duplicate_clusters'])}")
        how = (f"trained on {_size(tok['training_bytes'])} of train text" if tok["trained"]
               else f"reused from {tok['copied_from']}")
        if tok["trained"] and meta["vocab_size"] < tok["requested_vocab_size"]:
            how += f" (it ran out of pairs to merge before {tok['requested_vocab_size']:,})"
        lines.append(f"tokenizer: {meta['vocab_size']:,} tokens, end-of-text id {meta['eot_token']}, {how}, "
                     f"sha256 {tok['sha256'][:16]}...")
        for name in SPLITS:
            split = meta["splits"][name]
            lines.append(f"{name:>5}: {split['documents']:,} documents, {_size(split['bytes'])} -> "
                         f"{split['tokens']:,} tokens ({split['bytes'] / split['tokens']:.2f} bytes/token), "
                         f"{len(split['shards'])} shard(s) of {meta['dtype']}")
        files = [META_FILE, TOKENIZER_FILE] + [s["file"] for name in SPLITS for s in meta["splits"][name]["shards"]]
        lines.append(f"files in {self.directory.resolve()}: {', '.join(files)}")
        return "\n".join(lines)


def prepare(config: PrepareConfig | None = None) -> PrepareResult:
    """Run the whole pipeline (module docstring) and return what it made.

    Progress goes to stderr.  Raises ``DataError`` for a missing source, a corpus with
    no documents or nothing left after cleaning, or an unusable tokenizer file.
    """
    config = PrepareConfig() if config is None else config
    start = time.perf_counter()
    out = Path(config.out)
    source = open_source(config.source)
    given_tokenizer = _load_tokenizer(config.tokenizer) if config.tokenizer is not None else None
    tokenizer_hash = _sha256_file(config.tokenizer) if config.tokenizer is not None else None
    fingerprint = _fingerprint(config, source, tokenizer_hash)
    if not config.force and (meta := _reusable_meta(out, fingerprint)) is not None:
        _say(f"{out}: up to date (same source files, options and tokenizer): reusing it; --force redoes it")
        return PrepareResult(out, meta, True, time.perf_counter() - start)

    documents, cleaning, read = _read_and_clean(source, config)
    train, val = split_documents(documents)
    if given_tokenizer is not None:
        tokenizer, tokenizer_info = given_tokenizer, {"trained": False, "copied_from": str(config.tokenizer)}
    else:
        tokenizer, tokenizer_info = _train_tokenizer(config, train)
    dtype = token_dtype(tokenizer.vocab_size)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        if config.tokenizer is None:
            tokenizer.save(staging / TOKENIZER_FILE)
        else:
            atomic_write_bytes(staging / TOKENIZER_FILE, Path(config.tokenizer).read_bytes())
        splits = _write_splits({"train": train, "val": val}, tokenizer, dtype, staging, config)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": TOOL_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint,
                "source": read, "cleaning": cleaning,
                "tokenizer": {"file": TOKENIZER_FILE, "sha256": _sha256_file(staging / TOKENIZER_FILE),
                              **tokenizer_info},
                "vocab_size": tokenizer.vocab_size, "eot_token": tokenizer.eot_token, "dtype": dtype.name,
                "byte_order": "little", "eot_position": "before each document", "splits": splits}
        commit_dataset(staging, out, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PrepareResult(out, meta, False, time.perf_counter() - start)


# ---------------------------------------------------------------------- reading and cleaning


@dataclass
class _FirstDocuments:
    """The first ``n`` documents of ``source``, re-iterable like the source itself."""

    source: Source
    n: int

    def __iter__(self) -> Iterator[Document]:
        return itertools.islice(iter(self.source), self.n)


def _read_and_clean(source: Source, config: PrepareConfig) -> tuple[list[Document], dict, dict]:
    """The kept, normalised documents, the cleaning report and what was read, as meta entries."""
    documents = source if config.max_documents is None else _FirstDocuments(source, config.max_documents)
    kind, filter_name, filters = _filters(config, source)
    _say(f"reading and cleaning {source.spec} (filters: {filter_name}, dedup: {'on' if config.dedup else 'off'}) ...")
    start = time.perf_counter()
    total = source.count_documents()
    if config.max_documents is not None:
        total = min(total, config.max_documents)
    with Progress(total, unit="documents", desc="cleaning", stream=sys.stderr) as bar:
        if config.dedup:
            cleaning = CleaningConfig(filters=filters, mode="code" if kind == "code" else "words",
                                      workers=config.workers or default_workers())
            try:
                kept_stream, report = clean_and_dedup(documents, cleaning, bar)
            except ValueError:  # the only one scan raises: an empty stream
                raise DataError(_no_documents(source)) from None
            kept, summary = list(kept_stream), report.to_dict()
        else:
            kept, summary = _filter_only(documents, filters, bar)
            if summary["documents"] == 0:
                raise DataError(_no_documents(source))
    if not kept:
        reasons = ", ".join(f"{reason}: {d['documents']}" for reason, d in summary["dropped"].items())
        raise DataError(f"{source.spec}: nothing left after cleaning: all {summary['documents']} documents "
                        f"were dropped ({reasons})")
    _say(f"kept {len(kept):,} of {summary['documents']:,} documents in {time.perf_counter() - start:.1f}s")
    read = {"spec": source.spec, "root": str(source.root.resolve()), "kind": kind,
            "max_documents": config.max_documents, "documents": summary["documents"], "bytes": summary["bytes"],
            "skipped": len(source.skipped), "skipped_examples": source.skipped[:5]}
    cleaning_meta = {"filters": filter_name, "dedup": config.dedup, **summary}
    return kept, cleaning_meta, read


def _no_documents(source: Source) -> str:
    skipped = f" ({len(source.skipped)} unreadable, skipped)" if source.skipped else ""
    return f"{source.spec}: the corpus is empty: no documents to read{skipped}"


def _filter_only(documents: Iterable[Document], filters: Sequence[Filter],
                 progress: Progress) -> tuple[list[Document], dict]:
    """Normalise and filter without deduplication, one ``progress`` step per document; the report
    has ``Report.to_dict``'s counting fields."""
    kept: list[Document] = []
    dropped: dict[str, dict[str, Any]] = {}
    count = total = kept_bytes = 0
    for doc in documents:
        text = normalize_text(doc.text)
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        count, total = count + 1, total + size
        progress.update()
        reason = "empty" if not text.strip() else first_failure(text, filters)
        if reason is None:
            kept.append(Document(doc.path, text))
            kept_bytes += size
            continue
        entry = dropped.setdefault(reason, {"documents": 0, "bytes": 0, "examples": []})
        entry["documents"] += 1
        entry["bytes"] += size
        if len(entry["examples"]) < 5:
            entry["examples"].append(doc.path)
    return kept, {"documents": count, "bytes": total, "kept_documents": len(kept), "kept_bytes": kept_bytes,
                  "dropped": dropped}


def split_documents(documents: Sequence[Document]) -> tuple[list[Document], list[Document]]:
    """(train, validation) by the name hash, both non-empty (see step 3 of the module docstring)."""
    if len(documents) == 1:
        return _cut_single_document(documents[0])
    train = [doc for doc in documents if not is_validation(doc.path)]
    val = [doc for doc in documents if is_validation(doc.path)]
    if not val:
        val.append(train.pop())
    elif not train:
        train.append(val.pop(0))
    return train, val


def _cut_single_document(doc: Document) -> tuple[list[Document], list[Document]]:
    """Cut the only document at the last line break before 90% of it (or at 90% if none)."""
    at = int(len(doc.text) * SINGLE_DOCUMENT_TRAIN_FRACTION)
    cut = doc.text.rfind("\n", 0, at) + 1 or at
    if not 0 < cut < len(doc.text):
        raise DataError(f"{doc.path}: the only document ({len(doc.text)} characters) is too short "
                        "to cut into train and validation parts")
    return [Document(doc.path, doc.text[:cut])], [Document(doc.path, doc.text[cut:])]


# ---------------------------------------------------------------------- the tokenizer


def _load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer in ``path``, which must have the end-of-text token; else ``DataError``."""
    try:
        tokenizer = Tokenizer.load(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such tokenizer file") from None
    except TokenizerFileError as exc:
        raise DataError(str(exc)) from None
    if ENDOFTEXT not in tokenizer.special_tokens:
        raise DataError(f"{path}: the tokenizer has no {ENDOFTEXT} token, which prepare puts before every document")
    return tokenizer


def _train_tokenizer(config: PrepareConfig, train: Sequence[Document]) -> tuple[Tokenizer, dict[str, Any]]:
    """A tokenizer trained on a sample of the ``train`` documents (step 4), and its meta entry."""
    sample = tokenizer_sample([doc.text for doc in train], config.tokenizer_budget)
    sample_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in sample)
    _say(f"training a {config.vocab_size:,}-token BPE tokenizer on {len(sample):,} train documents "
         f"({_size(sample_bytes)}) ...")
    start = time.perf_counter()
    tokenizer = Tokenizer.train(sample, config.vocab_size, progress=False)
    _say(f"trained {tokenizer.vocab_size:,} tokens in {time.perf_counter() - start:.1f}s")
    return tokenizer, {"trained": True, "requested_vocab_size": config.vocab_size,
                       "training_documents": len(sample), "training_bytes": sample_bytes}


def tokenizer_sample(texts: Sequence[str], budget: int) -> list[str]:
    """Every k-th text, k = ceil(total bytes / ``budget``): about ``budget`` bytes spread over all of them."""
    total = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    return list(texts[::max(1, math.ceil(total / budget))])


# ---------------------------------------------------------------------- tokenizing and writing shards


def _write_splits(splits: dict[str, list[Document]], tokenizer: Tokenizer, dtype: np.dtype, directory: Path,
                  config: PrepareConfig) -> dict[str, dict[str, Any]]:
    """Tokenize each split with one pool of processes and write its shards into ``directory``."""
    result = {}
    with WorkerPool(functools.partial(encode_documents, tokenizer, dtype=dtype), config.workers) as pool:
        for name, documents in splits.items():
            texts = [doc.text for doc in documents]
            sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
            chunks = _chunks(texts, sizes, CHUNK_BYTES)
            with (ShardWriter(directory, name, dtype, config.shard_tokens) as writer,
                  Progress(sum(sizes), unit="B", desc=f"tokenizing {name}", stream=sys.stderr) as bar):
                for tokens, (_, chunk_bytes) in zip(pool.map(chunk for chunk, _ in chunks), chunks, strict=True):
                    writer.write(tokens)
                    bar.update(chunk_bytes, tokens=f"{writer.tokens:,}")
                shards = writer.finish()
            result[name] = {"documents": len(texts), "bytes": sum(sizes), "tokens": writer.tokens, "shards": shards}
    return result


def _chunks(texts: list[str], sizes: list[int], chunk_bytes: int) -> list[tuple[list[str], int]]:
    """Consecutive runs of texts of about ``chunk_bytes`` bytes each, with their byte counts."""
    chunks: list[tuple[list[str], int]] = []
    current: list[str] = []
    current_bytes = 0
    for text, size in zip(texts, sizes, strict=True):
        current.append(text)
        current_bytes += size
        if current_bytes >= chunk_bytes:
            chunks.append((current, current_bytes))
            current, current_bytes = [], 0
    if current:
        chunks.append((current, current_bytes))
    return chunks


def encode_documents(tokenizer: Tokenizer, texts: Iterable[str], dtype: np.dtype) -> np.ndarray:
    """The token stream of ``texts``: ``<eot> doc1 <eot> doc2 ...`` as one array of ``dtype``."""
    eot = tokenizer.eot_token
    ids: list[int] = []
    for text in texts:
        ids.append(eot)
        ids += tokenizer.encode_ordinary(text)
    return np.array(ids, dtype=dtype)


# ---------------------------------------------------------------------- reuse


def _reusable_meta(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """``out``'s meta if it was made from the same inputs and its files are intact, else None."""
    try:
        meta = read_meta(out)
        if meta.get("fingerprint") != fingerprint:
            return None
        for split in SPLITS:
            shard_paths(out, meta, split)
        if _sha256_file(out / meta["tokenizer"]["file"]) != meta["tokenizer"]["sha256"]:
            return None
    except DataError:
        return None
    return meta


def _filters(config: PrepareConfig, source: Source) -> tuple[str, str, tuple[Filter, ...]]:
    """(the source's kind, the filter set's name, its filters with ``config.filter_thresholds`` applied)."""
    kind = source.kind if config.filters in ("auto", "none") else config.filters
    filter_name = "none" if config.filters == "none" else kind
    filters = {"none": (), "code": CODE_FILTERS, "prose": PROSE_FILTERS}[filter_name]
    try:
        return kind, filter_name, with_thresholds(filters, config.filter_thresholds)
    except ValueError as exc:
        raise DataError(f"--filter-threshold: {exc}") from None


def _fingerprint(config: PrepareConfig, source: Source, tokenizer_hash: str | None) -> str:
    """SHA-256 of everything the output depends on: inputs, options, tokenizer, versions."""
    tokenizer = ({"sha256": tokenizer_hash} if tokenizer_hash is not None
                 else {"vocab_size": config.vocab_size, "budget_bytes": config.tokenizer_budget})
    inputs = {"format_version": FORMAT_VERSION, "tool_version": TOOL_VERSION, "source": config.source,
              "root": str(source.root.resolve()), "files": source.inputs(), "max_documents": config.max_documents,
              "filters": config.filters, "filter_rules": repr(_filters(config, source)[2]),
              "dedup": config.dedup, "shard_tokens": config.shard_tokens,
              "tokenizer": tokenizer}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- small helpers


def _sha256_file(path: str | os.PathLike[str]) -> str:
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(n_bytes: int) -> str:
    """Bytes for people: ``512 B``, ``45.1 kB``, ``30.2 MB``."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"
