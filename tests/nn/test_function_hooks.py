"""Function hooks (nn.FunctionHook): callbacks around every op's forward and backward while ``with hook:`` runs."""

from __future__ import annotations

import numpy as np
import pytest

import nn
from nn.checkpoint import checkpoint
from nn.function import active_hooks


class Recorder(nn.FunctionHook):
    """Appends ``(label, callback, op name)`` to a shared log for every callback."""

    def __init__(self, label: str, log: list) -> None:
        self.label, self.log = label, log

    def forward_preprocess(self, fn, inputs):
        self.log.append((self.label, "forward_pre", fn.name))

    def forward_postprocess(self, fn, inputs, output):
        self.log.append((self.label, "forward_post", fn.name))

    def backward_preprocess(self, fn, grad):
        self.log.append((self.label, "backward_pre", fn.name))

    def backward_postprocess(self, fn, grad, input_grads):
        self.log.append((self.label, "backward_post", fn.name))


def _mul_then_sum(x):
    loss = (x * 3.0).sum()
    loss.backward()
    return loss


def test_callbacks_come_in_order_around_each_forward_and_backward():
    log: list = []
    x = nn.randn(2, 3, requires_grad=True)
    with Recorder("a", log):
        _mul_then_sum(x)
    assert log == [("a", "forward_pre", "Mul"), ("a", "forward_post", "Mul"),
                   ("a", "forward_pre", "Sum"), ("a", "forward_post", "Sum"),
                   ("a", "backward_pre", "Sum"), ("a", "backward_post", "Sum"),
                   ("a", "backward_pre", "Mul"), ("a", "backward_post", "Mul")]


def test_callbacks_get_the_op_and_the_arrays_it_sees():
    seen: dict = {}

    class Spy(nn.FunctionHook):
        def forward_preprocess(self, fn, inputs):
            seen["pre_inputs"] = list(inputs)

        def forward_postprocess(self, fn, inputs, output):
            seen["fn"], seen["inputs"], seen["output"] = fn, list(inputs), output
            seen["saved"] = fn.saved_arrays

        def backward_preprocess(self, fn, grad):
            seen["grad"] = grad

        def backward_postprocess(self, fn, grad, input_grads):
            seen["backward_fn"], seen["input_grads"] = fn, input_grads
            seen["backward_inputs"] = fn.inputs

    x, w = nn.randn(2, 3, requires_grad=True), nn.randn(3, 4)
    with Spy():
        y = x @ w
        y.backward(np.ones((2, 4), dtype=np.float32))
    assert seen["fn"] is y.grad_fn is seen["backward_fn"] and seen["fn"].name == "MatMul"
    assert seen["pre_inputs"][0] is x.data and seen["inputs"][1] is w.data
    assert seen["output"] is y.data
    assert seen["saved"][0] is x.data and seen["saved"][1] is w.data  # saved by forward, before postprocess
    np.testing.assert_array_equal(seen["grad"], np.ones((2, 4)))
    assert seen["backward_inputs"][0] is x  # the inputs are still there during backward
    assert isinstance(seen["input_grads"], tuple) and len(seen["input_grads"]) == 2
    np.testing.assert_array_equal(seen["input_grads"][0], x.grad.numpy())
    assert seen["input_grads"][1] is None  # w needs no gradient


def test_a_full_reduction_reaches_the_hook_as_a_zero_dimensional_array():
    outputs = []

    class Outputs(nn.FunctionHook):
        def forward_postprocess(self, fn, inputs, output):
            outputs.append(output)

    with Outputs():
        nn.ones(3).sum()
    assert isinstance(outputs[0], np.ndarray) and outputs[0].shape == ()


def test_several_hooks_nest_like_with_blocks():
    log: list = []
    x = nn.randn(3, requires_grad=True)
    with Recorder("outer", log), Recorder("inner", log):
        x.exp().sum().backward()
    exp_forward = [entry for entry in log if entry[2] == "Exp" and entry[1].startswith("forward")]
    exp_backward = [entry for entry in log if entry[2] == "Exp" and entry[1].startswith("backward")]
    assert exp_forward == [("outer", "forward_pre", "Exp"), ("inner", "forward_pre", "Exp"),
                           ("inner", "forward_post", "Exp"), ("outer", "forward_post", "Exp")]
    assert exp_backward == [("outer", "backward_pre", "Exp"), ("inner", "backward_pre", "Exp"),
                            ("inner", "backward_post", "Exp"), ("outer", "backward_post", "Exp")]


def test_a_hook_sees_only_the_ops_inside_its_block():
    log: list = []
    x = nn.randn(3, requires_grad=True)
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    with outer:
        a = x.exp()
        with inner:
            b = a.tanh()
            assert active_hooks() == (outer, inner)
        c = b.sum()
        assert active_hooks() == (outer,)
    assert active_hooks() == ()
    c.backward()  # after both blocks: no callbacks
    assert [(label, op) for label, callback, op in log if callback == "forward_pre"] == [
        ("outer", "Exp"), ("outer", "Tanh"), ("inner", "Tanh"), ("outer", "Sum")]
    assert not any(callback.startswith("backward") for _, callback, _ in log)


def test_a_hook_cannot_be_entered_twice_at_once_but_again_later():
    log: list = []
    hook = Recorder("a", log)
    with hook:
        with pytest.raises(RuntimeError, match="already active"):
            hook.__enter__()
        assert active_hooks() == (hook,)
    assert active_hooks() == ()
    with hook:
        nn.ones(2).exp()
    assert log == [("a", "forward_pre", "Exp"), ("a", "forward_post", "Exp")]


def test_an_exception_inside_the_block_removes_the_hook():
    log: list = []
    hook = Recorder("a", log)
    with pytest.raises(ValueError, match="boom"), hook:
        nn.ones(2).exp()
        raise ValueError("boom")
    assert active_hooks() == ()
    nn.ones(2).exp()
    assert len(log) == 2  # only the op inside the block


def test_a_failing_op_skips_its_postprocess_and_the_hook_stays_usable():
    log: list = []
    x = nn.ones(2, 3)
    with Recorder("a", log):
        with pytest.raises(ValueError):
            x.reshape(5)
        x.exp()
    assert log == [("a", "forward_pre", "Reshape"), ("a", "forward_pre", "Exp"), ("a", "forward_post", "Exp")]


def test_hooks_leave_values_and_gradients_unchanged():
    x = nn.randn(4, 5, requires_grad=True)
    plain = _mul_then_sum(x).item(), x.grad.numpy().copy()
    x.grad = None
    with Recorder("a", []):
        hooked = _mul_then_sum(x).item(), x.grad.numpy().copy()
    assert plain[0] == hooked[0]
    np.testing.assert_array_equal(plain[1], hooked[1])


def test_ops_run_inside_another_ops_backward_are_hooked_too():
    """Activation checkpointing recomputes its block inside Checkpoint.backward: those ops nest in its callbacks."""
    log: list = []
    x = nn.randn(3, requires_grad=True)
    with Recorder("a", log):
        checkpoint(lambda t: t.exp(), x).sum().backward()
    backward_part = log[log.index(("a", "backward_pre", "Checkpoint")):log.index(("a", "backward_post", "Checkpoint"))]
    assert ("a", "forward_pre", "Exp") in backward_part and ("a", "backward_post", "Exp") in backward_part
