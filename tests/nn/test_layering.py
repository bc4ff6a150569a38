"""The engine core's import graph: Function and the ops sit below Tensor and never import it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nn

NN = Path(nn.__file__).parent
BELOW_TENSOR = ("nn.backend", "nn.function", "nn.kernels", "nn.ops")


def runtime_nn_imports(path: Path) -> set[str]:
    """The ``nn`` modules that ``path`` imports when it runs, at the top or inside functions.

    Imports under ``if TYPE_CHECKING:`` are for type annotations only and never run, so they are left out.
    """
    tree = ast.parse(path.read_text())
    type_checking = [node for node in ast.walk(tree) if isinstance(node, ast.If)
                     and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    annotation_only = {id(n) for block in type_checking for statement in block.body for n in ast.walk(statement)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "nn":
            found |= {f"nn.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nn."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "nn"}
    return found


def test_the_import_scanner_sees_lazy_imports_and_skips_type_checking_ones(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom nn import backend\n"
                      "if TYPE_CHECKING:\n    from nn.tensor import Tensor\n"
                      "def f():\n    from nn.module import Module\n    import nn.layers\n")
    assert runtime_nn_imports(source) == {"nn.backend", "nn.module", "nn.layers"}


@pytest.mark.parametrize("path", [NN / "function.py", *sorted((NN / "ops").glob("*.py"))], ids=lambda p: p.name)
def test_function_and_the_ops_import_nothing_above_them(path):
    above = {module for module in runtime_nn_imports(path) if not module.startswith(BELOW_TENSOR)}
    assert not above, f"{path.name} imports {sorted(above)}: ops see arrays and Function only, never Tensor"
