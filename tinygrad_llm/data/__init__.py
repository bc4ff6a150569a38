"""Data: where text comes from (``sources``), and later cleaning, dedup and token shards."""
