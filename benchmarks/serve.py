"""Serving under load: ``tinygrad-llm serve`` with 1 to 64 concurrent streaming clients, and one stream's speed
against ``transformers``' ``generate`` on the same weights.

    .venv/bin/python benchmarks/serve.py [--model /tmp/finetune-bench/full] [--seconds 60] [--levels 1,4,16,64]
                                         [--max-tokens 32] [--client raw|openai] [--threads 1] [--new-tokens 100]
                                         [--repeats 3]

About 5 minutes with the defaults (4 levels of 60 s, then the comparison);
writes ``benchmarks/results/serve.json``.

**The model** is a chat model: ``--model``, else the fine-tuned run
``/tmp/finetune-bench/full`` when it exists, else one fine-tuned here for 60 s
(``tinygrad-llm finetune --base runs/small --time-budget 60s`` into a
temporary directory).

**Part 1, the load test.** The benchmark starts the server as a child
process, exactly as a user would (``python -m tinygrad_llm serve --checkpoint
MODEL --port 0``, with ``--threads`` BLAS threads), reads the port from the
first line it prints, waits for ``/health``, and drives it over 127.0.0.1
from asyncio coroutines in this process. The client (``--client``) is by
default plain HTTP/1.1 on asyncio streams, the server-sent events parsed here
(``RawClient``: one connection per request, the chunked body decoded, each
``data:`` line read as JSON); ``--client openai`` uses the official
``openai.AsyncOpenAI`` instead (no retries), which this server speaks too,
but whose HTTP stack here (httpx2 2.16) delivers a response's first body
bytes about 40 ms after its headers and the next several in one burst: on an
idle server a raw client sees the ``role`` chunk within 3 ms and one token
every ~3 ms, ``AsyncOpenAI`` nothing for ~45 ms and then the first tokens at
once. That delay is the client's, so it would inflate TTFT by 40 ms and hide
the per-token gaps; the default measures the server.

For each level of C concurrent clients, C coroutines each run a closed loop
for ``--seconds``: send a chat completion, read its stream to the end, send the
next; so a client has at most one connection open, and at most C requests are
in the server at a time. A request is one short user message from a fixed
list (client i's n-th request takes message i + n), ``max_tokens`` 32,
temperature 0.8, seed ``1000 * i + n``, ``stream: true`` with
``stream_options.include_usage``, so the last chunk carries
``completion_tokens``, the exact number of tokens generated (a streamed chunk
holds one token's text, or several when a UTF-8 character spans tokens). A
request that raises, that takes longer than ``--timeout`` seconds from
sending to its last byte, or whose stream carries no usage is **failed**;
the others are **completed**. After the deadline no client starts a new
request, and the level ends when the requests in flight have finished. Per
level:

- **tokens/s**: the completed requests' ``completion_tokens`` summed, over
  the level's wall time (from the start to the last request's end, so the
  drain after the deadline counts);
- **TTFT** (time to first token): from sending the request to the first chunk
  with text (the server sends an empty ``role`` chunk before it has
  generated anything; that one does not count), p50 and p99 over completed
  requests; it includes the time a request waits for the model;
- **per-token latency** (TPOT): per request, (last text chunk - first text
  chunk) / (completion_tokens - 1), p50 and p99; and, in the JSON, the gaps
  between consecutive text chunks of all requests pooled.

The ratio of tokens/s at 16 clients to 1 client is the figure the serving
issue asks to reach 4x. The server decodes concurrent requests together
(``serve.batch.BatchDecoder``), so more clients share each forward pass;
what batching cannot share is each request's prompt (its prefill) and the
Python work of streaming every token, and on this machine the clients
themselves run on the same two cores. Replies usually end at
``<|assistant_end|>`` before ``max_tokens``; the mean tokens per request is in
the results. Before the first level two requests warm the server up, untimed.

**Part 2, one stream against transformers.** After the server has stopped,
the same model is exported (``tinygrad-llm export hf``) and, in this one
process, with ``--threads`` BLAS threads on both sides (``threadpoolctl`` for
NumPy's OpenBLAS, ``torch.set_num_threads`` for PyTorch; both read back into
the results), the same prompt (the chat rendering of the first message, as
token ids, given to both sides as they are) is continued greedily by
``--new-tokens`` tokens:

- ours: ``tinygrad_llm.generate.generate_tokens`` (temperature 0, KV cache,
  no stop ids, so it never stops early), on the model as ``serve`` loads it;
- transformers: ``AutoModelForCausalLM.from_pretrained(export).generate(ids,
  max_new_tokens=N, min_new_tokens=N, do_sample=False)`` under
  ``torch.no_grad`` (its KV cache too); ``eos_token_id=None`` as well, since
  ``min_new_tokens`` alone would forbid the end token rather than just not
  stop at it, and ours may pick it.

One untimed warm-up each, then ``--repeats`` runs alternating which goes
first; reported are the medians of tokens/s, their ratio ours/transformers,
and whether the two wrote the same tokens in every run.

The machine has 2 cores shared with other work, so the load average at the
start and end (and before each level) goes in the results; client and server
share those cores, the client's JSON parsing included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
import openai  # noqa: E402
from harness import THREAD_VARS, cpu_model, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
FINETUNED = Path("/tmp/finetune-bench/full")
MESSAGES = ["Hello", "How are you?", "What is your name?", "Tell me a joke.", "What is Python?",
            "Do you like music?", "What is a computer?", "Who are you?", "What can you do?", "Good morning",
            "What is your favorite book?", "Are you a robot?"]
MODEL_NAME = "bench-chat"


def chat_model(given: Path | None, tmp: Path) -> Path:
    """The chat model to serve: ``given``, the fine-tuned run at FINETUNED, or one fine-tuned here for 60 s."""
    if given is not None:
        return given
    if FINETUNED.exists():
        return FINETUNED
    out = tmp / "chat"
    print(f"{FINETUNED} not found: fine-tuning runs/small for 60 s into {out}", flush=True)
    subprocess.run([sys.executable, "-m", "tinygrad_llm", "finetune", "--base", str(ROOT / "runs" / "small"),
                    "--out", str(out), "--time-budget", "60s"], cwd=ROOT, check=True)
    return out


class Server:
    """``tinygrad-llm serve --port 0`` in a child process with ``threads`` BLAS threads, answering ``/health``."""

    def __init__(self, model: Path, threads: int, log: Path) -> None:
        env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tinygrad_llm", "serve", "--checkpoint", str(model),
                                      "--port", "0", "--model-name", MODEL_NAME], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        lines: list[str] = []

        def drain() -> None:  # read every line, so that the pipe never fills
            for line in self.proc.stdout:
                lines.append(line)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 120
        while not lines and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        found = re.search(r"http://([^/\s:]+):(\d+)/", lines[0]) if lines else None
        if found is None:
            self.close()
            raise RuntimeError(f"the server did not start: {lines[:1]} {log.read_text()[-2000:]}")
        self.first_line = lines[0].strip()
        self.host, self.port = found.group(1), int(found.group(2))
        while True:  # the line comes when the socket is bound, a moment before uvicorn accepts on it
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the server does not answer: {log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class HTTPStatusError(Exception):
    """A response other than 200."""


class RawClient:
    """Streamed chat completions over plain HTTP/1.1 on asyncio streams, one connection per request.

    ``events`` yields, per server-sent event, whether it carries text and its
    ``usage.completion_tokens`` (None when it has no usage), until ``[DONE]``.
    """

    name = "raw HTTP/1.1 on asyncio streams"

    def __init__(self, server: Server, timeout: float) -> None:
        self.host, self.port = server.host, server.port

    async def events(self, body: dict[str, Any]) -> AsyncIterator[tuple[bool, int | None]]:
        data = json.dumps(body).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         "Connection: close\r\n\r\n".encode() + data)
            status = (await reader.readline()).split()
            while (await reader.readline()).strip():  # the headers; StreamingResponse's body is chunked
                pass
            if len(status) < 2 or status[1] != b"200":
                raise HTTPStatusError(b" ".join(status[1:]).decode(errors="replace"))
            pending = b""
            while size := int((await reader.readline()).split(b";")[0], 16):  # one HTTP chunk: size, data, CRLF
                pending += (await reader.readexactly(size + 2))[:-2]
                *complete, pending = pending.split(b"\n\n")
                for event in complete:
                    payload = event.removeprefix(b"data: ")
                    if payload == b"[DONE]":
                        return
                    chunk = json.loads(payload)
                    usage = chunk.get("usage")
                    yield (bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content")),
                           usage["completion_tokens"] if usage else None)
        finally:
            writer.close()

    async def close(self) -> None:
        pass


class OpenAIClient:
    """The same through the official ``openai`` package's ``AsyncOpenAI`` (no retries)."""

    name = f"openai.AsyncOpenAI {openai.__version__}"

    def __init__(self, server: Server, timeout: float) -> None:
        self.client = openai.AsyncOpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key="unused",
                                         max_retries=0, timeout=timeout)

    async def events(self, body: dict[str, Any]) -> AsyncIterator[tuple[bool, int | None]]:
        async with await self.client.chat.completions.create(**body) as stream:
            async for chunk in stream:
                    yield (bool(chunk.choices and chunk.choices[0].delta.content),
                       None if chunk.usage is None else chunk.usage.completion_tokens)

    async def close(self) -> None:
        await self.client.close()


