"""A Hugging Face GPT-2 directory as a model: the same logits, and the same MMLU log-likelihoods as ``transformers``.

The directory is what ``save_pretrained`` writes for a GPT-2 with random weights,
plus a tokenizer trained by Hugging Face's ``tokenizers`` (``hf_tokenizer_dir``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli, one_error

from tinygrad_llm.evaluate.mmlu import LETTERS, Question, format_prompt, score_prompts
from tinygrad_llm.export.huggingface import HuggingFaceError, gpt_from_huggingface, load_huggingface_model

transformers = pytest.importorskip("transformers")

QUESTIONS = [  # (subject, question, A, B, C, D, answer)
    ("astronomy", "The Sun is a", "planet", "star", "comet", "moon", "B"),
    ("astronomy", "Which planet has rings that are easy to see? ", "Mars", "Venus", "Saturn", "Mercury", "C"),
    ("college_physics", "What is the SI unit of force?\n", "newton", "joule", "watt", "pascal", "A"),
    ("college_physics", "Light travels fastest in", "glass", "water", "a vacuum", "diamond", "C"),
    ("college_physics", "E = mc^2 relates energy and", "momentum", "mass", "charge", "spin", "B"),
]


def random_gpt2(directory: Path, tokenizer_dir: Path, n_positions: int = 64, vocab_size: int = 1000) -> Path:
    """``save_pretrained`` of a small GPT-2 with random weights (biases and norms moved off 0 and 1)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=n_positions,
                                     vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.eval().save_pretrained(directory, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        shutil.copy(tokenizer_dir / name, directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(hf_tokenizer_dir, tmp_path_factory) -> Path:
    return random_gpt2(tmp_path_factory.mktemp("gpt2"), hf_tokenizer_dir)


def test_logits_equal_transformers(tmp_path, hf_tokenizer_dir):
    directory = random_gpt2(tmp_path, hf_tokenizer_dir, n_positions=32, vocab_size=100)
    ours = gpt_from_huggingface(directory)
    assert (ours.config.vocab_size, ours.config.block_size, ours.config.padded_vocab_size) == (100, 32, 128)
    idx = np.random.default_rng(0).integers(0, 100, size=(2, 16))
    logits, _ = ours.eval()(idx)
    with torch.no_grad():
        reference = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(logits.numpy(), reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def transformers_loglikelihood(model, tokenizer, context: str, continuation: str, max_length: int) -> float:
    """lm-eval's recipe with ``transformers`` alone: trailing spaces of the context go to the continuation,
    the continuation's ids are those of the whole after the context's, the input is the last max_length + 1
    ids minus the final one, and the continuation's log-probabilities are summed."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    continuation_ids = whole[len(context_ids):]
    inputs = whole[-(max_length + 1):][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inputs])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)[-len(continuation_ids):]
    return float(logp[torch.arange(len(continuation_ids)), torch.tensor(continuation_ids)].sum())


def mmlu_prompts() -> list[str]:
    """Every question zero-shot, and the last three with the first two as shots."""
    shots = [Question(r[0], r[1], tuple(r[2:6]), "ABCD".index(r[6])) for r in QUESTIONS[:2]]
    return ([format_prompt(q[0], q[1], q[2:6]) for q in QUESTIONS]
            + [format_prompt(q[0], q[1], q[2:6], shots) for q in QUESTIONS[2:]])


def test_mmlu_loglikelihoods_equal_transformers(hf_dir):
    model, tokenizer = load_huggingface_model(hf_dir)
    prompts = mmlu_prompts()
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    assert max(len(reference_tokenizer.encode(p)) for p in prompts) > 64  # the 2-shot prompts are truncated
    ours = score_prompts(model.eval(), tokenizer, prompts)
    theirs = [[transformers_loglikelihood(reference, reference_tokenizer, p, f" {x}", 64) for x in LETTERS]
              for p in prompts]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    assert np.ptp(theirs, axis=1).min() > 1e-3   # four different numbers per question: the test could fail


def write_mmlu_jsonl(path: Path) -> Path:
    rows = [{"question": q[1], "answer_a": q[2], "answer_b": q[3], "answer_c": q[4], "answer_d": q[5],
             "correct_answer": q[6], "topic": q[0]} for q in QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_mmlu_command_reads_a_hugging_face_directory(hf_dir, tmp_path, capsys):
    log = tmp_path / "samples.jsonl"
    status, out, err = cli(capsys, "eval", "mmlu", "-c", hf_dir, "--mmlu", write_mmlu_jsonl(tmp_path / "m.jsonl"),
                           "--log-samples", log, "--json", tmp_path / "r.json", "-q")
    assert status == 0, err
    assert f"model {hf_dir}" in out
    samples = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(samples) == len(QUESTIONS) == json.loads((tmp_path / "r.json").read_text())["questions"]
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    for sample in samples:
        want = [transformers_loglikelihood(reference, reference_tokenizer, sample["prompt"], f" {x}", 64)
                for x in LETTERS]
        np.testing.assert_allclose(sample["loglikelihoods"], want, rtol=1e-5, atol=1e-4)


def test_generate_and_perplexity_read_a_hugging_face_directory(hf_dir, tmp_path, capsys):
    status, out, err = cli(capsys, "generate", "-c", hf_dir, "--prompt", "def f(x):", "--max-new-tokens", "5",
                           "--greedy")
    assert status == 0 and out.startswith("def f(x):"), err
    text = tmp_path / "t.txt"
    text.write_text("The Sun is a star. " * 20, encoding="utf-8")
    status, out, err = cli(capsys, "eval", "perplexity", "-c", hf_dir, "--text", text, "-q")
    assert status == 0 and "bits/byte" in out, err
    one_error(*cli(capsys, "eval", "perplexity", "-c", hf_dir)[::2], "records no training data", "--text")


def test_broken_directories_get_one_clear_error(hf_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(hf_dir, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    (broken / "model.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    one_error(*cli(capsys, "generate", "-c", broken, "--prompt", "x")[::2], "model.safetensors")

    shutil.copy(hf_dir / "model.safetensors", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    one_error(*cli(capsys, "generate", "-c", broken, "--prompt", "x")[::2], "not a GPT-2 model", "llama")

    (broken / "config.json").write_text(json.dumps({**config, "n_embd": 32}))
    with pytest.raises(HuggingFaceError, match="does not fit its config.json"):
        load_huggingface_model(broken)

    (broken / "config.json").write_text(json.dumps(config))
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (broken / name).unlink()
    one_error(*cli(capsys, "generate", "-c", broken, "--prompt", "x")[::2], "no tokenizer")
