"""Text generation: sample one token at a time, with a KV cache.

    model, tokenizer = load_model("runs/small")          # tinygrad_llm.checkpoint
    sampling = SamplingConfig(temperature=0.8, top_k=50)
    for piece in generate_text(model, tokenizer, "def main(", max_new_tokens=100, sampling=sampling, seed=0):
        print(piece, end="", flush=True)

Each step feeds only the newest token through the model; the keys and values
of the earlier ones wait in the cache. When the text outgrows the context the
window slides: the cache is dropped and refilled with the last half-context of
tokens (positions restart, which is what a model with learned positions needs).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

import nn
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer

__all__ = ["SamplingConfig", "sample_next", "generate_tokens", "generate_text", "stream_text", "decode_stream",
           "TextStream", "PromptError", "heal_prompt"]


class PromptError(ValueError):
    """A prompt the model cannot take (empty, or longer than its context)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token from the logits.

    temperature 0 means greedy (argmax). Otherwise the logits are divided by the
    temperature, cut to the ``top_k`` most likely tokens (0 = all), then to the
    smallest set whose probability reaches ``top_p`` (1.0 = all), and sampled.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")


def sample_next(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> int:
    """One token id from a row of logits (vocab_size,).

    The draw is inverse-CDF sampling: one uniform number u from ``rng``, and
    the first token whose cumulative probability passes u. That is exactly the
    draw ``rng.choice(vocab_size, p=probs)`` makes (a test holds it to numpy's),
    without choice's checks of ``p``, which cost more than the draw itself.
    """
    if config.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / config.temperature
    if 0 < config.top_k < scaled.size:
        kth = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled[scaled < kth] = -np.inf
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if config.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, config.top_p)) + 1]  # the smallest set reaching top_p
        nucleus = np.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    cdf = np.cumsum(probs)
    if not np.isfinite(cdf[-1]):
        raise ValueError("the logits hold NaN or infinity: nothing to sample from")
    cdf /= cdf[-1]
    return int(np.searchsorted(cdf, rng.random(), side="right"))


