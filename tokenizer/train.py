"""The byte-level BPE trainer.

Training learns an ordered list of merges.  It starts from the 256 byte values and
repeatedly fuses the most frequent adjacent pair of tokens into a new token, until
the vocabulary has the requested size.

The naive trainer recounts every pair in the corpus after every merge: O(merges x
corpus).  This one does what the Hugging Face and rustbpe trainers do:

1. Pre-tokenize every document with the split pattern and count each distinct chunk
   once (``count_chunks``).  A corpus of millions of words has only tens of
   thousands of distinct chunks, and a pair occurring in a chunk seen n times
   counts n times.
2. Count all pairs once, and remember for each pair which chunks contain it.
3. Keep the pairs in a max-heap keyed by (count, then the smaller pair).  Counts
   only change where a merge happened, so after a merge only the chunks that
   contained the merged pair are rewritten, and only the pairs around each merge
   site get their counts adjusted.  Heap entries are refreshed lazily: an entry
   whose count has gone stale is re-pushed with the current count when it reaches
   the top.

The cost per merge is proportional to the number of distinct chunks holding the
merged pair, not to the corpus size.  Ties are broken deterministically (higher
count first, then the smaller ``(left_id, right_id)``), so the same input always
gives the same vocabulary.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping

import regex

from tokenizer.patterns import compile_pattern, replace_lone_surrogates
from util.progress import Progress


def special_token_regex(special_tokens: Collection[str]) -> regex.Pattern | None:
    """An alternation matching any of ``special_tokens``, longest first, or None if empty.

    Longest first, so that a special token that is a prefix of another cannot hide it.
    """
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=lambda s: (-len(s), s))
    return regex.compile("|".join(regex.escape(s) for s in ordered))


def count_chunks(texts: Iterable[str], pattern: str, special_tokens: Collection[str] = ()) -> Counter[str]:
    """Pre-tokenize every document of ``texts`` and count each distinct chunk.

    ``texts`` may be any iterable (a generator over files, say), so the corpus never
    has to be held in memory as one string.  Occurrences of ``special_tokens`` are
    cut out of the text first: a special token's string must never become an
    ordinary token, and no chunk may straddle one.
    """
    split = compile_pattern(pattern).findall
    specials = special_token_regex(special_tokens)
    counts: Counter[str] = Counter()
    for doc in texts:
        if not isinstance(doc, str):
            raise TypeError(f"training texts must be str, got {type(doc).__name__}")
        for piece in specials.split(doc) if specials else (doc,):
            counts.update(split(piece))
    return counts


def learn_merges(chunk_counts: Mapping[str, int], num_tokens: int,
                 progress: bool = False) -> list[bytes]:
    """Learn BPE tokens from chunk counts; return the vocabulary as bytes, in id order.

    The result starts with the 256 single bytes in byte order (ids 0..255); token
    ``256 + i`` is the i-th merge, the concatenation of two earlier tokens.  It has
    ``num_tokens`` entries, or fewer if the corpus runs out of pairs to merge.

    A pair whose concatenated bytes are already a token (``"ab"+"c"`` after
    ``"a"+"bc"`` made ``"abc"``) is merged into that existing token instead of a new
    one, so no two tokens ever have the same bytes.

    ``progress`` shows a progress line on stderr, counting the tokens made.
    """
    if num_tokens < 256:
        raise ValueError(f"a byte-level vocabulary needs at least 256 tokens, got {num_tokens}")
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, count in chunk_counts.items():
        try:
            data = chunk.encode("utf-8")
        except UnicodeEncodeError:
            data = replace_lone_surrogates(chunk).encode("utf-8")
        if len(data) >= 2:
            words.append(list(data))
            freqs.append(count)

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        f = freqs[wi]
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-count, a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    index = {token: i for i, token in enumerate(vocab)}
    with Progress(num_tokens - 256, unit="tok", desc="training BPE merges", enabled=progress) as bar:
        while len(vocab) < num_tokens and heap:
            neg_count, a, b = heapq.heappop(heap)
            count = pair_counts.get((a, b), 0)
            if count != -neg_count:
                if 0 < count < -neg_count:
                    heapq.heappush(heap, (-count, a, b))
                continue
            token = vocab[a] + vocab[b]
            new = index.get(token)
            if new is None:
                new = len(vocab)
                vocab.append(token)
                index[token] = new
                bar.update()
            _apply_merge(a, b, new, words, freqs, pair_counts, where, heap)
    return vocab


def _apply_merge(a: int, b: int, new: int, words: list[list[int]], freqs: list[int],
                 pair_counts: dict[tuple[int, int], int], where: dict[tuple[int, int], set[int]],
                 heap: list[tuple[int, int, int]]) -> None:
    """Replace every adjacent ``(a, b)`` by ``new`` and update the pair statistics.

    Only the chunks listed in ``where[(a, b)]`` are visited (some may no longer hold
    the pair: those sets are pruned lazily).  Around each merge site the left
    neighbour p and right neighbour q lose the pairs (p, a) and (b, q) and gain
    (p, new) and (new, q); each change is weighted by the chunk's count.  Pairs whose
    count grew are pushed onto the heap; those that shrank are fixed when popped.
    """
    deltas: dict[tuple[int, int], int] = defaultdict(int)
    for wi in where.pop((a, b)):
        word = words[wi]
        n = len(word)
        f = freqs[wi]
        out: list[int] = []
        i = 0
        while i < n:
            if word[i] == a and i + 1 < n and word[i + 1] == b:
                if out:
                    p = out[-1]
                    deltas[p, a] -= f
                    deltas[p, new] += f
                    where[p, new].add(wi)
                if i + 2 < n:
                    q = word[i + 2]
                    deltas[b, q] -= f
                    deltas[new, q] += f
                    where[new, q].add(wi)
                out.append(new)
                i += 2
            else:
                out.append(word[i])
                i += 1
        if len(out) != n:
            words[wi] = out
    del pair_counts[a, b]
    deltas.pop((a, b), None)
    for pair, delta in deltas.items():
        if delta == 0:
            continue
        count = pair_counts.get(pair, 0) + delta
        if count > 0:
            pair_counts[pair] = count
        else:
            pair_counts.pop(pair, None)
        if delta > 0:
            heapq.heappush(heap, (-count, pair[0], pair[1]))
