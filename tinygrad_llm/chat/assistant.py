"""The assistant's turn: render the conversation, let the model write until ``<|assistant_end|>``.

    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text = "".join(reply(model, tokenizer, messages))          # streamed piece by piece

The prompt is :func:`tinygrad_llm.chat.format.render_prompt`, the very function
that rendered the training conversations, so the model sees at chat time
exactly the layout it was trained on. A history too long for the context loses
its oldest turns first (a user message with the assistant's answer, together);
the system message and the newest user message always stay, and room is kept
for the reply.

The calculator. When the model writes ``<|calculator_start|>`` an expression
``<|calculator_end|>``, a :class:`ToolRunner` works the expression out
(:func:`~tinygrad_llm.chat.calculator.calculate`) and feeds
``<|output_start|>`` the result ``<|output_end|>`` into the model's context,
as the training conversations had it; the model goes on from there, usually
copying the result into its answer. The reply's text is what the model
writes outside those markers; the expression and its output are kept as
parts (``ToolRunner.parts``) for a history that shows the model what it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from tinygrad_llm.chat.calculator import CalculatorError, calculate
from tinygrad_llm.chat.data import exact_match
from tinygrad_llm.chat.format import (
    Message,
    chat_marker_ids,
    check_conversation,
    has_tool_tokens,
    message_text,
    render_prompt,
    tool_token_ids,
)
from tinygrad_llm.generate import PromptError, SamplingConfig, decode_stream, generate_tokens
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer

__all__ = ["fit_history", "ToolRunner", "reply", "exact_match_accuracy", "GREEDY"]

GREEDY = SamplingConfig(temperature=0.0)


def fit_history(tokenizer: Tokenizer, messages: Sequence[Message], budget: int) -> list[Message]:
    """The newest turns of ``messages`` whose prompt fits in ``budget`` tokens, the system message kept.

    Turns are dropped oldest first, a user message together with the
    assistant's answer to it. If even the newest user message does not fit,
    that is a PromptError: the user must say less.
    """
    messages = check_conversation(messages, final_assistant=False)
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    while True:
        candidate = system + turns
        length = len(render_prompt(tokenizer, candidate))
        if length <= budget:
            return candidate
        if len(turns) == 1:
            raise PromptError(f"the message needs {length} tokens with the system prompt; "
                              f"the model has room for {budget}")
        turns = turns[2:]  # the oldest user message and its answer


class ToolRunner:
    """The calculator inside one reply: answers each expression the model writes, and hides the exchange.

    :meth:`respond` is the generation's hook (``generate_tokens``'s and the
    server's batch decoder's): it collects the tokens after
    ``<|calculator_start|>`` and, at ``<|calculator_end|>``, returns
    ``<|output_start|>``, the result (or ``error: ...``), ``<|output_end|>``
    for the model to read next. :meth:`shows` tells, token by token, which of
    the model's tokens the user reads: none from ``<|calculator_start|>`` to
    ``<|calculator_end|>``. ``calls`` holds each (expression, output);
    :meth:`parts` the reply as the chat format's parts. ``on_call``, when
    given, is called with each (expression, output) as it happens (the REPL
    shows the call that way). :meth:`respond` and :meth:`shows` keep separate
    state, so they may run on different threads (the server's decoder and its
    event loop).
    """

    def __init__(self, tokenizer: Tokenizer, on_call: Callable[[str, str], None] | None = None) -> None:
        self.tokenizer, self.on_call = tokenizer, on_call
        self.ids = tool_token_ids(tokenizer) if has_tool_tokens(tokenizer) else None
        self.calls: list[tuple[str, str]] = []
        self.inserted = 0                            # tokens fed to the model by respond(), in all
        self._expression: list[int] | None = None   # the expression's tokens, while the model writes one
        self._hidden = False                         # inside an expression, for shows()
        self._segments: list[tuple[str, list[int]]] = []  # ("text", ids) and ("calculator", []), in order

    def respond(self, token: int) -> list[int]:
        """The tokens to insert after the model's ``token``: the calculator's output after an expression's end."""
        if self.ids is None:
            return []
        if token == self.ids["calculator_start"]:
            self._expression = []
        elif self._expression is not None:
            if token != self.ids["calculator_end"]:
                self._expression.append(token)
                return []
            expression = self.tokenizer.decode(self._expression)
            self._expression = None
            try:
                output = calculate(expression)
            except CalculatorError as exc:
                output = f"error: {exc}"
            except Exception:  # (a bug of the calculator's: never let it end the reply, or the server's batch)
                output = "error: the calculator failed"
            self.calls.append((expression, output))
            if self.on_call is not None:
                self.on_call(expression, output)
            fed = [self.ids["output_start"], *self.tokenizer.encode_ordinary(output), self.ids["output_end"]]
            self.inserted += len(fed)
            return fed
        return []

    def shows(self, token: int) -> bool:
        """Whether the user reads ``token``, the model's next: not the calculator's markers and expressions."""
        if self.ids is None:
            return True
        if token == self.ids["calculator_start"]:
            self._hidden = True
            self._segments.append(("calculator", []))
            return False
        if self._hidden or token in self.ids.values():
            self._hidden = self._hidden and token != self.ids["calculator_end"]
            return False
        if not self._segments or self._segments[-1][0] != "text":
            self._segments.append(("text", []))
        self._segments[-1][1].append(token)
        return True

    def visible(self, tokens: Iterable[int]) -> Iterator[int]:
        """The tokens of ``tokens`` that :meth:`shows`."""
        return (token for token in tokens if self.shows(token))

    def parts(self) -> list[dict[str, str]] | None:
        """The reply so far as parts (text, and each calculator call with its output), or None if it made none.

        Special tokens (the marker that ended the reply) are not text.
        """
        if not self.calls:
            return None
        specials, parts, calls = set(self.tokenizer.special_tokens.values()), [], iter(self.calls)
        for kind, tokens in self._segments:
            if kind == "text":
                parts.append({"type": "text", "text": self.tokenizer.decode([t for t in tokens if t not in specials])})
            elif (call := next(calls, None)) is not None:  # (an expression the reply ended inside has no output)
                parts += [{"type": "calculator", "text": call[0]}, {"type": "calculator_output", "text": call[1]}]
        return parts