CLIENTS = {"raw": RawClient, "openai": OpenAIClient}
FAILURES = (openai.OpenAIError, HTTPStatusError, OSError, EOFError, ValueError, KeyError, TimeoutError)
"""What a failed request raises: the client's errors, a refused or cut connection, a malformed stream, the timeout."""


async def one_request(client: RawClient | OpenAIClient, message: str, seed: int, args: argparse.Namespace
                      ) -> dict[str, Any]:
    """One streamed chat completion: its start and end, the arrival time of each chunk with text, its token count."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": message}], "max_tokens": args.max_tokens,
            "temperature": args.temperature, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    arrivals: list[float] = []
    usage: list[int] = []

    async def read() -> None:
        async with contextlib.aclosing(client.events(body)) as events:
            async for text, tokens in events:
                if text:
                    arrivals.append(time.perf_counter())
                if tokens is not None:
                    usage.append(tokens)

    try:
        await asyncio.wait_for(read(), args.timeout)
    except FAILURES as exc:
        return {"ok": False, "error": type(exc).__name__, "start": start, "end": time.perf_counter()}
    if not usage:
        return {"ok": False, "error": "no usage chunk", "start": start, "end": time.perf_counter()}
    return {"ok": True, "start": start, "end": time.perf_counter(), "arrivals": arrivals, "tokens": usage[-1]}


async def client_loop(client: RawClient | OpenAIClient, index: int, deadline: float, args: argparse.Namespace,
                      records: list[dict[str, Any]]) -> None:
    """Client ``index``: one request after another until ``deadline``."""
    n = 0
    while time.perf_counter() < deadline:
        records.append(await one_request(client, MESSAGES[(index + n) % len(MESSAGES)], 1000 * index + n, args))
        n += 1


def percentiles(values: list[float], scale: float = 1e3) -> dict[str, float | None]:
    """p50 and p99 of ``values`` times ``scale`` (seconds to milliseconds), None when there are none."""
    if not values:
        return {"p50": None, "p99": None}
    return {"p50": float(np.percentile(values, 50)) * scale, "p99": float(np.percentile(values, 99)) * scale}


async def run_level(server: Server, clients: int, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``, summarised."""
    client = CLIENTS[args.client](server, args.timeout)
    records: list[dict[str, Any]] = []
    load = os.getloadavg()
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(client, i, start + seconds, args, records) for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()

    done = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    errors: dict[str, int] = {}
    for r in failed:
        errors[r["error"]] = errors.get(r["error"], 0) + 1
    tokens = sum(r["tokens"] for r in done)
    ttft = [r["arrivals"][0] - r["start"] for r in done if r["arrivals"]]
    tpot = [(r["arrivals"][-1] - r["arrivals"][0]) / (r["tokens"] - 1) for r in done
            if r["tokens"] > 1 and len(r["arrivals"]) > 1]
    gaps = [float(g) for r in done for g in np.diff(r["arrivals"])]
    return {"clients": clients, "load_average_before": list(load), "wall_s": wall, "requests_completed": len(done),
            "requests_failed": len(failed), "errors": errors, "completion_tokens": tokens,
            "tokens_per_request_mean": tokens / len(done) if done else None,
            "tokens_per_s": tokens / wall, "requests_per_s": len(done) / wall,
            "ttft_ms": percentiles(ttft), "per_token_ms": percentiles(tpot), "chunk_gap_ms": percentiles(gaps),
            "latency_ms": percentiles([r["end"] - r["start"] for r in done])}


