"""The OpenAI API's request bodies, checked field by field, and its error shape.

A request body is read into a :class:`CompletionRequest` by
:func:`parse_completion` (``POST /v1/completions``) or
:func:`parse_chat` (``POST /v1/chat/completions``). Every field OpenAI
defines is either honoured (``model``, ``prompt`` / ``messages``,
``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``n``,
``stream``, ``user``) or refused with a 400 when it asks for something this
server does not do (``logprobs``, ``echo``, penalties, ``logit_bias``, tools,
...). A field OpenAI does not define is refused too, as OpenAI refuses it
("Unrecognized request argument"), so a typo never passes silently.

Errors are :class:`APIError` carrying the HTTP status and OpenAI's body::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

which the ``openai`` client turns into its exception classes
(``BadRequestError`` for 400, ``AuthenticationError`` for 401,
``NotFoundError`` for 404, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinygrad_llm.chat.format import ChatFormatError, Message, check_conversation

__all__ = ["APIError", "CompletionRequest", "parse_completion", "parse_chat", "error_body", "MAX_N", "MAX_STOP"]

MAX_N = 8
"""Most choices per request (``n``); each is generated in turn."""

MAX_STOP = 4
"""Most stop strings, as OpenAI allows."""


class APIError(Exception):
    """An HTTP error in OpenAI's shape: ``status``, a one-line ``message``, its ``type``, ``param`` and ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class CompletionRequest:
    """One checked request: the prompt (text, or messages for a chat) and how to sample."""

    model: str
    prompt: str | None = None                 # /v1/completions
    messages: list[Message] | None = None     # /v1/chat/completions
    max_tokens: int | None = 16               # None: as many as fit in the context (chat's default)
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False               # stream_options.include_usage


# Fields OpenAI defines that we accept only at their "off" value (anything else is a 400).
_OFF: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None,), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "response_format": (None, {"type": "text"}), "parallel_tool_calls": (None,),
    "service_tier": (None, "auto", "default"), "store": (None, False), "metadata": (None, {}),
    "modalities": (None, ["text"]), "prediction": (None,), "audio": (None,), "reasoning_effort": (None,),
}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "user"}
_COMPLETION_FIELDS = _COMMON | {"prompt"} | (set(_OFF) & {"logprobs", "echo", "best_of", "suffix",
                                                            "presence_penalty", "frequency_penalty", "logit_bias"})
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"} | (set(_OFF) - {"echo", "best_of", "suffix"})


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a number, not {value!r}", name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low:g} and {high:g}, not {value!r}", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, not {value!r}", name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}, not {value}", name)
    return value


def _common(body: Any, allowed: set[str], context: int, default_max_tokens: int | None) -> CompletionRequest:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for name, accepted in _OFF.items():
        if name in body and body[name] not in accepted:
            raise APIError(400, f"'{name}' is not supported by this server", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required (see GET /v1/models)", "model")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise APIError(400, "'stream_options' may only hold include_usage", "stream_options")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise APIError(400, f"'stream' must be true or false, not {stream!r}", "stream")
    if "user" in body and not isinstance(body["user"], str):
        raise APIError(400, "'user' must be a string", "user")
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return CompletionRequest(
        model=model,
        max_tokens=_integer(body, limit_name, default_max_tokens, 1, context),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        stop=stops, seed=_integer(body, "seed", None, -(2 ** 63), 2 ** 63 - 1), n=_integer(body, "n", 1, 1, MAX_N),
        stream=bool(stream), include_usage=bool((options or {}).get("include_usage", False)))


def parse_completion(body: Any, context: int) -> CompletionRequest:
    """A ``/v1/completions`` body: ``prompt`` is one string (or a list holding one)."""
    request = _common(body, _COMPLETION_FIELDS, context, default_max_tokens=16)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", "prompt")
    request.prompt = prompt
    return request


def parse_chat(body: Any, context: int) -> CompletionRequest:
    """A ``/v1/chat/completions`` body: ``messages`` in the chat format, ending with the user's."""
    request = _common(body, _CHAT_FIELDS, context, default_max_tokens=None)
    messages = body.get("messages")
    if isinstance(messages, list):  # OpenAI also sends content as a list of text parts
        messages = [{**m, "content": _text_parts(m.get("content"))} if isinstance(m, dict) else m for m in messages]
        messages = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
                    for m in messages]
    try:
        request.messages = check_conversation(messages, final_assistant=False)
    except ChatFormatError as exc:
        raise APIError(400, f"'messages': {exc}", "messages") from None
    return request


def _text_parts(content: Any) -> Any:
    """A message content given as ``[{"type": "text", "text": ...}, ...]`` joined into one string."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return content
