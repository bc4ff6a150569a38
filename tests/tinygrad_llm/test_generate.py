"""Generation: the sampler, the KV-cached loop against a naive one, the sliding context, text streaming.

The models here are small random GPTs in float64 with widened weights, so that the
greedy choice is never a near tie and the generated sequences are varied.
"""

from __future__ import annotations

import numpy as np
import pytest

import nn
import tinygrad_llm.generate as generate_module
from tinygrad_llm.cli import main
from tinygrad_llm.generate import PromptError, SamplingConfig, generate_text, generate_tokens, sample_next
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer

BLOCK = 8
MULTIBYTE = "naïve café, jalapeño, Grüße, 日本語のテキスト, emoji 😀🎉 and ascii text. " * 4


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def frequencies(logits: np.ndarray, config: SamplingConfig, n: int = 20_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = [sample_next(logits, config, rng) for _ in range(n)]
    return np.bincount(draws, minlength=logits.size) / n


# ---------------------------------------------------------------------- sample_next


def test_temperature_zero_and_top_k_one_are_argmax():
    rng = np.random.default_rng(1)
    for _ in range(50):
        logits = rng.standard_normal(40).astype(np.float32)
        best = int(np.argmax(logits))
        assert sample_next(logits, SamplingConfig(temperature=0.0), rng) == best
        assert sample_next(logits, SamplingConfig(temperature=1.5, top_k=1), rng) == best
        assert sample_next(logits, SamplingConfig(temperature=0.0, top_k=5, top_p=0.3), rng) == best


def test_top_k_samples_only_the_k_most_likely_tokens():
    logits = np.random.default_rng(2).standard_normal(30)
    best = set(np.argsort(-logits)[:4].tolist())
    freq = frequencies(logits, SamplingConfig(temperature=3.0, top_k=4), n=3000)
    assert set(np.flatnonzero(freq).tolist()) == best
    expected = np.zeros(30)
    expected[list(best)] = softmax(logits[list(best)] / 3.0)
    assert np.abs(freq - expected).max() < 0.03


@pytest.mark.parametrize(("top_p", "nucleus"), [(0.45, [0]), (0.6, [0, 1]), (0.85, [0, 1, 2]), (0.99, [0, 1, 2, 3])])
def test_top_p_samples_the_smallest_set_reaching_p(top_p, nucleus):
    probs = np.array([0.05, 0.5, 0.15, 0.3])  # by rank: token 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    by_rank = [1, 3, 2, 0]
    logits = np.log(probs) + 7.0  # a shift changes nothing
    freq = frequencies(logits, SamplingConfig(temperature=1.0, top_p=top_p))
    kept = [by_rank[i] for i in nucleus]
    assert set(np.flatnonzero(freq).tolist()) == set(kept)
    expected = np.zeros(4)
    expected[kept] = probs[kept] / probs[kept].sum()
    assert np.abs(freq - expected).max() < 0.015


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_samples_softmax_of_logits_over_t(temperature):
    logits = np.array([2.0, 1.0, 0.0, -1.0, 0.5])
    freq = frequencies(logits, SamplingConfig(temperature=temperature))
    expected = softmax(logits / temperature)
    assert np.abs(freq - expected).max() < 0.015  # 20,000 draws: a standard error below 0.0036
    for other in {0.5, 1.0, 2.0} - {temperature}:  # and the tolerance tells the temperatures apart
        assert np.abs(freq - softmax(logits / other)).max() > 0.05


def test_the_same_seed_gives_the_same_samples():
    logits = np.random.default_rng(3).standard_normal(50)
    config = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample_next(logits, config, rng) for _ in range(200)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_the_draw_is_numpys_choice_with_the_same_probabilities():
    """rng.choice(V, p=probs) is the reference: the same seed picks the same token (seeds keep their samples)."""
    rng = np.random.default_rng(8)
    for config in (SamplingConfig(temperature=0.8), SamplingConfig(temperature=1.3, top_k=7),
                   SamplingConfig(temperature=0.6, top_p=0.9)):
        for seed in range(200):
            logits = (3 * rng.standard_normal(300)).astype(np.float32)
            scaled = logits.astype(np.float64) / config.temperature
            if config.top_k:
                scaled[scaled < np.sort(scaled)[-config.top_k]] = -np.inf
            probs = np.exp(scaled - scaled.max())
            probs /= probs.sum()
            if config.top_p < 1:
                order = np.argsort(-probs, kind="stable")
                keep = order[: int(np.searchsorted(np.cumsum(probs[order]), config.top_p)) + 1]
                probs = np.where(np.isin(np.arange(300), keep), probs, 0.0)
                probs /= probs.sum()
            want = int(np.random.default_rng(seed).choice(300, p=probs))
            assert sample_next(logits, config, np.random.default_rng(seed)) == want


def test_logits_that_are_not_numbers_are_refused():
    with pytest.raises(ValueError, match="NaN or infinity"):
        sample_next(np.array([0.0, np.nan, 1.0]), SamplingConfig(temperature=1.0), np.random.default_rng(0))


@pytest.mark.parametrize("fields", [{"temperature": -0.1}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_invalid_sampling_settings_are_refused(fields):
    with pytest.raises(ValueError):
        SamplingConfig(**fields)


# ---------------------------------------------------------------------- generate_tokens


def random_model(pos: str, vocab_size: int = 97, seed: int = 0) -> GPT:
    """A random float64 GPT whose logits are far from ties (weights 10x the usual init)."""
    nn.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, pos=pos,
                       tie_weights=False)
    model = GPT(config).to("float64")
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 10
    return model


def naive_generate(model: GPT, prompt: list[int], n: int, sampling: SamplingConfig, seed: int | None) -> list[int]:
    """The reference: a full forward over the whole window at every step, no cache.

    The window is the prompt plus everything generated; once it holds more than
    the context it restarts as the last half-context of tokens (the sliding rule
    of ``generate``'s module docstring).
    """
    rng = np.random.default_rng(seed)
    context = model.config.block_size
    tokens, window = list(prompt), list(prompt)
    model.eval()
    with nn.no_grad():
        for _ in range(n):
            if len(window) > context:
                window = tokens[-(context // 2):]
            logits, _ = model(np.asarray([window]))
            token = sample_next(logits.numpy()[0, -1], sampling, rng)
            tokens.append(token)
            window.append(token)
    return tokens[len(prompt):]


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("prompt_length", [1, 5, BLOCK])
def test_greedy_generation_equals_a_naive_loop_also_past_the_context(pos, prompt_length):
    model = random_model(pos)
    prompt = np.random.default_rng(prompt_length).integers(0, 97, prompt_length).tolist()
    greedy = SamplingConfig(temperature=0.0)
    n = 4 * BLOCK  # the window slides several times
    generated = list(generate_tokens(model, prompt, n, greedy))
    assert len(generated) == n
    assert len(set(generated)) > 5  # a varied sequence, not one token repeated
    assert generated == naive_generate(model, prompt, n, greedy, seed=None)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_sampled_generation_equals_the_naive_loop_with_the_same_seed(pos):
    model = random_model(pos, seed=1)
    sampling = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95)
    prompt = [3, 14, 15, 92]
    generated = list(generate_tokens(model, prompt, 3 * BLOCK, sampling, seed=11))
    assert generated == naive_generate(model, prompt, 3 * BLOCK, sampling, seed=11)
    assert generated == list(generate_tokens(model, prompt, 3 * BLOCK, sampling, seed=11))
    assert generated != list(generate_tokens(model, prompt, 3 * BLOCK, sampling, seed=12))


def test_generation_stops_after_a_stop_token_and_restores_training_mode():
    model = random_model("learned")
    model.train()
    greedy = SamplingConfig(temperature=0.0)
    full = list(generate_tokens(model, [1, 2, 3], 20, greedy))
    assert model.training
    stop = full[6]
    cut = list(generate_tokens(model, [1, 2, 3], 20, greedy, stop_ids=[stop]))
    assert cut == full[:full.index(stop) + 1]


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_inserted_tokens_are_read_as_if_they_were_in_the_prompt(pos):
    model = random_model(pos, seed=2)
    greedy = SamplingConfig(temperature=0.0)
    first = next(generate_tokens(model, [1, 2], 1, greedy))
    calls = []

    def respond(token: int) -> list[int]:  # a tool that answers the first token only, with three tokens
        calls.append(token)
        return [5, 6, 7] if len(calls) == 1 else []

    generated = list(generate_tokens(model, [1, 2], 3, greedy, respond=respond))
    assert generated[0] == first and len(generated) == 3  # the inserted tokens are read, not yielded
    assert generated[1:] == list(generate_tokens(model, [1, 2, first, 5, 6, 7], 2, greedy))
    assert generated[1:] != list(generate_tokens(model, [1, 2, first], 2, greedy))  # (they made a difference)
    assert calls == generated[:-1]  # the hook sees every sampled token but the last


def test_a_tool_is_not_asked_after_the_last_token_and_an_answer_that_does_not_fit_ends_generation():
    model = random_model("rope", seed=3)
    greedy = SamplingConfig(temperature=0.0)
    seen = []
    generated = list(generate_tokens(model, [1, 2], 2, greedy, respond=lambda t: seen.append(t) or []))
    assert seen == generated[:1]  # the last token's answer could never be read
    prompt = [1, 2, 3, 4, 5]  # context 8: 5 + 1 + 3 inserted = 9 do not fit
    cut = list(generate_tokens(model, prompt, 3, greedy, respond=lambda t: [7, 7, 7]))
    assert cut == list(generate_tokens(model, prompt, 1, greedy))


@pytest.mark.parametrize(("prompt", "message"), [([], "empty"), (list(range(BLOCK + 1)), "context is 8")])
def test_a_prompt_that_does_not_fit_is_a_prompt_error(prompt, message):
    with pytest.raises(PromptError, match=message):
        next(generate_tokens(random_model("rope"), prompt, 5, SamplingConfig()))


# ---------------------------------------------------------------------- generate_text


@pytest.fixture(scope="module")
def multibyte_tokenizer() -> Tokenizer:
    """A 300-token BPE: most multi-byte characters stay split over several tokens."""
    return Tokenizer.train(MULTIBYTE, 300, progress=False)


def byte_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """``text`` as one token per UTF-8 byte: every multi-byte character cut into pieces."""
    by_bytes = {tokenizer.token_bytes(i): i for i in range(tokenizer.vocab_size)}
    return [by_bytes[bytes([b])] for b in text.encode("utf-8")]


def fixed_stream(monkeypatch: pytest.MonkeyPatch, tokens: list[int]) -> None:
    """Make ``generate_text`` draw ``tokens`` from its token generator, whatever the model."""
    def fake(model, prompt, max_new_tokens, sampling, seed=None, stop_ids=(), first_allowed=None):
        yield from tokens[:max_new_tokens]

    monkeypatch.setattr(generate_module, "generate_tokens", fake)


def test_pieces_never_split_a_character(multibyte_tokenizer, monkeypatch):
    text = "é😀日本 café 🎉!"
    fixed_stream(monkeypatch, byte_tokens(multibyte_tokenizer, text))
    pieces = list(generate_text(None, multibyte_tokenizer, "x", max_new_tokens=100))
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert len([p for p in pieces if p]) > 5  # streamed as it comes, not in one piece at the end


@pytest.mark.parametrize(("text", "stop", "expected"), [
    ("print('hi')\nSTOP here", ["STOP"], "print('hi')\n"),
    ("ab here\n\nrest", ["\n\n", "here"], "ab "),  # the earliest stop string wins
    ("café😀x", ["😀"], "café"),  # a stop string made of a split character
    ("STOP at once", ["STOP"], ""),
    ("never stops", ["STOP"], "never stops"),
])
def test_text_ends_before_the_first_stop_string(multibyte_tokenizer, monkeypatch, text, stop, expected):
    fixed_stream(monkeypatch, byte_tokens(multibyte_tokenizer, text))
    pieces = list(generate_text(None, multibyte_tokenizer, "x", max_new_tokens=100, stop=stop))
    assert "".join(pieces) == expected


def test_text_ends_at_the_end_of_text_token(multibyte_tokenizer, monkeypatch):
    eot = multibyte_tokenizer.eot_token
    fixed_stream(monkeypatch, byte_tokens(multibyte_tokenizer, "one") + [eot] + byte_tokens(multibyte_tokenizer, "two"))
    assert "".join(generate_text(None, multibyte_tokenizer, "x", 100)) == "one"
    assert "".join(generate_text(None, multibyte_tokenizer, "x", 100, stop_at_eot=False)) == "one<|endoftext|>two"


@pytest.mark.parametrize("seed", range(4))
def test_streamed_text_equals_decoding_the_generated_tokens(multibyte_tokenizer, seed):
    model = random_model("rope", vocab_size=multibyte_tokenizer.vocab_size, seed=seed)
    sampling = SamplingConfig(temperature=1.0)
    prompt = "café 😀"
    ids = multibyte_tokenizer.encode(prompt)
    tokens = list(generate_tokens(model, ids, 40, sampling, seed=seed))
    text = "".join(generate_text(model, multibyte_tokenizer, prompt, 40, sampling, seed=seed, stop_at_eot=False))
    assert text == multibyte_tokenizer.decode(tokens)
    assert text != "".join(multibyte_tokenizer.decode([t]) for t in tokens)  # characters were split over tokens


def test_a_stop_string_in_real_generation(multibyte_tokenizer):
    model = random_model("learned", vocab_size=multibyte_tokenizer.vocab_size, seed=7)
    greedy = SamplingConfig(temperature=0.0)
    full = "".join(generate_text(model, multibyte_tokenizer, "na", 60, greedy, stop_at_eot=False))
    stop = full[10:13]
    cut = "".join(generate_text(model, multibyte_tokenizer, "na", 60, greedy, stop=[stop], stop_at_eot=False))
    assert cut == full[:full.find(stop)]


# ---------------------------------------------------------------------- the generate command


def generate(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["generate", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_generate_command_streams_a_continuation_of_the_prompt(trained_run, capsys):
    status, greedy, err = generate(capsys, "-c", str(trained_run), "-p", "def ", "-n", "12", "--greedy")
    assert status == 0 and err == ""
    assert greedy.startswith("def ") and greedy.endswith("\n") and len(greedy) > len("def \n")
    assert generate(capsys, "-c", str(trained_run / "best.safetensors"), "-p", "def ", "-n", "12",
                    "--temperature", "0")[1] == greedy
    sampled = generate(capsys, "-c", str(trained_run), "-p", "def ", "-n", "12", "--seed", "3", "-t", "1.0")[1]
    assert generate(capsys, "-c", str(trained_run), "-p", "def ", "-n", "12", "--seed", "3", "-t", "1.0")[1] == sampled

    continuation = greedy[len("def "):-1]
    assert len(continuation) >= 6
    stop = continuation[3:5]
    status, out, _ = generate(capsys, "-c", str(trained_run), "-p", "def ", "-n", "12", "--greedy", "--stop", stop)
    assert status == 0 and out == "def " + continuation[:continuation.find(stop)] + "\n"


@pytest.mark.parametrize("option", [["--temperature", "-1"], ["--top-k", "-2"], ["--top-p", "0"], ["--top-p", "2"],
                                    ["-n", "0"], ["--seed", "-1"], ["-t", "nan"], ["-t", "inf"], ["--top-p", "nan"],
                                    ["--seed", "x"], ["--stop", ""]])
def test_generate_command_refuses_invalid_sampling_options(trained_run, capsys, option):
    status, out, err = generate(capsys, "-c", str(trained_run), "-p", "def ", *option)
    assert status == 2 and out == ""
    assert err.count("tinygrad-llm: error:") == 1 and len(err.splitlines()) == 1


# ---------------------------------------------------------------------- token healing

CODE = "def parse(text):\n    return text\n\ndef print_all(items):\n    for item in items:\n        print(item)\n" * 8


@pytest.fixture(scope="module")
def code_tokenizer() -> Tokenizer:
    return Tokenizer.train(CODE, 320, progress=False)


def test_healing_backs_up_over_a_trailing_space(code_tokenizer):
    tok = code_tokenizer
    ids = tok.encode("def ")
    assert [tok.decode([i]) for i in ids] == ["def", " "]  # the lone space the model rarely saw in training
    healed, allowed, removed = generate_module.heal_prompt(tok, ids)
    assert healed == ids[:-1] and removed == " "
    starting_with_space = {i for i in range(tok.vocab_size) if tok.token_bytes(i).startswith(b" ")}
    assert set(allowed) == starting_with_space
    assert tok.encode(" parse")[0] in allowed and ids[-1] in allowed  # a word's token, and the space itself


def test_healing_leaves_a_prompt_with_nothing_to_heal(code_tokenizer):
    tok = code_tokenizer
    eot = tok.eot_token
    for ids in (tok.encode("def"), [*tok.encode("def"), eot]):  # one token; a special token last
        assert generate_module.heal_prompt(tok, ids) == (ids, None, "")
    pieces = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    maximal = [i for i, b in enumerate(pieces) if i != eot and sum(p.startswith(b) for p in pieces) == 1]
    assert maximal  # tokens no longer token starts with
    ids = [*tok.encode("x"), maximal[0]]
    assert generate_module.heal_prompt(tok, ids) == (ids, None, "")


def test_healed_generation_streams_only_what_follows_the_prompt(code_tokenizer, monkeypatch):
    tok = code_tokenizer
    seen = {}

    def fake(model, prompt, max_new_tokens, sampling, seed=None, stop_ids=(), first_allowed=None):
        seen["prompt"], seen["allowed"] = list(prompt), first_allowed
        yield from tok.encode(" parse(text):\n    return text")

    monkeypatch.setattr(generate_module, "generate_tokens", fake)
    text = "".join(generate_text(None, tok, "def ", 50, heal=True, stop=[" p"]))  # the healed space is no stop
    assert text == "parse(text):\n    return text"
    assert seen["prompt"] == tok.encode("def") and tok.encode(" parse")[0] in seen["allowed"]
    assert "".join(generate_text(None, tok, "def ", 50, heal=False)) == " parse(text):\n    return text"


@pytest.mark.parametrize("seed", range(3))
def test_a_healed_first_token_starts_with_the_removed_text(code_tokenizer, seed):
    tok = code_tokenizer
    model = random_model("rope", vocab_size=tok.vocab_size, seed=seed)
    healed, allowed, removed = generate_module.heal_prompt(tok, tok.encode("def "))
    tokens = list(generate_tokens(model, healed, 6, SamplingConfig(temperature=1.0), seed=seed, first_allowed=allowed))
    assert tok.token_bytes(tokens[0]).startswith(removed.encode())
    text = "".join(generate_text(model, tok, "def ", 6, SamplingConfig(temperature=1.0), seed=seed, heal=True,
                                 stop_at_eot=False))
    assert "def " + text == tok.decode(healed + tokens)
