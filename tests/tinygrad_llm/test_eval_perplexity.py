"""Perplexity: lm-eval's rolling windows, strided windows, batching against a naive per-token loop, the metrics.

The model is the tiny preset with a 16-token context, in float64 with widened
weights so that a token's log-probability depends visibly on its context: a
window that saw one token too many or too few would not match.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nn
from nn import functional as F
from tinygrad_llm.evaluate.perplexity import (
    continuation_logprobs,
    count_words,
    perplexity,
    rolling_loglikelihood,
    rolling_requests,
    rolling_windows,
)
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer

CONTEXT = 16
CORPUS = ("def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"
          "naïve café, Grüße, 日本語 😀 and ascii text.\n") * 3


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    nn.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=CONTEXT)).to("float64")
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 10
    return model.eval()


def next_token_logprob(model: GPT, prefix: list[int], target: int) -> float:
    """log p(target | prefix): one separate forward over the prefix alone, log-softmax of its last position."""
    with nn.no_grad():
        logits, _ = model(np.array([prefix]))
        return float(F.log_softmax(logits, dim=-1).numpy()[0, -1, target])


def lm_eval_windows(tokens: list[int], prefix: int, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows(context_len=1) then make_disjoint_window, restated from its docs.

    The first window is [prefix] + tokens[:L-1] predicting tokens[:L]; each later
    one predicts the next min(L, remaining) tokens from the input
    tokens[end - L - 1 : end - 1]; make_disjoint_window keeps the first
    len(input) - len(pred) + 1 input tokens as the context.
    """
    if not tokens:
        return []
    first = min(max_seq_len, len(tokens))
    raw = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_seq_len)
        end = predicted + n
        raw.append((tokens[end - max_seq_len - 1:end - 1], tokens[end - n:end]))
        predicted += n
    return [(inp[:len(inp) - len(pred) + 1], pred) for inp, pred in raw]


def naive_rolling(model: GPT, tokens: list[int], eot: int, context: int, stride: int) -> np.ndarray:
    """Every token scored by its own forward pass over the tokens before it in its window.

    In ``seq = [eot] + tokens`` the target at index t (1..n) belongs to the window
    ending at e = the first of min(C, n), min(C, n) + S, ... (capped at n) with
    e >= t, and sees ``seq[max(0, e - C) : t]``.
    """
    seq = [eot, *tokens]
    n, out = len(tokens), []
    for t in range(1, n + 1):
        e = min(context, n)
        while e < t:
            e = min(e + stride, n)
        out.append(next_token_logprob(model, seq[max(0, e - context):t], seq[t]))
    return np.array(out)


@pytest.mark.parametrize("n", [0, 1, 5, 15, 16, 17, 31, 32, 33, 40, 57])
@pytest.mark.parametrize("context", [1, 2, 7, 16])
def test_disjoint_windows_are_lm_evals(n, context):
    tokens = list(range(100, 100 + n))
    ours = [(list(c), list(p)) for c, p in rolling_requests(tokens, 99, context)]
    assert ours == lm_eval_windows(tokens, 99, context)


@pytest.mark.parametrize("n", [1, 9, 16, 17, 40, 57])
@pytest.mark.parametrize(("context", "stride"), [(16, None), (16, 16), (16, 8), (16, 5), (16, 1), (7, 3)])
def test_every_token_is_scored_exactly_once(n, context, stride):
    windows = rolling_windows(n, context, stride)
    targets = [t for begin, end, scored in windows for t in range(end - scored + 1, end + 1)]
    assert targets == list(range(1, n + 1))
    s = context if stride is None else stride
    for i, (begin, end, scored) in enumerate(windows):
        assert end - begin == min(context, n)      # every window as long as the text allows
        assert 1 <= scored <= (min(context, n) if i == 0 else s)
        if i:                                     # a scored token sees at least C - S + 1 tokens
            assert end - scored + 1 - begin >= min(context - s + 1, context)


def test_stride_equal_to_context_is_the_disjoint_windows():
    for n in range(0, 60):
        assert rolling_requests(list(range(n)), 7, CONTEXT, CONTEXT) == rolling_requests(list(range(n)), 7, CONTEXT)


