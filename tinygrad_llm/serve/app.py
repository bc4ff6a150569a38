"""``tinygrad-llm serve``: the OpenAI HTTP API in front of one model, on Starlette and uvicorn.

    app = create_app(model, tokenizer, "small-chat")          # an ASGI app
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes:

- ``GET /v1/models``: the one model this server holds;
- ``POST /v1/completions``: continue a prompt;
- ``POST /v1/chat/completions``: the assistant's reply to ``messages``,
  rendered in the chat format (``chat.format.render_prompt``, the very
  function fine-tuning trained on); a model without the chat tokens gets a 400;
  a model tuned with the calculator uses it here as in the chat
  (``chat.assistant.ToolRunner``: the server works the expression out and the
  model reads the result), and the response holds the reply's text only;
- both with ``"stream": true`` as server-sent events, one ``data: {chunk}``
  per piece of text in OpenAI's chunk format, then ``data: [DONE]``;
- ``GET /health``; ``GET /`` the chat page (``serve.page``).

Every mistake is a 4xx in OpenAI's error shape (``serve.api``), and the
server keeps serving: malformed JSON, an unknown field or one of the wrong
type, a body over ``max_body`` bytes, a prompt that with ``max_tokens`` does
not fit the context, an unknown model, a wrong API key (401, when the server
has one), an unknown route (404) or method (405).

**Batched decoding.** One thread owns the model (``serve.batch.BatchDecoder``):
concurrent requests share its forward passes, each sequence with its own rows
of the KV cache, joining the batch when its prompt has been read and leaving
when it ends. The decoder hands each token to the event loop (a ``Mailbox``: one
wake-up of the loop per decode step, not per token), which turns it
into text and into the response; no thread waits per request. A
streaming client that disconnects frees its row at the next step.

**Determinism.** Choice i of a request with ``seed`` s samples from the
stream seeded ``s + i``, so a streamed and a non-streamed request with the same
seed give the same text; without a seed each request draws a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinygrad_llm.chat.assistant import ToolRunner
from tinygrad_llm.chat.format import ChatFormatError, chat_marker_ids, has_chat_tokens, has_tool_tokens, render_prompt
from tinygrad_llm.generate import SamplingConfig, TextStream
from tinygrad_llm.model import GPT
from tinygrad_llm.serve.api import APIError, CompletionRequest, error_body, parse_chat, parse_completion
from tinygrad_llm.serve.batch import END, BatchDecoder
from tinygrad_llm.serve.page import CHAT_PAGE
from tokenizer import Tokenizer

__all__ = ["create_app", "MAX_BODY"]

MAX_BODY = 1 << 20
"""Largest request body accepted, in bytes (1 MiB): a prompt longer than any context fits well within it."""


class Mailbox:
    """Items from the decoder's thread to queues of one event loop, with one wake-up of the loop per round.

    ``loop.call_soon_threadsafe`` writes to the loop's wake-up socket on each
    call; a decode step that hands a token to each of 16 requests would pay
    that 16 times. Here :meth:`post` only collects, and :meth:`flush`, which
    the decoder calls after each round (``BatchDecoder.after_step``), wakes
    the loop once to deliver everything collected.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, object]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, queue: asyncio.Queue, item: object) -> None:
        """Put ``item`` into ``queue`` on the loop's thread at the next :meth:`flush` (callable from any thread)."""
        with self._lock:
            self._items.append((queue, item))

    def flush(self) -> None:
        """Have the loop deliver what was posted (callable from any thread); one wake-up at most in flight."""
        with self._lock:
            if self._scheduled or not self._items:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop has closed: nobody is left to read these
            with self._lock:
                self._items.clear()

    def _deliver(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Record(list):
    """The token ids a choice's model wrote (for the usage counts and the finish reason), and ``inserted``: how
    many tokens the calculator fed it besides."""

    inserted = 0


@dataclass
class Choice:
    """One generated text and why it ended: ``stop`` (an end token or stop string) or ``length``."""

    text: str
    finish_reason: str
    tokens: int


class Engine:
    """The model, its tokenizer and the decoder that runs every request's generation."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, name: str, max_batch: int = 16) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.decoder = BatchDecoder(self.model, max_batch)
        self.context = model.config.block_size
        self.chat = has_chat_tokens(tokenizer)
        self.calculator = self.chat and has_tool_tokens(tokenizer)  # a chat reply may use it (chat.calculator)
        ends = {tokenizer.eot_token}
        if self.chat:
            ends |= set(chat_marker_ids(tokenizer))
        self.stop_ids = sorted(ends)
        self.created = int(time.time())
        self._mailboxes: dict[asyncio.AbstractEventLoop, Mailbox] = {}

    def prompt_ids(self, request: CompletionRequest) -> list[int]:
        """The token ids the model continues; a 400 if they and ``max_tokens`` do not fit the context."""
        if request.messages is not None:
            if not self.chat:
                raise APIError(400, f"model '{self.name}' has no chat format (it was not fine-tuned); "
                                    "use /v1/completions", "messages")
            try:
                ids = render_prompt(self.tokenizer, request.messages)
            except ChatFormatError as exc:
                raise APIError(400, f"'messages': {exc}", "messages") from None
        else:
            ids = self.tokenizer.encode_ordinary(request.prompt or "")
        room = self.context - len(ids)
        wanted = room if request.max_tokens is None else request.max_tokens
        if room < 1 or wanted > room:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens. However, you "
                                f"requested {len(ids) + wanted} tokens ({len(ids)} in the prompt, {wanted} for "
                                "the completion). Please reduce the prompt or max_tokens.",
                           "messages" if request.messages is not None else "prompt", "context_length_exceeded")
        request.max_tokens = wanted
        return ids

    async def stream(self, ids: list[int], request: CompletionRequest, index: int,
                     record: Record) -> AsyncIterator[str]:
        """Choice ``index``'s text, piece by piece, as the shared batch decodes it.

        The decoder's thread puts each token straight into this event loop's
        queue; the text is decoded here (``TextStream``). ``record`` receives
        the token ids, for the usage counts and the finish reason. Leaving the
        loop early (a stop string, a client gone) withdraws the request.
        """
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = Mailbox(loop)
            self.decoder.after_step.append(mailbox.flush)
        tokens: asyncio.Queue = asyncio.Queue()
        sampling = SamplingConfig(temperature=request.temperature, top_p=request.top_p)
        seed = None if request.seed is None else (request.seed + index) % 2 ** 64
        tools = ToolRunner(self.tokenizer) if self.calculator and request.messages is not None else None
        cancel = self.decoder.submit_callback(ids, request.max_tokens or 1, sampling, seed, self.stop_ids,
                                              lambda item: mailbox.post(tokens, item),
                                              tools.respond if tools is not None else None)
        text = TextStream(self.tokenizer, request.stop, self.stop_ids, record)
        try:
            while (item := await tokens.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                if tools is not None and not tools.shows(item):  # the calculator's expression: not the reply's text
                    record.append(item)
                    if item in self.stop_ids:
                        break
                    continue
                if piece := text.push(item):
                    yield piece
                if text.done:  # a stop id or a stop string: the rest is not wanted
                    break
            if tail := text.finish():
                yield tail
        finally:
            cancel()
            record.inserted = tools.inserted if tools is not None else 0

    async def complete(self, ids: list[int], request: CompletionRequest, index: int) -> Choice:
        """Choice ``index`` whole, with its finish reason."""
        record = Record()
        text = "".join([piece async for piece in self.stream(ids, request, index, record)])
        return Choice(text, *self.finish(record, request, len(ids)))

    def finish(self, record: Record, request: CompletionRequest, prompt_tokens: int) -> tuple[str, int]:
        """Why a choice ended, and how many tokens it has: ``length`` when it used all of ``max_tokens``, or all
        of the context (the calculator's output takes room too), without an end token, else ``stop`` (an end
        token, or a stop string); the end token is not counted, nor what the calculator fed the model."""
        ended = bool(record) and record[-1] in self.stop_ids
        tokens = len(record) - ended
        full = prompt_tokens + len(record) + record.inserted > self.context
        return ("length" if not ended and (len(record) >= (request.max_tokens or 0) or full) else "stop"), tokens


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _read_body(request: Request) -> Any:
    """The JSON body, at most MAX_BODY bytes; a 4xx in OpenAI's shape otherwise."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise APIError(413, f"the request body is larger than {MAX_BODY:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise APIError(413, f"the request body is larger than {MAX_BODY:,} bytes")
    try:
        return json.loads(bytes(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None


def create_app(model: GPT, tokenizer: Tokenizer, name: str, api_key: str | None = None,
               max_batch: int = 16) -> Starlette:
    """The ASGI app serving ``model`` under the name ``name``; with ``api_key``, requests need that bearer token.

    ``max_batch`` is the most sequences decoded together; more requests wait for a row.
    """
    engine = Engine(model, tokenizer, name, max_batch)

    def check(request: Request) -> None:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise APIError(401, "Incorrect API key provided.", code="invalid_api_key", kind="invalid_request_error")

    def check_model(parsed: CompletionRequest) -> None:
        if parsed.model != engine.name:
            raise APIError(404, f"The model '{parsed.model}' does not exist; this server has '{engine.name}'",
                           "model", "model_not_found")

    async def models(request: Request) -> Response:
        try:
            check(request)
        except APIError as exc:
            return _error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "tinygrad-llm"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.name})

    async def page(request: Request) -> Response:
        return HTMLResponse(CHAT_PAGE.replace("__MODEL__", json.dumps(engine.name)))

    async def handle(request: Request, chat: bool) -> Response:
        try:
            check(request)
            body = await _read_body(request)
            parsed = (parse_chat if chat else parse_completion)(body, engine.context)
            check_model(parsed)
            ids = engine.prompt_ids(parsed)
        except APIError as exc:
            return _error(exc)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
        if parsed.stream:
            return StreamingResponse(_events(engine, ids, parsed, ident, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        choices = []
        for index in range(parsed.n):
            choices.append(await engine.complete(ids, parsed, index))
        completion_tokens = sum(c.tokens for c in choices)
        usage = {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                 "total_tokens": len(ids) + completion_tokens}
        if chat:
            body = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                     "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
        else:
            body = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in enumerate(choices)]
        return JSONResponse({"id": ident, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": engine.name, "choices": body, "usage": usage,
                             "system_fingerprint": None})

    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return JSONResponse(error_body(message.get(status, str(getattr(exc, "detail", exc)))), status_code=status)

    routes = [Route("/", page), Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.engine = engine  # for tests and tools: the decoder's counters
    return app


def _chunk(ident: str, engine: Engine, chat: bool, index: int, text: str | None, finish: str | None,
           first: bool = False) -> str:
    """One server-sent event in OpenAI's chunk format."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    event = {"id": ident, "object": kind, "created": int(time.time()), "model": engine.name, "choices": [choice],
             "system_fingerprint": None}
    return f"data: {json.dumps(event)}\n\n"


async def _events(engine: Engine, ids: list[int], request: CompletionRequest, ident: str,
                  chat: bool) -> AsyncIterator[str]:
    """The stream of a request: its choices one after another, each piece as it is decoded, then [DONE].

    When the client goes away, Starlette stops this generator, which closes
    the choice's stream and so withdraws it from the decoder.
    """
    completion_tokens = 0
    for index in range(request.n):
        record = Record()
        if chat:
            yield _chunk(ident, engine, chat, index, None, None, first=True)
        pieces = engine.stream(ids, request, index, record)
        try:
            async for piece in pieces:
                yield _chunk(ident, engine, chat, index, piece, None)
        finally:
            await pieces.aclose()
        finish, tokens = engine.finish(record, request, len(ids))
        completion_tokens += tokens
        yield _chunk(ident, engine, chat, index, None, finish)
    if request.include_usage:
        usage = {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                 "total_tokens": len(ids) + completion_tokens}
        event = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                 "created": int(time.time()), "model": engine.name, "choices": [], "usage": usage}
        yield f"data: {json.dumps(event)}\n\n"
    yield "data: [DONE]\n\n"
