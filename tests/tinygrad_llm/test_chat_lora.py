"""LoRA: the adapted layer against PyTorch, the adapted GPT against the base one, merging, training, adapter files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nn
from nn.layers import Linear, Sequential
from nn.optim import AdamW
from nn.tensor import Tensor
from tinygrad_llm.chat.lora import (
    DEFAULT_TARGETS,
    TARGETS,
    LoRAError,
    LoRALinear,
    apply_lora,
    attach_adapter,
    load_adapter,
    lora_config,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from tinygrad_llm.model import GPT, GPTConfig

VOCAB, BLOCK = 96, 16


def tiny_gpt(dtype: str = "float32", **overrides: object) -> GPT:
    nn.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=VOCAB, block_size=BLOCK, **overrides)).to(dtype)


def batch(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(2, BLOCK + 1))
    return ids[:, :-1], ids[:, 1:]


def randomize_adapters(model: GPT, std: float = 0.05) -> None:
    """Nonzero B (and a fresh A), so the adapters change the output and every check has something to see."""
    for name, p in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            p.normal_(0.0, std)


def logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    with nn.no_grad():
        return model(idx)[0].numpy()


def test_lora_linear_matches_the_dense_update_in_torch():
    rank, alpha = 3, 6.0
    base = Linear(5, 7, dtype=np.float64)
    layer = LoRALinear(base, rank, alpha)
    assert layer.lora_A.shape == (rank, 5) and layer.lora_B.shape == (7, rank)
    assert not layer.lora_B.numpy().any()
    assert np.abs(layer.lora_A.numpy()).max() <= 1 / np.sqrt(5)
    layer.lora_B.normal_()
    rng = np.random.default_rng(0)
    x_np, g_np = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 7))

    x = Tensor(x_np.copy(), requires_grad=True)
    y = layer(x)
    (y * Tensor(g_np)).sum().backward()

    w, b = torch.tensor(base.weight.numpy()), torch.tensor(base.bias.numpy())
    a_t = torch.tensor(layer.lora_A.numpy(), requires_grad=True)
    b_t = torch.tensor(layer.lora_B.numpy(), requires_grad=True)
    x_t = torch.tensor(x_np, requires_grad=True)
    y_t = x_t @ (w + alpha / rank * b_t @ a_t).T + b
    (y_t * torch.tensor(g_np)).sum().backward()

    np.testing.assert_allclose(y.numpy(), y_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.lora_A.grad.numpy(), a_t.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.lora_B.grad.numpy(), b_t.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert layer.weight is base.weight and layer.weight.grad is None and layer.bias.grad is None
    assert not layer.weight.requires_grad and not layer.bias.requires_grad


def test_apply_lora_starts_at_the_base_model_and_trains_only_adapters():
    model = tiny_gpt("float64")
    idx, targets = batch()
    before = logits(model, idx)
    base_keys = list(model.state_dict())
    base_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    adapters = apply_lora(model, rank=4, alpha=8.0)
    names = [name for name, _ in adapters]
    assert names == [f"h.{i}.attn.{layer}.lora_{m}" for i in range(2) for layer in ("c_attn", "c_proj")
                     for m in "AB"]
    np.testing.assert_array_equal(logits(model, idx), before)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    # The base names are unchanged, so a base checkpoint loads with strict=False, missing exactly the adapters.
    assert [k for k in model.state_dict() if k not in names] == base_keys
    missing, unexpected = model.load_state_dict(base_state, strict=False)
    assert missing == names and unexpected == []

    randomize_adapters(model)
    model(idx, targets)[1].backward()
    for name, p in model.named_parameters():
        if name in names:
            assert p.grad is not None and np.abs(p.grad.numpy()).sum() > 0, name
        else:
            assert p.grad is None, name


def test_merge_keeps_the_logits_and_gives_a_plain_gpt():
    model = tiny_gpt("float32", tie_weights=False)
    idx, _ = batch()
    base = logits(model, idx)
    plain_keys = list(model.state_dict())
    apply_lora(model, rank=4, alpha=8.0, targets=TARGETS)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4 * 2 + 1
    randomize_adapters(model)
    adapted = logits(model, idx)
    assert np.abs(adapted - base).max() > 1e-2  # the adapters matter, so the merge has something to keep

    assert merge_lora(model) is model
    np.testing.assert_allclose(logits(model, idx), adapted, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == plain_keys
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.h[0].attn.c_attn) is Linear and type(model.lm_head) is Linear
    assert not any(p.requires_grad for p in model.parameters())  # merging unfreezes nothing
    fresh = GPT(model.config)
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(logits(fresh, idx), logits(model, idx))
    with pytest.raises(LoRAError, match="no LoRA adapters"):
        merge_lora(model)


def test_adamw_on_adapters_lowers_the_loss_and_leaves_base_weights_bit_identical():
    model = tiny_gpt("float32")
    idx, targets = batch()
    base_before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    adapters = apply_lora(model, rank=4, alpha=8.0, targets=("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"))
    optimizer = AdamW([p for _, p in adapters], lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    after = model.state_dict()
    for key, value in base_before.items():
        assert np.array_equal(after[key].numpy(), value), key


def test_adapter_round_trip_reproduces_the_adapted_model(tmp_path):
    model = tiny_gpt("float32")
    base_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    apply_lora(model, rank=2, alpha=4, targets=("c_fc", "c_attn"))
    randomize_adapters(model)
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, {"steps": 3, "data": "alpaca"})

    arrays, config = load_adapter(path)
    assert config == {"rank": 2, "alpha": 4.0, "targets": ["c_attn", "c_fc"], "info": {"steps": 3, "data": "alpaca"}}
    assert {k: v for k, v in config.items() if k != "info"} == lora_config(model)
    expected = lora_state_dict(model)
    assert arrays.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(arrays[name], expected[name])

    other = tiny_gpt("float32")
    other.load_state_dict(base_state)
    adapters = attach_adapter(other, arrays, config)
    assert [n for n, _ in adapters] == list(expected)
    idx, _ = batch()
    np.testing.assert_array_equal(logits(other, idx), logits(model, idx))


def test_damaged_or_foreign_adapter_files_are_one_line_errors(tmp_path):
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=2.0)
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    foreign = tmp_path / "model.safetensors"
    nn.state.save(foreign, tiny_gpt().state_dict())
    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    for bad, expected in [(truncated, "truncated"), (foreign, "not a tinygrad-llm LoRA adapter"),
                          (flipped, "damaged"), (tmp_path / "missing.safetensors", "no such file")]:
        with pytest.raises(LoRAError) as info:
            load_adapter(bad)
        message = str(info.value)
        assert "\n" not in message and str(bad) in message, message
        if expected != "truncated":
            assert expected in message, message


def test_an_adapter_for_another_model_size_is_refused_and_leaves_the_model_alone(tmp_path):
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=2.0)
    arrays, config = lora_state_dict(model), lora_config(model)
    other = tiny_gpt(n_embd=32)
    with pytest.raises(LoRAError, match=r"does not fit this model: h\.0\.attn\.c_attn\.lora_A"):
        attach_adapter(other, arrays, config)
    assert not any(isinstance(m, LoRALinear) for m in other.modules())
    assert all(p.requires_grad for p in other.parameters())
    assert list(other.state_dict()) == list(tiny_gpt(n_embd=32).state_dict())
    with pytest.raises(LoRAError, match="it has no"):
        attach_adapter(tiny_gpt(), {k: v for k, v in arrays.items() if "h.1" not in k}, config)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=-2), "rank must be a positive integer"),
    (dict(rank=2.5), "rank must be a positive integer"),
    (dict(rank=True), "rank must be a positive integer"),
    (dict(rank=65), "exceeds the smaller side"),
    (dict(alpha=0), "alpha must be a positive number"),
    (dict(alpha=-1.0), "alpha must be a positive number"),
    (dict(alpha=float("nan")), "alpha must be a positive number"),
    (dict(targets=["q_proj"]), "unknown LoRA target 'q_proj'"),
    (dict(targets="c_proj"), "unknown LoRA target 'c_proj'"),
    (dict(targets=[]), "no LoRA targets"),
    (dict(targets=["lm_head"]), "tied weights"),
])
def test_bad_arguments_are_lora_errors(kwargs, message):
    model = tiny_gpt()
    before = [(name, p.requires_grad) for name, p in model.named_parameters()]
    with pytest.raises(LoRAError, match=message):
        apply_lora(model, **{"rank": 4, "alpha": 8.0, **kwargs})
    assert [(name, p.requires_grad) for name, p in model.named_parameters()] == before  # nothing changed


def test_lora_error_is_a_value_error_and_other_misuse_is_refused():
    assert issubclass(LoRAError, ValueError)
    with pytest.raises(LoRAError, match="matches no layer"):
        apply_lora(Sequential(Linear(4, 4)), rank=1, alpha=1.0)
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=2.0, targets=DEFAULT_TARGETS)
    with pytest.raises(LoRAError, match="already has LoRA adapters"):
        apply_lora(model, rank=2, alpha=2.0, targets=("c_fc",))
    parallel = tiny_gpt()
    parallel.config = GPTConfig.preset("tiny", vocab_size=VOCAB, block_size=BLOCK, tensor_parallel=2)
    with pytest.raises(LoRAError, match="tensor_parallel = 1"):
        apply_lora(parallel, rank=2, alpha=2.0)
    with pytest.raises(LoRAError, match="no LoRA adapters"):
        lora_state_dict(tiny_gpt())
    with pytest.raises(LoRAError, match="JSON"):
        save_adapter("unused.safetensors", model, {"bad": object()})
