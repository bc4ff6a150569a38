"""The study tools: the autograd graph as DOT, and the per-op profiler."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import nn
import nn.functional as F


def _small_net():
    w = nn.randn(4, 3, requires_grad=True)
    w.name = "weight"
    x = nn.randn(2, 4)
    return w, F.softmax(x @ w, -1).sum()


def test_draw_graph_writes_one_node_per_op_and_leaf_with_shapes(tmp_path):
    w, loss = _small_net()
    path = nn.draw_graph(loss, tmp_path / "graph.dot")
    dot = path.read_text()
    assert dot.startswith("digraph")
    ops = re.findall(r'label="(\w+)\\nin: ', dot)
    assert sorted(ops) == ["MatMul", "Softmax", "Sum"]
    assert 'label="weight\\n(4, 3) float32"' in dot
    assert "out: (2, 3) float32" in dot  # the matmul's output
    assert len(re.findall(r"->", dot)) == 4  # x->matmul, w->matmul, matmul->softmax, softmax->sum


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_draw_graph_renders_svg_when_graphviz_is_installed(tmp_path):
    _, loss = _small_net()
    assert nn.draw_graph(loss, tmp_path / "g.svg").read_text().lstrip().startswith("<")


def test_draw_graph_without_graphviz_warns_and_keeps_the_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _: None)
    _, loss = _small_net()
    with pytest.warns(UserWarning, match="Graphviz"):
        path = nn.draw_graph(loss, tmp_path / "g.png")
    assert path.suffix == ".dot" and path.exists()


def test_profile_counts_calls_times_and_saved_bytes():
    x = nn.randn(64, 64, requires_grad=True)
    with nn.profile() as p:
        loss = (x.tanh() @ x).exp().sum()
        loss.backward()
    stats = {r.name: r for r in p.rows()}
    assert set(stats) == {"Tanh", "MatMul", "Exp", "Sum"}
    assert all(r.calls == 1 for r in stats.values())
    assert stats["Tanh"].saved_bytes == 64 * 64 * 4  # tanh keeps only its output
    assert stats["MatMul"].backward_s > 0 and stats["Exp"].forward_s > 0
    table = p.table()
    assert table.splitlines()[0].split()[:2] == ["op", "calls"]
    assert len(table.splitlines()) == 5
    np.testing.assert_allclose(sum(float(line.split()[4].rstrip("%")) for line in table.splitlines()[1:]), 100,
                               atol=0.5)


def test_profile_is_off_outside_its_block():
    with nn.profile() as p:
        pass
    nn.randn(3, requires_grad=True).exp().sum().backward()
    assert p.rows() == []


def test_two_profilers_can_run_at_once_each_counting_its_own_block():
    x = nn.randn(8, requires_grad=True)
    with nn.profile() as outer:
        x.exp()
        with nn.profile() as inner:
            x.tanh()
    assert isinstance(outer, nn.FunctionHook)
    assert {r.name: r.calls for r in outer.rows()} == {"Exp": 1, "Tanh": 1}
    assert {r.name: r.calls for r in inner.rows()} == {"Tanh": 1}


def test_profile_counts_the_ops_a_checkpoint_recomputes_in_its_backward():
    x = nn.randn(16, requires_grad=True)
    with nn.profile() as p:
        nn.checkpoint(lambda t: t.exp(), x).sum().backward()
    stats = {r.name: r for r in p.rows()}
    assert stats["Exp"].calls == 2  # once in the forward pass, once recomputed in backward
    assert stats["Checkpoint"].backward_s >= stats["Exp"].backward_s  # the nested op's time is inside its parent's
