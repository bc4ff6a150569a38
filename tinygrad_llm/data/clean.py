"""The cleaning pipeline: normalise, filter, exact-dedup and near-dedup a document stream.

``scan`` makes one pass over the documents.  Worker processes (``util.workers``) do the
per-document work (normalise, run the filters in order, hash the content, shingle,
MinHash) in batches of ``batch_size`` documents; the parent takes their results back in
corpus order, so the outcome does not depend on the number of workers, and does the
order-dependent part: exact dedup (first copy kept), LSH and union-find (first member of
each cluster kept).  Only a few batches per worker are in flight, so the stream is read
lazily and memory holds signatures' band keys (and shingle sets when verifying), never
the corpus.  A progress bar, if given, counts the documents as their results come back.

``clean_and_dedup`` runs ``scan`` and then a second pass that yields the kept,
normalised documents; it therefore needs a collection it can iterate twice, such as
``StdlibCorpus`` or a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinygrad_llm.data.dedup import NearDuplicateIndex, content_key
from tinygrad_llm.data.filters import CODE_FILTERS, Filter, first_failure
from tinygrad_llm.data.minhash import (
    NUM_PERM,
    SHINGLE_SIZE,
    MinHasher,
    ShingleMode,
    choose_bands_rows,
    s_curve_table,
    shingle_hashes,
)
from tinygrad_llm.data.normalize import collapse_whitespace, normalize_text, simplify_text
from tinygrad_llm.data.sources import Document
from util.progress import Progress
from util.workers import WorkerPool

EXAMPLES_PER_REASON = 5
"""Dropped documents remembered per reason, for the report."""


@dataclass(frozen=True)
class CleaningConfig:
    """What ``scan`` does: the filters in order, and the dedup settings (defaults: code)."""

    filters: tuple[Filter, ...] = CODE_FILTERS
    mode: ShingleMode = "code"
    shingle_size: int = SHINGLE_SIZE
    num_perm: int = NUM_PERM
    threshold: float = 0.8
    seed: int = 1
    verify: bool = True
    workers: int = 1
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.mode not in ("words", "code"):
            raise ValueError(f"mode must be 'words' or 'code', got {self.mode!r}")
        for name in ("shingle_size", "num_perm", "workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Outcome:
    """One document's worker-side result."""

    path: str
    size: int
    reason: str | None
    key: int = 0
    signature: np.ndarray | None = None
    shingles: np.ndarray | None = None


class _Stage:
    """The per-document work, picklable so that each worker process receives it once."""

    def __init__(self, config: CleaningConfig) -> None:
        self.config = config
        self.hasher = MinHasher(config.num_perm, config.seed)
        self.key_text = collapse_whitespace if config.mode == "code" else simplify_text

    def process(self, doc: Document) -> _Outcome:
        text = normalize_text(doc.text)
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        reason = "empty" if not text.strip() else first_failure(text, self.config.filters)
        if reason is not None:
            return _Outcome(doc.path, size, reason)
        shingles = shingle_hashes(text, self.config.mode, self.config.shingle_size)
        return _Outcome(doc.path, size, None, content_key(self.key_text(text)), self.hasher.signature(shingles),
                        shingles if self.config.verify else None)


def _ordered_outcomes(documents: Iterable[Document], config: CleaningConfig) -> Iterator[_Outcome]:
    """Every document's outcome, in input order, computed by ``config.workers`` processes."""
    with WorkerPool(_Stage(config).process, config.workers) as pool:
        yield from pool.map(documents, chunk_size=config.batch_size)


