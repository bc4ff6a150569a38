"""The whole GPT against an independent PyTorch implementation of its specification (``torch_gpt.py``).

Our model and the reference get the same weights (ours, copied by name), the
same tokens and targets. Logits, loss and every parameter's gradient must
agree (float64 to 1e-9, float32 to 1e-5 relative), and 50 AdamW steps on the
same batches must follow the same loss curve. Also: padding rows of the
vocabulary never reach the logits, GPT-2's initialisation, the presets' sizes,
loading a Hugging Face GPT-2, and KV-cached decoding equal to full recompute.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_gpt import TorchGPT, copy_weights, padded_vocab_size

import nn
from nn.optim import AdamW
from tinygrad_llm.model import GPT, GPTConfig

torch.set_num_threads(1)

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)  # vocabulary padded to 64
VARIANTS = {
    "gpt2": dict(dropout=0.1),  # compared in eval mode, where dropout is the identity
    "gpt2-untied-exact-gelu-mqa": dict(tie_weights=False, gelu_approximate="none", n_kv_head=1),
    "rope": dict(pos="rope"),
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False,
                  norm_eps=1e-6, rope_theta=500000.0),
    "rmsnorm-swiglu-learned-unpadded": dict(norm="rmsnorm", mlp="swiglu", vocab_multiple=1),
}
RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def tiny_config(variant: str, **overrides) -> GPTConfig:
    return GPTConfig(**{**TINY, **VARIANTS[variant], **overrides})


def build(config: GPTConfig, dtype, seed: int = 0, spread: float = 0.0) -> tuple[GPT, TorchGPT]:
    """Our GPT in ``dtype`` and the reference with our weights.

    ``spread`` adds N(0, spread^2) noise to every parameter, so norm gains leave 1
    and biases leave 0 and every term of the forward pass contributes.
    """
    nn.manual_seed(seed)
    ours = GPT(config).to(dtype)
    rng = np.random.default_rng(seed)
    for p in ours.parameters():
        p.data[...] += spread * rng.standard_normal(p.shape)
    return ours, copy_weights(ours, TorchGPT(config))


def batch(config: GPTConfig, rng: np.random.Generator, size: int = 3, length: int = 12, ignore: bool = True):
    """Token ids and targets (B, T); with ``ignore`` a few targets are -100 (masked out of the loss)."""
    idx = rng.integers(0, config.vocab_size, size=(size, length))
    targets = rng.integers(0, config.vocab_size, size=(size, length))
    if ignore:
        targets[0, :3] = -100
        targets[2, -1] = -100
    return idx, targets


def assert_close(ours: np.ndarray, theirs: torch.Tensor, rtol: float, name: str = "") -> None:
    """Elementwise agreement to ``rtol``, measured against the reference's largest value."""
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, name
    scale = max(float(np.abs(theirs).max()), 1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=name)


# ---------------------------------------------------------------- one forward and backward
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_loss_and_every_gradient_equal_pytorch(variant, dtype):
    config = tiny_config(variant)
    ours, theirs = build(config, dtype, spread=0.05)
    ours.eval()
    theirs.eval()
    idx, targets = batch(config, np.random.default_rng(1))

    logits, loss = ours(idx, targets)
    ref_logits, ref_loss = theirs(torch.tensor(idx), torch.tensor(targets))
    assert logits.dtype == dtype and logits.shape == (3, 12, config.vocab_size)
    assert_close(logits.numpy(), ref_logits, RTOL[dtype], "logits")
    assert loss.item() == pytest.approx(ref_loss.item(), rel=RTOL[dtype])
    loss.backward()
    ref_loss.backward()
    reference = dict(theirs.named_parameters())
    assert [name for name, _ in ours.named_parameters()] == list(reference)
    for name, p in ours.named_parameters():
        assert p.grad.dtype == dtype, name
        assert_close(p.grad.numpy(), reference[name].grad, RTOL[dtype], name)


def test_without_targets_there_is_no_loss():
    config = tiny_config("gpt2")
    ours, _ = build(config, np.float32)
    logits, loss = ours(np.zeros((2, 5), dtype=np.int64))
    assert loss is None and logits.shape == (2, 5, config.vocab_size)


