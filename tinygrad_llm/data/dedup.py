"""Deduplication: exact (content hash) and near-duplicate (MinHash + LSH + union-find).

Both work on a stream: documents are added one at a time, in corpus order, and only
small per-document state is kept (an 8-byte hash for exact dedup; the signature's band
keys, plus the shingle hashes when candidates are verified, for near-dedup).

Exact: the key is a BLAKE2b-64 hash of the normalised content (``simplify_text`` for
prose, ``collapse_whitespace`` for code); the first document with a key is kept.

Near: documents whose signatures agree on all rows of some band are candidates
(see ``minhash``).  With ``verify=True`` a candidate pair counts only if the true
Jaccard similarity of the shingle sets reaches the threshold (text-dedup's optional
false-positive check; Lee et al. 2021 confirm candidates the same way).  Pairs are
joined with union-find whose root is always the smallest document index, so "keep one
document per cluster" keeps each cluster's first document, whatever the order of unions.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from tinygrad_llm.data.minhash import jaccard


def content_key(normalized: str) -> int:
    """64-bit BLAKE2b hash of an already-normalised content key."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class UnionFind:
    """Disjoint sets over 0, 1, 2, ... with the smallest member as every set's root."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        """The root (smallest member) of ``x``'s set, halving the path on the way."""
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        """Merge the sets of ``x`` and ``y``."""
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


@dataclass
class NearDuplicateIndex:
    """Streaming LSH over MinHash signatures with union-find clustering.

    ``add(doc, signature, shingles)`` inserts document ``doc`` (indices must increase) and
    returns the earlier documents it was joined with.
    """

    bands: int
    rows: int
    threshold: float = 0.8
    verify: bool = True
    buckets: list[dict[bytes, list[int]]] = field(init=False)
    shingles: dict[int, np.ndarray] = field(init=False, default_factory=dict)
    clusters: UnionFind = field(init=False, default_factory=UnionFind)
    candidate_pairs: int = field(init=False, default=0)
    rejected_pairs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"bands and rows must be >= 1, got {self.bands} x {self.rows}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        self.buckets = [defaultdict(list) for _ in range(self.bands)]

    def add(self, doc: int, signature: np.ndarray, shingles: np.ndarray | None = None) -> list[int]:
        """Insert one document; returns the earlier documents verified as its near-duplicates."""
        if signature.size < self.bands * self.rows:
            raise ValueError(f"signature has {signature.size} entries, LSH needs {self.bands * self.rows}")
        candidates: set[int] = set()
        for band, table in enumerate(self.buckets):
            members = table[signature[band * self.rows:(band + 1) * self.rows].tobytes()]
            candidates.update(members)
            members.append(doc)
        if self.verify:
            if shingles is None:
                raise ValueError("verify=True needs the document's shingle hashes")
            self.shingles[doc] = shingles
        matches = []
        for other in sorted(candidates):
            self.candidate_pairs += 1
            if self.verify and jaccard(self.shingles[other], shingles) < self.threshold:
                self.rejected_pairs += 1
                continue
            self.clusters.union(other, doc)
            matches.append(other)
        return matches

    def groups(self) -> list[list[int]]:
        """Clusters of two or more documents, each sorted, ordered by first member."""
        members: dict[int, list[int]] = defaultdict(list)
        for doc in self.clusters.parent:
            members[self.clusters.find(doc)].append(doc)
        return sorted(sorted(group) for group in members.values() if len(group) > 1)
