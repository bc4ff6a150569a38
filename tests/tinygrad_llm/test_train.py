"""The Trainer: exact resume, atomic checkpoints, non-finite losses.

Everything runs the tiny preset with a context of 32 and micro-batches of 2 on the
session's small slice of the stdlib corpus (``conftest.py``), a few steps each.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import nn
import nn.state
from tinygrad_llm.checkpoint import load_checkpoint, step_checkpoints
from tinygrad_llm.data.loader import BatchLoader
from tinygrad_llm.model import GPT
from tinygrad_llm.train import Trainer, TrainingError, pretraining

N, K = 8, 5
"""The uninterrupted run's steps, and the step the interrupted one stops at."""

RESUMABLE = ("dropout=0.1", "total_batch_tokens=128", "checkpoint_interval=3")
"""Dropout draws random numbers every step; 128 tokens = 2 micro-batches of 2 x 32."""


def train_records(out_dir: Path) -> list[dict]:
    """The per-step training records of a run's log, without the wall-clock fields."""
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in records if "loss" in r]


def eval_records(out_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "val_loss", "val_ppl", "val_bpb")} for r in records if "val_loss" in r]


def parameters(trainer: Trainer) -> dict[str, np.ndarray]:
    return {name: t.numpy().copy() for name, t in trainer.model.state_dict().items()}


