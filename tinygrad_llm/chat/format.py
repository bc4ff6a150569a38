"""The chat format: conversations as messages, and their rendering into token ids and a loss mask.

A conversation is a list of messages, each ``{"role": ..., "content": ...}``
with the role ``system``, ``user`` or ``assistant`` and the content a string:
an optional system message first, then user and assistant messages taking
turns, starting with the user. This is the shape of OpenAI's chat API and of
most instruction data sets, so data, the REPL and the server share it.

Rendering. A base model only continues text; to make it an assistant we
fine-tune it on conversations written out as one token sequence, with special
tokens marking where each turn starts and ends (the layout of nanochat)::

    <|endoftext|> <|system_start|> ... <|system_end|>
                  <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|>
                  <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|>

The sequence begins with ``<|endoftext|>``, which is what the base model saw at
the start of every pre-training document. The markers are special tokens, so
no text can produce them: a user who types ``<|assistant_end|>`` gets those
characters, encoded as ordinary text. The model learns only the assistant's
words (the loss mask, see :func:`render_conversation`); at chat time the
prompt is the same rendering of the conversation so far followed by
``<|assistant_start|>`` (:func:`render_prompt`), and the model writes until it
produces ``<|assistant_end|>``. Both go through one function, so what the
model is trained on and what it is asked at chat time cannot drift apart.

The six markers are new tokens for a pre-trained tokenizer:
:func:`add_chat_tokens` appends them after its last id, and the model's
embedding grows to match (``GPT.grow_vocabulary``). A checkpoint records
:data:`TEMPLATE`, so a loader can tell which format a model was tuned on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizer import ENDOFTEXT, Tokenizer

__all__ = ["ROLES", "ChatFormatError", "Message", "check_conversation", "alpaca_to_messages",
           "ROLE_TOKENS", "CHAT_TOKENS", "TEMPLATE", "add_chat_tokens", "has_chat_tokens", "chat_token_ids",
           "chat_marker_ids", "render_conversation", "render_prompt"]

ROLES = ("system", "user", "assistant")

Message = dict[str, str]
"""``{"role": "user", "content": "..."}``."""


class ChatFormatError(ValueError):
    """A conversation or record that is not in the chat format; the message says what is wrong, in one line."""


def check_conversation(messages: Any, *, final_assistant: bool = True) -> list[Message]:
    """``messages`` as a clean list of ``{"role", "content"}`` dicts, or a ChatFormatError saying what is wrong.

    The rules: a non-empty list; each item a mapping with a ``role`` from
    :data:`ROLES` and a string ``content`` (other keys are dropped); a
    ``system`` message only first; then ``user`` and ``assistant`` alternating,
    starting with ``user``. With ``final_assistant`` (training data) the last
    message must be the assistant's; without it (a prompt) the last must be the
    user's.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ChatFormatError("a conversation must be a non-empty list of messages")
    clean: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"message {i + 1} is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"message {i + 1} has the role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i + 1} ({role}) has no text content")
        clean.append({"role": role, "content": content})
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    if not turns:
        raise ChatFormatError("a conversation needs a user message after the system message")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            where = i + 1 + (len(clean) - len(turns))
            raise ChatFormatError(f"message {where} is from the {message['role']}; expected the {expected} "
                                  "(a system message only first, then user and assistant take turns)")
    last = turns[-1]["role"]
    if final_assistant and last != "assistant":
        raise ChatFormatError("a training conversation must end with the assistant's message")
    if not final_assistant and last != "user":
        raise ChatFormatError("a prompt must end with the user's message")
    return clean


def alpaca_to_messages(record: Any) -> list[Message]:
    """An Alpaca record (``instruction``, optional ``input``, ``output``) as a user-assistant conversation.

    The user's message is the instruction, followed by a blank line and the
    input when there is one; the assistant's message is the output.
    """
    if not isinstance(record, Mapping):
        raise ChatFormatError("an Alpaca record must be an object with instruction and output")
    instruction, extra, output = record.get("instruction"), record.get("input", ""), record.get("output")
    for name, value in (("instruction", instruction), ("input", extra), ("output", output)):
        if not isinstance(value, str):
            raise ChatFormatError(f"an Alpaca record's {name!r} must be a string")
    if not instruction.strip():
        raise ChatFormatError("an Alpaca record's instruction is empty")
    user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


# ---------------------------------------------------------------------- rendering to token ids

ROLE_TOKENS: dict[str, tuple[str, str]] = {
    "system": ("<|system_start|>", "<|system_end|>"),
    "user": ("<|user_start|>", "<|user_end|>"),
    "assistant": ("<|assistant_start|>", "<|assistant_end|>"),
}
"""Each role's (start, end) turn markers."""

CHAT_TOKENS: tuple[str, ...] = tuple(token for role in ROLES for token in ROLE_TOKENS[role])
"""The six turn markers in id order: system start and end, user start and end, assistant start and end."""

