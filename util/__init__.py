"""Small helpers that ``nn``, ``tokenizer`` and ``tinygrad_llm`` all use, each in one place.

``files`` (atomic writes), ``progress`` (the progress bar) and ``workers`` (a pool of
worker processes).  This package imports none of the three packages that use it.
"""