def generate_tokens(model: GPT, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingConfig,
                    seed: int | None = None, stop_ids: Sequence[int] = (),
                    first_allowed: Sequence[int] | None = None,
                    respond: Callable[[int], Sequence[int]] | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after ``prompt``, stopping after a token in ``stop_ids``.

    ``first_allowed``, when given, are the only ids the first new token may be (token healing).
    ``respond``, when given, sees each sampled token and may return tokens to
    insert after it (a tool's output: the chat's calculator): the model reads
    them next, as if they were in the prompt; they are not yielded (the model
    did not write them) and do not count against ``max_new_tokens``. It is not
    called after the last token, and tokens that would not fit in the context
    end the generation (sliding past them would drop the prompt's beginning).
    """
    context = model.config.block_size
    if not prompt:
        raise PromptError("the prompt is empty (it needs at least one token)")
    if len(prompt) > context:
        raise PromptError(f"the prompt has {len(prompt)} tokens; the model's context is {context}")
    rng = np.random.default_rng(seed)
    tokens = list(prompt)
    was_training = model.training
    model.eval()
    try:
        with nn.no_grad():
            caches = model.make_caches(1)
            pending = tokens  # tokens not yet in the cache
            for step in range(max_new_tokens):
                if caches[0].length + len(pending) > context:  # slide: keep the last half-context
                    for cache in caches:
                        cache.reset()
                    pending = tokens[-(context // 2):]
                logits, _ = model(np.asarray([pending]), caches=caches, logits_at=[len(pending) - 1])
                row = logits.numpy()[0, -1]
                if first_allowed is not None and len(tokens) == len(prompt):  # healing: only these may come first
                    allowed = np.full_like(row, -np.inf)
                    allowed[first_allowed] = row[first_allowed]
                    row = allowed
                token = sample_next(row, sampling, rng)
                tokens.append(token)
                pending = [token]
                yield token
                if token in stop_ids:
                    return
                if respond is not None and step < max_new_tokens - 1 and (inserted := list(respond(token))):
                    if caches[0].length + len(pending) + len(inserted) > context:
                        return
                    tokens += inserted
                    pending += inserted
    finally:
        model.train(was_training)


def heal_prompt(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[list[int], list[int] | None, str]:
    """Token healing: (the prompt without its last token, the ids the first new token may be, the removed text).

    The prompt is left whole (``allowed`` is None, no text removed) when there
    is nothing to heal: one token only, a special token last, a last token
    that is not whole UTF-8 text, or no other token that starts with it.
    """
    ids = list(ids)
    specials = set(tokenizer.special_tokens.values())
    if len(ids) < 2 or ids[-1] in specials:
        return ids, None, ""
    tail = tokenizer.token_bytes(ids[-1])
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError:
        return ids, None, ""
    allowed = [i for i in range(tokenizer.vocab_size)
               if i not in specials and tokenizer.token_bytes(i).startswith(tail)]
    if allowed == [ids[-1]]:
        return ids, None, ""
    return ids[:-1], allowed, text


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 200,
                  sampling: SamplingConfig | None = None, seed: int | None = None,
                  stop: Sequence[str] = (), stop_at_eot: bool = True, heal: bool = False) -> Iterator[str]:
    """Stream the continuation of ``prompt`` as text pieces, ending before the first stop string.

    The prompt may hold special tokens (``<|endoftext|>``); they are encoded as
    such. ``heal`` turns on token healing (module docstring); the text streamed
    is still only what follows ``prompt``.
    """
    ids = tokenizer.encode(prompt, allowed_special="all")
    allowed, removed = None, ""
    if heal:
        ids, allowed, removed = heal_prompt(tokenizer, ids)
    eot = tokenizer.special_tokens.get("<|endoftext|>")
    stop_ids = [eot] if stop_at_eot and eot is not None else []
    return stream_text(model, tokenizer, ids, max_new_tokens, sampling, seed, stop, stop_ids,
                       first_allowed=allowed, skip=removed)


def stream_text(model: GPT, tokenizer: Tokenizer, ids: Sequence[int], max_new_tokens: int = 200,
                sampling: SamplingConfig | None = None, seed: int | None = None, stop: Sequence[str] = (),
                stop_ids: Sequence[int] = (), record: list[int] | None = None,
                first_allowed: Sequence[int] | None = None, skip: str = "") -> Iterator[str]:
    """Stream the text the model writes after the token ids ``ids``, ending before a stop string or stop id.

    A token in ``stop_ids`` ends the text and is not part of it (the chat stops
    at ``<|assistant_end|>`` this way). ``record``, when given, receives every
    token id the model wrote, the stopping one too (:func:`decode_stream`).
    ``first_allowed`` and ``skip`` are token healing's (:func:`heal_prompt`):
    the ids the first token may be, and the text it starts with that is not streamed.
    """
    tokens = generate_tokens(model, ids, max_new_tokens, sampling or SamplingConfig(), seed, stop_ids, first_allowed)
    return decode_stream(tokenizer, tokens, stop, stop_ids, record, skip)


class TextStream:
    """Token ids in, text out, one token at a time: the incremental decoding that streaming needs.

    Tokens can split a UTF-8 character, so bytes go through an incremental
    decoder; text that might be the start of a stop string is held back until
    it is known not to be one. :meth:`push` takes the next id and returns the
    text that is now certain; :attr:`done` turns true at a stop id or a stop
    string; :meth:`finish` returns what was held back. ``record`` (a list)
    receives every id pushed, the stopping one too. ``skip`` is text the
    tokens start with that is dropped before anything else (token healing's
    removed prompt end): it is neither returned nor searched for stop strings.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), stop_ids: Sequence[int] = (),
                 record: list[int] | None = None, skip: str = "") -> None:
        self.tokenizer, self.stop, self.stop_ids, self.record = tokenizer, tuple(stop), frozenset(stop_ids), record
        self._skip = len(skip)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.done = False
        self._cut = False  # ended by a stop string: what follows it (bytes of a split character too) is dropped

    def push(self, token: int) -> str:
        """The text that ``token`` makes certain ("" if none yet); after a stop, nothing more."""
        if self.done:
            return ""
        if self.record is not None:
            self.record.append(token)
        if token in self.stop_ids:
            self.done = True
            return ""
        self._held += self._decoder.decode(self.tokenizer.token_bytes(token))
        if self._skip:
            dropped = min(self._skip, len(self._held))
            self._held, self._skip = self._held[dropped:], self._skip - dropped
        hits = [self._held.find(s) for s in self.stop if s in self._held]
        if hits:
            self.done, self._cut = True, True
            text, self._held = self._held[: min(hits)], ""
            return text
        if len(self._held) > self._hold:
            text = self._held[: len(self._held) - self._hold]
            self._held = self._held[len(self._held) - self._hold:]
            return text
        return ""

    def finish(self) -> str:
        """The text held back at the end (none after a stop string)."""
        if self._cut:
            return ""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return text


def decode_stream(tokenizer: Tokenizer, tokens: Iterable[int], stop: Sequence[str] = (), stop_ids: Sequence[int] = (),
                  record: list[int] | None = None, skip: str = "") -> Iterator[str]:
    """Text pieces from a stream of token ids (a model's, one by one), ending before a stop string or stop id
    (:class:`TextStream` over an iterable)."""
    stream = TextStream(tokenizer, stop, stop_ids, record, skip)
    for token in tokens:
        text = stream.push(token)
        if text:
            yield text
        if stream.done:
            break
    yield stream.finish()
