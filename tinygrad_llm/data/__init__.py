"""Data: where text comes from (``sources``), and later cleaning, dedup and token shards.

Cleaning: ``normalize``, ``filters``, ``minhash``, ``dedup``, and ``clean`` which runs them over a stream.
"""
