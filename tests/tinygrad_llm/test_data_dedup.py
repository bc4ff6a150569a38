"""MinHash accuracy, the LSH S-curve, verification, union-find, exact dedup and streaming memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.data.clean import CleaningConfig, scan
from tinygrad_llm.data.dedup import NearDuplicateIndex, UnionFind
from tinygrad_llm.data.minhash import (
    MinHasher,
    candidate_probability,
    choose_bands_rows,
    estimate_jaccard,
    jaccard,
    shingle_hashes,
)
from tinygrad_llm.data.sources import Document

NUM_PERM = 128


def random_set(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.unique(rng.integers(0, 2**64, size=size, dtype=np.uint64, endpoint=False))


def planted_pair(rng: np.random.Generator, union: int, similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of equal size whose Jaccard similarity is exactly ``similarity`` (for a suitable ``union``)."""
    values = random_set(rng, union)
    common = round(union * similarity)
    only = (union - common) // 2
    a = np.sort(values[:common + only])
    b = np.sort(np.concatenate([values[:common], values[common + only:common + 2 * only]]))
    return a, b


@settings(max_examples=60, deadline=None, derandomize=True)
@given(common=st.integers(0, 300), only_a=st.integers(0, 300), only_b=st.integers(0, 300), seed=st.integers(0, 2**32))
def test_minhash_estimate_within_binomial_error(common, only_a, only_b, seed):
    # With ideal min-wise permutations the number of equal signature entries is
    # Binomial(num_perm, J), so the estimate has standard deviation sqrt(J (1 - J) / num_perm)
    # <= 0.044 at 128 permutations.  Six standard deviations (two-sided tail ~2e-9 per
    # example under the normal approximation) plus one entry of slack for small J.
    if common + only_a + only_b == 0:
        return
    rng = np.random.default_rng(seed)
    values = random_set(rng, 4 * (common + only_a + only_b) + 10)[:common + only_a + only_b]
    a = np.sort(values[:common + only_a])
    b = np.sort(np.concatenate([values[:common], values[common + only_a:]]))
    truth = jaccard(a, b)
    assert truth == pytest.approx(common / (common + only_a + only_b))
    hasher = MinHasher(NUM_PERM, seed=seed % 1000)
    estimate = estimate_jaccard(hasher.signature(a), hasher.signature(b))
    assert abs(estimate - truth) <= 6 * np.sqrt(truth * (1 - truth) / NUM_PERM) + 1 / NUM_PERM


@pytest.mark.parametrize("similarity", [0.7, 0.8, 0.9])
def test_lsh_recall_follows_the_s_curve(similarity):
    # 400 independent planted pairs per level: the candidate count is Binomial(400, p(s)),
    # with p(s) = 1 - (1 - s^r)^b.  Allow 4.5 standard deviations (two-sided ~7e-6).
    bands, rows = choose_bands_rows(0.8, NUM_PERM)
    hasher = MinHasher(NUM_PERM, seed=7)
    rng = np.random.default_rng(int(similarity * 100))
    pairs = 400
    found = 0
    for _ in range(pairs):
        a, b = planted_pair(rng, 200, similarity)
        assert jaccard(a, b) == pytest.approx(similarity)
        index = NearDuplicateIndex(bands, rows, 0.8, verify=False)
        index.add(0, hasher.signature(a))
        found += index.add(1, hasher.signature(b)) == [0]
    p = float(candidate_probability(similarity, bands, rows))
    assert abs(found / pairs - p) <= 4.5 * np.sqrt(p * (1 - p) / pairs)


def test_verification_never_merges_below_threshold():
    bands, rows = choose_bands_rows(0.8, NUM_PERM)
    hasher = MinHasher(NUM_PERM, seed=3)
    rng = np.random.default_rng(3)
    index = NearDuplicateIndex(bands, rows, 0.8, verify=True)
    sets = []
    for similarity in [0.7, 0.75, 0.8, 0.9, 0.95] * 20:
        for shingles in planted_pair(rng, 200, similarity):
            doc = len(sets)
            sets.append(shingles)
            for other in index.add(doc, hasher.signature(shingles), shingles):
                assert jaccard(sets[other], shingles) >= 0.8
    for group in index.groups():
        assert len(group) == 2 and jaccard(sets[group[0]], sets[group[1]]) >= 0.8
    assert index.rejected_pairs > 0


def test_union_find_keeps_smallest_root():
    clusters = UnionFind()
    clusters.union(5, 3)
    clusters.union(9, 7)
    clusters.union(7, 5)
    assert {clusters.find(x) for x in (3, 5, 7, 9)} == {3}


def test_choose_bands_rows_and_curve():
    assert choose_bands_rows(0.8, 128) == (9, 13)
    bands, rows = choose_bands_rows(0.5, 64)
    assert bands * rows <= 64
    assert candidate_probability(0.3, bands, rows) < 0.5 < candidate_probability(0.7, bands, rows)
    with pytest.raises(ValueError, match="threshold"):
        choose_bands_rows(0.0, 128)


def test_shingles_and_signatures_are_deterministic():
    text = "for i in range(10):\n    total += values[i] * weights[i]\n"
    reformatted = "for i in range(10):\n\n\t  total   +=  values[i] *  weights[i]   "
    assert np.array_equal(shingle_hashes(text, "code"), shingle_hashes(reformatted, "code"))
    assert shingle_hashes("one two", "words").size == 1 and shingle_hashes("", "words").size == 0
    assert np.array_equal(MinHasher(64, 1).signature(shingle_hashes(text, "code")),
                          MinHasher(64, 1).signature(shingle_hashes(text, "code")))
    with pytest.raises(ValueError, match="mode"):
        shingle_hashes(text, "bytes")


def test_exact_dedup_keeps_first_copy_after_normalisation():
    docs = [Document("a.py", "x = 1\ny = 2\n"), Document("b.py", "x  =  1\r\ny = 2"), Document("c.py", "X = 1\nY = 2")]
    report = scan(docs, CleaningConfig(num_perm=16))
    assert report.dropped["exact_duplicate"][0] == 2
    assert report.examples["exact_duplicate"] == ["b.py = a.py", "c.py = a.py"]


def synthetic(count: int):
    rng = np.random.default_rng(0)
    for i in range(count):
        words = rng.integers(0, 10**6, size=2000)
        yield Document(f"{i}.txt", " ".join(f"w{w}" for w in words))


def peak_bytes(count: int) -> int:
    tracemalloc.start()
    scan(synthetic(count), CleaningConfig(filters=(), mode="words", verify=False, batch_size=4))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_grows_only_by_per_document_state():
    # Each document is ~16 KB of text; without verification the scan keeps per document
    # only its band keys (9 bands x 13 rows x 8 bytes plus dict and list overhead), its
    # content hash and its path: under 4 KB.  Holding the texts would add 16 KB each.
    small, large = peak_bytes(60), peak_bytes(240)
    assert (large - small) / 180 < 4096