def test_state_dict_names_and_shapes_follow_the_specification():
    config = tiny_config("llama")
    ours = GPT(config)
    hidden, qkv = 128, (4 + 2 * 2) * 8  # swiglu: 8 * 32 / 3 = 85.3 -> 128; q, k, v heads of 8
    shapes = {name: t.shape for name, t in ours.state_dict().items()}
    assert shapes["wte.weight"] == shapes["lm_head.weight"] == (64, 32)
    assert shapes["h.1.attn.c_attn.weight"] == (qkv, 32)
    assert shapes["h.1.mlp.c_fc.weight"] == (2 * hidden, 32)
    assert shapes["h.1.mlp.c_proj.weight"] == (32, hidden)
    assert "wpe.weight" not in shapes and "h.0.ln_1.bias" not in shapes and "h.0.attn.c_attn.bias" not in shapes
    tied = GPT(tiny_config("gpt2"))
    assert tied.lm_head.weight is tied.wte.weight and "lm_head.weight" in tied.state_dict()
    assert tied.state_dict()["wpe.weight"].shape == (16, 32)


# ---------------------------------------------------------------- training
def training_batches(config: GPTConfig, steps: int, size: int = 4, length: int = 16):
    """Learnable data: each sequence counts up by a per-sequence stride, modulo the vocabulary."""
    rng = np.random.default_rng(7)
    for _ in range(steps):
        starts = rng.integers(0, config.vocab_size, size=(size, 1))
        strides = rng.integers(1, 4, size=(size, 1))
        tokens = (starts + strides * np.arange(length + 1)) % config.vocab_size
        yield tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_fifty_adamw_steps_follow_the_same_loss_curve(variant, dtype):
    config = tiny_config(variant, dropout=0.0)
    ours, theirs = build(config, dtype)
    hyper = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    optimizer, ref_optimizer = AdamW(ours.parameters(), **hyper), torch.optim.AdamW(theirs.parameters(), **hyper)
    losses, ref_losses = [], []
    for idx, targets in training_batches(config, steps=50):
        optimizer.zero_grad()
        _, loss = ours(idx, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        ref_optimizer.zero_grad()
        _, ref_loss = theirs(torch.tensor(idx), torch.tensor(targets))
        ref_loss.backward()
        ref_optimizer.step()
        ref_losses.append(ref_loss.item())
    assert losses[0] == pytest.approx(math.log(config.vocab_size), rel=0.05)  # near-uniform at GPT-2 init
    assert np.mean(losses[-5:]) < 0.7 * losses[0]  # and it learns
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-8 if dtype == np.float64 else 1e-4)


# ---------------------------------------------------------------- vocabulary padding
def test_padding_rows_never_reach_the_logits_or_the_loss():
    config = tiny_config("gpt2")
    ours, _ = build(config, np.float64, spread=0.05)
    ours.eval()
    idx, targets = batch(config, np.random.default_rng(2))
    logits, loss = ours(idx, targets)
    assert config.padded_vocab_size == 64 and logits.shape[-1] == config.vocab_size == 50
    ours.wte.weight.data[config.vocab_size:] = 100.0  # would dominate every softmax if it were used
    new_logits, new_loss = ours(idx, targets)
    np.testing.assert_array_equal(new_logits.numpy(), logits.numpy())
    assert new_loss.item() == loss.item()
    new_loss.backward()
    assert not np.any(ours.wte.weight.grad.numpy()[config.vocab_size:])


# ---------------------------------------------------------------- initialisation
def test_gpt2_initialisation_statistics():
    config = GPTConfig(vocab_size=1000, block_size=64, n_layer=4, n_head=4, n_embd=128, tie_weights=False)
    nn.manual_seed(0)
    model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        values = p.numpy()
        assert p.dtype == np.float32, name
        if name.endswith("c_proj.weight"):
            assert values.std() == pytest.approx(residual_std, rel=0.03), name
            assert abs(values.mean()) < residual_std * 0.03, name
        elif p.ndim == 2:
            assert values.std() == pytest.approx(0.02, rel=0.03), name
            assert abs(values.mean()) < 0.02 * 0.03, name
        elif name.endswith(".bias"):
            assert not values.any(), name
        else:
            np.testing.assert_array_equal(values, np.ones_like(values), err_msg=name)
    assert {n for n, _ in model.named_parameters() if n.endswith("c_proj.weight")} == {
        f"h.{i}.{part}.c_proj.weight" for i in range(4) for part in ("attn", "mlp")}