TEMPLATE: dict[str, Any] = {"name": "tinygrad-llm-chat/1", "tokens": list(CHAT_TOKENS), "begin": ENDOFTEXT}
"""The rendering's name and tokens, JSON-ready, for a fine-tuned checkpoint to record."""


def add_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with the six :data:`CHAT_TOKENS` added as special tokens after its last id.

    No existing id moves, so a base model trained on ``tokenizer`` keeps its
    meaning; the model needs ``tokenizer.vocab_size`` rows afterwards (see
    ``GPT.grow_vocabulary``). Idempotent: a tokenizer that has them is returned
    unchanged in content.
    """
    return tokenizer.with_special_tokens(CHAT_TOKENS)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    """Whether ``tokenizer`` has all six turn markers as special tokens."""
    specials = tokenizer.special_tokens
    return all(token in specials for token in CHAT_TOKENS)


def chat_token_ids(tokenizer: Tokenizer) -> dict[str, tuple[int, int]]:
    """Each role's (start id, end id) in ``tokenizer``; a ChatFormatError if it lacks the chat tokens.

    ``chat_token_ids(tok)["assistant"][1]`` is the id that ends a reply: the
    stop token at chat time.
    """
    if not has_chat_tokens(tokenizer):
        raise ChatFormatError("this tokenizer has no chat tokens; call add_chat_tokens(tokenizer) first "
                              "(and grow the model's vocabulary to its vocab_size)")
    specials = tokenizer.special_tokens
    return {role: (specials[start], specials[end]) for role, (start, end) in ROLE_TOKENS.items()}


def chat_marker_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of every turn marker in ``tokenizer``, sorted (the ids a reply stops at, the rows LoRA trains)."""
    return sorted(i for pair in chat_token_ids(tokenizer).values() for i in pair)


def _render(tokenizer: Tokenizer, messages: Any, final_assistant: bool) -> tuple[list[int], list[int]]:
    """The ids and loss mask of a checked conversation: the one rendering behind training and chat."""
    markers = chat_token_ids(tokenizer)
    if ENDOFTEXT not in tokenizer.special_tokens:
        raise ChatFormatError(f"this tokenizer has no {ENDOFTEXT} token to begin a conversation with")
    ids, mask = [tokenizer.eot_token], [0]
    for message in check_conversation(messages, final_assistant=final_assistant):
        start, end = markers[message["role"]]
        content = tokenizer.encode_ordinary(message["content"])
        learned = int(message["role"] == "assistant")
        ids += [start, *content, end]
        mask += [0] + [learned] * (len(content) + 1)
    return ids, mask


def render_conversation(tokenizer: Tokenizer, messages: Any,
                        max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """A training conversation as token ids and a loss mask of the same length.

    The ids are ``<|endoftext|>`` and then, for each message, its role's start
    marker, ``tokenizer.encode_ordinary(content)`` and its end marker (see the
    module docstring). The content is encoded as ordinary text, so marker
    strings inside it are just characters.

    ``mask[i]`` is 1 where token ``ids[i]`` is one the model should learn to
    write: the assistant's content tokens and its ``<|assistant_end|>`` (so it
    learns to stop). Everything else is 0: the begin token, the system and user
    turns (the model must read them, not imitate them) and
    ``<|assistant_start|>`` (the prompt supplies it at chat time).

    Alignment with the shifted targets: the mask is indexed like ``ids``, the
    token being predicted, not the position doing the predicting. A trainer
    feeds ``inputs = ids[:-1]``, predicts ``targets = ids[1:]`` and keeps the
    loss where ``mask[1:]`` is 1 (setting the other targets to -100, which the
    cross-entropy ignores). ``mask[0]`` is always 0: nothing predicts the first
    token.

    ``max_tokens`` cuts a long conversation to its first ``max_tokens`` ids (and
    mask entries): the end is dropped and the beginning kept, as the context
    that later turns depend on is at the beginning. A cut may remove every
    trained token; a data pipeline would drop such an example.

    Raises ChatFormatError for a conversation that does not end with the
    assistant (see :func:`check_conversation`), a tokenizer without the chat
    tokens, or a ``max_tokens`` below 1.
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ChatFormatError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    ids, mask = _render(tokenizer, messages, final_assistant=True)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_prompt(tokenizer: Tokenizer, messages: Any) -> list[int]:
    """The ids the model continues at chat time: a conversation that ends with the user, then ``<|assistant_start|>``.

    The conversation is rendered exactly as :func:`render_conversation` renders
    it for training, so the prompt of a history is a prefix of that history
    rendered with the reply; the model then writes the reply and its
    ``<|assistant_end|>``, the stop token.
    """
    ids, _ = _render(tokenizer, messages, final_assistant=False)
    return [*ids, chat_token_ids(tokenizer)["assistant"][0]]
