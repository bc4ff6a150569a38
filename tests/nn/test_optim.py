"""Optimizers, gradient clipping and schedules, checked against torch.optim step by step."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import nn
from nn.kernels.adamw import adamw_step
from nn.module import Parameter
from nn.optim import (
    SGD,
    AdamW,
    clip_grad_norm_,
    learning_rate,
    param_groups_for_weight_decay,
    set_lr,
)

SHAPES = {"w": (4, 3), "v": (2, 2, 2), "b": (3,), "frozen": (5,)}  # "frozen" never gets a gradient

# name: (our class, torch's class, constructor keywords); every case runs with two parameter groups.
OPTIMIZERS = {
    "sgd": (SGD, torch.optim.SGD, {"lr": 0.03}),
    "sgd_momentum": (SGD, torch.optim.SGD, {"lr": 0.03, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    "sgd_nesterov": (SGD, torch.optim.SGD, {"lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "adamw": (AdamW, torch.optim.AdamW, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    "adamw_defaults": (AdamW, torch.optim.AdamW, {}),
}


def _groups(params: dict) -> list[dict]:
    """Two groups: the first overrides lr and weight decay, the second takes the optimizer's defaults."""
    return [{"params": [params["w"], params["v"]], "lr": 0.1, "weight_decay": 0.1},
            {"params": [params["b"], params["frozen"]]}]


