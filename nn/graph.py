"""Draw the autograd graph behind a tensor, for people learning how backprop walks it.

Each op is a node labelled with its name and its input and output shapes and
dtypes; leaf tensors (parameters, inputs) are boxes. Edges point the way data
flows in forward; backward walks them in reverse.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

from nn.tensor import Tensor


def _describe(t: Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype}"


def to_dot(root: Tensor) -> str:
    """The graph behind ``root`` as Graphviz DOT text."""
    lines = ["digraph autograd {", '  rankdir="LR";', '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    names: dict[int, str] = {}
    stack, seen = [root], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        node = names.setdefault(id(t), f"n{len(names)}")
        fn = t._ctx
        if fn is None:
            label = (t.name or ("parameter" if t.requires_grad else "constant")) + "\\n" + _describe(t)
            color = "lightblue" if t.requires_grad else "lightgrey"
            lines.append(f'  {node} [shape=box, style=filled, fillcolor={color}, label="{label}"];')
            continue
        inputs = [] if fn.inputs is None else [x for x in fn.inputs if x is not None]
        ins = ", ".join(_describe(x) for x in inputs) if fn.inputs is not None else "(released)"
        border = ", penwidth=2" if t is root else ""
        lines.append(f'  {node} [shape=ellipse{border}, label="{fn.name}\\nin: {ins}\\nout: {_describe(t)}"];')
        for x in inputs:
            source = names.setdefault(id(x), f"n{len(names)}")
            lines.append(f'  {source} -> {node} [label="{tuple(x.shape)}"];')
            stack.append(x)
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graph(tensor: Tensor, path: str | Path) -> Path:
    """Write the graph behind ``tensor`` to ``path``.

    ``.dot`` writes DOT text. ``.svg``/``.png`` also write the ``.dot`` beside
    it and render it with Graphviz's ``dot`` when that is installed (else a
    warning says so and the ``.dot`` path is returned). Draw before
    ``backward()``, which frees the graph unless ``retain_graph=True``.
    """
    path = Path(path)
    dot_path = path if path.suffix == ".dot" else path.with_suffix(".dot")
    dot_path.write_text(to_dot(tensor))
    if path.suffix == ".dot":
        return dot_path
    if shutil.which("dot") is None:
        warnings.warn(f"Graphviz 'dot' is not installed; wrote {dot_path} only", stacklevel=2)
        return dot_path
    subprocess.run(["dot", f"-T{path.suffix[1:]}", str(dot_path), "-o", str(path)], check=True)
    return path
