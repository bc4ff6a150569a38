"""Batched decoding: concurrent requests share the model's forward passes.

    decoder = BatchDecoder(model, max_batch=16)
    for token in decoder.submit(prompt_ids, max_new_tokens=50, sampling=SamplingConfig(), seed=1, stop_ids=[eot]):
        ...                                   # each request iterates over its own tokens, from any thread

One thread owns the model. In a loop it

1. **admits** waiting requests (while fewer than ``max_batch`` run): reads
   their prompts together in one forward pass (the "prefill": right-padded
   to the longest, each row's padding then dropped from its cache, and the
   output layer computed at each prompt's last position only), samples each
   one's first token, and appends their rows to the batch's
   :class:`~nn.attention.RaggedKVCache` (one per layer);
2. **steps** every running sequence at once: their newest tokens go through
   the model as one (B, 1) batch, each row at its own position and attending
   to its own keys only; each row's logits are sampled with that request's
   settings and random stream;
3. **retires** the sequences that ended (a stop token, ``max_new_tokens``, or a
   client that went away): their rows leave the batch.

A decode step costs about the same for one sequence as for sixteen on a CPU
(the weights are read once per step either way), which is where the
throughput comes from. Each request draws from ``numpy.random.default_rng(seed)``
exactly as :func:`~tinygrad_llm.generate.generate_tokens` does, so a request
gets the tokens it would get decoding alone (the batched matrix products may
differ in the last bits; the tests check equality in float64).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

import nn
from nn.attention import RaggedKVCache
from nn.layers import column_major_weights
from tinygrad_llm.generate import PromptError, SamplingConfig, sample_next
from tinygrad_llm.model import GPT

__all__ = ["BatchDecoder", "END"]

END = object()
"""What a request receives after its last token."""


@dataclass
class _Sequence:
    """One request in the decoder: its prompt, settings, random stream and the queue its tokens go to."""

    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingConfig
    rng: np.random.Generator
    stop_ids: frozenset[int]
    deliver: Callable[[object], None]          # called on the decoder thread: each token, then END or an error
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    last: int = -1

    def emit(self, token: int) -> bool:
        """Hand ``token`` to the request; True if the sequence goes on."""
        self.deliver(token)
        self.produced += 1
        self.last = token
        return token not in self.stop_ids and self.produced < self.max_new_tokens and not self.cancelled.is_set()


class BatchDecoder:
    """The thread that decodes every submitted request together (see the module docstring)."""

    def __init__(self, model: GPT, max_batch: int = 16) -> None:
        self.model, self.max_batch = column_major_weights(model), max_batch  # faster few-row products
        self._waiting: list[_Sequence] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.after_step: list[Callable[[], None]] = []  # called on the decoder's thread after each round
        self.steps = 0                # decode steps taken (for tests and logs)
        self.largest_batch = 0        # the most sequences decoded together in one step

    def submit(self, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingConfig, seed: int | None,
               stop_ids: Sequence[int] = ()) -> Iterator[int]:
        """The tokens of one request, as the decoder writes them; closing the iterator withdraws the request."""
        out: queue.Queue = queue.Queue()
        cancel = self.submit_callback(prompt, max_new_tokens, sampling, seed, stop_ids, out.put)
        return self._tokens(out, cancel)

    def submit_callback(self, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingConfig, seed: int | None,
                        stop_ids: Sequence[int], deliver: Callable[[object], None]) -> Callable[[], None]:
        """Like :meth:`submit`, but each token is passed to ``deliver`` on the decoder's thread, then ``END``
        (or the exception that stopped the decoder); returns the function that withdraws the request.

        The server uses this form: ``deliver`` puts the token straight into its event loop's queue, so no
        thread waits per request.
        """
        context = self.model.config.block_size
        if not prompt:
            raise PromptError("the prompt is empty (it needs at least one token)")
        if len(prompt) + max_new_tokens > context:
            raise PromptError(f"the prompt has {len(prompt)} tokens and {max_new_tokens} more were asked for; "
                              f"the model's context is {context}")
        sequence = _Sequence(list(prompt), max_new_tokens, sampling, np.random.default_rng(seed), frozenset(stop_ids),
                             deliver)
        with self._wake:
            self._waiting.append(sequence)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batch-decoder", daemon=True)
                self._thread.start()
            self._wake.notify()
        return sequence.cancelled.set

    @staticmethod
    def _tokens(out: queue.Queue, cancel: Callable[[], None]) -> Iterator[int]:
        try:
            while (token := out.get()) is not END:
                if isinstance(token, BaseException):
                    raise token
                yield token
        finally:
            cancel()  # a consumer that stops early (a client gone) frees its row at the next step

    # ------------------------------------------------------------------ the decoding thread
    def _run(self) -> None:
        running: list[_Sequence] = []
        caches: list[RaggedKVCache] | None = None
        self.model.eval()
        while True:
            with self._wake:
                while not self._waiting and not running:
                    self._wake.wait()
                admitted = self._waiting[: self.max_batch - len(running)]
                del self._waiting[: len(admitted)]
            try:
                with nn.no_grad():
                    started, rows = self._prefill(admitted) if admitted else ([], None)
                    if started:
                        running += started
                        if caches is None:
                            caches = rows
                        else:
                            for cache, new in zip(caches, rows, strict=True):
                                cache.extend(new)
                    if running:
                        running, caches = self._step(running, caches)
            except BaseException as exc:  # a failure reaches every request in flight, never kills the thread
                for sequence in running + admitted:
                    sequence.deliver(exc)
                    sequence.deliver(END)
                running, caches = [], None
            for callback in self.after_step:  # e.g. wake an event loop once for the round's tokens
                callback()

    def _prefill(self, admitted: list[_Sequence]) -> tuple[list[_Sequence], list[RaggedKVCache] | None]:
        """Read the prompts together and sample each first token; the sequences that go on, and their caches.

        The prompts are right-padded to the longest: causal attention never lets
        a prompt's tokens see the padding after them, and once the row's length
        is set to its prompt's, its next token overwrites the padding.
        """
        lengths = np.array([len(s.prompt) for s in admitted])
        ids = np.zeros((len(admitted), int(lengths.max())), dtype=np.int64)
        for row, sequence in enumerate(admitted):
            ids[row, :lengths[row]] = sequence.prompt
        caches = self.model.make_caches(len(admitted), ragged=True)
        logits, _ = self.model(ids, caches=caches, logits_at=lengths - 1)
        rows = logits.numpy()[:, 0]
        for cache in caches:
            cache.set_lengths(lengths)
        keep = []
        for row, sequence in enumerate(admitted):
            if sequence.emit(sample_next(rows[row], sequence.sampling, sequence.rng)):
                keep.append(row)
            else:
                sequence.deliver(END)
        if not keep:
            return [], None
        if len(keep) < len(admitted):
            for cache in caches:
                cache.keep(keep)
        return [admitted[row] for row in keep], caches

    def _step(self, running: list[_Sequence], caches: list[RaggedKVCache]) -> tuple[list[_Sequence], list]:
        """One token for every running sequence; returns those still running and their caches."""
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(running))
        logits, _ = self.model(np.array([[s.last] for s in running]), caches=caches)
        rows = logits.numpy()[:, -1]
        keep = []
        for i, sequence in enumerate(running):
            if sequence.cancelled.is_set():
                sequence.deliver(END)
                continue
            if sequence.emit(sample_next(rows[i], sequence.sampling, sequence.rng)):
                keep.append(i)
            else:
                sequence.deliver(END)
        if len(keep) < len(running):
            if not keep:
                return [], None
            for cache in caches:
                cache.keep(keep)
        return [running[i] for i in keep], caches
