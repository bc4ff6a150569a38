"""MinHash signatures of shingle sets, vectorised with NumPy, and the LSH banding maths.

A document becomes a set of shingles: word 5-grams for prose (after ``simplify_text``,
as datatrove does for FineWeb), and for code 5-grams of the pre-tokens of our BPE
tokenizer's GPT-4 split pattern (identifiers, number runs, punctuation runs; whitespace
dropped), so that re-indenting or re-spacing code does not change the set.  Each shingle is a 64-bit hash:
every token gets a BLAKE2b-64 hash (cached), and an n-gram combines its token hashes
with distinct odd multipliers, mixed by the SplitMix64 finaliser, all in NumPy.

MinHash with ``num_perm`` permutations: permutation ``i`` maps a shingle hash ``x`` to
``(a_i * x + b_i) mod 2**64`` with odd ``a_i``, a bijection of the 64-bit range (the
same linear family as datatrove's ``(a*x + b) mod (2**61 - 1)``, with the word size as
modulus so NumPy's wrapping arithmetic computes it).  The signature is the minimum over
the shingles for every permutation at once: one ``(shingles, num_perm)`` product, taken
in blocks to bound memory.  ``P[sig_A[i] == sig_B[i]]`` is the Jaccard similarity of
the two sets, so the fraction of equal entries estimates it with standard error
``sqrt(J (1 - J) / num_perm)``.

LSH: the signature is cut into ``bands`` bands of ``rows`` rows; two documents are
candidates when all rows of any band agree, which happens with probability
``1 - (1 - s**rows)**bands`` at similarity ``s`` (the S-curve).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import regex

from tinygrad_llm.data.normalize import simplify_text
from tokenizer.patterns import GPT4_PATTERN

ShingleMode = Literal["words", "code"]

NUM_PERM = 128
"""Default number of permutations (datasketch's default; datatrove uses 112)."""

SHINGLE_SIZE = 5
"""Words or tokens per shingle: 5-grams, as datatrove (FineWeb), text-dedup and Lee et al."""

BLOCK_ROWS = 2048
"""Shingles per block of the ``(shingles, num_perm)`` product: at most 2 MB at 128 permutations."""

_GPT4_SPLIT = regex.compile(GPT4_PATTERN)
_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=1 << 20)
def _token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place: every output bit depends on every input bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def tokens_of(text: str, mode: ShingleMode) -> list[str]:
    """The units of shingles: simplified words, or the code's non-blank pre-tokens."""
    if mode == "words":
        return simplify_text(text).split()
    if mode == "code":
        return [t for t in (piece.strip() for piece in _GPT4_SPLIT.findall(text)) if t]
    raise ValueError(f"shingle mode must be 'words' or 'code', got {mode!r}")


def shingle_hashes(text: str, mode: ShingleMode = "words", size: int = SHINGLE_SIZE) -> np.ndarray:
    """The set of 64-bit hashes of ``text``'s ``size``-gram shingles, sorted, as uint64."""
    return hash_shingles(tokens_of(text, mode), size)


def hash_shingles(tokens: Sequence[str], size: int = SHINGLE_SIZE) -> np.ndarray:
    """The sorted set of 64-bit hashes of the ``size``-grams of ``tokens``.

    Fewer than ``size`` tokens make one shingle; no tokens make none.
    """
    if size < 1:
        raise ValueError(f"shingle size must be >= 1, got {size}")
    hashes = np.fromiter(map(_token_hash, tokens), dtype=np.uint64, count=len(tokens))
    if hashes.size == 0:
        return hashes
    width = min(size, hashes.size)
    count = hashes.size - width + 1
    combined = np.zeros(count, dtype=np.uint64)
    for k in range(width):
        combined += hashes[k:k + count] * np.uint64((0x9E3779B97F4A7C15 * (2 * k + 1)) & _MASK64)
    return np.unique(_mix64(combined))


@dataclass(frozen=True)
class MinHasher:
    """``num_perm`` seeded permutations of the 64-bit range; ``signature`` applies them all."""

    num_perm: int = NUM_PERM
    seed: int = 1

    def __post_init__(self) -> None:
        if self.num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {self.num_perm}")
        rng = np.random.default_rng(self.seed)
        a = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        b = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64, endpoint=False)
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "_b", b)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_perm,) uint64 minima of every permutation over ``shingles``; all ones if empty."""
        result = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        block = np.empty((min(BLOCK_ROWS, shingles.size), self.num_perm), dtype=np.uint64)
        for start in range(0, shingles.size, BLOCK_ROWS):
            chunk = shingles[start:start + BLOCK_ROWS]
            out = block[:chunk.size]
            np.multiply(chunk[:, None], self._a, out=out)
            out += self._b
            np.minimum(result, out.min(axis=0), out=result)
        return result


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of equal signature entries: an unbiased estimate of Jaccard similarity."""
    return float(np.mean(sig_a == sig_b))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """True Jaccard similarity of two sorted unique hash arrays (1.0 for two empty sets)."""
    union = np.union1d(a, b).size
    return np.intersect1d(a, b, assume_unique=True).size / union if union else 1.0


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents of Jaccard ``similarity`` share a band): ``1 - (1 - s**rows)**bands``."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


def choose_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5) -> tuple[int, int]:
    """The (bands, rows) with ``bands * rows <= num_perm`` minimising the weighted error areas.

    The false-positive area is the S-curve's integral below ``threshold`` and the
    false-negative area the integral of its complement above; equal weights, as
    datasketch's ``MinHashLSH`` uses, put the curve's steep part at the threshold.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    below = np.linspace(0.0, threshold, 1001)
    above = np.linspace(threshold, 1.0, 1001)
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(candidate_probability(below, bands, rows), below)
            fn = np.trapezoid(1.0 - candidate_probability(above, bands, rows), above)
            error = false_positive_weight * fp + (1.0 - false_positive_weight) * fn
            if best is None or error < best[0]:
                best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


def s_curve_table(bands: int, rows: int, similarities: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9,
                                                                             0.95)) -> str:
    """A printable table of the candidate probability at a few similarities."""
    header = f"LSH {bands} bands x {rows} rows: threshold ~ (1/b)^(1/r) = {(1 / bands) ** (1 / rows):.3f}"
    rows_text = [f"  s={s:.2f}  P(candidate)={float(candidate_probability(s, bands, rows)):.3f}"
                 for s in similarities]
    return "\n".join([header, *rows_text])
