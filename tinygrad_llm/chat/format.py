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

**The calculator.** An assistant's message may also be a list of parts
instead of one string: text, a ``calculator`` part (an expression the model
writes) and the ``calculator_output`` that follows it (what
:mod:`tinygrad_llm.chat.calculator` made of it)::

    {"role": "assistant", "content": [
        {"type": "calculator", "text": "47 + 85"},
        {"type": "calculator_output", "text": "132"},
        {"type": "text", "text": "132"}]}

renders as ``<|assistant_start|> <|calculator_start|> 47 + 85
<|calculator_end|> <|output_start|> 132 <|output_end|> 132
<|assistant_end|>``. The expression and its end marker are trained on (the
model learns to ask); the output is not (at chat time it comes from the
tool, never from the model: :mod:`tinygrad_llm.chat.assistant` feeds it in
when the model writes ``<|calculator_end|>``). What the user reads is the
text parts alone (:func:`message_text`).

The six turn markers and the four tool markers are new tokens for a
pre-trained tokenizer: :func:`add_chat_tokens` appends them after its last
id, and the model's embedding grows to match (``GPT.grow_vocabulary``). A
checkpoint records :data:`TEMPLATE`, so a loader can tell which format a
model was tuned on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizer import ENDOFTEXT, Tokenizer

__all__ = ["ROLES", "PART_TYPES", "ChatFormatError", "Message", "check_conversation", "message_text",
           "alpaca_to_messages", "ROLE_TOKENS", "CHAT_TOKENS", "TOOL_TOKENS", "TEMPLATE", "add_chat_tokens",
           "has_chat_tokens", "has_tool_tokens", "chat_token_ids", "tool_token_ids", "chat_marker_ids",
           "added_token_ids", "render_conversation", "render_prompt"]

ROLES = ("system", "user", "assistant")

PART_TYPES = ("text", "calculator", "calculator_output")
"""The kinds of part an assistant's message may be made of (module docstring)."""

Message = dict[str, Any]
"""``{"role": "user", "content": "..."}``; an assistant's content may be a list of parts instead."""


class ChatFormatError(ValueError):
    """A conversation or record that is not in the chat format; the message says what is wrong, in one line."""


def check_conversation(messages: Any, *, final_assistant: bool = True) -> list[Message]:
    """``messages`` as a clean list of ``{"role", "content"}`` dicts, or a ChatFormatError saying what is wrong.

    The rules: a non-empty list; each item a mapping with a ``role`` from
    :data:`ROLES` and a string ``content`` (other keys are dropped), or for
    the assistant a list of parts (:func:`_check_parts`); a
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
        if role == "assistant" and isinstance(content, Sequence) and not isinstance(content, str):
            content = _check_parts(content, f"message {i + 1} (assistant)")
        elif not isinstance(content, str):
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


def _check_parts(parts: Sequence[Any], where: str) -> list[dict[str, str]]:
    """An assistant's list of parts, clean, or a ChatFormatError: each part a mapping with a ``type`` from
    :data:`PART_TYPES` and a string ``text``; every ``calculator`` part followed by its ``calculator_output``,
    and every output preceded by its expression."""
    if not parts:
        raise ChatFormatError(f"{where} has an empty list of parts")
    clean = []
    for j, part in enumerate(parts):
        if not isinstance(part, Mapping) or part.get("type") not in PART_TYPES or not isinstance(part.get("text"),
                                                                                                 str):
            raise ChatFormatError(f"{where}, part {j + 1}: a part is {{\"type\": one of {', '.join(PART_TYPES)}, "
                                  '"text": a string}')
        clean.append({"type": part["type"], "text": part["text"]})
    for j, part in enumerate(clean):
        follows = clean[j + 1]["type"] if j + 1 < len(clean) else None
        after = clean[j - 1]["type"] if j else None
        if part["type"] == "calculator" and follows != "calculator_output":
            raise ChatFormatError(f"{where}, part {j + 1}: a calculator part must be followed by its output")
        if part["type"] == "calculator_output" and after != "calculator":
            raise ChatFormatError(f"{where}, part {j + 1}: a calculator output must follow a calculator part")
    return clean


def message_text(message: Message) -> str:
    """What the user reads of a message: its content, or the text parts of an assistant's list of parts."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


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

TOOL_TOKENS: tuple[str, ...] = ("<|calculator_start|>", "<|calculator_end|>", "<|output_start|>", "<|output_end|>")
"""The calculator's markers, after the turn markers: the expression's start and end, the output's start and end."""

TEMPLATE: dict[str, Any] = {"name": "tinygrad-llm-chat/2", "tokens": [*CHAT_TOKENS, *TOOL_TOKENS],
                            "begin": ENDOFTEXT}