# ---------------------------------------------------------------- sizes
def gpt2_parameter_count(vocab: int, context: int, n_layer: int, width: int) -> int:
    """GPT-2 (learned positions, LayerNorm with bias, 4x GELU MLP, tied head) from its shapes alone.

    Per layer: two LayerNorms (4C), c_attn (3C^2 + 3C), c_proj (C^2 + C), c_fc (4C^2 + 4C), c_proj (4C^2 + C).
    """
    per_layer = 12 * width**2 + 13 * width
    return vocab * width + context * width + n_layer * per_layer + 2 * width


# The parameter counts of OpenAI's GPT-2 checkpoints, as Hugging Face reports them (vocabulary 50257).
GPT2_SIZES = {"gpt2-124m": 124_439_808, "gpt2-355m": 354_823_168, "gpt2-774m": 774_030_080,
              "gpt2-1558m": 1_557_611_200}


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_gpt2_presets_have_the_published_sizes(name):
    config = GPTConfig.preset(name)
    assert (config.vocab_size, config.block_size, config.pos, config.norm, config.mlp) == (
        50257, 1024, "learned", "layernorm", "gelu")
    assert config.tie_weights and config.bias and config.gelu_approximate == "tanh"
    count = gpt2_parameter_count(50257, 1024, config.n_layer, config.n_embd)
    assert count == GPT2_SIZES[name]
    assert round(count / 1e6) == int(name.split("-")[1].removesuffix("m"))
    assert config.padded_vocab_size == 50304  # padding adds (50304 - 50257) * C parameters
    assert GPTConfig.preset(name, dropout=0.1).dropout == 0.1


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_build_with_the_formula_size(name):
    config = GPTConfig.preset(name)
    model = GPT(config)
    positions = config.block_size * config.n_embd if config.pos == "rope" else 0  # rotary: no position table
    assert model.num_parameters() == gpt2_parameter_count(config.padded_vocab_size, config.block_size,
                                                          config.n_layer, config.n_embd) - positions


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_count_equals_the_reference_count(variant):
    config = tiny_config(variant)
    assert config.padded_vocab_size == padded_vocab_size(config.vocab_size, config.vocab_multiple)
    assert GPT(config).num_parameters() == sum(p.numel() for p in TorchGPT(config).parameters())


# ---------------------------------------------------------------- KV cache
@pytest.mark.parametrize("variant", ["gpt2", "rope", "llama"])
@pytest.mark.parametrize("chunks", [[1] * 14, [5, 1, 3, 4, 1]], ids=["one-at-a-time", "chunks"])
def test_kv_cached_logits_equal_full_recompute_at_every_position(variant, chunks):
    config = tiny_config(variant)
    ours, _ = build(config, np.float64, spread=0.05)
    ours.eval()
    idx = np.random.default_rng(3).integers(0, config.vocab_size, size=(2, sum(chunks)))
    full, _ = ours(idx)
    caches = ours.make_caches(batch_size=2)
    start = 0
    for size in chunks:
        logits, _ = ours(idx[:, start:start + size], caches=caches)
        np.testing.assert_allclose(logits.numpy(), full.numpy()[:, start:start + size], rtol=1e-10, atol=1e-12)
        start += size


def test_a_sequence_longer_than_the_context_is_refused():
    config = tiny_config("rope")
    ours, _ = build(config, np.float32)
    with pytest.raises(ValueError, match="longer than the context"):
        ours(np.zeros((1, 17), dtype=np.int64))
    caches = ours.make_caches(batch_size=1)
    ours(np.zeros((1, 16), dtype=np.int64), caches=caches)
    with pytest.raises(ValueError, match="longer than the context"):
        ours(np.zeros((1, 1), dtype=np.int64), caches=caches)
