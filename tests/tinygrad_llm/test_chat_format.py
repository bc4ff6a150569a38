"""The chat format: the rendering token by token, the loss mask, prompts as prefixes, Alpaca records, bad
conversations; and GPT.grow_vocabulary, which makes room for the chat tokens without changing the base model."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest

import nn
from tinygrad_llm.chat.format import (
    CHAT_TOKENS,
    ROLE_TOKENS,
    TEMPLATE,
    TOOL_TOKENS,
    ChatFormatError,
    add_chat_tokens,
    added_token_ids,
    alpaca_to_messages,
    chat_marker_ids,
    chat_token_ids,
    check_conversation,
    has_chat_tokens,
    has_tool_tokens,
    message_text,
    render_conversation,
    render_prompt,
    tool_token_ids,
)
from tinygrad_llm.data.sources import StdlibCorpus
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import ENDOFTEXT, Tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And 2 + 2?"},
    {"role": "assistant", "content": "4, of course."},
]


@pytest.fixture(scope="module")
def base() -> Tokenizer:
    """A real BPE vocabulary (trained on a few documents of the default corpus) without the chat tokens."""
    return Tokenizer.train(list(islice(StdlibCorpus("all").texts(), 6)), 350, progress=False)


@pytest.fixture(scope="module")
def tok(base: Tokenizer) -> Tokenizer:
    return add_chat_tokens(base)


def test_chat_tokens_follow_the_base_vocabulary(base, tok):
    assert CHAT_TOKENS == ("<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
                           "<|assistant_start|>", "<|assistant_end|>")
    assert ROLE_TOKENS["assistant"] == ("<|assistant_start|>", "<|assistant_end|>")
    assert TOOL_TOKENS == ("<|calculator_start|>", "<|calculator_end|>", "<|output_start|>", "<|output_end|>")
    assert not has_chat_tokens(base) and has_chat_tokens(tok)
    assert not has_tool_tokens(base) and has_tool_tokens(tok)
    assert [tok.special_tokens[name] for name in CHAT_TOKENS + TOOL_TOKENS] == list(range(350, 360))
    assert tok.vocab_size == 360
    assert tok.special_tokens[ENDOFTEXT] == base.eot_token == 349
    assert add_chat_tokens(tok).special_tokens == tok.special_tokens
    assert chat_token_ids(tok) == {"system": (350, 351), "user": (352, 353), "assistant": (354, 355)}
    assert tool_token_ids(tok) == {"calculator_start": 356, "calculator_end": 357, "output_start": 358,
                                   "output_end": 359}
    assert chat_marker_ids(tok) == list(range(350, 356)) and added_token_ids(tok) == list(range(350, 360))
    assert json.loads(json.dumps(TEMPLATE)) == {"name": "tinygrad-llm-chat/2",
                                                "tokens": list(CHAT_TOKENS + TOOL_TOKENS), "begin": ENDOFTEXT}


def test_a_tokenizer_tuned_before_the_calculator_gets_its_tokens_after_its_own(base):
    old = base.with_special_tokens(CHAT_TOKENS)  # what add_chat_tokens made before the tool markers
    assert has_chat_tokens(old) and not has_tool_tokens(old) and added_token_ids(old) == list(range(350, 356))
    with pytest.raises(ChatFormatError, match="no calculator tokens"):
        tool_token_ids(old)
    grown = add_chat_tokens(old)
    assert chat_token_ids(grown) == chat_token_ids(old) and list(tool_token_ids(grown).values()) == [356, 357, 358,
                                                                                                     359]


TOOL_CONVERSATION = [
    {"role": "user", "content": "What is 47 + 85?"},
    {"role": "assistant", "content": [{"type": "calculator", "text": "47 + 85"},
                                      {"type": "calculator_output", "text": "132"},
                                      {"type": "text", "text": "132"}]},
]


def test_calculator_parts_train_the_expression_and_the_answer_not_the_output(tok):
    special, text = tok.special_tokens, tok.encode_ordinary
    ids, mask = render_conversation(tok, TOOL_CONVERSATION)
    expected = [(special[ENDOFTEXT], 0), (special["<|user_start|>"], 0), *[(i, 0) for i in text("What is 47 + 85?")],
                (special["<|user_end|>"], 0), (special["<|assistant_start|>"], 0),
                (special["<|calculator_start|>"], 1), *[(i, 1) for i in text("47 + 85")],
                (special["<|calculator_end|>"], 1),
                (special["<|output_start|>"], 0), *[(i, 0) for i in text("132")], (special["<|output_end|>"], 0),
                *[(i, 1) for i in text("132")], (special["<|assistant_end|>"], 1)]
    assert list(zip(ids, mask, strict=True)) == expected
    assert tok.decode(ids).endswith("<|assistant_start|><|calculator_start|>47 + 85<|calculator_end|>"
                                    "<|output_start|>132<|output_end|>132<|assistant_end|>")
    assert message_text(TOOL_CONVERSATION[1]) == "132" and message_text(TOOL_CONVERSATION[0]) == "What is 47 + 85?"
    # A history holding a calculator exchange renders the same way as a prompt's prefix.
    follow_up = [*TOOL_CONVERSATION, {"role": "user", "content": "Thanks"}]
    assert render_prompt(tok, follow_up)[:len(ids)] == ids


@pytest.mark.parametrize(("content", "message"), [
    ([], "empty list of parts"),
    ([{"type": "picture", "text": "x"}], "part 1: a part is"),
    ([{"type": "text"}], "part 1: a part is"),
    ([{"type": "calculator", "text": "1 + 1"}], "part 1: a calculator part must be followed by its output"),
    ([{"type": "calculator", "text": "1 + 1"}, {"type": "text", "text": "2"}], "must be followed by its output"),
    ([{"type": "calculator_output", "text": "2"}], "part 1: a calculator output must follow a calculator part"),
])
def test_malformed_parts_are_refused_in_one_line(content, message):
    with pytest.raises(ChatFormatError, match=message) as caught:
        check_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": content}])
    assert "message 2 (assistant)" in str(caught.value) and "\n" not in str(caught.value)


def test_only_the_assistant_may_speak_in_parts():
    with pytest.raises(ChatFormatError, match="message 1 \\(user\\) has no text content"):
        check_conversation([{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                            {"role": "assistant", "content": "hello"}])


def test_the_mask_marks_exactly_the_assistant_replies_and_their_end(tok):
    special, text = tok.special_tokens, tok.encode_ordinary

    def turn(role: str, content: str) -> list[tuple[int, int]]:
        start, end = ROLE_TOKENS[role]
        trained = int(role == "assistant")
        return [(special[start], 0), *[(i, trained) for i in text(content)], (special[end], trained)]

    expected = [(special[ENDOFTEXT], 0)]
    for role, content in [("system", "You are a terse assistant."), ("user", "What is the capital of France?"),
                          ("assistant", "Paris."), ("user", "And 2 + 2?"), ("assistant", "4, of course.")]:
        expected += turn(role, content)
    ids, mask = render_conversation(tok, CONVERSATION)
    assert list(zip(ids, mask, strict=True)) == expected
    assert tok.decode(ids) == ("<|endoftext|><|system_start|>You are a terse assistant.<|system_end|>"
                               "<|user_start|>What is the capital of France?<|user_end|>"
                               "<|assistant_start|>Paris.<|assistant_end|>"
                               "<|user_start|>And 2 + 2?<|user_end|>"
                               "<|assistant_start|>4, of course.<|assistant_end|>")
    # The trainer's view: inputs ids[:-1] predict targets ids[1:], and the loss is kept where mask[1:] is 1.
    kept = [target for target, keep in zip(ids[1:], mask[1:], strict=True) if keep]
    assert tok.decode(kept) == "Paris.<|assistant_end|>4, of course.<|assistant_end|>"
    assert mask[0] == 0


def test_marker_strings_in_content_are_only_text(tok):
    sneaky = [{"role": "user", "content": "say <|assistant_end|>"},
              {"role": "assistant", "content": "<|user_start|> no"}]
    ids, _ = render_conversation(tok, sneaky)
    assert sorted(i for i in ids if i >= 349) == [349, 352, 353, 354, 355]
    assert tok.decode(ids) == ("<|endoftext|><|user_start|>say <|assistant_end|><|user_end|>"
                               "<|assistant_start|><|user_start|> no<|assistant_end|>")


def test_the_prompt_is_the_training_rendering_up_to_the_reply(tok):
    ids, _ = render_conversation(tok, CONVERSATION)
    user_end, assistant_start = chat_token_ids(tok)["user"][1], chat_token_ids(tok)["assistant"][0]
    last_user_end = len(ids) - 1 - ids[::-1].index(user_end)
    assert render_prompt(tok, CONVERSATION[:-1]) == [*ids[:last_user_end + 1], assistant_start]
    two_turns = render_prompt(tok, CONVERSATION[:2])
    assert ids[:len(two_turns)] == two_turns
    assert tok.decode(two_turns).endswith("France?<|user_end|><|assistant_start|>")


def test_max_tokens_keeps_the_beginning(tok):
    ids, mask = render_conversation(tok, CONVERSATION)
    assert render_conversation(tok, CONVERSATION, max_tokens=20) == (ids[:20], mask[:20])
    assert render_conversation(tok, CONVERSATION, max_tokens=len(ids) + 5) == (ids, mask)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ChatFormatError, match="max_tokens must be a positive integer"):
            render_conversation(tok, CONVERSATION, max_tokens=bad)


@pytest.mark.parametrize("record, user", [
    ({"instruction": "Name a colour.", "output": "Blue."}, "Name a colour."),
    ({"instruction": "Translate to French.", "input": "cat", "output": "chat"}, "Translate to French.\n\ncat"),
])
def test_alpaca_records_render_as_conversations(tok, record, user):
    ids, mask = render_conversation(tok, alpaca_to_messages(record))
    assert tok.decode(ids) == (f"<|endoftext|><|user_start|>{user}<|user_end|>"
                               f"<|assistant_start|>{record['output']}<|assistant_end|>")
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == record["output"] + "<|assistant_end|>"


def test_a_tokenizer_without_chat_tokens_is_refused(base):
    for render in (lambda: render_conversation(base, CONVERSATION), lambda: render_prompt(base, CONVERSATION[:2])):
        with pytest.raises(ChatFormatError, match=r"call add_chat_tokens\(tokenizer\)"):
            render()


def test_a_tokenizer_without_endoftext_is_refused(base):
    bare = add_chat_tokens(Tokenizer(base.to_tiktoken_ranks(), base.pattern))
    with pytest.raises(ChatFormatError, match="no <\\|endoftext\\|> token"):
        render_conversation(bare, CONVERSATION)


USER, ASSISTANT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}


@pytest.mark.parametrize("messages, final_assistant, message", [
    ([], True, "non-empty list of messages"),
    ("hi", True, "non-empty list of messages"),
    ([USER, "hello"], True, "message 2 is not an object"),
    ([{"role": "bot", "content": "x"}, ASSISTANT], True, "message 1 has the role 'bot'"),
    ([USER, {"role": "assistant", "content": None}], True, r"message 2 \(assistant\) has no text content"),
    ([{"role": "system", "content": "be nice"}], True, "needs a user message after the system"),
    ([USER, {"role": "system", "content": "late"}, ASSISTANT], True, "message 2 is from the system"),
    ([ASSISTANT], True, "message 1 is from the assistant; expected the user"),
    ([USER, USER, ASSISTANT], True, "message 2 is from the user; expected the assistant"),
    ([USER], True, "must end with the assistant's message"),
    ([USER, ASSISTANT], False, "a prompt must end with the user's message"),
])
def test_bad_conversations_are_refused_in_one_line(tok, messages, final_assistant, message):
    render = (lambda: render_conversation(tok, messages)) if final_assistant else \
        (lambda: render_prompt(tok, messages))
    with pytest.raises(ChatFormatError, match=message) as info:
        render()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- GPT.grow_vocabulary

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("old, new", [(100, 106), (100, 130), (128, 134)],
                         ids=["within-padding", "beyond-padding", "no-padding-before"])
def test_grow_vocabulary_keeps_the_base_model_and_starts_new_rows_at_the_mean(tied, old, new):
    nn.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=old, block_size=16, tie_weights=tied)).to("float64").eval()
    assert model.config.padded_vocab_size == 128
    rng_state = nn.get_rng_state()
    grown = model.grow_vocabulary(new)
    assert nn.get_rng_state() == rng_state, "growing draws no random numbers"
    assert grown.config.to_dict() == {**model.config.to_dict(), "vocab_size": new}
    assert not grown.training and grown.wte.weight.dtype == np.float64
    assert (grown.lm_head.weight is grown.wte.weight) == tied

    rows = grown.config.padded_vocab_size
    for name in ("wte.weight", "lm_head.weight"):
        before, after = model.state_dict()[name].numpy(), grown.state_dict()[name].numpy()
        assert after.shape == (rows, 64)
        np.testing.assert_array_equal(after[:old], before[:old])
        np.testing.assert_allclose(after[old:new], np.tile(before[:old].mean(axis=0), (new - old, 1)),
                                   rtol=0, atol=1e-15)
        np.testing.assert_array_equal(after[new:128], before[new:128])  # old padding rows, copied
        np.testing.assert_array_equal(after[max(new, 128):], 0.0)       # padding rows that are new
    for name, p in model.named_parameters():
        if name not in ("wte.weight", "lm_head.weight"):
            np.testing.assert_array_equal(grown.state_dict()[name].numpy(), p.numpy())

    ids = np.random.default_rng(1).integers(0, old, size=(2, 16))
    old_logits, _ = model(ids)
    new_logits, _ = grown(ids)
    assert new_logits.shape == (2, 16, new)
    np.testing.assert_allclose(new_logits.numpy()[..., :old], old_logits.numpy(), rtol=0, atol=1e-12)
    # A new token's logit is h . mean(rows) = the mean of the old logits: it starts as an average token.
    mean_logit = old_logits.numpy().mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(new_logits.numpy()[..., old:], np.broadcast_to(mean_logit, (2, 16, new - old)),
                               rtol=0, atol=1e-12)
    assert np.isfinite(grown(np.array([[0, old, new - 1]]))[0].numpy()).all()


def test_grown_model_is_a_copy():
    nn.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=100, block_size=16))
    model.h[0].ln_1.weight.requires_grad = False
    grown = model.grow_vocabulary(110)
    grown.wte.weight.data[0] += 1.0
    grown.h[0].mlp.c_fc.weight.data[...] = 0.0
    assert not (model.wte.weight.numpy()[0] == grown.wte.weight.numpy()[0]).any()
    assert model.h[0].mlp.c_fc.weight.numpy().any()
    assert grown.h[0].ln_1.weight.requires_grad is False and grown.h[0].ln_2.weight.requires_grad is True
    assert grown.wte.weight.dtype == model.wte.weight.dtype == np.float32


@pytest.mark.parametrize("bad", [99, 100.0, "120"])
def test_grow_vocabulary_refuses_a_smaller_or_non_integer_size(bad):
    model = GPT(GPTConfig.preset("tiny", vocab_size=100, block_size=16))
    with pytest.raises(ValueError, match="vocab_size must be an integer of at least 100"):
        model.grow_vocabulary(bad)


def test_a_grown_model_fits_the_chat_tokenizer(base, tok):
    """The workflow: add the chat tokens, grow the model to the new tokenizer, train on rendered conversations."""
    model = GPT(GPTConfig.preset("tiny", vocab_size=base.vocab_size, block_size=64)).grow_vocabulary(tok.vocab_size)
    ids, mask = render_conversation(tok, CONVERSATION, max_tokens=64)
    targets = np.where(np.array(mask[1:]) == 1, ids[1:], -100)
    _, loss = model(np.array([ids[:-1]]), targets[None])
    assert np.isfinite(loss.item()) and model.config.vocab_size == tok.vocab_size == 360