"""The rendering's name and tokens, JSON-ready, for a fine-tuned checkpoint to record (``/1`` had no tool markers)."""


def add_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with the six :data:`CHAT_TOKENS` and the four :data:`TOOL_TOKENS` added as special tokens
    after its last id.

    No existing id moves, so a base model trained on ``tokenizer`` keeps its
    meaning; the model needs ``tokenizer.vocab_size`` rows afterwards (see
    ``GPT.grow_vocabulary``). Idempotent: a tokenizer that has them is returned
    unchanged in content (one tuned before the tool markers existed gets them
    after its turn markers).
    """
    return tokenizer.with_special_tokens((*CHAT_TOKENS, *TOOL_TOKENS))


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    """Whether ``tokenizer`` has all six turn markers as special tokens."""
    specials = tokenizer.special_tokens
    return all(token in specials for token in CHAT_TOKENS)


def has_tool_tokens(tokenizer: Tokenizer) -> bool:
    """Whether ``tokenizer`` has the four calculator markers (a model tuned before they existed has not)."""
    specials = tokenizer.special_tokens
    return all(token in specials for token in TOOL_TOKENS)


def tool_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The calculator markers' ids by short name (``calculator_start``, ``calculator_end``, ``output_start``,
    ``output_end``); a ChatFormatError if the tokenizer lacks them."""
    if not has_tool_tokens(tokenizer):
        raise ChatFormatError("this tokenizer has no calculator tokens (a model fine-tuned before they existed); "
                              "write the assistant's message as text")
    return {token[2:-2]: tokenizer.special_tokens[token] for token in TOOL_TOKENS}


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
    """The ids of every turn marker in ``tokenizer``, sorted (the ids a reply stops at)."""
    return sorted(i for pair in chat_token_ids(tokenizer).values() for i in pair)


def added_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of every token :func:`add_chat_tokens` adds that ``tokenizer`` has, sorted (the rows LoRA trains)."""
    tools = list(tool_token_ids(tokenizer).values()) if has_tool_tokens(tokenizer) else []
    return sorted([*chat_marker_ids(tokenizer), *tools])


def _render(tokenizer: Tokenizer, messages: Any, final_assistant: bool) -> tuple[list[int], list[int]]:
    """The ids and loss mask of a checked conversation: the one rendering behind training and chat."""
    markers = chat_token_ids(tokenizer)
    if ENDOFTEXT not in tokenizer.special_tokens:
        raise ChatFormatError(f"this tokenizer has no {ENDOFTEXT} token to begin a conversation with")
    ids, mask = [tokenizer.eot_token], [0]
    for message in check_conversation(messages, final_assistant=final_assistant):
        start, end = markers[message["role"]]
        learned = int(message["role"] == "assistant")
        ids.append(start)
        mask.append(0)
        if isinstance(message["content"], str):
            content = tokenizer.encode_ordinary(message["content"])
            ids += content
            mask += [learned] * len(content)
        else:
            _render_parts(tokenizer, message["content"], ids, mask)
        ids.append(end)
        mask.append(learned)
    return ids, mask


def _render_parts(tokenizer: Tokenizer, parts: Sequence[Mapping[str, str]], ids: list[int], mask: list[int]) -> None:
    """Append an assistant's parts to ``ids`` and ``mask``: text and expressions learned, outputs not."""
    tools = tool_token_ids(tokenizer)
    for part in parts:
        text = tokenizer.encode_ordinary(part["text"])
        if part["type"] == "text":
            ids += text
            mask += [1] * len(text)
        elif part["type"] == "calculator":
            ids += [tools["calculator_start"], *text, tools["calculator_end"]]
            mask += [1] * (len(text) + 2)
        else:  # the tool's output: read by the model, written by the calculator
            ids += [tools["output_start"], *text, tools["output_end"]]
            mask += [0] * (len(text) + 2)


def render_conversation(tokenizer: Tokenizer, messages: Any,
                        max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """A training conversation as token ids and a loss mask of the same length.

    The ids are ``<|endoftext|>`` and then, for each message, its role's start
    marker, ``tokenizer.encode_ordinary(content)`` and its end marker (see the
    module docstring). The content is encoded as ordinary text, so marker
    strings inside it are just characters.

    ``mask[i]`` is 1 where token ``ids[i]`` is one the model should learn to
    write: the assistant's content tokens and its ``<|assistant_end|>`` (so it
    learns to stop), and of an assistant's parts its text and its calculator
    expressions with their markers. Everything else is 0: the calculator's
    outputs (the tool writes them), the begin token, the system and user
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
