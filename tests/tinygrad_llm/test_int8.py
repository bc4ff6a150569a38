"""int8 weight-only quantization: the per-channel error bound, Int8Linear against its formula and the float layer,
the quantized GPT against the float one (logits, KV cache, generation, perplexity), files, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nn
import tinygrad_llm.export.int8 as int8
from nn.layers import Linear
from nn.tensor import Tensor
from tinygrad_llm.chat.lora import apply_lora, merge_lora
from tinygrad_llm.checkpoint import TOKENIZER_FILE, Checkpoint, CheckpointError, load_model, read_info, save_checkpoint
from tinygrad_llm.evaluate.perplexity import perplexity
from tinygrad_llm.export.int8 import (
    SCHEME,
    Int8Embedding,
    Int8Linear,
    QuantizationError,
    is_int8_checkpoint,
    is_quantized,
    load_int8_model,
    quantize_checkpoint,
    quantize_model,
    quantize_per_channel,
    save_int8,
)
from tinygrad_llm.generate import SamplingConfig, generate_tokens
from tinygrad_llm.model import GPT, GPTConfig

VOCAB, BLOCK = 300, 32
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=1)


def tiny_gpt(seed: int = 0, **overrides: object) -> GPT:
    nn.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=VOCAB, block_size=BLOCK, **overrides)).eval()


def ids(seed: int = 0, length: int = BLOCK) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, length))


def logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    with nn.no_grad():
        return model(idx)[0].numpy()


# ---------------------------------------------------------------------- the scheme


def test_per_channel_rounding_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 200)) * np.logspace(-6, 2, 9)[:, None]  # rows of very different sizes
    w[3] = 0.0                                                         # a zero row
    w[5, 17] = 80 * np.abs(w[5]).max()                                 # an outlier
    q, s = quantize_per_channel(w.astype(np.float32))
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == w.shape and s.shape == (9,)
    w32 = w.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(s, (np.abs(w32).max(axis=1) / 127).astype(np.float32))
    error = np.abs(w32 - s.astype(np.float64)[:, None] * q)
    assert (error <= s.astype(np.float64)[:, None] / 2 * (1 + 1e-12)).all()
    assert np.abs(q).max() <= 127
    nonzero = [i for i in range(9) if i != 3]
    assert (np.abs(q[nonzero]).max(axis=1) == 127).all()  # each row uses the whole range
    assert s[3] == 0 and not q[3].any()                   # a zero row stays exactly zero
    # The outlier coarsens its own row only: the step there is 80x that of a row without one.
    assert s[5] == pytest.approx(80 * np.abs(w32[5, np.arange(200) != 17]).max() / 127, rel=1e-6)
    assert np.abs(np.delete(q[5], 17)).max() == 2  # the rest of its row gets 5 levels (-2..2) instead of 255


def test_quantizing_a_non_finite_or_non_matrix_weight_is_refused():
    with pytest.raises(QuantizationError, match="inf or NaN"):
        quantize_per_channel(np.array([[1.0, np.inf]]))
    with pytest.raises(QuantizationError, match="matrix"):
        quantize_per_channel(np.ones(3))


# ---------------------------------------------------------------------- Int8Linear


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_the_dequantized_matmul_and_within_the_bound_of_the_float_layer(bias):
    nn.manual_seed(3)
    dense = Linear(40, 70, bias=bias, dtype=np.float64)
    layer = Int8Linear.from_linear(dense).eval()
    x = np.random.default_rng(4).standard_normal((2, 5, 40))
    y = layer(Tensor(x)).numpy()
    assert y.shape == (2, 5, 70) and y.dtype == np.float64
    w_hat = layer.scale.numpy().astype(np.float64)[:, None] * layer.qweight.numpy()
    expected = x @ w_hat.T + (dense.bias.numpy() if bias else 0.0)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.numpy(), w_hat)
    # |y - y_float| <= (s / 2) ||x||_1 per output: the worst case of the rounding bound.
    y_float = dense(Tensor(x)).numpy()
    bound = layer.scale.numpy()[None, None, :] / 2 * np.abs(x).sum(axis=-1, keepdims=True)
    assert (np.abs(y - y_float) <= bound + 1e-12).all()
    assert np.abs(y - y_float).max() > 0  # the bound is not met trivially
    # The typical error is the uniform-noise estimate s ||x||_2 / sqrt(12), far inside the worst case.
    typical = layer.scale.numpy()[None, None, :] * np.linalg.norm(x, axis=-1, keepdims=True) / np.sqrt(12)
    assert 0.5 < np.sqrt(np.mean((y - y_float) ** 2 / typical ** 2)) < 1.5


def test_int8_linear_converts_the_weight_in_blocks_of_rows(monkeypatch):
    nn.manual_seed(5)
    layer = Int8Linear.from_linear(Linear(16, 50)).eval()
    x = Tensor(np.random.default_rng(6).standard_normal((3, 16)).astype(np.float32))
    whole = layer(x).numpy()
    monkeypatch.setattr(int8, "CHUNK_ELEMENTS", 16 * 7)  # 8 blocks of 7 rows, the last one of 1
    np.testing.assert_allclose(layer(x).numpy(), whole, rtol=1e-6, atol=1e-6)
    assert whole.dtype == np.float32


def test_int8_layers_refuse_training():
    layer = Int8Linear.from_linear(Linear(4, 3))
    x = Tensor(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(QuantizationError, match="inference only.*model.eval"):
        layer.train()(x)
    layer.eval()
    with pytest.raises(QuantizationError, match="requires grad"):
        layer(Tensor(x.data, requires_grad=True))
    with nn.no_grad():
        assert layer(Tensor(x.data, requires_grad=True)).shape == (2, 3)
    model = quantize_model(tiny_gpt())
    with pytest.raises(QuantizationError, match="inference only"):
        model.train()(ids())


def test_int8_embedding_looks_up_dequantized_rows():
    nn.manual_seed(7)
    table = nn.layers.Embedding(20, 6)
    layer = Int8Embedding.from_embedding(table).eval()
    idx = np.array([[0, 19, 5], [5, 5, 2]])
    rows = layer(idx).numpy()
    assert rows.shape == (2, 3, 6) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, layer.weight.numpy()[idx], rtol=1e-7)
    assert (np.abs(rows - table.weight.numpy()[idx]) <= layer.scale.numpy()[idx][..., None] / 2 + 1e-7).all()


# ---------------------------------------------------------------------- the quantized GPT


@pytest.mark.parametrize("overrides", [{}, {"tie_weights": False}, LLAMA], ids=["gpt2", "untied", "llama"])
def test_quantized_gpt_logits_are_within_one_percent_of_the_float_ones(overrides):
    """Tolerance from the bound: each matrix adds relative noise (max|w_row| / sigma_row) / (127 sqrt(12)),
    0.7 % to 0.9 % for Gaussian rows of 64 to 256 weights (max 3 to 4 sigma); the head's dominates the logits
    (the blocks' projections start small), so the RMS error is about 1 % of the logits' spread: 2 % allowed."""
    model = tiny_gpt(**overrides)
    idx = ids()
    expected = logits(model, idx)
    assert quantize_model(model) is model
    got = logits(model, idx)
    error = got - expected
    spread = expected.std()
    assert 0.003 < np.sqrt(np.mean(error ** 2)) / spread < 0.02
    assert np.abs(error).max() / spread < 0.08
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_quantized_gpt_layout_tied_and_untied():
    tied = quantize_model(tiny_gpt())
    assert isinstance(tied.wte, Int8Embedding) and isinstance(tied.lm_head, Int8Linear)
    assert tied.lm_head.qweight is tied.wte.qweight and tied.lm_head.scale is tied.wte.scale
    keys = tied.state_dict().keys()
    assert "wte.qweight" in keys and not any(k.startswith("lm_head.") for k in keys)  # the shared table once
    assert all(isinstance(m, Int8Linear) for name, m in tied.named_modules() if name.endswith(("c_attn", "c_fc")))
    assert tied.wpe.weight.dtype == np.float32 and not any(p.requires_grad for p in tied.parameters())
    assert not any(type(m) is Linear for m in tied.modules())
    untied = quantize_model(tiny_gpt(tie_weights=False))
    assert untied.lm_head.qweight is not untied.wte.qweight
    assert {"lm_head.qweight", "lm_head.scale"} <= set(untied.state_dict())


@pytest.mark.parametrize("overrides", [{}, LLAMA], ids=["gpt2", "llama"])
def test_kv_cache_path_equals_the_full_recompute(overrides):
    model = quantize_model(tiny_gpt(**overrides))
    idx = ids(1, 20)
    full = logits(model, idx)
    caches = model.make_caches(2)
    assert caches[0].k.dtype == np.float32
    with nn.no_grad():
        steps = [model(idx[:, :5], caches=caches)[0].numpy()]
        steps += [model(idx[:, t:t + 1], caches=caches)[0].numpy() for t in range(5, 20)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_runs_and_equals_the_naive_argmax_loop():
    model = quantize_model(tiny_gpt(2))
    prompt = ids(2, 6)[0].tolist()
    generated = list(generate_tokens(model, prompt, 20, SamplingConfig(temperature=0.0)))
    tokens = list(prompt)
    for _ in range(20):
        tokens.append(int(logits(model, np.array([tokens]))[0, -1].argmax()))
    assert generated == tokens[len(prompt):]
    assert not model.training


# ---------------------------------------------------------------------- files


def test_quantize_checkpoint_round_trip_gives_identical_logits(trained_run: Path, tmp_path: Path):
    out = tmp_path / "int8" / "model.safetensors"
    assert quantize_checkpoint(trained_run, out) == out
    assert (out.parent / TOKENIZER_FILE).read_bytes() == (trained_run / TOKENIZER_FILE).read_bytes()
    assert is_int8_checkpoint(out) and not is_int8_checkpoint(trained_run)
    info = read_info(out)
    assert info["quantization"]["scheme"] == SCHEME and "h.0.mlp.c_fc" in info["quantization"]["quantized"]
    assert info["quantized_from"] == str(trained_run / "best.safetensors")
    assert info["tokenizer_sha256"] == read_info(trained_run / "best.safetensors")["tokenizer_sha256"]

    loaded, tokenizer = load_int8_model(out)
    assert is_quantized(loaded) and not loaded.training
    float_model, float_tokenizer = load_model(trained_run)
    params = dict(float_model.named_parameters())  # each tensor once (the tied head is wte), as in memory
    matrices = [p for name, p in params.items() if p.ndim == 2 and name != "wpe.weight"]
    # One byte per matrix weight, a float32 scale per matrix row; everything else (wpe, biases, norms) float32.
    expected_bytes = sum(p.numel() + 4 * p.shape[0] for p in matrices) + 4 * sum(
        p.numel() for p in params.values() if not any(p is m for m in matrices))
    float_bytes = 4 * sum(p.numel() for p in params.values())
    float_file = tmp_path / "float.safetensors"  # the float weights as a checkpoint (the tied head twice)
    save_checkpoint(float_file, Checkpoint(model={k: v.numpy() for k, v in float_model.state_dict().items()},
                                           info=info))
    in_memory = quantize_model(float_model)
    idx = np.random.default_rng(0).integers(0, loaded.config.vocab_size, size=(2, loaded.config.block_size))
    np.testing.assert_array_equal(logits(loaded, idx), logits(in_memory, idx))
    assert tokenizer.encode("def f(x): return x") == float_tokenizer.encode("def f(x): return x")

    tensor_bytes = sum(t.numpy().nbytes for t in loaded.state_dict().values())
    assert tensor_bytes == expected_bytes
    assert float_bytes / tensor_bytes > 3.5  # 3.53 here: this tiny model's small tensors are 1/40 of its weights
    assert float_file.stat().st_size / out.stat().st_size > 4  # 4.2: the float file holds the tied head twice
    assert out.stat().st_size < tensor_bytes + 20_000      # the rest is the JSON header


def test_quantized_model_scores_perplexity_like_the_float_one(trained_run: Path):
    float_model, tokenizer = load_model(trained_run)
    texts = ["def add(a, b):\n    return a + b\n" * 6, "import os\nprint(os.getcwd())\n" * 4]
    expected = perplexity(float_model, tokenizer, texts, context=16)
    got = perplexity(quantize_model(float_model), tokenizer, texts, context=16)
    assert got["tokens"] == expected["tokens"]
    assert got["perplexity"] != expected["perplexity"]
    assert abs(got["perplexity"] / expected["perplexity"] - 1) < 0.01


def test_save_int8_and_load_without_quantize_checkpoint(trained_run: Path, tmp_path: Path):
    model, _ = load_model(trained_run)
    info = read_info(trained_run / "best.safetensors")
    with pytest.raises(QuantizationError, match="not quantized"):
        save_int8(tmp_path / "m.safetensors", model, info)
    path = tmp_path / "m.safetensors"
    save_int8(path, quantize_model(model), info)
    with pytest.raises(CheckpointError, match=f"no {TOKENIZER_FILE}"):
        load_int8_model(path)
    (tmp_path / TOKENIZER_FILE).write_bytes((trained_run / TOKENIZER_FILE).read_bytes())
    loaded, _ = load_int8_model(path)
    np.testing.assert_array_equal(logits(loaded, ids(0, 8) % loaded.config.vocab_size),
                                  logits(model, ids(0, 8) % loaded.config.vocab_size))


def test_damaged_or_foreign_files_are_one_line_errors(trained_run: Path, tmp_path: Path):
    out = quantize_checkpoint(trained_run, tmp_path / "model.safetensors")
    data = bytearray(out.read_bytes())
    damaged = tmp_path / "damaged.safetensors"
    data[len(data) - 1000] ^= 0x10  # a byte of the tensors
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(out.read_bytes()[:5000])
    missing = tmp_path / "none.safetensors"
    for path, message in [(damaged, "damaged"), (truncated, "not a readable"), (missing, "no such")]:
        with pytest.raises(CheckpointError, match=message) as error:
            load_int8_model(path)
        assert "\n" not in str(error.value)
    with pytest.raises(QuantizationError, match="not an int8 checkpoint") as error:
        load_int8_model(trained_run)
    assert "\n" not in str(error.value)
    (tmp_path / TOKENIZER_FILE).write_text("not the tokenizer")
    with pytest.raises(CheckpointError, match="is not the tokenizer"):
        load_int8_model(out)


# ---------------------------------------------------------------------- refusals


def test_quantizing_twice_or_an_int8_checkpoint_is_refused(trained_run: Path, tmp_path: Path):
    model = quantize_model(tiny_gpt())
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(model)
    out = quantize_checkpoint(trained_run, tmp_path / "a.safetensors")
    with pytest.raises(QuantizationError, match="already an int8 checkpoint"):
        quantize_checkpoint(out, tmp_path / "b.safetensors")
    with pytest.raises(QuantizationError, match="is the checkpoint being quantized"):
        quantize_checkpoint(trained_run, trained_run / "best.safetensors")
    with pytest.raises(QuantizationError, match=".safetensors file name"):
        quantize_checkpoint(trained_run, tmp_path)
    assert not (tmp_path / "b.safetensors").exists()


def test_a_different_tokenizer_in_the_output_directory_is_refused(trained_run: Path, tmp_path: Path):
    (tmp_path / TOKENIZER_FILE).write_text("another tokenizer")
    with pytest.raises(QuantizationError, match="another tokenizer"):
        quantize_checkpoint(trained_run, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / TOKENIZER_FILE).read_text() == "another tokenizer"


def test_a_lora_model_is_refused_until_its_adapters_are_merged():
    model = tiny_gpt(tie_weights=False)
    apply_lora(model, rank=2, alpha=4.0)
    with pytest.raises(QuantizationError, match="LoRALinear.*merge_lora"):
        quantize_model(model)
    assert not is_quantized(model)  # nothing changed
    quantize_model(merge_lora(model))
    assert is_quantized(model)


def test_a_non_finite_weight_is_refused_and_leaves_the_model_as_it_was():
    model = tiny_gpt()
    model.h[1].mlp.c_fc.weight.data[3, 4] = np.nan
    with pytest.raises(QuantizationError, match="inf or NaN"):
        quantize_model(model)
    assert not is_quantized(model) and type(model.wte) is nn.layers.Embedding


def test_the_quantize_command_and_every_reader(trained_run, tmp_path, capsys):
    from cli_helpers import cli, one_error

    out = tmp_path / "q" / "model-int8.safetensors"
    status, _, err = cli(capsys, "quantize", "-c", trained_run, "--out", out)
    assert status == 0 and out.exists() and (out.parent / "tokenizer.txt").exists(), err
    status, text, err = cli(capsys, "generate", "-c", out, "--prompt", "def ", "-n", "5", "--greedy")
    assert status == 0 and text.startswith("def "), err
    status, table, err = cli(capsys, "eval", "perplexity", "-c", out, "-q")
    assert status == 0 and "bits/byte" in table, err
    one_error(*cli(capsys, "quantize", "-c", out, "--out", tmp_path / "again.safetensors")[::2], "int8")
