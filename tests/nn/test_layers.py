"""Each layer of ``nn.layers`` equals its ``torch.nn`` counterpart, and Module behaves as torch's Module.

A layer and its torch twin get the same weights (ours, copied across through
``state_dict``), the same input and the same upstream gradient; outputs, input
gradients and every parameter gradient must agree (float64 to 1e-10, float32
to 1e-5 relative). The Module tests build one small network both ways and
compare what PyTorch users rely on: parameter and state_dict names, counts,
loading with its errors, modes, ``zero_grad`` and casting.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as tnn

import nn
from nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, ModuleList, RMSNorm, Sequential
from nn.module import Module, Parameter, StateDictError

RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_close(ours: np.ndarray, theirs: torch.Tensor, dtype, name: str = "") -> None:
    """Elementwise agreement to the dtype's relative tolerance, measured against the reference's largest value."""
    theirs = theirs.detach().numpy()
    assert ours.dtype == dtype, name
    assert ours.shape == theirs.shape, name
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL[dtype], atol=RTOL[dtype] * scale, err_msg=name)


def torch_twin(ours: Module, theirs: tnn.Module, dtype) -> tnn.Module:
    """Give ``theirs`` our weights by name (strict: names and shapes must match)."""
    theirs.to(getattr(torch, np.dtype(dtype).name))
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()})
    return theirs


def perturb(module: Module, seed: int) -> None:
    """Move every parameter off its initial value (norm weights off 1, biases off 0) so no term hides."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data[...] += rng.normal(0.0, 0.3, p.shape).astype(p.dtype)


# ---------------------------------------------------------------- layers against torch.nn
def _floats(shape, scale=1.0):
    return lambda rng: scale * rng.standard_normal(shape)


