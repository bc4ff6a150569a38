"""Data: from raw text to token shards a trainer can memory-map.

``sources`` (where text comes from: the stdlib corpus, text files, JSON Lines),
cleaning (``normalize``, ``filters``, ``minhash``, ``dedup``, and ``clean`` which runs
them over a stream), ``prepare`` (the pipeline: clean, tokenize, write shards),
``shards`` (the token-shard directory: shard files and ``meta.json``, written and
checked) and ``loader`` (memory-mapped shards and the batches a trainer draws from them).
"""


class DataError(ValueError):
    """A problem with the user's data (a missing path, an empty corpus, missing or damaged
    shards): reported as one line, never as a traceback."""
