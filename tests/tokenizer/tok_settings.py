"""Constants shared by the tokenizer tests (pytest puts this directory on sys.path)."""

from tokenizer import GPT2_PATTERN, GPT4_PATTERN

SPECIALS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>")
"""Special tokens of the trained test tokenizers."""

CONFIGS = [("gpt4", 1024), ("gpt4", 8192), ("gpt2", 1024), ("gpt2", 8192)]
"""(pattern name, vocabulary size) of each trained test tokenizer."""

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