LAYER_CASES = {
    "linear": (lambda: Linear(5, 7), lambda: tnn.Linear(5, 7), _floats((2, 3, 5))),
    "linear_no_bias": (lambda: Linear(5, 7, bias=False), lambda: tnn.Linear(5, 7, bias=False), _floats((4, 5))),
    "embedding": (lambda: Embedding(11, 6), lambda: tnn.Embedding(11, 6),
                  lambda rng: rng.integers(0, 11, size=(3, 8))),  # 24 ids from 11 rows: repeats accumulate
    "layernorm": (lambda: LayerNorm(6), lambda: tnn.LayerNorm(6), _floats((2, 3, 6))),
    "layernorm_no_bias": (lambda: LayerNorm(6, bias=False), lambda: tnn.LayerNorm(6, bias=False),
                          _floats((2, 3, 6))),
    "layernorm_2d_eps": (lambda: LayerNorm((3, 4), eps=1e-3), lambda: tnn.LayerNorm((3, 4), eps=1e-3),
                         _floats((2, 3, 4), scale=0.05)),  # small inputs: eps matters
    "rmsnorm": (lambda: RMSNorm(6, eps=1e-6), lambda: tnn.RMSNorm(6, eps=1e-6), _floats((2, 3, 6))),
    # eps=None means the dtype's machine epsilon on both sides; inputs ~1e-4 make it count.
    "rmsnorm_default_eps": (lambda: RMSNorm(6), lambda: tnn.RMSNorm(6), _floats((2, 3, 6), scale=1e-4)),
    "gelu": (lambda: GELU(), lambda: tnn.GELU(), _floats((3, 10), scale=3.0)),
    "gelu_tanh": (lambda: GELU("tanh"), lambda: tnn.GELU(approximate="tanh"), _floats((3, 10), scale=3.0)),
    "sequential": (lambda: Sequential(Linear(5, 8), GELU("tanh"), Dropout(0.3), Linear(8, 3)),
                   lambda: tnn.Sequential(tnn.Linear(5, 8), tnn.GELU(approximate="tanh"), tnn.Dropout(0.3),
                                          tnn.Linear(8, 3)),
                   _floats((4, 5))),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_output_and_gradients_equal_pytorch(case, dtype):
    make_ours, make_theirs, make_input = LAYER_CASES[case]
    rng = np.random.default_rng(0)
    ours = make_ours().to(dtype).eval()  # eval: the Sequential's dropout must be the identity on both sides
    perturb(ours, seed=1)
    theirs = torch_twin(ours, make_theirs(), dtype).eval()
    x = make_input(rng)
    x = x.astype(dtype) if x.dtype.kind == "f" else x
    x_ours = nn.tensor(x, requires_grad=x.dtype.kind == "f")
    x_theirs = torch.tensor(x, requires_grad=x.dtype.kind == "f")

    out, ref = ours(x_ours), theirs(x_theirs)
    assert_close(out.numpy(), ref, dtype, "output")
    upstream = rng.standard_normal(ref.shape).astype(dtype)
    (out * nn.tensor(upstream)).sum().backward()
    (ref * torch.tensor(upstream)).sum().backward()

    if x_ours.requires_grad:
        assert_close(x_ours.grad.numpy(), x_theirs.grad, dtype, "input gradient")
    theirs_params = dict(theirs.named_parameters())
    assert [name for name, _ in ours.named_parameters()] == list(theirs_params)
    for name, p in ours.named_parameters():
        assert_close(p.grad.numpy(), theirs_params[name].grad, dtype, name)


def test_layer_initialisation_follows_pytorch_defaults():
    linear = Linear(400, 300)
    bound = 1 / np.sqrt(400)
    for p in (linear.weight, linear.bias):
        assert np.abs(p.numpy()).max() <= bound
    assert linear.weight.numpy().std() == pytest.approx(bound / np.sqrt(3), rel=0.02)  # U(-b, b) has std b/sqrt(3)
    assert Embedding(300, 400).weight.numpy().std() == pytest.approx(1.0, rel=0.02)
    norm = LayerNorm(8)
    np.testing.assert_array_equal(norm.weight.numpy(), np.ones(8, np.float32))
    np.testing.assert_array_equal(norm.bias.numpy(), np.zeros(8, np.float32))
    np.testing.assert_array_equal(RMSNorm(8).weight.numpy(), np.ones(8, np.float32))
    assert linear.weight.dtype == np.float32 and linear.weight.requires_grad


# ---------------------------------------------------------------- dropout
def test_dropout_in_eval_mode_is_the_identity():
    layer = Dropout(0.5).eval()
    x = nn.randn(4, 5, requires_grad=True)
    out = layer(x)
    np.testing.assert_array_equal(out.numpy(), x.numpy())
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((4, 5), np.float32))


def test_dropout_in_training_zeroes_a_fraction_p_and_scales_the_rest():
    p, n = 0.25, 100_000
    layer = Dropout(p)
    assert layer.training
    x = nn.ones(200, n // 200, dtype=np.float64, requires_grad=True)
    out = layer(x).numpy()
    kept = out != 0
    np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-15)  # survivors scaled by 1/(1-p)
    dropped = 1 - kept.mean()
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / n)  # binomial: 5 standard deviations
    assert abs(out.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)  # inverted dropout keeps the expectation


def test_dropout_gradient_uses_the_forward_mask():
    layer = Dropout(0.4)
    x = nn.randn(50, 40, dtype=np.float64, requires_grad=True)
    out = layer(x)
    upstream = np.random.default_rng(0).standard_normal((50, 40))
    (out * nn.tensor(upstream)).sum().backward()
    keep = out.numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), upstream * keep / 0.6, rtol=1e-15)
    np.testing.assert_allclose(out.numpy(), x.numpy() * keep / 0.6, rtol=1e-15)


def test_dropout_masks_follow_the_seed_and_differ_between_calls():
    layer = Dropout(0.5)
    x = nn.ones(1000)
    nn.manual_seed(7)
    first, second = layer(x).numpy(), layer(x).numpy()
    nn.manual_seed(7)
    np.testing.assert_array_equal(layer(x).numpy(), first)
    assert not np.array_equal(first, second)