def assert_same(a: object, b: object) -> None:
    """Exact equality of nested dicts / lists / arrays / numbers."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif hasattr(a, "shape"):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    else:
        assert a == b


@pytest.fixture(scope="module")
def uninterrupted(train_config, tmp_path_factory):
    """An N-step run with dropout and gradient accumulation, never stopped."""
    out = tmp_path_factory.mktemp("full") / "run"
    trainer = pretraining(*train_config(out, *RESUMABLE, max_steps=N), stream=io.StringIO())
    assert trainer.accum == 2 and trainer.model_config.dropout == 0.1
    assert trainer.fit()["status"] == "finished"
    return trainer


def interrupt(trainer: Trainer, how: str) -> None:
    """Stop ``trainer`` after step K, by request or by a real Ctrl-C."""
    def on_step(t: Trainer) -> None:
        if t.step == K:
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                t.request_stop()
    trainer.on_step = on_step


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize("how", ["request_stop", "sigint"])
def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(how, uninterrupted, train_config, tmp_path,
                                                                     default_sigint):
    out = tmp_path / "run"
    stream = io.StringIO()
    first = pretraining(*train_config(out, *RESUMABLE, max_steps=N), stream=stream)
    interrupt(first, how)
    summary = first.fit()
    assert (summary["status"], summary["step"]) == ("interrupted", K)
    assert summary["checkpoint"] == str(out / f"ckpt_{K:07d}.safetensors")
    assert f"interrupted at step {K}" in stream.getvalue() and "--resume" in stream.getvalue()
    assert ("Ctrl-C: finishing this step" in stream.getvalue()) == (how == "sigint")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    assert [step for step, _ in step_checkpoints(out)] == [3, K]

    second = pretraining(*train_config(out, *RESUMABLE, max_steps=N), resume=True, stream=io.StringIO())
    assert second.step == K
    assert second.fit()["status"] == "finished"

    full_dir = Path(uninterrupted.config.out_dir)
    assert [r["step"] for r in train_records(out)] == list(range(1, N + 1))
    assert train_records(out) == train_records(full_dir)  # exact: the same floats, step by step
    assert eval_records(out) == eval_records(full_dir)
    assert_same(parameters(second), parameters(uninterrupted))
    assert_same(second.optimizer.state_dict(), uninterrupted.optimizer.state_dict())
    assert_same(load_checkpoint(out / f"ckpt_{N:07d}.safetensors").model,
                load_checkpoint(full_dir / f"ckpt_{N:07d}.safetensors").model)


@pytest.mark.parametrize("forget", ["random state", "data position"])
def test_resume_depends_on_the_saved_random_state_and_data_position(forget, uninterrupted, train_config, tmp_path,
                                                                    monkeypatch):
    """The check above can fail: a resume that forgets either one drifts from the uninterrupted run."""
    out = tmp_path / "run"
    first = pretraining(*train_config(out, *RESUMABLE, max_steps=N), stream=io.StringIO())
    interrupt(first, "request_stop")
    first.fit()
    if forget == "random state":
        monkeypatch.setattr(nn, "set_rng_state", lambda state: None)
    else:
        monkeypatch.setattr(BatchLoader, "load_state_dict", lambda self, state: None)
    pretraining(*train_config(out, *RESUMABLE, max_steps=N), resume=True, stream=io.StringIO()).fit()
    full = train_records(Path(uninterrupted.config.out_dir))
    resumed = train_records(out)
    assert resumed[:K] == full[:K]
    assert resumed[K]["loss"] != full[K]["loss"]


def test_resume_may_extend_the_run(trained_run, run_copy, train_config):
    trainer = pretraining(*train_config(run_copy, max_steps=6), resume=True, replan=True, stream=io.StringIO())
    assert (trainer.step, trainer.max_steps) == (4, 6)
    summary = trainer.fit()
    assert (summary["status"], summary["step"]) == ("finished", 6)
    assert [r["step"] for r in train_records(run_copy)] == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in step_checkpoints(run_copy)] == [4, 6]


@pytest.mark.parametrize("schedule", ["cosine", "constant", "wsd"])
def test_every_schedule_drives_a_run(schedule, train_config, tmp_path):
    out = tmp_path / schedule
    trainer = pretraining(*train_config(out, f"schedule={schedule}", "warmup_steps=1", "lr=0.01", max_steps=10),
                          stream=io.StringIO())
    assert trainer.fit()["status"] == "finished"
    lrs = [r["lr"] for r in train_records(out)]
    # Progress runs from 0 at the first step to 1 at the last (step 9); warmup (1 step) is already over.
    expected = {"cosine": lambda s: 0.001 + 0.009 * (1 + math.cos(math.pi * s / 9)) / 2,
                "constant": lambda s: 0.01,
                "wsd": lambda s: 0.01 - 0.009 * max(0.0, (s / 9 - 0.8) / 0.2)}[schedule]
    np.testing.assert_allclose(lrs, [expected(step) for step in range(10)], rtol=1e-12)


# ---------------------------------------------------------------------- atomic checkpoints


def fail_saving(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next checkpoint write fail: half-written, before the fsync, or at the rename."""
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if stage == "write":
        write = safetensors.numpy.save_file

        def half_written(tensors, filename, metadata=None):
            write(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            fail()

        monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
    elif stage == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    else:
        monkeypatch.setattr(os, "replace", fail)


@pytest.mark.parametrize("stage", ["write", "fsync", "rename"])
def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(stage, run_copy, train_config, monkeypatch):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    saved = load_checkpoint(run_copy / "ckpt_0000004.safetensors")
    trainer = pretraining(*train_config(run_copy, max_steps=6), resume=True, replan=True, stream=io.StringIO())
    trainer.train_step()
    trainer.optimizer.step()
    trainer.step += 1
    assert not np.array_equal(trainer.model.state_dict()["wte.weight"].numpy(), saved.model["wte.weight"])

    fail_saving(stage, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        trainer.save()
    with pytest.raises(OSError, match="No space left"):
        trainer.save(best=True)  # over an existing file
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before  # nothing changed, no temporary left
    assert_same(load_checkpoint(run_copy / "ckpt_0000004.safetensors").model, saved.model)
    assert load_checkpoint(run_copy / "best.safetensors").info["step"] == 4
    assert pretraining(*train_config(run_copy, max_steps=6), resume=True, replan=True, stream=io.StringIO()).step == 4

    trainer.save()  # and once the disk is fine again, saving works
    assert load_checkpoint(run_copy / "ckpt_0000005.safetensors").info["step"] == 5


# ---------------------------------------------------------------------- non-finite losses


def poison_loss(monkeypatch: pytest.MonkeyPatch, bad: dict, value: float) -> None:
    """Multiply the training loss by ``value`` (nan or inf) while ``bad["now"]`` is true."""
    forward = GPT.forward

    def poisoned(self, idx, targets=None, caches=None):
        logits, loss = forward(self, idx, targets, caches)
        if loss is not None and bad["now"]:
            loss = loss * value
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_steps_are_skipped_and_stop_the_run_when_in_a_row(value, train_config, tmp_path, monkeypatch):
    bad = {"now": False}
    poison_loss(monkeypatch, bad, value)
    stream = io.StringIO()
    trainer = pretraining(*train_config(tmp_path / "run", "max_bad_steps=3", max_steps=20), stream=stream)
    snapshots = {}

    def on_step(t: Trainer) -> None:
        snapshots[t.step] = (parameters(t), copy.deepcopy(t.optimizer.state_dict()["state"]))
        bad["now"] = t.step >= 3  # steps 4, 5, 6 are bad

    trainer.on_step = on_step
    with pytest.raises(TrainingError, match="3 non-finite steps in a row at step 5"):
        trainer.fit()
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("warning: non-finite")]
    assert len(warnings) == 3
    assert sorted(snapshots) == [1, 2, 3, 4, 5]
    for step in (4, 5):  # the skipped steps changed neither the weights nor the optimizer state
        assert_same(snapshots[step], snapshots[3])
    assert_same(parameters(trainer), snapshots[3][0])
    assert not np.array_equal(snapshots[3][0]["wte.weight"], snapshots[2][0]["wte.weight"])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_bad_step_now_and_then_is_skipped_and_training_goes_on(train_config, tmp_path, monkeypatch):
    bad = {"now": False}
    poison_loss(monkeypatch, bad, math.nan)
    stream = io.StringIO()
    trainer = pretraining(*train_config(tmp_path / "run", "max_bad_steps=2", max_steps=8), stream=stream)
    snapshots = {}

    def on_step(t: Trainer) -> None:
        snapshots[t.step] = parameters(t)
        bad["now"] = t.step in (2, 4)  # steps 3 and 5 are bad, never two in a row

    trainer.on_step = on_step
    assert trainer.fit()["status"] == "finished"
    assert stream.getvalue().count("warning: non-finite") == 2
    assert_same(snapshots[3], snapshots[2])
    assert_same(snapshots[5], snapshots[4])
    assert not np.array_equal(snapshots[6]["wte.weight"], snapshots[5]["wte.weight"])
    losses = [r["loss"] for r in train_records(tmp_path / "run")]
    assert [x is None for x in losses] == [False, False, True, False, True, False, False, False]  # JSON null
