"""The packages' import graph, as DESIGN.md draws it: imports go one way.

    util  <-  nn, tokenizer  <-  tinygrad_llm

util imports none of the others; nn and tokenizer never import each other or
tinygrad_llm; inside tinygrad_llm, training never imports the second half
(evaluation, chat, serving, export), which builds on it. Every import counts,
at the top of a file or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "util": ("nn", "tokenizer", "tinygrad_llm"),
    "nn": ("tokenizer", "tinygrad_llm"),
    "tokenizer": ("nn", "tinygrad_llm"),
    "tinygrad_llm/train": ("tinygrad_llm.evaluate", "tinygrad_llm.chat", "tinygrad_llm.serve",
                           "tinygrad_llm.export", "tinygrad_llm.cli"),
    "tinygrad_llm/data": ("tinygrad_llm.train", "tinygrad_llm.evaluate", "tinygrad_llm.cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    return bad


def test_the_scanner_sees_every_kind_of_import(tmp_path):
    (tmp_path / "x.py").write_text("import nn.layers\nfrom tokenizer import bpe\ndef f():\n    import tinygrad_llm\n")
    assert imported_modules(tmp_path / "x.py") == {"nn.layers", "tokenizer", "tokenizer.bpe", "tinygrad_llm"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    assert (ROOT / package).is_dir()
    assert violations(package) == []
