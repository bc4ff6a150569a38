"""Text <-> token ids: a byte-level BPE tokenizer that encodes exactly like tiktoken.

Independent of ``nn`` and of ``tinygrad_llm``.  ``Tokenizer`` trains, encodes,
decodes, saves and loads; ``load_tiktoken_ranks`` reads a tiktoken vocabulary file;
``patterns`` holds the GPT-2 and GPT-4 split regexes.
"""

from tokenizer import patterns
from tokenizer.bpe import ENDOFTEXT, Tokenizer, TokenizerFileError, load_tiktoken_ranks
from tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN

__all__ = ["ENDOFTEXT", "GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "TokenizerFileError", "load_tiktoken_ranks",
           "patterns"]