@dataclass
class Report:
    """What a scan kept and dropped, and why."""

    bands: int
    rows: int
    threshold: float
    documents: int = 0
    bytes: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    clusters: list[list[str]] = field(default_factory=list)
    candidate_pairs: int = 0
    rejected_pairs: int = 0
    removed: set[int] = field(default_factory=set, repr=False)

    def drop(self, index: int, size: int, reason: str, example: str) -> None:
        """Record that document ``index`` (``size`` bytes) was dropped for ``reason``."""
        counts = self.dropped.setdefault(reason, [0, 0])
        counts[0] += 1
        counts[1] += size
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(example)
        self.removed.add(index)

    @property
    def kept(self) -> tuple[int, int]:
        """(documents, bytes) kept."""
        return (self.documents - sum(c[0] for c in self.dropped.values()),
                self.bytes - sum(c[1] for c in self.dropped.values()))

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        docs, size = self.kept
        return {"documents": self.documents, "bytes": self.bytes, "kept_documents": docs, "kept_bytes": size,
                "dropped": {r: {"documents": c[0], "bytes": c[1], "examples": self.examples[r]}
                            for r, c in self.dropped.items()},
                "lsh": {"bands": self.bands, "rows": self.rows, "threshold": self.threshold,
                        "candidate_pairs": self.candidate_pairs, "rejected_by_verification": self.rejected_pairs},
                "near_duplicate_clusters": self.clusters}

    def summary(self, max_clusters: int = 10) -> str:
        """A human-readable summary: per-reason drops, clusters with sample members, the S-curve."""
        docs, size = self.kept
        lines = [f"documents: {self.documents:,} ({self.bytes:,} bytes); kept {docs:,} ({size:,} bytes)"]
        for reason, (count, nbytes) in sorted(self.dropped.items(), key=lambda item: -item[1][0]):
            sample = ", ".join(self.examples[reason][:3])
            lines.append(f"  dropped {count:5,} ({nbytes:,} bytes) {reason}: e.g. {sample}")
        lines.append(f"near-duplicate clusters: {len(self.clusters)} "
                     f"({self.candidate_pairs} candidate pairs, {self.rejected_pairs} rejected by true Jaccard)")
        for cluster in sorted(self.clusters, key=len, reverse=True)[:max_clusters]:
            sample = ", ".join(cluster[:4]) + (", ..." if len(cluster) > 4 else "")
            lines.append(f"  {len(cluster)} docs: {sample}")
        lines.append(s_curve_table(self.bands, self.rows))
        return "\n".join(lines)


def scan(documents: Iterable[Document], config: CleaningConfig | None = None,
         progress: Progress | None = None) -> Report:
    """One streaming pass: filter and deduplicate ``documents``; the report says what goes.

    ``progress`` is advanced by one per document.  Raises ``ValueError`` for an empty stream.
    """
    config = CleaningConfig() if config is None else config
    bands, rows = choose_bands_rows(config.threshold, config.num_perm)
    report = Report(bands, rows, config.threshold)
    index = NearDuplicateIndex(bands, rows, config.threshold, config.verify)
    first_with_key: dict[int, str] = {}
    indexed: dict[int, tuple[str, int]] = {}
    for doc_index, outcome in enumerate(_ordered_outcomes(documents, config)):
        report.documents += 1
        report.bytes += outcome.size
        if progress is not None:
            progress.update()
        if outcome.reason is not None:
            report.drop(doc_index, outcome.size, outcome.reason, outcome.path)
        elif outcome.key in first_with_key:
            report.drop(doc_index, outcome.size, "exact_duplicate", f"{outcome.path} = {first_with_key[outcome.key]}")
        else:
            first_with_key[outcome.key] = outcome.path
            indexed[doc_index] = (outcome.path, outcome.size)
            index.add(doc_index, outcome.signature, outcome.shingles)
    if report.documents == 0:
        raise ValueError("no documents to clean: the document stream is empty")
    for group in index.groups():
        report.clusters.append([indexed[doc][0] for doc in group])
        for doc in group[1:]:
            path, size = indexed[doc]
            report.drop(doc, size, "near_duplicate", f"{path} ~ {indexed[group[0]][0]}")
    report.candidate_pairs, report.rejected_pairs = index.candidate_pairs, index.rejected_pairs
    return report


def clean_and_dedup(documents: Iterable[Document], config: CleaningConfig | None = None,
                    progress: Progress | None = None) -> tuple[Iterator[Document], Report]:
    """Scan ``documents``, then return (an iterator over the kept normalised documents, the report).

    ``documents`` is read twice, so it must be a re-iterable collection, not an iterator.
    ``progress`` counts the documents of the scan (the slow pass).
    """
    if iter(documents) is documents:
        raise ValueError("clean_and_dedup reads the documents twice: pass a collection "
                         "(e.g. StdlibCorpus or a list), not an iterator")
    report = scan(documents, config, progress)
    kept = (Document(doc.path, normalize_text(doc.text)) for i, doc in enumerate(documents)
            if i not in report.removed)
    return kept, report
