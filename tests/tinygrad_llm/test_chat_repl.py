"""The chat's history within the context, the reply's end, and the REPL's commands, on a tiny model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import nn
from tinygrad_llm.chat.assistant import ToolRunner, fit_history, reply
from tinygrad_llm.chat.format import add_chat_tokens, render_conversation, render_prompt
from tinygrad_llm.chat.repl import ChatSession, run_repl
from tinygrad_llm.generate import PromptError
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return add_chat_tokens(Tokenizer.train("the quick brown fox jumps over the lazy dog " * 20, vocab_size=300))


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    nn.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64)).eval()


def history(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i} the quick brown fox"},
                     {"role": "assistant", "content": f"answer {i} the lazy dog"}]
    return messages + [{"role": "user", "content": "last question"}]


def test_the_oldest_turns_go_first_and_the_system_message_stays(tokenizer):
    messages = history(6)
    full = len(render_prompt(tokenizer, messages))
    kept = fit_history(tokenizer, messages, full - 1)
    assert kept[0] == messages[0] and kept[-1] == messages[-1]
    assert kept[1:] == messages[3:]  # exactly the oldest user message and its answer went
    assert len(render_prompt(tokenizer, kept)) <= full - 1
    tight = fit_history(tokenizer, messages, len(render_prompt(tokenizer, [messages[0], messages[-1]])))
    assert tight == [messages[0], messages[-1]]
    with pytest.raises(PromptError, match="room for"):
        fit_history(tokenizer, messages, 5)


class Scripted:
    """A stand-in model whose next token is always the next one of ``script`` (to test where a reply stops)."""

    def __init__(self, script: list[int], vocab: int) -> None:
        self.script, self.vocab, self.training = list(script), vocab, False
        self.inputs: list[int] = []  # how many tokens each call read
        self.read: list[int] = []    # every token read, in order
        self.reads: list[list[int]] = []  # the tokens of each call
        self.config = GPTConfig.preset("tiny", vocab_size=vocab, block_size=64)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def make_caches(self, batch_size: int):
        class Cache:
            length = 0

            def reset(self) -> None:
                self.length = 0
        return [Cache()]

    def __call__(self, ids, caches=None, logits_at=None):
        self.inputs.append(ids.shape[1])
        self.read += ids[0].tolist()
        self.reads.append(ids[0].tolist())
        caches[0].length += ids.shape[1]
        logits = np.zeros((1, ids.shape[1] if logits_at is None else 1, self.vocab), dtype=np.float32)
        logits[0, -1, self.script.pop(0)] = 10.0
        return nn.Tensor(logits), None


@pytest.mark.parametrize("marker", ["<|assistant_end|>", "<|user_start|>", "<|endoftext|>"])
def test_a_reply_ends_at_a_turn_marker_which_is_not_part_of_it(tokenizer, marker):
    words = tokenizer.encode_ordinary(" fox jumps")
    stop = tokenizer.special_tokens[marker]
    script = Scripted(words + [stop] + words, tokenizer.vocab_size)
    assert "".join(reply(script, tokenizer, history(1), max_new_tokens=20)) == " fox jumps"
    assert script.script == words  # nothing was generated after the marker


def test_a_long_history_is_cut_to_leave_room_for_the_reply(tokenizer):
    messages = history(40)
    assert len(render_prompt(tokenizer, messages)) > 64
    script = Scripted(tokenizer.encode_ordinary(" fox") * 10, tokenizer.vocab_size)
    text = "".join(reply(script, tokenizer, messages, max_new_tokens=10))
    assert text == " fox" * 10
    prompt = render_prompt(tokenizer, fit_history(tokenizer, messages, 64 - 10))
    assert script.inputs[0] == len(prompt) <= 54  # the first call reads the whole prompt: it left room for 10 tokens


def test_the_repl_reads_messages_and_commands_from_a_script(model, tokenizer, tmp_path):
    session = ChatSession(model, tokenizer, system="be brief", max_new_tokens=4)
    script = io.StringIO(f"hello fox\n/save {tmp_path / 'c.jsonl'}\n/system\n/reset\n\nbye dog\n/nonsense\n/quit\n"
                         "never read\n")
    out = io.StringIO()
    assert run_repl(session, script, out, interactive=False) == 0
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("(saved") and lines[2] == "(system message removed)"
    assert lines[3] == "(conversation cleared)" and lines[5].startswith("(unknown command /nonsense")
    assert len(lines) == 6  # one reply per message, one line per command, nothing after /quit
    saved = json.loads((tmp_path / "c.jsonl").read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant"] and saved[2]["content"] == lines[0]
    assert session.messages == [{"role": "user", "content": "bye dog"},
                                 {"role": "assistant", "content": lines[4]}]


def calculator_script(tokenizer: Tokenizer, expression: str, answer: str) -> list[int]:
    special = tokenizer.special_tokens
    return [special["<|calculator_start|>"], *tokenizer.encode_ordinary(expression), special["<|calculator_end|>"],
            *tokenizer.encode_ordinary(answer), special["<|assistant_end|>"]]


@pytest.mark.parametrize(("expression", "output"), [("47 + 85", "132"), ("1 / 0", "error: division by zero")])
def test_the_calculator_answers_the_model_and_the_user_reads_only_the_answer(tokenizer, expression, output):
    special = tokenizer.special_tokens
    script = Scripted(calculator_script(tokenizer, expression, "the answer"), tokenizer.vocab_size)
    question = [{"role": "user", "content": "what is it"}]
    tools = ToolRunner(tokenizer)
    assert "".join(reply(script, tokenizer, question, max_new_tokens=40, tools=tools)) == "the answer"
    assert tools.calls == [(expression, output)]
    # What the model read after writing the expression's end: the calculator's output, in its markers.
    fed = [special["<|calculator_end|>"], special["<|output_start|>"], *tokenizer.encode_ordinary(output),
           special["<|output_end|>"]]
    end = script.read.index(special["<|calculator_end|>"])
    assert script.read[end:end + len(fed)] == fed
    parts = tools.parts()
    assert parts == [{"type": "calculator", "text": expression}, {"type": "calculator_output", "text": output},
                     {"type": "text", "text": "the answer"}]
    # The reply as parts renders back to exactly the tokens the model read and wrote.
    ids, _ = render_conversation(tokenizer, [*question, {"role": "assistant", "content": parts}])
    assert script.read + [special["<|assistant_end|>"]] == ids


def test_a_session_keeps_the_calculator_exchange_in_its_history(tokenizer):
    script = Scripted(calculator_script(tokenizer, "2 * 21", "42") + tokenizer.encode_ordinary(" fox")
                      + [tokenizer.special_tokens["<|assistant_end|>"]], tokenizer.vocab_size)
    session = ChatSession(script, tokenizer, max_new_tokens=12)  # room for the whole history
    assert "".join(session.ask("twice 21?")) == "42"
    assert session.turns[-1]["content"][0] == {"type": "calculator", "text": "2 * 21"}
    assert "".join(session.ask("and?")) == " fox"
    second = render_prompt(tokenizer, session.messages[:-1])
    assert second in script.reads  # the second prompt, read whole, holds the first reply's calculator call
    assert tokenizer.decode(second).count("<|calculator_start|>2 * 21<|calculator_end|><|output_start|>42") == 1


def test_at_a_terminal_the_repl_shows_the_calculator_at_work_and_in_a_script_it_does_not(tokenizer):
    def run(interactive: bool) -> str:
        script = Scripted(calculator_script(tokenizer, "2 * 21", "42"), tokenizer.vocab_size)
        out = io.StringIO()
        run_repl(ChatSession(script, tokenizer), io.StringIO("twice 21?\n"), out, interactive=interactive)
        return out.getvalue()

    assert "assistant> [calculator: 2 * 21 = 42] 42\n" in run(True)
    assert run(False) == "42\n"
