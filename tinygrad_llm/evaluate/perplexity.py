"""Perplexity, bits per byte and word perplexity, computed as lm-evaluation-harness computes them.

    model, tokenizer = load_model("runs/small")              # tinygrad_llm.checkpoint
    result = perplexity(model, tokenizer, [open("essay.txt").read()])
    result["bits_per_byte"], result["stride"]

**Windows.** A text of n tokens is longer than the model's context C, so it is
cut into windows. lm-eval's ``loglikelihood_rolling`` (``get_rolling_token_windows``
with ``max_seq_len=C, context_len=1``, then ``make_disjoint_window``) scores every
token exactly once:

- the first window is the end-of-text token followed by the first C - 1 tokens,
  and predicts the first C tokens (so even the first token has a prediction);
- each later window predicts the next C tokens, conditioned only on the one
  token before them (the windows are disjoint);
- the last window predicts what is left (r < C tokens) but is right-aligned to
  the end of the text, so those r tokens see the C - r tokens before them too.

Write the text as ``seq = [EOT] + tokens`` (n + 1 ids, targets ``seq[1:]``).
Every window above is then "the model on ``seq[max(0, e - C) : e]``, scoring its
last ``e - e_prev`` predictions", where the window ends ``e`` are
``min(C, n)``, then ``e_prev + C`` capped at n. With a stride S instead of C the
ends advance by S: consecutive windows overlap by C - S tokens, each token is
still scored exactly once, and every token after the first window sees at least
C - S + 1 tokens of context (Hugging Face's "perplexity of fixed-length models"
recipe, except that the first token is scored too, after EOT, and the last window
is right-aligned like lm-eval's). ``stride == C`` is exactly lm-eval's windowing.

**Scoring** is lm-eval's ``_loglikelihood_tokens``: a window is a pair (context
ids, continuation ids); the model sees ``(context + continuation)[-(C + 1):][:-1]``
(left-truncated to the context) and the continuation's log-probabilities are
gathered from the log-softmax of the last ``len(continuation)`` positions. MMLU
(``evaluate.mmlu``) scores its answer letters through the same function.

**Metrics** are lm-eval's (``lm_eval/api/metrics.py``, ``Task.count_words``,
``Task.count_bytes``), aggregated over documents as weighted means:
``bits_per_byte = -sum(ll) / sum(bytes) / ln 2``, ``byte_perplexity =
exp(-sum(ll) / sum(bytes))``, ``word_perplexity = exp(-sum(ll) / sum(words))``
with ``words = len(re.split(r"\\s+", doc))`` (lm-eval's default count, which also
counts the empty strings a leading or trailing whitespace run leaves) and bytes
the UTF-8 length of the document. Token loss and perplexity are per token of
*our* tokenizer, so they compare only between models sharing it; bits per byte
compare across tokenizers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import nn
from nn import functional as F
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer

__all__ = ["Request", "ProgressCallback", "continuation_logprobs", "rolling_windows", "rolling_requests",
           "rolling_loglikelihood", "count_words", "perplexity"]

Request = tuple[Sequence[int], Sequence[int]]
"""A (context ids, continuation ids) pair: score the continuation given the context."""

ProgressCallback = Callable[[int, int], object]
"""Called after each batch with (sequences scored so far, sequences in all)."""


def continuation_logprobs(model: GPT, requests: Sequence[Request], max_length: int | None = None,
                          batch_tokens: int = 4096, progress: ProgressCallback | None = None) -> list[np.ndarray]:
    """The log-probability of every continuation token given all the tokens before it, per request.

    lm-eval's ``_loglikelihood_tokens``: the model's input is
    ``(context + continuation)[-(L + 1):][:-1]`` with L = ``max_length`` (default
    the model's context), i.e. left-truncated to fit, and continuation token i is
    scored by the log-softmax at the input position that precedes it. Returns one
    float64 array of shape (len(continuation),) per request, in request order.

    Speed: requests with the same model input (MMLU's four one-token answers
    after one prompt) share one forward pass; inputs are sorted longest first and
    batched up to ``batch_tokens`` tokens (B * T), right-padded with id 0, which
    cannot change the earlier positions of a causal model. Only the scored rows
    of the (B, T, vocab) logits go through the log-softmax.
    """
    length = max_length or model.config.block_size
    if not 1 <= length <= model.config.block_size:
        raise ValueError(f"max_length must be between 1 and the model's context ({model.config.block_size}), "
                         f"not {length}")
    inputs: list[tuple[int, ...]] = []
    for context, continuation in requests:
        if not 1 <= len(continuation) <= length:
            raise ValueError(f"a continuation must have 1 to {length} tokens, not {len(continuation)}")
        inputs.append(tuple((list(context) + list(continuation))[-(length + 1):][:-1]))
    users: dict[tuple[int, ...], list[int]] = {}  # model input -> the requests that read it
    for i, key in enumerate(inputs):
        users.setdefault(key, []).append(i)
    order = sorted(users, key=lambda key: (-len(key), key))
    results: list[np.ndarray] = [np.empty(0)] * len(requests)
    was_training = model.training
    model.eval()
    try:
        with nn.no_grad():
            start = 0
            while start < len(order):
                width = len(order[start])
                stop = start + max(1, batch_tokens // max(width, 1))
                batch = order[start:stop]
                ids = np.zeros((len(batch), width), dtype=np.int64)
                rows, cols, targets, owners = [], [], [], []
                for b, key in enumerate(batch):
                    ids[b, :len(key)] = key
                    for i in users[key]:
                        continuation = list(requests[i][1])
                        k = len(continuation)
                        rows += [b] * k
                        cols += range(len(key) - k, len(key))
                        targets += continuation
                        owners.append((i, k))
                logits, _ = model(ids)                                    # (B, T, vocab)
                picked = F.log_softmax(logits[np.array(rows), np.array(cols)], dim=-1).numpy()  # (M, vocab)
                scores = picked[np.arange(len(targets)), np.array(targets)].astype(np.float64)  # (M,)
                offset = 0
                for i, k in owners:
                    results[i] = scores[offset:offset + k]
                    offset += k
                start = stop
                if progress is not None:
                    progress(min(start, len(order)), len(order))
    finally:
        model.train(was_training)
    return results


def rolling_windows(n_tokens: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """The windows over ``seq = [EOT] + tokens`` (n_tokens + 1 ids) that score every token once.

    Each window is ``(begin, end, scored)``: the model reads ``seq[begin:end]``
    (at most ``context`` ids) and its last ``scored`` predictions are kept, the
    targets ``seq[end - scored + 1 : end + 1]``. With ``stride`` None (= context)
    these are lm-eval's disjoint rolling windows; see the module docstring.
    """
    stride = context if stride is None else stride
    if context < 1:
        raise ValueError(f"the context must be at least 1 token, not {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"the stride must be between 1 and the context ({context}), not {stride}")
    windows, done = [], 0
    end = min(context, n_tokens)
    while done < n_tokens:
        windows.append((max(0, end - context), end, end - done))
        done, end = end, min(end + stride, n_tokens)
    return windows


def rolling_requests(token_ids: Sequence[int], eot_id: int, context: int,
                     stride: int | None = None) -> list[Request]:
    """The windows of :func:`rolling_windows` as (context, continuation) requests.

    With ``stride`` None these are, pair for pair, lm-eval's
    ``map(make_disjoint_window, get_rolling_token_windows(tokens, eot_id, context, 1))``.
    """
    seq = [eot_id, *token_ids]
    return [(seq[begin:end + 1 - scored], seq[end + 1 - scored:end + 1])
            for begin, end, scored in rolling_windows(len(token_ids), context, stride)]


def rolling_loglikelihood(model: GPT, token_ids: Sequence[int], eot_id: int, context: int | None = None,
                          stride: int | None = None, batch_tokens: int = 4096) -> np.ndarray:
    """log p(token_i | the tokens before it in its window) for every token, shape (len(token_ids),), float64.

    ``context`` defaults to the model's; ``stride`` None gives lm-eval's disjoint
    windows. The sum is lm-eval's ``loglikelihood_rolling`` of the text.
    """
    context = context or model.config.block_size
    requests = rolling_requests(token_ids, eot_id, context, stride)
    if not requests:
        return np.zeros(0)
    return np.concatenate(continuation_logprobs(model, requests, context, batch_tokens))


def count_words(text: str) -> int:
    """lm-eval's default word count, ``len(re.split(r"\\s+", doc))`` ("a b\\n" counts 3: the split leaves "")."""
    return len(re.split(r"\s+", text))


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


def perplexity(model: GPT, tokenizer: Tokenizer, texts: Sequence[str], context: int | None = None,
               stride: int | None = None, batch_tokens: int = 4096,
               progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Token loss, perplexity, bits per byte, byte and word perplexity of ``texts`` (each one document).

    Each text is encoded with ``encode_ordinary`` (a special token's string in
    the text is just text), scored with rolling windows (see the module
    docstring; all the texts' windows are batched together), and the per-document
    sums are aggregated as lm-eval aggregates them. Returns a dict with
    ``documents, tokens, bytes, words, loglikelihood`` (summed, nats),
    ``token_loss`` (nats/token), ``perplexity, bits_per_byte, byte_perplexity,
    word_perplexity, context, stride, windows``. ``stride`` equals ``context``
    for lm-eval's disjoint windows: report it beside every number.
    """
    context = context or model.config.block_size
    stride = context if stride is None else stride
    try:
        eot_id = tokenizer.eot_token
    except KeyError as exc:
        raise ValueError(f"the tokenizer has no end-of-text token to start the first window with ({exc})") from None
    requests: list[Request] = []
    owners: list[int] = []
    n_tokens = n_bytes = n_words = 0
    for doc, text in enumerate(texts):
        ids = tokenizer.encode_ordinary(text)
        for request in rolling_requests(ids, eot_id, context, stride):
            requests.append(request)
            owners.append(doc)
        n_tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
        n_words += count_words(text)
    if n_tokens == 0:
        raise ValueError("no text to score: every document is empty")
    scores = continuation_logprobs(model, requests, context, batch_tokens, progress)
    per_doc = np.zeros(len(texts))
    for doc, score in zip(owners, scores, strict=True):
        per_doc[doc] += score.sum()
    loglikelihood = float(per_doc.sum())
    token_loss = -loglikelihood / n_tokens
    return {
        "documents": len(texts), "tokens": n_tokens, "bytes": n_bytes, "words": n_words,
        "loglikelihood": loglikelihood, "token_loss": token_loss, "perplexity": _exp(token_loss),
        "bits_per_byte": -loglikelihood / n_bytes / math.log(2),
        "byte_perplexity": _exp(-loglikelihood / n_bytes), "word_perplexity": _exp(-loglikelihood / n_words),
        "context": context, "stride": stride, "windows": len(requests),
    }
