"""Chapter 1: the autograd graph of a tiny expression (nn.draw_graph) and a gradient-check table (nn.gradcheck).

Writes figures/ch1_graph.png (the graph, drawn by Graphviz from nn.draw_graph's DOT text),
figures/ch1_graph_accumulate.md (the worked example's gradients against the hand-derived ones) and
figures/ch1_graph_check.md (gradcheck's verdict and the largest analytic-numeric difference per op).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nn  # noqa: E402
from nn import functional as F  # noqa: E402
from nn.function import Function  # noqa: E402

SOURCE = "docs/manual/figures/ch1_graph.py"


def tiny_expression():
    """loss = sum(tanh(h) * h) with h = x @ W + b: h feeds two ops, so its gradient is a sum of two."""
    nn.manual_seed(0)
    x = nn.randn(2, 3)
    x.name = "x (input)"
    w = nn.randn(3, 2, requires_grad=True)
    w.name = "W"
    b = nn.zeros(2, requires_grad=True)
    b.name = "b"
    h = x @ w + b
    loss = (h.tanh() * h).sum()
    return x, w, b, h, loss


def draw() -> dict:
    x, w, b, h, loss = tiny_expression()
    with tempfile.TemporaryDirectory() as tmp:
        dot = nn.draw_graph(loss, Path(tmp) / "graph.dot")  # the DOT text nn.draw_graph writes
        png = Path(tmp) / "graph.png"
        # The rendering draw_graph does for a .png path, top to bottom, at 110 dpi: shown at 160 dpi, 10 pt text
        # prints at about 7 pt and the whole graph fits half a page.
        text = dot.read_text().replace('rankdir="LR"', 'rankdir="TB"')
        dot.write_text(text)
        subprocess.run(["dot", "-Gdpi=110", "-Tpng", str(dot), "-o", str(png)], check=True)
        image = plt.imread(png)
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(width / 160, height / 160 + 0.15))
    ax = fig.add_axes([0, 0.15 / (height / 160 + 0.15), 1, 1 - 0.15 / (height / 160 + 0.15)])
    ax.imshow(image, interpolation="none")
    ax.axis("off")
    _common.save_figure(fig, "ch1_graph.png", SOURCE)
    plt.close(fig)

    # The worked example: backward, then the gradients derived by hand.
    h.retain_grad()
    loss.backward()
    hv = h.numpy().astype(np.float64)
    t = np.tanh(hv)
    dh = t + hv * (1 - t * t)             # d/dh [tanh(h) h] = tanh(h) + h (1 - tanh(h)^2)
    dw = x.numpy().T @ dh                 # matmul rule: dW = x^T dh
    db = dh.sum(axis=0)                   # broadcast add: sum over the rows
    rows = [["dL/dh (retained)", "tanh(h) + h (1 - tanh^2 h)", f"{np.abs(h.grad.numpy() - dh).max():.1e}"],
            ["dL/dW", "x^T dL/dh", f"{np.abs(w.grad.numpy() - dw).max():.1e}"],
            ["dL/db", "sum over rows of dL/dh", f"{np.abs(b.grad.numpy() - db).max():.1e}"]]
    _common.write_table("ch1_graph_accumulate.md", ["gradient", "by hand", "max abs difference (float32)"], rows,
                        align="llr")
    return {"accumulate_max_abs_diff": {r[0]: float(r[2]) for r in rows}, "graph_pixels": [width, height]}


class BrokenMul(Function):
    """x * y with a deliberate bug in backward (d/dx returns g * x instead of g * y)."""

    def forward(self, x, y):
        self.save_for_backward(x, y)
        return x * y

    def backward(self, g):
        x, y = self.saved_arrays
        return g * x, g * x


def max_error(fn, inputs, eps: float = 1e-6) -> float:
    """Largest |analytic - numeric| entry of the full Jacobian (central differences, float64)."""
    leaves = [nn.Tensor(t.numpy().astype(np.float64).copy(), requires_grad=True) for t in inputs]
    with nn.no_grad():
        n_out = fn(*leaves).numel()
    worst = 0.0
    for row in range(n_out):
        for t in leaves:
            t.grad = None
        out = fn(*leaves)
        upstream = np.zeros(n_out)
        upstream[row] = 1
        out.backward(upstream.reshape(out.shape))
        for t in leaves:
            flat = t.data.reshape(-1)
            analytic = np.zeros(flat.size) if t.grad is None else t.grad.numpy().reshape(-1)
            for j in range(flat.size):
                keep = flat[j]
                flat[j] = keep + eps
                with nn.no_grad():
                    plus = fn(*leaves).numpy().reshape(-1)[row]
                flat[j] = keep - eps
                with nn.no_grad():
                    minus = fn(*leaves).numpy().reshape(-1)[row]
                flat[j] = keep
                worst = max(worst, abs(analytic[j] - (plus - minus) / (2 * eps)))
    return worst


def check_table() -> dict:
    nn.manual_seed(1)
    r = lambda *shape: nn.randn(*shape, requires_grad=True)  # noqa: E731
    targets = np.array([1, 0, 3])
    ids = np.array([[0, 2], [2, 1]])
    cases = [
        ("a @ b", "(3,4) @ (4,2)", lambda a, b: a @ b, [r(3, 4), r(4, 2)]),
        ("a * b (broadcast)", "(3,4) * (4,)", lambda a, b: a * b, [r(3, 4), r(4)]),
        ("softmax", "(2,5)", lambda a: F.softmax(a, dim=-1), [r(2, 5)]),
        ("cross_entropy", "(3,4), 3 targets", lambda a: F.cross_entropy(a, targets), [r(3, 4)]),
        ("embedding", "table (3,4), ids (2,2)", lambda w: F.embedding(ids, w), [r(3, 4)]),
        ("layer_norm", "(2,4)", lambda a: F.layer_norm(a, 4), [r(2, 4)]),
        ("causal attention", "q,k,v (1,3,2)",
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [r(1, 3, 2), r(1, 3, 2), r(1, 3, 2)]),
        ("BrokenMul (bug planted)", "(2,3) * (2,3)", lambda a, b: BrokenMul.apply(a, b), [r(2, 3), r(2, 3)]),
    ]
    rows, data = [], {}
    for name, shapes, fn, inputs in cases:
        passed = nn.gradcheck(fn, inputs, raise_exception=False)
        err = max_error(fn, inputs)
        rows.append([name, shapes, "pass" if passed else "**FAIL**", f"{err:.1e}"])
        data[name] = {"passed": bool(passed), "max_abs_error": err}
    _common.write_table("ch1_graph_check.md", ["op", "shapes", "nn.gradcheck", "max abs(analytic - numeric)"], rows,
                        align="llll")
    return data


if __name__ == "__main__":
    result = {"draw": draw(), "gradcheck": check_table()}
    print(result)
    _common.record(__file__, result, sources=["nn/graph.py", "nn/gradcheck.py", "nn/tensor.py"])
