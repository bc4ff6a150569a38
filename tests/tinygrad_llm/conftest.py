"""Fixtures shared by the training, generation and main-job tests.

One small prepared dataset (the first 40 documents of the stdlib corpus, a 512-token
vocabulary) and one short finished run of the tiny preset on it, made once per
session.  Both are read only: a test that changes a run copies it first.
"""

from __future__ import annotations

import io
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tinygrad_llm.data.prepare import PrepareConfig, prepare
from tinygrad_llm.train import TrainConfig, pretraining, resolve_config

SLICE = 40
VOCAB = 512
FAST = ("block_size=32", "batch_size=2", "eval_batches=2", "log_interval=1", "eval_interval=3",
        "checkpoint_interval=4", "warmup_steps=2")
"""Overrides of the tiny preset that keep a step at a few milliseconds."""


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token shards of a small slice of the default corpus."""
    out = tmp_path_factory.mktemp("shards") / "data"
    prepare(PrepareConfig(out=out, max_documents=SLICE, vocab_size=VOCAB, workers=1))
    return out


@pytest.fixture(scope="session")
def fast_args() -> list[str]:
    """The same tiny preset and overrides as command-line options of ``train``."""
    return ["--preset", "tiny", *(f"--set={item}" for item in FAST)]


@pytest.fixture(scope="session")
def train_config(data_dir: Path) -> Callable[..., tuple[dict, TrainConfig]]:
    """``train_config(out_dir, "key=value", ..., max_steps=4)``: the fast tiny preset on ``data_dir``."""

    def make(out_dir: Path, *overrides: str, **fields: object) -> tuple[dict, TrainConfig]:
        return resolve_config("tiny", overrides=[*FAST, *overrides], data=str(data_dir), out_dir=str(out_dir),
                              **fields)

    return make


@pytest.fixture(scope="session")
def trained_run(train_config: Callable[..., tuple[dict, TrainConfig]],
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run: ckpt_0000004.safetensors, best.safetensors, tokenizer.txt, log.jsonl, loss.png."""
    out = tmp_path_factory.mktemp("run") / "run"
    pretraining(*train_config(out, max_steps=4), stream=io.StringIO()).fit()
    return out


@pytest.fixture()
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of ``trained_run`` that a test may change."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture()
def default_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt), which the Trainer replaces while it runs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def chat_model():
    """A tiny GPT with random weights and a tokenizer with the chat tokens: enough to serve and chat with."""
    import nn
    from tinygrad_llm.chat.format import add_chat_tokens
    from tinygrad_llm.model import GPT, GPTConfig
    from tokenizer import Tokenizer

    tokenizer = add_chat_tokens(Tokenizer.train("the quick brown fox jumps over the lazy dog. " * 30, vocab_size=300))
    nn.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64)), tokenizer
