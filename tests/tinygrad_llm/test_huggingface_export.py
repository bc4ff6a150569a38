"""Our model exported to Hugging Face computes our logits in ``transformers``, with our tokenizer's ids.

Every variant of the model switches (GPT-2's design, rotary positions, Llama's,
grouped-query attention, no biases, untied output) is exported, loaded by
``transformers.AutoModelForCausalLM`` and compared on random ids; so is a
trained run, end to end from text, and a LoRA fine-tuning run. An exported
GPT-2 reads back into our import with the same logits. Mixes that no Hugging
Face architecture computes are refused in one line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import nn
from nn import state
from tinygrad_llm.checkpoint import TOKENIZER_FILE, Checkpoint, load_model, save_checkpoint
from tinygrad_llm.export.huggingface import (
    HuggingFaceError,
    export_checkpoint,
    export_huggingface,
    huggingface_architecture,
    load_huggingface_model,
)
from tinygrad_llm.generate import SamplingConfig, generate_tokens
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer
from util.files import file_sha256

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

TINY = dict(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=32)  # vocabulary padded to 320
VARIANTS = {  # variant: (overrides, Hugging Face class)
    "gpt2": (dict(dropout=0.1), "GPT2LMHeadModel"),
    "gpt2-untied-exact-gelu-mqa": (dict(tie_weights=False, gelu_approximate="none", n_kv_head=1), "GPT2LMHeadModel"),
    "gpt2-no-bias-gqa-unpadded": (dict(bias=False, n_kv_head=2, vocab_multiple=1), "GPT2LMHeadModel"),
    "rope": (dict(pos="rope"), "GPTNeoXForCausalLM"),
    "rope-no-bias-gqa-untied": (dict(pos="rope", bias=False, n_kv_head=2, tie_weights=False, rope_theta=500.0,
                                     gelu_approximate="none"), "GPTNeoXForCausalLM"),
    "llama": (dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False,
                   norm_eps=1e-6, rope_theta=500000.0), "LlamaForCausalLM"),
    "llama-bias-tied": (dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1), "LlamaForCausalLM"),
}


@pytest.fixture(scope="module")
def tokenizers(stdlib_texts) -> dict[str, Tokenizer]:
    """A 300-token tokenizer per pattern (with <|endoftext|>), the size of TINY's vocabulary."""
    return {name: Tokenizer.train(stdlib_texts, 300, pattern=name, progress=False) for name in ("gpt2", "gpt4")}


@pytest.fixture(scope="module")
def stdlib_texts() -> list[str]:
    return [Path(m.__file__).read_text(encoding="utf-8") for m in (random, json)]


def tiny_model(variant: str, seed: int = 0, **overrides) -> GPT:
    """TINY in ``variant`` with every weight moved off its initial value (norm gains off 1, biases off 0)."""
    nn.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **VARIANTS[variant][0], **overrides})).eval()
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += 0.05 * rng.standard_normal(p.shape)
    return model