@pytest.mark.parametrize(("context", "stride"), [(16, None), (16, 4), (16, 1), (9, None), (9, 5)])
def test_rolling_loglikelihood_equals_a_naive_per_token_loop(model, tokenizer, context, stride):
    tokens = tokenizer.encode_ordinary(CORPUS[:150])
    assert len(tokens) > 3 * CONTEXT
    eot = tokenizer.eot_token
    ours = rolling_loglikelihood(model, tokens, eot, context, stride, batch_tokens=40)
    naive = naive_rolling(model, tokens, eot, context, context if stride is None else stride)
    assert ours.shape == (len(tokens),)
    np.testing.assert_allclose(ours, naive, rtol=1e-10, atol=1e-10)


def test_batching_and_padding_do_not_change_scores(model, tokenizer):
    """Requests of different lengths, shared inputs and truncated contexts: batched equals one at a time."""
    rng = np.random.default_rng(3)
    requests = []
    for _ in range(12):
        context = rng.integers(0, tokenizer.vocab_size, rng.integers(1, 30)).tolist()
        continuation = rng.integers(0, tokenizer.vocab_size, rng.integers(1, 4)).tolist()
        requests.append((context, continuation))
    requests.append((requests[0][0], [5]))  # the same context, another continuation
    batched = continuation_logprobs(model, requests, batch_tokens=64)
    for (context, continuation), got in zip(requests, batched, strict=True):
        whole = (context + continuation)[-(CONTEXT + 1):]
        first = len(whole) - len(continuation)
        want = [next_token_logprob(model, whole[:i], whole[i]) for i in range(first, len(whole))]
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_perplexity_batches_documents_and_sums_them(model, tokenizer):
    texts = [CORPUS[:90], "", CORPUS[40:200], "x"]
    result = perplexity(model, tokenizer, texts, stride=6, batch_tokens=50)
    eot = tokenizer.eot_token
    per_doc = [rolling_loglikelihood(model, tokenizer.encode_ordinary(t), eot, CONTEXT, 6).sum() for t in texts]
    assert result["loglikelihood"] == pytest.approx(sum(per_doc), rel=1e-12)
    assert result["tokens"] == sum(len(tokenizer.encode_ordinary(t)) for t in texts)
    assert result["documents"] == 4 and result["context"] == CONTEXT and result["stride"] == 6
    assert result["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert result["token_loss"] == pytest.approx(-result["loglikelihood"] / result["tokens"])
    assert result["perplexity"] == pytest.approx(math.exp(result["token_loss"]))


def test_metrics_on_a_hand_computed_case(tokenizer):
    """A model with all-zero weights predicts uniformly: every token costs ln V nats, whatever its context."""
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=CONTEXT))
    for p in model.parameters():
        p.zero_()
    text = "héllo  wörld\n"   # 15 UTF-8 bytes (é and ö take two); words: "héllo", "wörld", "" = 3
    n = len(tokenizer.encode_ordinary(text))
    v = tokenizer.vocab_size
    result = perplexity(model, tokenizer, [text])
    assert (result["bytes"], result["words"], result["tokens"]) == (15, 3, n)
    assert result["loglikelihood"] == pytest.approx(-n * math.log(v), rel=1e-6)
    assert result["token_loss"] == pytest.approx(math.log(v), rel=1e-6)
    assert result["perplexity"] == pytest.approx(v, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(n * math.log2(v) / 15, rel=1e-6)
    assert result["byte_perplexity"] == pytest.approx(v ** (n / 15), rel=1e-5)
    assert result["word_perplexity"] == pytest.approx(v ** (n / 3), rel=1e-5)
    assert result["stride"] == CONTEXT


def test_word_count_is_lm_evals():
    assert count_words("one two  three") == 3
    assert count_words(" lead and trail\n") == 5   # "", "lead", "and", "trail", ""
    assert count_words("") == 1


def test_bad_arguments_are_refused(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        rolling_windows(10, 8, 9)
    with pytest.raises(ValueError, match="stride"):
        rolling_windows(10, 8, 0)
    with pytest.raises(ValueError, match="context"):
        perplexity(model, tokenizer, ["some text"], context=CONTEXT + 1)
    with pytest.raises(ValueError, match="empty"):
        perplexity(model, tokenizer, ["", ""])
