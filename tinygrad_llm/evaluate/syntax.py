"""Does the model write Python? The parse rate of sampled functions.

The first thing a newcomer judges a code model by is whether what it writes
is Python at all. The protocol (issue 20, kept fixed so numbers compare):
sample ``n`` functions with ``generate --prompt "def " -n 120 --temperature 0.8
--top-k 50 --seed S`` for S = 0, 1, ...; cut each before the first line, after
its first, that starts at column 0 (the function has ended there); count the
ones ``ast.parse`` accepts. Parsing only compiles the text to a syntax tree:
nothing the model wrote is run.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from tinygrad_llm.generate import SamplingConfig, generate_text

__all__ = ["first_function", "parses", "sample_functions"]


def first_function(text: str) -> str:
    """``text`` up to the first line after its first that starts at column 0 (all of it if none does)."""
    lines = text.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line and not line[0].isspace():
            return "\n".join(lines[:i])
    return text


def parses(source: str) -> bool:
    """True if ``source`` is syntactically valid Python (``ast.parse``; never executed)."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a NUL character in the source
        return False
    return True


def sample_functions(model, tokenizer, seeds: Sequence[int], sampling: SamplingConfig, prompt: str = "def ",
                     max_new_tokens: int = 120, heal: bool = True) -> list[str]:
    """One function per seed, as ``generate`` writes it (token healing on, as its default), cut by
    :func:`first_function`."""
    return [first_function(prompt + "".join(generate_text(model, tokenizer, prompt, max_new_tokens, sampling, seed,
                                                          heal=heal)))
            for seed in seeds]
