"""The OpenAI-compatible server, started on 127.0.0.1 by the tests and driven by the official ``openai`` client
(and by raw HTTP for what a client would never send)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import NAME, start

from tinygrad_llm.serve.app import MAX_BODY, create_app

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

@pytest.fixture(scope="module")
def port(chat_model) -> Iterator[int]:
    yield from start(create_app(*chat_model, NAME))


@pytest.fixture(scope="module")
def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)


def raw(port: int, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data.startswith(b"{") else {"text": data.decode()}


# ---------------------------------------------------------------------- the API through the openai client


def test_models_lists_the_one_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]


def test_a_completion_streamed_equals_the_same_completion_whole(client, chat_model):
    for temperature in (0.0, 0.9):
        whole = client.completions.create(model=NAME, prompt="the quick brown", max_tokens=12, seed=7,
                                          temperature=temperature)
        pieces = client.completions.create(model=NAME, prompt="the quick brown", max_tokens=12, seed=7,
                                           temperature=temperature, stream=True)
        streamed = "".join(chunk.choices[0].text for chunk in pieces)
        assert streamed == whole.choices[0].text and whole.choices[0].text
        assert whole.choices[0].finish_reason in ("stop", "length")
        assert whole.usage.prompt_tokens == len(chat_model[1].encode_ordinary("the quick brown"))
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
        assert 1 <= whole.usage.completion_tokens <= 12


def test_a_chat_completion_streamed_equals_the_same_chat_completion_whole(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the lazy dog?"}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, seed=3, temperature=0.8)
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, seed=3, temperature=0.8,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.choices[0].message.role == "assistant"


def test_n_choices_are_seeded_one_by_one(client):
    result = client.completions.create(model=NAME, prompt="fox", max_tokens=6, seed=11, temperature=1.0, n=3)
    assert [c.index for c in result.choices] == [0, 1, 2]
    again = client.completions.create(model=NAME, prompt="fox", max_tokens=6, seed=12, temperature=1.0, n=1)
    assert again.choices[0].text == result.choices[1].text  # choice i draws from seed + i


def test_max_tokens_and_stop_are_honoured(client):
    result = client.completions.create(model=NAME, prompt="the", max_tokens=5, temperature=0)
    assert result.usage.completion_tokens <= 5
    long = client.completions.create(model=NAME, prompt="the", max_tokens=30, temperature=0).choices[0].text
    assert len(long) >= 6
    cut = long[3:5]
    stopped = client.completions.create(model=NAME, prompt="the", max_tokens=30, temperature=0, stop=[cut])
    assert stopped.choices[0].text == long[:long.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("call, error", [
    (lambda c: c.completions.create(model=NAME, prompt="x", max_tokens=0), "BadRequestError"),
    (lambda c: c.completions.create(model=NAME, prompt="x", max_tokens=65), "BadRequestError"),
    (lambda c: c.completions.create(model=NAME, prompt="fox " * 70, max_tokens=1), "BadRequestError"),
    (lambda c: c.completions.create(model=NAME, prompt="x", temperature=3), "BadRequestError"),
    (lambda c: c.completions.create(model=NAME, prompt="x", extra_body={"colour": "blue"}), "BadRequestError"),
    (lambda c: c.completions.create(model=NAME, prompt="x", logprobs=2), "BadRequestError"),
    (lambda c: c.completions.create(model="gpt-4", prompt="x"), "NotFoundError"),
    (lambda c: c.chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "hi"}]),
     "BadRequestError"),
])
def test_mistakes_arrive_as_the_clients_exceptions_and_the_server_keeps_serving(client, call, error):
    with pytest.raises(getattr(openai, error)) as caught:
        call(client)
    assert caught.value.status_code == (404 if error == "NotFoundError" else 400) and caught.value.message
    assert client.models.list().data[0].id == NAME


def test_context_overflow_names_the_limit(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64 tokens"):
        client.completions.create(model=NAME, prompt="fox " * 60, max_tokens=10)


def test_concurrent_clients_share_steps_and_each_gets_its_own_text(chat_model):
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(*chat_model, NAME)
    prompts = ["the quick", "brown fox jumps", "over", "the lazy dog", "fox fox", "dog"]
    def ask(client, i: int) -> str:
        stream = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=20, seed=i, temperature=0.7,
                                           stream=True)
        return "".join(chunk.choices[0].text for chunk in stream)

    for port in start(app):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        alone = [ask(client, i) for i in range(len(prompts))]
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(lambda i, c=client: ask(c, i), range(len(prompts))))
    assert together == alone
    assert app.state.engine.decoder.largest_batch > 1  # the concurrent requests shared forward passes


# ---------------------------------------------------------------------- raw HTTP


def test_malformed_requests_get_errors_in_openais_shape(port):
    cases = [
        ("POST", "/v1/completions", b"{not json", 400),
        ("POST", "/v1/completions", b"[1, 2]", 400),
        ("POST", "/v1/chat/completions", json.dumps({"model": NAME, "messages": "hi"}).encode(), 400),
        ("POST", "/v1/completions", json.dumps({"model": NAME, "prompt": "x", "max_tokens": "9"}).encode(), 400),
        ("POST", "/v1/completions", b"{" + b" " * (MAX_BODY + 10) + b"}", 413),
        ("GET", "/v1/completions", None, 405),
        ("GET", "/v1/nothing", None, 404),
    ]
    for method, path, body, status in cases:
        got, answer = raw(port, method, path, body)
        assert got == status, (path, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]
    assert raw(port, "GET", "/health")[1]["status"] == "ok"


def test_a_client_that_disconnects_frees_the_server(port, client):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"model": NAME, "prompt": "the", "max_tokens": 60, "stream": True, "temperature": 1.0})
    connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.read(10)
    connection.close()  # gone mid-stream
    result = client.completions.create(model=NAME, prompt="fox", max_tokens=3)
    assert result.choices[0].text is not None


def test_the_chat_page_is_served(port):
    status, page = raw(port, "GET", "/")
    assert status == 200 and f'const MODEL = "{NAME}";' in page["text"] and "/v1/chat/completions" in page["text"]


def test_an_api_key_is_required_when_set(chat_model):
    for port in start(create_app(*chat_model, NAME, api_key="sesame")):
        wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame", max_retries=0)
        assert right.completions.create(model=NAME, prompt="fox", max_tokens=2).choices
        assert raw(port, "GET", "/health")[0] == 200  # the health check needs no key


# ---------------------------------------------------------------------- the command


def test_the_serve_command_runs_a_server(trained_run, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "tinygrad_llm", "serve", "-c", str(trained_run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving {Path(trained_run).name}"), line + process.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert client.completions.create(model=Path(trained_run).name, prompt="def ", max_tokens=4).choices
        with pytest.raises(openai.BadRequestError, match="no chat format"):  # a base model: no chat tokens
            client.chat.completions.create(model=Path(trained_run).name, messages=[{"role": "user", "content": "x"}])
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_on_a_busy_port_is_one_error_line(trained_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run([sys.executable, "-m", "tinygrad_llm", "serve", "-c", str(trained_run), "--port",
                                 str(busy.getsockname()[1])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("tinygrad-llm: error: cannot listen on 127.0.0.1:")


# ---------------------------------------------------------------------- the calculator inside a chat reply


def wired_model(tokenizer, transitions: dict[int, int]):
    """A real GPT whose greedy next token is ``transitions[current token]``, reading everything it is fed.

    The blocks are silenced (their output projections zeroed, so the residual
    stream is the token's embedding; rotary positions add nothing to it), and
    each output row ``u`` of ``lm_head`` points at the normalized embedding of
    the token that leads to ``u``. ``fed`` records every token id the model reads.
    """
    import nn
    from tinygrad_llm.model import GPT, GPTConfig

    class Recording(GPT):
        def forward(self, ids, *args, **kwargs):
            self.fed += np.asarray(ids).ravel().tolist()
            return super().forward(ids, *args, **kwargs)

    nn.manual_seed(1)
    model = Recording(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64, pos="rope",
                                       tie_weights=False))
    model.fed = []
    for name, parameter in model.named_parameters():
        if name.endswith("c_proj.weight") or name.endswith("c_proj.bias"):
            parameter.data[...] = 0
    head = model.lm_head.weight.data
    head[...] = 0
    with nn.no_grad():
        for current, following in transitions.items():
            state = model.ln_f(nn.Tensor(model.wte.weight.data[current][None])).numpy()[0]
            head[following] = 10 * state / np.linalg.norm(state)
    return model


def calculator_script(tokenizer) -> dict[int, int]:
    """Transitions for wired_model: <|calculator_start|> 6 * 7 <|calculator_end|>, then 4 2 <|assistant_end|>."""
    special, char = tokenizer.special_tokens, lambda c: tokenizer.encode_ordinary(c)[0]
    return {special["<|assistant_start|>"]: special["<|calculator_start|>"],
            special["<|calculator_start|>"]: char("6"), char("6"): char("*"), char("*"): char("7"),
            char("7"): special["<|calculator_end|>"],
            special["<|output_end|>"]: char("4"), char("4"): char("2"), char("2"): special["<|assistant_end|>"]}


def test_a_chat_reply_uses_the_calculator_and_returns_only_its_text(chat_model):
    tokenizer = chat_model[1]
    special = tokenizer.special_tokens
    model = wired_model(tokenizer, calculator_script(tokenizer))
    for port in start(create_app(model, tokenizer, NAME)):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "What is 6 * 7?"}]
        whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=20)
        streamed = client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, stream=True)
        pieces = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert whole.choices[0].message.content == pieces == "42"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == 7  # the model wrote <|calculator_start|> 6 * 7 <|calculator_end|> 4 2
    # What the model read after writing the expression: the calculator's output, in its markers.
    answer = [special["<|calculator_end|>"], special["<|output_start|>"], *tokenizer.encode_ordinary("42"),
              special["<|output_end|>"]]
    fed = model.fed
    assert any(fed[i:i + len(answer)] == answer for i in range(len(fed)))


def test_a_reply_whose_calculator_output_does_not_fit_ends_with_length(chat_model):
    from tinygrad_llm.chat.format import render_prompt

    tokenizer = chat_model[1]
    model = wired_model(tokenizer, calculator_script(tokenizer))
    content = "What is 6 * 7?"
    while len(render_prompt(tokenizer, [{"role": "user", "content": content}])) < 56:
        content += " fox"
    messages = [{"role": "user", "content": content}]
    assert len(render_prompt(tokenizer, messages)) == 56  # 56 + 5 written + 4 fed = 65: past the context of 64
    for port in start(create_app(model, tokenizer, NAME)):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        whole = client.chat.completions.create(model=NAME, messages=messages)
        assert client.models.list().data[0].id == NAME  # still serving
    assert whole.choices[0].finish_reason == "length" and whole.choices[0].message.content == ""
    assert whole.usage.completion_tokens == 5