def reply(model: GPT, tokenizer: Tokenizer, messages: Sequence[Message], max_new_tokens: int = 128,
          sampling: SamplingConfig | None = None, seed: int | None = None,
          tools: ToolRunner | None = None) -> Iterator[str]:
    """Stream the assistant's answer to ``messages`` (which end with the user's), stopping at its end token.

    Any other turn marker (a model that starts the user's next turn itself) or
    ``<|endoftext|>`` ends the reply too; the stopping token is not part of it.
    A model with the calculator tokens gets the calculator (module docstring):
    pass ``tools`` to see its calls and the reply's parts afterwards.

    The oldest turns are dropped when the history and ``max_new_tokens`` do not
    fit in the model's context together; at most half the context is kept for
    the reply.
    """
    # The reply ends at <|assistant_end|>, and at any other turn marker or <|endoftext|> a model may write instead.
    ends = sorted({*chat_marker_ids(tokenizer), tokenizer.eot_token})
    context = model.config.block_size
    room = min(max_new_tokens, context // 2)
    history = fit_history(tokenizer, messages, context - room)
    ids = render_prompt(tokenizer, history)
    tools = ToolRunner(tokenizer) if tools is None else tools
    tokens = generate_tokens(model, ids, min(max_new_tokens, context - len(ids)), sampling or GREEDY, seed,
                             stop_ids=ends, respond=tools.respond)
    return decode_stream(tokenizer, tools.visible(tokens), stop_ids=ends)


def exact_match_accuracy(model: GPT, tokenizer: Tokenizer, conversations: Iterable[Sequence[Message]],
                         max_new_tokens: int = 64) -> tuple[float, list[dict[str, Any]]]:
    """Greedy answers to each conversation's last user message, against its last assistant message.

    An answer counts when ``data.exact_match`` says so (equal after stripping
    whitespace at both ends, nothing else). Returns the accuracy and one record
    per conversation (question, expected, answer) to inspect.
    """
    records = []
    for conversation in conversations:
        *history, expected = check_conversation(conversation, final_assistant=True)
        tools = ToolRunner(tokenizer)
        answer = "".join(reply(model, tokenizer, history, max_new_tokens, tools=tools))
        record = {"question": history[-1]["content"], "expected": message_text(expected), "answer": answer}
        records.append({**record, "calculator": [list(call) for call in tools.calls]} if tools.calls else record)
    if not records:
        raise ValueError("no conversations to score")
    correct = sum(exact_match(r["answer"], r["expected"]) for r in records)
    return correct / len(records), records
