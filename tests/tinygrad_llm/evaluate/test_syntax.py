"""The parse-rate protocol: where a sampled function ends, and what counts as parsing."""

from __future__ import annotations

import pytest

from tinygrad_llm.evaluate.syntax import first_function, parses, sample_functions
from tinygrad_llm.generate import SamplingConfig


@pytest.mark.parametrize(("text", "function"), [
    ("def f(x):\n    return x\n\nclass A:\n    pass\n", "def f(x):\n    return x\n"),
    ("def f(x):\n    return x\ndef g():\n", "def f(x):\n    return x"),
    ("def f(x):\n        y = 1\n\n    def g(self):\n", "def f(x):\n        y = 1\n\n    def g(self):\n"),
    ("def f(x):\n    return (x +", "def f(x):\n    return (x +"),  # never ended: all of it
    ("def f(x):\n\tz = 2\n#c\n", "def f(x):\n\tz = 2"),  # a tab indents; a comment at column 0 ends it
])
def test_a_function_ends_before_the_first_line_back_at_column_zero(text, function):
    assert first_function(text) == function


@pytest.mark.parametrize(("source", "ok"), [
    ("def f(x):\n    return x\n", True),
    ("def f(x):\n        y = 1\n", True),  # any indentation is a block
    ("def f(x):\n        y = 1\n\n    def g(self):\n        pass", False),  # dedent to no outer level
    ("def f(x):\n    return (x +", False),
    ("def f(x):\n    if x:\n", False),  # a block header with no body
    ("def f(x):\n    return '\\0'", True),  # the escape, not the character
    ("def f(x):\n    return '\0'", False),  # a NUL character: ValueError (3.11) or SyntaxError, not parsing
    ("def 0, 0)\n", False),
])
def test_parses_is_ast_parse(source, ok):
    assert parses(source) is ok


def test_sampled_functions_start_with_the_prompt_and_heal_its_space(monkeypatch):
    calls = []

    def fake(model, tokenizer, prompt, max_new_tokens, sampling, seed, heal):
        calls.append((prompt, max_new_tokens, seed, heal))
        yield "parse(text):\n    return text\n\n"
        yield "x = 1\n"

    monkeypatch.setattr("tinygrad_llm.evaluate.syntax.generate_text", fake)
    functions = sample_functions(None, None, [0, 1], SamplingConfig(0.8, 50))
    assert functions == ["def parse(text):\n    return text\n"] * 2
    assert calls == [("def ", 120, 0, True), ("def ", 120, 1, True)]