def _problem(dtype, steps: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Initial values and, per step, the noise n of the loss sum(p^2 / 2 + n * p), whose gradient is p + n."""
    rng = np.random.default_rng(seed)
    init = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    noise = [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]
    return init, noise


def _train(params: dict, optimizer, noise: list[dict], constant) -> None:
    """One zero_grad / backward / step per noise draw, with either engine (``constant`` wraps an array)."""
    for n in noise:
        optimizer.zero_grad()
        loss = sum((0.5 * p * p + p * constant(n[k])).sum() for k, p in params.items() if k != "frozen")
        loss.backward()
        optimizer.step()


def _tolerance(dtype) -> float:
    return 1e-10 if dtype == np.float64 else 1e-5


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", OPTIMIZERS)
def test_optimizer_follows_torch_for_20_steps_with_two_groups(case, dtype):
    ours_cls, torch_cls, kwargs = OPTIMIZERS[case]
    init, noise = _problem(dtype, steps=20)
    ours = {k: Parameter(v.copy()) for k, v in init.items()}
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt, ref = ours_cls(_groups(ours), **kwargs), torch_cls(_groups(theirs), **kwargs)
    rtol = _tolerance(dtype)
    for n in noise:
        _train(ours, opt, [n], nn.tensor)
        _train(theirs, ref, [n], torch.from_numpy)
        for k in SHAPES:
            expected = theirs[k].detach().numpy()
            assert ours[k].dtype == dtype
            np.testing.assert_allclose(ours[k].numpy(), expected, rtol=rtol, atol=rtol * np.abs(expected).max(),
                                       err_msg=k)
    np.testing.assert_array_equal(ours["frozen"].numpy(), init["frozen"])

    # The state_dicts agree in layout (indices, per-parameter keys) and in value.
    mine, reference = opt.state_dict(), ref.state_dict()
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in reference["param_groups"]]
    for g, r in zip(mine["param_groups"], reference["param_groups"], strict=True):
        assert {k: g[k] for k in g if k != "params"} == {k: r[k] for k in g if k != "params"}
    assert mine["state"].keys() == reference["state"].keys()
    for i, state in mine["state"].items():
        assert state.keys() == reference["state"][i].keys()
        for key, value in state.items():
            expected = reference["state"][i][key].numpy()
            if key != "step":
                assert value.dtype == dtype
            np.testing.assert_allclose(value, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("case", ["sgd_momentum", "adamw"])
def test_state_dict_round_trip_continues_identically(case):
    cls, _, kwargs = OPTIMIZERS[case]
    init, noise = _problem(np.float64, steps=20, seed=1)
    params = {k: Parameter(v.copy()) for k, v in init.items()}
    opt = cls(_groups(params), **kwargs)
    _train(params, opt, noise[:10], nn.tensor)

    saved = copy.deepcopy(opt.state_dict())
    resumed_params = {k: Parameter(p.numpy().copy()) for k, p in params.items()}
    resumed = cls(_groups(resumed_params), lr=123.0)  # hyperparameters come back from the state_dict
    resumed.load_state_dict(saved)
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in opt.param_groups]

    _train(params, opt, noise[10:], nn.tensor)
    _train(resumed_params, resumed, noise[10:], nn.tensor)
    for k in SHAPES:
        np.testing.assert_array_equal(resumed_params[k].numpy(), params[k].numpy(), err_msg=k)


def test_load_state_dict_rejects_a_mismatch_and_changes_nothing():
    init, noise = _problem(np.float64, steps=2)
    params = {k: Parameter(v.copy()) for k, v in init.items()}
    opt = AdamW(_groups(params))
    _train(params, opt, noise, nn.tensor)
    good = opt.state_dict()

    one_group = AdamW(list(params.values()))
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer has 1"):
        one_group.load_state_dict(good)

    smaller = AdamW([{"params": [params["w"], params["v"]]}, {"params": [params["b"]]}])
    with pytest.raises(ValueError, match="parameter group 1 has 2 parameters in the state_dict, 1 in this"):
        smaller.load_state_dict(good)

    swapped = {"w": params["w"], "v": params["v"], "b": Parameter(np.zeros(4)), "frozen": params["frozen"]}
    other = AdamW(_groups(swapped))
    with pytest.raises(ValueError, match=r"shape \(3,\), the parameter has shape \(4,\)"):
        other.load_state_dict(good)
    assert other.state == {}

    with pytest.raises(ValueError, match="not an optimizer state_dict"):
        opt.load_state_dict({"weights": []})
    stray = {"state": {7: {"step": 1}}, "param_groups": good["param_groups"]}
    with pytest.raises(ValueError, match="state for parameter 7"):
        opt.load_state_dict(stray)


def test_step_updates_in_place_and_zero_grad_forgets():
    p = Parameter(np.ones((2, 3), dtype=np.float32))
    array, view = p.data, p.data[0]
    opt = AdamW([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    assert p.data is array and view[0] < 1  # same array, so views (tied weights) see the update
    assert opt.state[p]["exp_avg"].dtype == np.float32
    opt.zero_grad()
    assert p.grad is None


def test_adamw_step_is_the_kernel_modules_update():
    """One AdamW update in the engine: the optimizer's step is nn.kernels.adamw.adamw_step, bit for bit."""
    rng = np.random.default_rng(4)
    start, grads = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((3, 5, 7)).astype(np.float32)
    p = Parameter(start.copy())
    opt = AdamW([p], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    param, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for step, g in enumerate(grads, start=1):
        p.grad = nn.tensor(g)
        opt.step()
        adamw_step(param, g, m, v, step, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05)
    np.testing.assert_array_equal(p.numpy(), param)
    np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"], v)


def test_adamw_updates_a_strided_parameter_where_it_lives():
    storage = np.arange(24, dtype=np.float64).reshape(4, 6) / 10
    p, q = Parameter(storage[:, ::2].T), Parameter(np.ascontiguousarray(storage[:, ::2].T))  # (3, 4): a view, a copy
    ours, theirs = AdamW([p], lr=0.1), AdamW([q], lr=0.1)
    for _ in range(3):
        for t, opt in ((p, ours), (q, theirs)):
            opt.zero_grad()
            (t * t).sum().backward()
            opt.step()
    np.testing.assert_array_equal(storage[:, ::2].T, q.numpy())  # the view wrote through to its storage
    assert not np.allclose(q.numpy(), np.arange(24).reshape(4, 6)[:, ::2].T / 10)


def test_constructor_errors():
    p = Parameter(np.ones(3))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(0.9, 1.0))


# ---------------------------------------------------------------- clip_grad_norm_
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipping, and a bound the gradients are already inside
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_equals_torch(max_norm, dtype):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype(dtype) for s in [(4, 5), (5,), (3, 2, 2)]]
    ours = [Parameter(np.zeros_like(g)) for g in grads] + [Parameter(np.zeros(2, dtype=dtype))]  # last: no grad
    theirs = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
    for p, t, g in zip(ours, theirs, grads, strict=False):
        p.grad, t.grad = nn.tensor(g.copy()), torch.from_numpy(g.copy())
    norm = clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    rtol = _tolerance(dtype)
    assert isinstance(norm, float)
    np.testing.assert_allclose(norm, expected.item(), rtol=rtol)
    for p, t in zip(ours, theirs, strict=False):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=rtol)
    assert ours[-1].grad is None


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_grad_norm_with_a_non_finite_gradient_behaves_like_torch(bad):
    g = np.array([1.0, bad, 2.0])
    p, t = Parameter(np.zeros(3)), torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad, t.grad = nn.tensor(g.copy()), torch.from_numpy(g.copy())
    norm = clip_grad_norm_([p], 1.0)
    expected = torch.nn.utils.clip_grad_norm_([t], 1.0)
    np.testing.assert_array_equal(norm, expected.item())
    np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())


def test_clip_grad_norm_of_no_gradients_is_zero():
    assert clip_grad_norm_([Parameter(np.ones(2))], 1.0) == 0.0


@pytest.mark.parametrize("bad", [None, math.inf, math.nan])
def test_clip_grad_norm_with_an_infinite_bound_only_measures(bad):
    g = np.array([3.0, 4.0, 0.0 if bad is None else bad])
    p = Parameter(np.zeros(3))
    p.grad = nn.tensor(g.copy())
    norm = clip_grad_norm_([p], math.inf)
    np.testing.assert_array_equal(norm, 5.0 if bad is None else bad)
    np.testing.assert_array_equal(p.grad.numpy(), g)  # untouched, even where torch would scale by nan