async def load_test(server: Server, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Two warm-up requests, then every level in turn."""
    client = CLIENTS[args.client](server, args.timeout)
    for seed in range(2):
        warm = await one_request(client, MESSAGES[seed], seed, args)
        if not warm["ok"]:
            raise RuntimeError(f"the warm-up request failed: {warm['error']}")
    await client.close()
    levels = []
    for clients in args.levels:
        level = await run_level(server, clients, args.seconds, args)
        levels.append(level)
        print(f"{clients:3d} clients: {level['requests_completed']} requests, {level['requests_failed']} failed, "
              f"{level['tokens_per_s']:.1f} tokens/s, TTFT p50 {level['ttft_ms']['p50']:.0f} ms", flush=True)
        await asyncio.sleep(1.0)
    return levels


def compare_generation(model_path: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy tokens/s of one stream, ours against transformers, on the same exported weights and prompt ids."""
    import torch
    import transformers
    from threadpoolctl import threadpool_info, threadpool_limits

    from tinygrad_llm.chat.format import render_prompt
    from tinygrad_llm.cli import load_any_model
    from tinygrad_llm.generate import SamplingConfig, generate_tokens

    export = tmp / "hf"
    subprocess.run([sys.executable, "-m", "tinygrad_llm", "export", "hf", "--checkpoint", str(model_path),
                    "--out", str(export)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    model, tokenizer, _ = load_any_model(model_path)
    model.eval()
    ids = render_prompt(tokenizer, [{"role": "user", "content": MESSAGES[0]}])
    if len(ids) + args.new_tokens > model.config.block_size:
        raise SystemExit(f"the prompt ({len(ids)} tokens) and --new-tokens {args.new_tokens} do not fit the "
                         f"context of {model.config.block_size}")
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    prompt = torch.tensor([ids])
    greedy = SamplingConfig(temperature=0.0)

    def ours(n: int) -> list[int]:
        return list(generate_tokens(model, ids, n, greedy))

    def transformers_side(n: int) -> list[int]:
        with torch.no_grad():
            out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=tokenizer.eot_token)
        return out[0, len(ids):].tolist()

    sides = {"ours": ours, "transformers": transformers_side}
    times: dict[str, list[float]] = {side: [] for side in sides}
    tokens: dict[str, list[list[int]]] = {side: [] for side in sides}
    with threadpool_limits(limits=args.threads, user_api="blas"):
        blas = [{"library": p["internal_api"], "threads": p["num_threads"]} for p in threadpool_info()
                if p["user_api"] == "blas"]
        for side in sides.values():
            side(5)
        for repeat in range(args.repeats):
            for side in ("ours", "transformers") if repeat % 2 == 0 else ("transformers", "ours"):
                start = time.perf_counter()
                tokens[side].append(sides[side](args.new_tokens))
                times[side].append(time.perf_counter() - start)
    rate = {side: args.new_tokens / statistics.median(t) for side, t in times.items()}
    same = all(a == b for a, b in zip(tokens["ours"], tokens["transformers"], strict=True))
    pairs = zip(tokens["ours"][0], tokens["transformers"][0], strict=False)
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    return {"prompt": MESSAGES[0], "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
            "repeats": args.repeats, "seconds": times, "tokens_per_s": rate,
            "ratio_ours_over_transformers": rate["ours"] / rate["transformers"], "same_tokens": same,
            "first_difference_at": first, "lengths": {s: [len(t) for t in v] for s, v in tokens.items()},
            "threads": {"ours_blas": blas, "torch": torch.get_num_threads()},
            "model_class": type(theirs).__name__}


def table(levels: list[dict[str, Any]]) -> str:
    """The per-level results as a Markdown table."""
    rows = ["| clients | completed | failed | tokens/s | TTFT p50 / p99 (ms) | per-token p50 / p99 (ms) |",
            "|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        ttft, tpot = level["ttft_ms"], level["per_token_ms"]
        rows.append(f"| {level['clients']} | {level['requests_completed']} | {level['requests_failed']} | "
                    f"{level['tokens_per_s']:.1f} | {_ms(ttft['p50'])} / {_ms(ttft['p99'])} | "
                    f"{_ms(tpot['p50'], 1)} / {_ms(tpot['p99'], 1)} |")
    return "\n".join(rows)


def _ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=f"the chat model (default {FINETUNED}, else fine-tuned here)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each load level")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64],
                        help="concurrent clients, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before it fails")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                        help="raw HTTP with SSE parsed here (default), or the openai package's AsyncOpenAI")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of the server and of both sides "
                                                               "of the generation comparison")
    parser.add_argument("--new-tokens", type=int, default=100, help="greedy tokens in the generation comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model_path = chat_model(args.model, tmp)
        server = Server(model_path, args.threads, tmp / "server.log")
        try:
            print(server.first_line, flush=True)
            levels = asyncio.run(load_test(server, args))
        finally:
            server.close()
        generation = compare_generation(model_path, tmp, args)
    load_end = os.getloadavg()

    by_clients = {level["clients"]: level["tokens_per_s"] for level in levels}
    scaling = by_clients[16] / by_clients[1] if 16 in by_clients and 1 in by_clients else None
    print()
    print(table(levels))
    if scaling is not None:
        print(f"\ntokens/s at 16 clients / 1 client: {scaling:.2f}x (the issue's target: >= 4x)")
    g = generation
    print(f"one greedy stream of {g['new_tokens']} tokens, {args.threads} thread(s), median of {g['repeats']}: "
          f"ours {g['tokens_per_s']['ours']:.1f} tokens/s, transformers {g['tokens_per_s']['transformers']:.1f} "
          f"tokens/s, ours / transformers {g['ratio_ours_over_transformers']:.2f}x; same tokens: {g['same_tokens']}")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1-minute)")

    versions = {p: importlib.metadata.version(p) for p in ("numpy", "torch", "transformers", "openai", "starlette",
                                                           "uvicorn")}
    write_json(args.out, {
        "benchmark": "OpenAI-compatible server under 1-64 concurrent streaming clients; one greedy stream, ours vs "
                     "transformers",
        "date": started.isoformat(timespec="seconds"), "machine": platform.machine(), "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "versions": versions,
        "load_average_start": list(load_start), "load_average_end": list(load_end),
        "model": str(model_path),
        "settings": {"seconds_per_level": args.seconds, "levels": args.levels, "max_tokens": args.max_tokens,
                     "temperature": args.temperature, "timeout_s": args.timeout, "server_blas_threads": args.threads,
                     "messages": MESSAGES, "client": f"{CLIENTS[args.client].name}, asyncio"},
        "load_test": levels, "throughput_ratio_16_over_1": scaling, "generation": generation,
    })


if __name__ == "__main__":
    main()