def test_dropout_edge_probabilities():
    x = nn.randn(10, 10)
    np.testing.assert_array_equal(Dropout(0.0)(x).numpy(), x.numpy())
    x = nn.randn(10, 10, requires_grad=True)
    out = Dropout(1.0)(x)
    out.sum().backward()
    np.testing.assert_array_equal(out.numpy(), np.zeros((10, 10), np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((10, 10), np.float32))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            Dropout(p)


# ---------------------------------------------------------------- containers
def test_module_list_indexes_iterates_and_names_like_pytorch():
    layers = ModuleList([Linear(3, 4), LayerNorm(4)])
    layers.append(Linear(4, 2, bias=False))
    reference = tnn.ModuleList([tnn.Linear(3, 4), tnn.LayerNorm(4)])
    reference.append(tnn.Linear(4, 2, bias=False))
    assert len(layers) == 3
    assert isinstance(layers[1], LayerNorm) and layers[-1] is list(layers)[2]
    assert [n for n, _ in layers.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert layers.num_parameters() == sum(p.numel() for p in reference.parameters())


# ---------------------------------------------------------------- Module API, one network built both ways
class TinyNet(Module):
    """Embedding -> blocks of (LayerNorm, Linear) -> head tied to the embedding; with two buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = Embedding(10, 4)
        self.blocks = ModuleList([Sequential(LayerNorm(4), Linear(4, 4)) for _ in range(2)])
        self.drop = Dropout(0.5)
        self.head = Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", nn.tensor(np.full(4, 0.5, np.float32)))
        self.register_buffer("steps", nn.tensor(np.arange(3)), persistent=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.drop(x) * self.scale)


class TorchTinyNet(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = tnn.Embedding(10, 4)
        self.blocks = tnn.ModuleList([tnn.Sequential(tnn.LayerNorm(4), tnn.Linear(4, 4)) for _ in range(2)])
        self.drop = tnn.Dropout(0.5)
        self.head = tnn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.full((4,), 0.5))
        self.register_buffer("steps", torch.arange(3), persistent=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.drop(x) * self.scale)


def test_parameter_buffer_and_state_dict_names_match_pytorch():
    ours, theirs = TinyNet(), TorchTinyNet()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert list(ours.state_dict()) == list(theirs.state_dict())  # tied weight under both names, no "steps"
    assert ours.state_dict()["head.weight"] is ours.state_dict()["embed.weight"]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]


def test_num_parameters_counts_a_tied_weight_once():
    ours, theirs = TinyNet(), TorchTinyNet()
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters()) == 10 * 4 + 2 * (4 + 4 + 16 + 4)
    ours.blocks[0][1].weight.requires_grad = False
    assert ours.num_parameters(trainable_only=True) == ours.num_parameters() - 16


def test_torch_state_dict_loads_in_place_and_gives_the_same_output():
    ours, theirs = TinyNet().eval(), TorchTinyNet().eval()
    before = {name: p for name, p in ours.named_parameters()}
    missing, unexpected = ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert missing == [] and unexpected == []
    assert {name: p for name, p in ours.named_parameters()} == before  # same objects: optimizers keep them
    assert all(before[name] is p for name, p in ours.named_parameters())
    assert ours.head.weight is ours.embed.weight
    idx = np.random.default_rng(0).integers(0, 10, size=(2, 5))
    assert_close(ours(nn.tensor(idx)).numpy(), theirs(torch.tensor(idx)), np.float32)


def test_state_dict_round_trip_between_two_of_our_modules():
    source, target = TinyNet(), TinyNet()
    perturb(source, seed=3)
    target.load_state_dict(source.state_dict())
    loaded = target.state_dict()
    for name, value in source.state_dict().items():
        assert loaded[name] is not value  # copied into the target's own tensors
        np.testing.assert_array_equal(loaded[name].numpy(), value.numpy(), err_msg=name)
    assert target.head.weight is target.embed.weight


def test_load_state_dict_errors_name_every_bad_key_and_change_nothing():
    net = TinyNet()
    good = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    snapshot = {k: v.numpy().copy() for k, v in net.state_dict().items()}

    bad = dict(good)
    del bad["blocks.1.0.bias"]
    bad["blocks.0.1.weight"] = np.zeros((5, 4), np.float32)
    bad["extra.weight"] = np.zeros(3, np.float32)
    for k in bad:
        if k != "blocks.0.1.weight":
            bad[k] = bad[k] + 1
    with pytest.raises(StateDictError) as err:
        net.load_state_dict(bad)
    message = str(err.value)
    assert isinstance(err.value, KeyError)
    assert "missing: blocks.1.0.bias" in message
    assert "unexpected: extra.weight" in message
    assert "blocks.0.1.weight (checkpoint (5, 4), model (4, 4))" in message
    for k, v in net.state_dict().items():  # all checks happen before any copy
        np.testing.assert_array_equal(v.numpy(), snapshot[k], err_msg=k)


def test_non_strict_loading_reports_missing_and_unexpected_but_never_accepts_a_wrong_shape():
    net = TinyNet()
    partial = {"embed.weight": np.ones((10, 4), np.float32), "head.weight": np.ones((10, 4), np.float32),
               "unknown": np.zeros(1)}
    missing, unexpected = net.load_state_dict(partial, strict=False)
    assert unexpected == ["unknown"]
    assert set(missing) == set(net.state_dict()) - {"embed.weight", "head.weight"}
    np.testing.assert_array_equal(net.embed.weight.numpy(), np.ones((10, 4), np.float32))
    with pytest.raises(StateDictError, match="mis-shaped: scale"):
        net.load_state_dict({"scale": np.zeros(5, np.float32)}, strict=False)


def test_train_and_eval_set_the_flag_on_every_submodule():
    net = TinyNet()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    idx = nn.tensor(np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(net(idx).numpy(), net(idx).numpy())  # dropout off: deterministic
    net.train()
    assert all(m.training for m in net.modules())
    assert not np.array_equal(net(idx).numpy(), net(idx).numpy())  # dropout on


def test_zero_grad_forgets_every_gradient():
    net = TinyNet()
    net(nn.tensor(np.arange(6).reshape(2, 3))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_float64_casts_floating_tensors_in_place_and_keeps_values():
    net = TinyNet().eval()
    idx = nn.tensor(np.arange(6).reshape(2, 3))
    net(idx).sum().backward()
    params = {name: (p, p.numpy().copy()) for name, p in net.named_parameters()}
    assert net.to(nn.float64) is net
    for name, p in net.named_parameters():
        assert p is params[name][0] and isinstance(p, Parameter)
        assert p.dtype == np.float64 and p.grad.dtype == np.float64
        np.testing.assert_array_equal(p.numpy(), params[name][1].astype(np.float64))
    assert net.scale.dtype == np.float64
    assert net.steps.dtype == np.int64  # integer buffers are not floats to cast
    assert net(idx).dtype == np.float64


def test_column_major_weights_changes_the_layout_not_the_results():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    x = nn.Tensor(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    before = model(x).numpy()
    assert nn.layers.column_major_weights(model) is model
    for p in model.parameters():
        if p.data.ndim == 2:
            assert p.data.flags.f_contiguous and p.data.T.flags.c_contiguous
    np.testing.assert_allclose(model(x).numpy(), before, rtol=1e-6, atol=1e-7)
    loss = model(x).sum()  # gradients still flow, in the parameters' shapes
    loss.backward()
    assert all(p.grad.shape == p.shape for p in model.parameters())


def test_set_submodule_replaces_a_nested_layer_in_place_as_torch_does():
    nn.manual_seed(0)
    ours = Sequential(Linear(4, 4), Sequential(Linear(4, 3), GELU()))
    theirs = tnn.Sequential(tnn.Linear(4, 4), tnn.Sequential(tnn.Linear(4, 3), tnn.GELU()))
    ours.set_submodule("1.0", Linear(4, 5))
    theirs.set_submodule("1.0", tnn.Linear(4, 5))
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    assert [p.shape for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    with pytest.raises(AttributeError, match="no sub-module '7'"):
        ours.set_submodule("7.0", Linear(1, 1))
