"""Batched decoding: concurrent requests share the model's forward passes.

    decoder = BatchDecoder(model, max_batch=16)
    for token in decoder.submit(prompt_ids, max_new_tokens=50, sampling=SamplingConfig(), seed=1, stop_ids=[eot]):
        ...                                   # each request iterates over its own tokens, from any thread

One thread owns the model. Each round of its loop is one forward pass that

1. **admits** waiting requests (while fewer than ``max_batch`` run): their
   prompts ride in the same pass as the running sequences' next tokens,
   *packed*: every new token is one row of an (N, 1) batch, and attention
   (:class:`~nn.attention.PackedKVCache`) lets each token see only its own
   sequence's keys, so a 1-token decode row pays nothing for a 15-token
   prompt beside it (vLLM calls this chunked prefill). Each admitted request
   gets its first token from the pass, and a row in the batch's
   :class:`~nn.attention.RaggedKVCache` (one per layer);
2. **steps** every running sequence: each row's last logits are sampled with
   that request's settings and random stream;
3. **retires** the sequences that ended (a stop token, ``max_new_tokens``, or a
   client that went away): their rows leave the batch.

Packing gathers each token's keys, N x S of them, so when the admitted
prompts are long (the gather would pass ``pack_bytes``) they are read first
in a pass of their own, right-padded to the longest (ordinary causal
attention, the output layer at each prompt's last position only), and join
the batch before the round's decode pass.

A pass costs about the same for one sequence as for sixteen on a CPU (the
weights are read once per pass either way), which is where the throughput
comes from; reading prompts inside the decode pass saves a pass each time
requests arrive. Each request draws from ``numpy.random.default_rng(seed)``
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
from nn.attention import PackedKVCache, RaggedKVCache
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
    context: int                               # the model's context: the most tokens a row of the cache holds
    respond: Callable[[int], Sequence[int]] | None = None  # a tool's hook (see generate_tokens)
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    last: int = -1
    inserted: list[int] = field(default_factory=list)  # a tool's tokens, read in the next pass after ``last``
    length: int = 0                            # tokens in the sequence so far: prompt, produced and inserted

    def emit(self, token: int) -> bool:
        """Hand ``token`` to the request; True if the sequence goes on.

        A tool's tokens after it (``respond``) are read in the next pass with
        it; a sequence they would take past the context ends there.
        """
        self.deliver(token)
        self.produced += 1
        self.last = token
        self.length += 1
        if token in self.stop_ids or self.produced >= self.max_new_tokens or self.cancelled.is_set():
            return False
        self.inserted = list(self.respond(token)) if self.respond is not None else []
        self.length += len(self.inserted)
        return self.length <= self.context  # room in the cache for the pass that reads them


class BatchDecoder:
    """The thread that decodes every submitted request together (see the module docstring)."""

    def __init__(self, model: GPT, max_batch: int = 16, pack_bytes: int = 16 << 20) -> None:
        self.model, self.max_batch = column_major_weights(model), max_batch  # faster few-row products
        self.pack_bytes = pack_bytes  # the most key/value bytes a packed pass may gather per layer
        self._waiting: list[_Sequence] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.after_step: list[Callable[[], None]] = []  # called on the decoder's thread after each round
        self.steps = 0                # forward passes taken (for tests and logs)
        self.largest_batch = 0        # the most sequences in one pass
        self.packed_prompts = 0       # prompts read inside a decode pass (the rest had a pass of their own)

    def submit(self, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingConfig, seed: int | None,
               stop_ids: Sequence[int] = (), respond: Callable[[int], Sequence[int]] | None = None) -> Iterator[int]:
        """The tokens of one request, as the decoder writes them; closing the iterator withdraws the request.

        ``respond`` is a tool's hook, as in ``generate_tokens``: the tokens it
        returns after a token are read in the next pass, not delivered.
        """
        out: queue.Queue = queue.Queue()
        cancel = self.submit_callback(prompt, max_new_tokens, sampling, seed, stop_ids, out.put, respond)
        return self._tokens(out, cancel)

    def submit_callback(self, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingConfig, seed: int | None,
                        stop_ids: Sequence[int], deliver: Callable[[object], None],
                        respond: Callable[[int], Sequence[int]] | None = None) -> Callable[[], None]:
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
                             deliver, context, respond, length=len(prompt))
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
            in_flight = running + admitted
            try:
                with nn.no_grad():
                    if admitted and not self._packable(running, admitted):
                        started, rows = self._prefill(admitted)
                        admitted = []
                        if started:
                            running += started
                            caches = rows if caches is None else self._joined(caches, rows)
                    if running or admitted:
                        running, caches = self._pass(running, admitted, caches)
            except BaseException as exc:  # a failure reaches every request in flight, never kills the thread
                for sequence in in_flight:
                    sequence.deliver(exc)
                    sequence.deliver(END)
                running, caches = [], None
            for callback in self.after_step:  # e.g. wake an event loop once for the round's tokens
                callback()

    @staticmethod
    def _joined(caches: list[RaggedKVCache], rows: list[RaggedKVCache]) -> list[RaggedKVCache]:
        for cache, new in zip(caches, rows, strict=True):
            cache.extend(new)
        return caches

    def _packable(self, running: list[_Sequence], admitted: list[_Sequence]) -> bool:
        """Whether the admitted prompts can ride in the decode pass: the keys and values each packed token
        gathers (its sequence's, up to the longest sequence after the pass) stay within ``pack_bytes``."""
        tokens = sum(1 + len(s.inserted) for s in running) + sum(len(s.prompt) for s in admitted)
        longest = max(s.length for s in running + admitted)
        c = self.model.config
        per_position = 2 * self.model.h[0].attn.n_kv_head * c.head_dim * self.model.ln_f.weight.dtype.itemsize
        return tokens * longest * per_position <= self.pack_bytes

    def _prefill(self, admitted: list[_Sequence]) -> tuple[list[_Sequence], list[RaggedKVCache] | None]:
        """Read the prompts together and sample each first token; the sequences that go on, and their caches.

        The prompts are right-padded to the longest: causal attention never lets
        a prompt's tokens see the padding after them, and once the row's length
        is set to its prompt's, its next token overwrites the padding.
        """
        self.steps += 1
        lengths = np.array([len(s.prompt) for s in admitted])
        ids = np.zeros((len(admitted), int(lengths.max())), dtype=np.int64)
        for row, sequence in enumerate(admitted):
            ids[row, :lengths[row]] = sequence.prompt
        caches = self.model.make_caches(len(admitted), ragged=True)
        logits, _ = self.model(ids, caches=caches, logits_at=lengths - 1)
        for cache in caches:
            cache.set_lengths(lengths)
        return self._sample(admitted, logits.numpy()[:, 0], caches)

    def _pass(self, running: list[_Sequence], admitted: list[_Sequence],
              caches: list[RaggedKVCache] | None) -> tuple[list[_Sequence], list[RaggedKVCache] | None]:
        """One forward pass: the newest token of each running sequence and the whole prompt of each admitted
        one, packed one token per row; samples each sequence's next token and returns those that go on."""
        self.steps += 1
        sequences = running + admitted
        self.largest_batch = max(self.largest_batch, len(sequences))
        self.packed_prompts += len(admitted)
        pieces = [[s.last, *s.inserted] for s in running] + [s.prompt for s in admitted]
        for sequence in running:
            sequence.inserted = []
        ids = np.concatenate(pieces).astype(np.int64)[:, None]  # (N, 1): one token per row
        if admitted or len(ids) > len(running):  # new prompts or a tool's tokens: every new token packed
            if admitted:  # empty rows for the newcomers, after the running ones
                rows = self.model.make_caches(len(admitted), ragged=True)
                caches = rows if caches is None else self._joined(caches, rows)
            counts = np.array([len(piece) for piece in pieces])
            packed = [PackedKVCache(cache, counts) for cache in caches]
            logits, _ = self.model(ids, caches=packed, logits_rows=np.cumsum(counts) - 1)  # each one's last token
        else:  # one token per sequence: the rows are the sequences, no packing needed
            logits, _ = self.model(ids, caches=caches)
        return self._sample(sequences, logits.numpy()[:, 0], caches)

    @staticmethod
    def _sample(sequences: list[_Sequence], rows: np.ndarray,
                caches: list[RaggedKVCache]) -> tuple[list[_Sequence], list[RaggedKVCache] | None]:
        """Each sequence's next token from its row of logits; the sequences that go on, and their caches."""
        keep = []
        for i, sequence in enumerate(sequences):
            if sequence.cancelled.is_set():
                sequence.deliver(END)
            elif sequence.emit(sample_next(rows[i], sequence.sampling, sequence.rng)):
                keep.append(i)
            else:
                sequence.deliver(END)
        if not keep:
            return [], None
        if len(keep) < len(sequences):
            for cache in caches:
                cache.keep(keep)
        return [sequences[i] for i in keep], caches
