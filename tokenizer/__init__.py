"""Text <-> token ids: a byte-level BPE tokenizer that encodes exactly like tiktoken.

Independent of ``nn`` and of ``tinygrad_llm``.  ``Tokenizer`` trains, encodes,
decodes, saves and loads; ``patterns`` holds the GPT-2 and GPT-4 split regexes.
"""

from tokenizer import patterns
from tokenizer.bpe import ENDOFTEXT, Tokenizer, TokenizerFileError
from tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN

__all__ = ["ENDOFTEXT", "GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "TokenizerFileError", "patterns"]
