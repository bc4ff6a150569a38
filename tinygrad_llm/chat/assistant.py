"""The assistant's turn: render the conversation, let the model write until ``<|assistant_end|>``.

    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text = "".join(reply(model, tokenizer, messages))          # streamed piece by piece

The prompt is :func:`tinygrad_llm.chat.format.render_prompt`, the very function
that rendered the training conversations, so the model sees at chat time
exactly the layout it was trained on. A history too long for the context loses
its oldest turns first (a user message with the assistant's answer, together);
the system message and the newest user message always stay, and room is kept
for the reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tinygrad_llm.chat.data import exact_match
from tinygrad_llm.chat.format import Message, chat_marker_ids, check_conversation, render_prompt
from tinygrad_llm.generate import PromptError, SamplingConfig, stream_text
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer

__all__ = ["fit_history", "reply", "exact_match_accuracy", "GREEDY"]

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


def reply(model: GPT, tokenizer: Tokenizer, messages: Sequence[Message], max_new_tokens: int = 128,
          sampling: SamplingConfig | None = None, seed: int | None = None) -> Iterator[str]:
    """Stream the assistant's answer to ``messages`` (which end with the user's), stopping at its end token.

    Any other turn marker (a model that starts the user's next turn itself) or
    ``<|endoftext|>`` ends the reply too; the stopping token is not part of it.

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
    return stream_text(model, tokenizer, ids, min(max_new_tokens, context - len(ids)), sampling or GREEDY, seed,
                       stop_ids=ends)


def exact_match_accuracy(model: GPT, tokenizer: Tokenizer, conversations: Iterable[Sequence[Message]],
                         max_new_tokens: int = 32) -> tuple[float, list[dict[str, str]]]:
    """Greedy answers to each conversation's last user message, against its last assistant message.

    An answer counts when ``data.exact_match`` says so (equal after stripping
    whitespace at both ends, nothing else). Returns the accuracy and one record
    per conversation (question, expected, answer) to inspect.
    """
    records = []
    for conversation in conversations:
        *history, expected = check_conversation(conversation, final_assistant=True)
        answer = "".join(reply(model, tokenizer, history, max_new_tokens))
        records.append({"question": history[-1]["content"], "expected": expected["content"], "answer": answer})
    if not records:
        raise ValueError("no conversations to score")
    correct = sum(exact_match(r["answer"], r["expected"]) for r in records)
    return correct / len(records), records