class TwinGroup:
    """A two-process tensor-parallel group in one process: the other member's slices have the same squares,
    so ``all_reduce(op="sum")`` doubles. It records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, str]] = []

    def all_reduce(self, array, op: str = "sum"):
        self.calls.append((array.copy(), op))
        array *= 2
        return array


def test_clip_grad_norm_over_a_group_sums_split_parameters_and_counts_whole_ones_once():
    rng = np.random.default_rng(5)
    split_grad, whole_grad = rng.standard_normal((4, 3)), rng.standard_normal(3)
    split, whole = Parameter(np.zeros((4, 3))), Parameter(np.zeros(3))
    split.tensor_parallel = (0, (8,))  # this process's half of an (8, 3) weight, as nn.distributed marks it
    split.grad, whole.grad = nn.tensor(split_grad.copy()), nn.tensor(whole_grad.copy())
    group = TwinGroup()

    norm = clip_grad_norm_([split, whole], math.inf, comm=group)
    expected = math.sqrt(2 * np.sum(split_grad**2) + np.sum(whole_grad**2))
    assert norm == pytest.approx(expected, rel=1e-12)
    (sent, op), = group.calls  # one all-reduce, of the split parameters' squares only, in float64
    assert op == "sum" and sent.dtype == np.float64 and sent[0] == pytest.approx(np.sum(split_grad**2), rel=1e-12)

    assert clip_grad_norm_([split, whole], 1.0, comm=group) == pytest.approx(expected, rel=1e-12)
    scale = 1.0 / (expected + 1e-6)  # both kinds scaled by the one global factor
    np.testing.assert_allclose(split.grad.numpy(), split_grad * scale, rtol=1e-12)
    np.testing.assert_allclose(whole.grad.numpy(), whole_grad * scale, rtol=1e-12)


def test_clip_grad_norm_joins_the_group_even_without_gradients():
    group = TwinGroup()
    assert clip_grad_norm_([Parameter(np.ones(2))], 1.0, comm=group) == 0.0
    assert len(group.calls) == 1  # the other processes wait for this all-reduce


# ---------------------------------------------------------------- schedules
def test_cosine_falls_from_max_to_min_over_the_run():
    lr = [learning_rate("cosine", p, 1000, max_lr=1.0, min_lr=0.1, warmup_steps=10) for p in (0, 0.25, 0.5, 1)]
    assert lr == pytest.approx([1.0, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 0.55, 0.1])
    decay = [learning_rate("cosine", p / 100, 1000, max_lr=1.0, min_lr=0.1) for p in range(101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert learning_rate("cosine", 7.0, 1000, max_lr=1.0, min_lr=0.1) == pytest.approx(0.1)  # progress is clamped


def test_warmup_is_linear_in_steps_and_ends_at_a_tenth_of_the_run():
    assert learning_rate("constant", 0.0, 0, max_lr=2.0, warmup_steps=4) == pytest.approx(0.5)  # the first step moves
    assert learning_rate("constant", 0.0, 3, max_lr=2.0, warmup_steps=4) == pytest.approx(2.0)
    assert learning_rate("constant", 0.05, 0, max_lr=2.0, warmup_steps=100) == pytest.approx(1.0)  # half the tenth
    assert learning_rate("constant", 0.1, 0, max_lr=2.0, warmup_steps=100) == pytest.approx(2.0)
    assert learning_rate("constant", 0.0, 0, max_lr=2.0) == 2.0  # no warmup


def test_wsd_holds_then_falls_over_the_last_fifth():
    lr = [learning_rate("wsd", p, 1000, max_lr=1.0, min_lr=0.2, warmup_steps=1) for p in (0.5, 0.8, 0.9, 1.0)]
    assert lr == pytest.approx([1.0, 1.0, 0.6, 0.2])


def test_an_unknown_schedule_or_a_nan_progress_is_refused():
    with pytest.raises(ValueError, match="cosine, constant, wsd"):
        learning_rate("linear", 0.5, 0, max_lr=1.0)
    with pytest.raises(ValueError, match="finite"):
        learning_rate("cosine", math.nan, 0, max_lr=1.0)


def test_set_lr_sets_every_group():
    opt = SGD(_groups({k: Parameter(np.zeros(s)) for k, s in SHAPES.items()}), lr=0.5)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


# ---------------------------------------------------------------- weight-decay groups
def test_param_groups_for_weight_decay_splits_matrices_from_vectors():
    named = {"wte": Parameter(np.zeros((10, 4))), "attn.weight": Parameter(np.zeros((4, 4))),
             "attn.bias": Parameter(np.zeros(4)), "ln.weight": Parameter(np.ones(4)),
             "frozen": Parameter(np.zeros((3, 3)), requires_grad=False)}
    decay, no_decay = param_groups_for_weight_decay(named.items(), weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] == [named["wte"], named["attn.weight"]]
    assert no_decay["params"] == [named["attn.bias"], named["ln.weight"]]
    assert AdamW([decay, no_decay]).param_groups[1]["weight_decay"] == 0.0
