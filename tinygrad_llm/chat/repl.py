"""``tinygrad-llm chat``: talk to a fine-tuned model, one streamed reply per message.

    session = ChatSession(model, tokenizer, system="You are terse.")
    for piece in session.ask("What is 2 + 3?"):
        print(piece, end="")

The session keeps the conversation; every reply sees the history that fits in
the model's context (``assistant.reply`` drops the oldest turns, never the
system message). Lines starting with ``/`` are commands:

- ``/reset`` forgets the conversation (the system message stays);
- ``/system TEXT`` sets the system message (``/system`` alone removes it);
- ``/save FILE`` writes the conversation as JSON (``{"messages": [...]}``,
  the format ``finetune --data`` reads, one conversation per line);
- ``/help``; ``/quit`` (or end of input, Ctrl-D) ends the chat.

At a terminal the REPL prompts with ``you>`` and streams the reply as it is
written, showing each use of the calculator as ``[calculator: 47 + 85 = 132]``
(see ``chat.calculator``); Ctrl-C stops a reply and keeps the session. When standard input is not
a terminal it reads one message per line and writes one reply per line, so a
script (or a test) can drive it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from tinygrad_llm.chat.assistant import GREEDY, ToolRunner, reply
from tinygrad_llm.chat.format import Message
from tinygrad_llm.generate import PromptError, SamplingConfig
from tinygrad_llm.model import GPT
from tokenizer import Tokenizer
from util.files import atomic_write_bytes

__all__ = ["ChatSession", "run_repl", "HELP"]

HELP = "commands: /reset, /system TEXT, /save FILE, /help, /quit"


class ChatSession:
    """One conversation with a model: the history, the system message and the sampling settings."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, system: str | None = None, max_new_tokens: int = 128,
                 sampling: SamplingConfig | None = None, seed: int | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.system, self.max_new_tokens = system, max_new_tokens
        self.sampling, self.seed = sampling or GREEDY, seed
        self.turns: list[Message] = []

    @property
    def messages(self) -> list[Message]:
        """The whole conversation so far, the system message first."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def ask(self, text: str, on_call: Callable[[str, str], None] | None = None) -> Iterator[str]:
        """Stream the reply to ``text``; the exchange joins the history once the reply is complete.

        ``on_call`` sees each calculator call (expression, output) as it happens.
        """
        question: Message = {"role": "user", "content": text}
        seed = None if self.seed is None else self.seed + len(self.turns)  # a new draw for every reply
        pieces = []
        tools = ToolRunner(self.tokenizer, on_call)
        for piece in reply(self.model, self.tokenizer, self.messages + [question], self.max_new_tokens,
                           self.sampling, seed, tools=tools):
            pieces.append(piece)
            yield piece
        # A reply that used the calculator is kept as parts, so the next prompt shows the model what it did.
        content = tools.parts() or "".join(pieces)
        self.turns += [question, {"role": "assistant", "content": content}]

    def reset(self) -> None:
        self.turns = []

    def save(self, path: str | os.PathLike[str]) -> None:
        """The conversation as one JSON line ``{"messages": [...]}``, written atomically."""
        line = json.dumps({"messages": self.messages}, ensure_ascii=False) + "\n"
        atomic_write_bytes(path, line.encode("utf-8"))


def _command(session: ChatSession, line: str, out: TextIO) -> bool:
    """Carry out a ``/command``; False when the chat should end."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        print("(conversation cleared)", file=out)
    elif name == "/system":
        session.system = argument or None
        print(f"(system message {'set' if argument else 'removed'})", file=out)
    elif name == "/save":
        if not argument:
            print("(/save needs a file name)", file=out)
        else:
            try:
                session.save(argument)
                print(f"(saved to {argument})", file=out)
            except OSError as exc:
                print(f"(cannot save: {exc.strerror or exc})", file=out)
    elif name == "/help":
        print(HELP, file=out)
    else:
        print(f"(unknown command {name}; {HELP})", file=out)
    return True


def run_repl(session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None,
             interactive: bool | None = None) -> int:
    """Read messages until ``/quit`` or end of input, answering each; returns the exit status (0)."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    interactive = stdin.isatty() if interactive is None else interactive
    if interactive:
        print(f"chat with the model ({HELP}; Ctrl-D ends)", file=stdout)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.startswith("/"):
            if not _command(session, text, stdout):
                break
            continue
        if interactive:
            print("assistant> ", end="", file=stdout, flush=True)
        def show(expression: str, output: str) -> None:  # at a terminal, the calculator's work is shown
            stdout.write(f"[calculator: {expression} = {output}] ")

        try:
            for piece in session.ask(text, show if interactive else None):
                stdout.write(piece)
                stdout.flush()
        except PromptError as exc:
            stdout.write(f"(message too long: {exc})")
        except KeyboardInterrupt:
            stdout.write(" (stopped)")
        stdout.write("\n")
        stdout.flush()
    return 0