def load_transformers(directory: Path):
    """``AutoModelForCausalLM.from_pretrained``, checking that every weight was in the file and used."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def their_logits(model, idx: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(idx))).logits.numpy()


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_computes_our_logits(variant, tokenizers, tmp_path):
    ours = tiny_model(variant)
    export_huggingface(ours, tokenizers["gpt4"], tmp_path / "hf")
    theirs = load_transformers(tmp_path / "hf")
    assert type(theirs).__name__ == VARIANTS[variant][1]
    idx = np.random.default_rng(1).integers(0, TINY["vocab_size"], size=(3, TINY["block_size"]))
    logits = their_logits(theirs, idx)
    assert logits.shape == (3, 32, 300)  # the padding rows are not exported
    assert_close(ours(idx)[0].numpy(), logits)


@pytest.mark.parametrize("variant", ["gpt2-untied-exact-gelu-mqa", "rope", "llama"])
def test_greedy_generation_with_transformers_cache_gives_our_tokens(variant, tokenizers, tmp_path):
    ours = tiny_model(variant, seed=3)
    export_huggingface(ours, tokenizers["gpt4"], tmp_path / "hf")
    theirs = load_transformers(tmp_path / "hf")
    prompt = [5, 17, 250, 9]
    want = list(generate_tokens(ours, prompt, 12, SamplingConfig(temperature=0.0)))
    with torch.no_grad():
        got = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                              pad_token_id=0)[0, len(prompt):].tolist()
    assert got == want


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_text_to_logits_through_transformers_equals_ours(pattern, tokenizers, stdlib_texts, tmp_path):
    tokenizer = tokenizers[pattern]
    ours = tiny_model("llama" if pattern == "gpt4" else "gpt2")
    export_huggingface(ours, tokenizer, tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    theirs = load_transformers(tmp_path / "hf")
    texts = [stdlib_texts[0][1000:1200], "def f(x):\n    return x  # done<|endoftext|>Größe 12345 🙂\n\n"]
    for text in texts:
        ids = tokenizer.encode(text, allowed_special="all")[:TINY["block_size"]]
        assert hf_tokenizer.encode(text)[:TINY["block_size"]] == ids
        assert hf_tokenizer.decode(ids) == tokenizer.decode(ids)
        assert_close(ours([ids])[0].numpy(), their_logits(theirs, [ids]))


@pytest.mark.parametrize("variant", ["gpt2", "gpt2-untied-exact-gelu-mqa"])
def test_our_import_reads_an_exported_gpt2_back(variant, tokenizers, tmp_path):
    ours = tiny_model(variant)
    export_huggingface(ours, tokenizers["gpt2"], tmp_path / "hf")
    back, tokenizer = load_huggingface_model(tmp_path / "hf")
    assert tokenizer.to_tiktoken_ranks() == tokenizers["gpt2"].to_tiktoken_ranks()
    assert tokenizer.special_tokens == tokenizers["gpt2"].special_tokens
    idx = np.random.default_rng(2).integers(0, TINY["vocab_size"], size=(2, 20))
    if variant == "gpt2":  # the same weights in the same model: the same numbers, bit for bit
        np.testing.assert_array_equal(back.eval()(idx)[0].numpy(), ours(idx)[0].numpy())
    else:  # one shared key/value head written once per query head: the same function, other rounding
        assert back.config.n_kv_head is None and not back.config.tie_weights
        assert_close(back.eval()(idx)[0].numpy(), ours(idx)[0].numpy())


def test_files_and_config(tokenizers, tmp_path):
    ours = tiny_model("gpt2")
    out = export_huggingface(ours, tokenizers["gpt4"], tmp_path / "hf", info={"step": 7, "rng": [1, 2]})
    assert out == tmp_path / "hf"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    eot = tokenizers["gpt4"].eot_token
    assert (config["model_type"], config["n_positions"], config["n_embd"], config["vocab_size"]) == ("gpt2", 32, 32,
                                                                                                     300)
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"]
    assert config["bos_token_id"] == config["eos_token_id"] == eot
    assert config["tinygrad_llm"] == {"model_config": ours.config.to_dict(), "step": 7}
    tensors = state.load(out / "model.safetensors")
    assert "lm_head.weight" not in tensors and tensors["transformer.wte.weight"].shape == (300, 32)
    assert state.load_metadata(out / "model.safetensors")["format"] == "pt"
    assert json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))["model_max_length"] == 32


# ---------------------------------------------------------------------- from a checkpoint


def test_a_trained_run_exports_end_to_end(trained_run, tmp_path):
    out = export_checkpoint(trained_run, tmp_path / "hf")
    ours, tokenizer = load_model(trained_run)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    theirs = load_transformers(out)
    text = "import os\n\ndef main():\n    print('hello')  # 2024\n"
    ids = tokenizer.encode(text)
    assert hf_tokenizer.encode(text) == ids and len(ids) <= ours.config.block_size
    assert_close(ours.eval()([ids])[0].numpy(), their_logits(theirs, [ids]))
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["tinygrad_llm"]["step"] == 4


def test_a_lora_run_is_exported_with_its_adapters_folded_in(tokenizers, tmp_path):
    from tinygrad_llm.chat.format import add_chat_tokens
    from tinygrad_llm.chat.lora import apply_lora, lora_config, merge_lora

    tokenizer = add_chat_tokens(tokenizers["gpt4"])
    model = tiny_model("llama", vocab_size=tokenizer.vocab_size)
    apply_lora(model, 2, 4.0, ("c_attn", "c_fc"))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data[...] = 0.1 * np.random.default_rng(len(name)).standard_normal(p.shape)
    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save(run / TOKENIZER_FILE)
    info = {"model_config": model.config.to_dict(), "step": 2, "tokenizer_sha256": file_sha256(run / TOKENIZER_FILE),
            "lora": lora_config(model)}
    save_checkpoint(run / "ckpt_0000002.safetensors",
                    Checkpoint(model={k: v.numpy() for k, v in model.state_dict().items()}, info=info))
    out = export_checkpoint(run, tmp_path / "hf")
    theirs = load_transformers(out)
    text = "<|user_start|>What is 2 + 3?<|user_end|><|assistant_start|>"
    ids = tokenizer.encode(text, allowed_special="all")
    assert transformers.AutoTokenizer.from_pretrained(out).encode(text) == ids
    assert_close(merge_lora(model).eval()([ids])[0].numpy(), their_logits(theirs, [ids]))


# ---------------------------------------------------------------------- refusals and the output directory


@pytest.mark.parametrize("overrides", [dict(norm="rmsnorm", mlp="swiglu", vocab_multiple=1), dict(norm="rmsnorm"),
                                       dict(pos="rope", mlp="swiglu"), dict(pos="rope", norm="rmsnorm")])
def test_switch_mixes_no_architecture_computes_are_refused_in_one_line(overrides, tokenizers, tmp_path):
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    with pytest.raises(HuggingFaceError, match="no Hugging Face architecture has") as error:
        export_huggingface(model, tokenizers["gpt4"], tmp_path / "hf")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_larger_than_the_model_is_refused(tokenizers, tmp_path):
    with pytest.raises(HuggingFaceError, match="more than the model's 200"):
        export_huggingface(tiny_model("gpt2", vocab_size=200), tokenizers["gpt4"], tmp_path / "hf")
    with pytest.raises(HuggingFaceError, match="tensor parallel"):
        huggingface_architecture(GPTConfig(**{**TINY, "tensor_parallel": 2}))


def test_the_output_directory_is_replaced_whole_or_left_alone(tokenizers, tmp_path):
    out = tmp_path / "hf"
    export_huggingface(tiny_model("gpt2"), tokenizers["gpt2"], out)
    assert (out / "merges.txt").exists()
    export_huggingface(tiny_model("llama"), tokenizers["gpt4"], out)  # an earlier export is replaced, whole
    assert not (out / "merges.txt").exists() and type(load_transformers(out)).__name__ == "LlamaForCausalLM"
    bad = Tokenizer.from_tiktoken({**tokenizers["gpt4"].to_tiktoken_ranks(), b"": 299}, "gpt4")
    with pytest.raises(HuggingFaceError, match="empty token"):
        export_huggingface(tiny_model("gpt2"), bad, out)
    assert type(load_transformers(out)).__name__ == "LlamaForCausalLM"  # a failed export changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # and leaves no temporary files
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("{}\n")
    with pytest.raises(HuggingFaceError, match="not an empty or Hugging Face directory"):
        export_huggingface(tiny_model("gpt2"), tokenizers["gpt4"], run)
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl"]


def test_the_export_command(trained_run, tmp_path, capsys):
    import transformers
    from cli_helpers import cli, one_error

    status, out, err = cli(capsys, "export", "hf", "-c", trained_run, "--out", tmp_path / "hf")
    assert status == 0 and "AutoModelForCausalLM" in out, err
    ours, tokenizer = load_model(trained_run)
    text = "def parse(text):\n    return text.split()\n"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs.encode(text) == tokenizer.encode_ordinary(text)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine", encoding="utf-8")
    one_error(*cli(capsys, "export", "hf", "-c", trained_run, "--out", tmp_path / "busy")[::2], "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text(encoding="utf-8") == "mine"
