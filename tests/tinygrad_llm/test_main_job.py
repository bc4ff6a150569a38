"""The main job through the command line: prepare -> train -> resume -> generate, Ctrl-C, bad input, learning.

Every command goes through ``tinygrad_llm.cli.main`` as a user would type it; the
tiny preset with a context of 32 keeps a training step at a few milliseconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import safetensors.numpy
from cli_helpers import cli, one_error

from tinygrad_llm.checkpoint import read_info, step_checkpoints
from tinygrad_llm.data.loader import TokenShards
from tinygrad_llm.data.prepare import PrepareConfig, prepare
from tinygrad_llm.model import GPT
from tinygrad_llm.train import Trainer, pretraining

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def records(run: Path) -> list[dict]:
    """log.jsonl, parsed as strict JSON (no NaN or Infinity)."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return [json.loads(line, parse_constant=refuse) for line in (run / "log.jsonl").read_text().splitlines()]


def train_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(run) if "loss" in r]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- end to end


def test_prepare_train_resume_generate(tmp_path, capsys, fast_args):
    data, run = tmp_path / "data", tmp_path / "run"
    status, out, _ = cli(capsys, "prepare", "--max-documents", 20, "--vocab-size", 300, "--workers", 1, "--out", data)
    assert status == 0 and out.startswith("prepared stdlib")
    assert sorted(p.name for p in data.iterdir()) == ["meta.json", "tokenizer.txt", "train_000.bin", "val_000.bin"]

    status, _, err = cli(capsys, "train", "--data", data, "--out", run, "--max-steps", 5, *fast_args)
    assert status == 0 and "finished at step 5/5" in err
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "ckpt_0000004.safetensors",
                                                     "ckpt_0000005.safetensors", "log.jsonl", "loss.png",
                                                     "tokenizer.txt"]  # and no temporary file
    assert (run / "tokenizer.txt").read_bytes() == (data / "tokenizer.txt").read_bytes()
    info = read_info(run / "ckpt_0000005.safetensors")
    assert info["step"] == 5 and info["model_config"]["vocab_size"] == 300 and info["model_config"]["n_layer"] == 2
    assert read_info(run / "best.safetensors")["step"] in (3, 5)

    log = records(run)
    train = [r for r in log if "loss" in r]
    evals = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for r in train:
        assert {"step", "loss", "lr", "tokens_per_s"} <= r.keys()
        assert 0 < r["loss"] < 10 and 0 < r["lr"] <= 1e-3 and r["tokens_per_s"] > 0
    assert [r["step"] for r in evals] == [0, 3, 5]
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0 < r["val_bpb"] < r["val_loss"] / math.log(2)  # a token holds more than one byte on average
    png = (run / "loss.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    height, width, _ = matplotlib.image.imread(run / "loss.png").shape
    assert height > 100 and width > 100

    status, _, err = cli(capsys, "train", "--out", run, "--resume", "--max-steps", 8)  # --data from the checkpoint
    assert status == 0
    assert "resumed from" in err and "ckpt_0000005.safetensors at step 5" in err
    assert "extending the run: to step 8;" in err and "finished at step 8/8" in err
    assert [step for step, _ in train_losses(run)] == list(range(1, 9))
    assert [step for step, _ in step_checkpoints(run)] == [5, 8]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]

    status, out, err = cli(capsys, "generate", "-c", run, "-p", "def ", "-n", 16, "--seed", 0)
    assert status == 0 and err == ""
    assert out.startswith("def ") and len(out) > len("def \n")


# ---------------------------------------------------------------------- Ctrl-C


def ctrl_c_during_step(monkeypatch: pytest.MonkeyPatch, step: int, times: int = 1) -> None:
    """Press Ctrl-C ``times`` times (a real SIGINT to this process) during training step ``step``."""
    train_step = Trainer.train_step
    pressed = []

    def pressing(self: Trainer):
        result = train_step(self)
        if self.step + 1 == step and not pressed:
            pressed.append(step)
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_step", pressing)


def test_ctrl_c_saves_and_resume_gives_the_uninterrupted_losses(tmp_path, capsys, fast_args, data_dir, monkeypatch,
                                                                default_sigint):
    options = ["--data", data_dir, "--max-steps", 7, *fast_args, "--set=dropout=0.1", "--set=total_batch_tokens=128"]
    assert cli(capsys, "train", "--out", tmp_path / "full", *options)[0] == 0

    ctrl_c_during_step(monkeypatch, 5)
    status, _, err = cli(capsys, "train", "--out", tmp_path / "cut", *options)
    assert status == 130
    assert "Ctrl-C" in err and "interrupted at step 5" in err and "continue with --resume" in err
    assert "error" not in err
    assert [step for step, _ in step_checkpoints(tmp_path / "cut")] == [4, 5]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    status, _, err = cli(capsys, "train", "--out", tmp_path / "cut", "--resume")
    assert status == 0 and "finished at step 7/7" in err
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")


def test_a_second_ctrl_c_stops_at_once(tmp_path, capsys, fast_args, data_dir, monkeypatch, default_sigint):
    ctrl_c_during_step(monkeypatch, 2, times=2)
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--max-steps", 7, *fast_args)
    assert status == 130
    assert err.count("tinygrad-llm: error: interrupted") == 1 and "Traceback" not in err
    assert not step_checkpoints(tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------------- non-finite loss


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_loss_that_stays_nan_stops_training_with_one_error(tmp_path, capsys, fast_args, data_dir, monkeypatch):
    forward = GPT.forward

    def nan_loss(self, idx, targets=None, caches=None):
        logits, loss = forward(self, idx, targets, caches)
        return logits, None if loss is None else loss * math.nan

    monkeypatch.setattr(GPT, "forward", nan_loss)
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--max-steps", 10, *fast_args,
                         "--set", "max_bad_steps=2")
    one_error(status, err, "2 non-finite steps in a row", "lower the learning rate")
    assert err.count("warning: non-finite loss") == 2


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """A dataset whose tokenizer (300 tokens) is not the one the shared run was trained with."""
    out = tmp_path_factory.mktemp("other") / "data"
    prepare(PrepareConfig(out=out, max_documents=10, vocab_size=300, workers=1))
    return out


def test_missing_data(tmp_path, capsys, fast_args):
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "nowhere", tmp_path / "empty"):
        status, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run", "--max-steps", 2, *fast_args)
        one_error(status, err, str(data), "prepare")
    status, _, err = cli(capsys, "prepare", "--source", tmp_path / "nowhere", "--out", tmp_path / "data")
    one_error(status, err, "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("files", [{}, {"a.txt": "", "b.txt": "\n\n  \n"}], ids=["empty dir", "empty files"])
def test_empty_corpus(tmp_path, capsys, files):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in files.items():
        (corpus / name).write_text(text)
    status, _, err = cli(capsys, "prepare", "--source", corpus, "--out", tmp_path / "data", "--workers", 1)
    one_error(status, err, str(corpus))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("override", "named"), [
    ("batch_size=100000", "the train split is smaller than one batch"),
    ("block_size=1000000", "the train split is smaller than one batch"),
    ("block_size=150000", "fewer than one window of 150000 + 1"),  # enough train tokens, too few val tokens
])
def test_corpus_smaller_than_one_batch(tmp_path, capsys, fast_args, data_dir, override, named):
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--max-steps", 2, *fast_args,
                         "--set", override)
    one_error(status, err, named)
    assert not (tmp_path / "run").exists()


def test_a_tiny_corpus_is_smaller_than_one_batch(tmp_path, capsys):
    (tmp_path / "one.py").write_text("print('hello')\nprint('world')\n")
    status, _, _ = cli(capsys, "prepare", "--source", tmp_path / "one.py", "--out", tmp_path / "data",
                       "--vocab-size", 300, "--workers", 1)
    assert status == 0
    status, _, err = cli(capsys, "train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--preset", "tiny",
                         "--max-steps", 2)
    one_error(status, err, "smaller than one batch")
    assert not (tmp_path / "run").exists()


def damage(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(os.urandom(5000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:  # a valid safetensors file that is not one of our checkpoints
        safetensors.numpy.save_file({"wte.weight": np.zeros((4, 4), np.float32)}, str(path))


KINDS = ["garbage", "empty", "truncated", "foreign"]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_from_a_broken_checkpoint(run_copy, capsys, kind):
    damage(run_copy / "best.safetensors", kind)
    before = snapshot(run_copy)
    status, out, err = cli(capsys, "generate", "-c", run_copy, "-p", "def ")
    one_error(status, err, "best.safetensors")
    assert out == "" and snapshot(run_copy) == before


@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_a_broken_checkpoint(run_copy, capsys, kind):
    damage(run_copy / "ckpt_0000004.safetensors", kind)
    before = snapshot(run_copy)
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume")
    one_error(status, err, "ckpt_0000004.safetensors")
    assert snapshot(run_copy) == before


def test_resume_with_another_model_config(run_copy, capsys):
    before = snapshot(run_copy)
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume", "--set", "n_layer=3")
    one_error(status, err, "model config does not match", "n_layer (checkpoint 2, now 3)")
    assert snapshot(run_copy) == before


def test_resume_with_another_tokenizer(run_copy, other_data, capsys):
    before = snapshot(run_copy)
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume", "--data", other_data)
    one_error(status, err, "another tokenizer")
    assert snapshot(run_copy) == before


def test_generate_needs_the_tokenizer_it_was_trained_with(run_copy, other_data, capsys):
    (run_copy / "tokenizer.txt").write_bytes((other_data / "tokenizer.txt").read_bytes())
    one_error(*cli(capsys, "generate", "-c", run_copy, "-p", "x")[::2], "tokenizer.txt")
    (run_copy / "tokenizer.txt").unlink()
    one_error(*cli(capsys, "generate", "-c", run_copy, "-p", "x")[::2], "no tokenizer.txt")


def test_no_checkpoint_to_use(tmp_path, capsys):
    one_error(*cli(capsys, "generate", "-c", tmp_path / "nothing.safetensors", "-p", "x")[::2], "no such checkpoint")
    one_error(*cli(capsys, "generate", "-c", tmp_path, "-p", "x")[::2], "no checkpoint")
    one_error(*cli(capsys, "train", "--out", tmp_path / "run", "--resume")[::2], "no checkpoint to resume from")
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_to_overwrite_a_run(run_copy, capsys, fast_args, data_dir):
    before = snapshot(run_copy)
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", run_copy, "--max-steps", 2, *fast_args)
    one_error(status, err, "already holds checkpoints", "--resume")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(("options", "named"), [
    (["--preset", "gigantic"], "unknown preset 'gigantic'"),
    (["--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["--set", "model.lr=0.1"], "unknown model config key 'lr'"),
    (["--set", "lr"], "--set needs key=value"),
    (["--set", "n_head=3"], "n_embd (64) must be divisible by n_head (3)"),
    (["--time-budget", "0"], "time budget must be positive"),
    (["--time-budget=-5m"], "time budget must be positive"),
    (["--time-budget", "soon"], "not a duration"),
    (["--max-steps", "0"], "--max-steps: must be at least 1"),
    (["--max-steps=-3"], "--max-steps: must be at least 1"),
    (["--set", "max_steps=0"], "max_steps must be a positive integer"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--device", "cuda", "--max-steps", "2"], "training runs on the CPU only for now"),
    (["--max-steps", "2", "--set", "lr=abc"], "lr must be a finite number, not 'abc'"),
    (["--max-steps", "2", "--set", "dropout=abc"], "dropout must be a finite number, not 'abc'"),
    (["--max-steps", "2", "--set", "seed=abc"], "seed must be an integer, not 'abc'"),
    (["--max-steps", "2", "--set", "seed=-1"], "seed must not be negative"),
    (["--max-steps", "2", "--set", "grad_clip=abc"], "grad_clip must be a finite number, not 'abc'"),
    (["--max-steps", "2", "--set", "weight_decay=abc"], "weight_decay must be a finite number, not 'abc'"),
    (["--max-steps", "2", "--set", "warmup_steps=-10"], "warmup_steps must not be negative"),
    (["--max-steps", "2", "--set", "lr=nan"], "lr must be a finite number"),
    (["--max-steps", "2", "--set", "batch_size=2.5"], "batch_size must be an integer"),
    (["--max-steps", "2", "--set", "bias=1"], "bias must be true or false"),
    (["--max-steps", "2", "--threads", "0"], "--threads: must be at least 1"),
    (["--max-steps", "2", "--set", "vocab_size=100"], "vocab_size comes from the data's tokenizer"),
    (["--max-steps", "2", "--set", "lr=1" + "0" * 400], "lr must be a finite number"),
    (["--max-steps", "2", "--set", "min_lr=0.1", "--set", "lr=0.01"], "min_lr (0.1) must not exceed lr (0.01)"),
])
def test_bad_train_options(tmp_path, capsys, data_dir, options, named):
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--preset", "tiny", *options)
    one_error(status, err, named)
    assert list(tmp_path.iterdir()) == []


def test_unknown_key_in_a_config_file(tmp_path, capsys, data_dir):
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"\n[train]\nmax_steps = 2\nbogus_key = 1\n')
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--config", config)
    one_error(status, err, "'train.bogus_key'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["frobnicate"], ["generate", "-p", "x"], ["generate", "-c", "x", "--bogus"]])
def test_unknown_command_or_option(capsys, argv):
    line = one_error(*cli(capsys, *argv)[::2])
    assert line.count("tinygrad-llm") == 1  # not "tinygrad-llm: error: tinygrad-llm: ..."


def test_an_option_error_names_the_subcommand_once(capsys):
    line = one_error(*cli(capsys, "train", "--max-steps", "x")[::2])
    assert line == "tinygrad-llm: error: train: argument --max-steps: not an integer: 'x'"


# ---------------------------------------------------------------------- extending a finished run


def test_a_finished_run_is_extended_by_steps(run_copy, capsys):
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume")
    one_error(status, err, "already finished its plan at step 4", "--max-steps")
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume", "--max-steps", 7)
    assert status == 0, err
    assert "extending the run: to step 7; the schedule continues as if" in err and "finished at step 7/7" in err
    steps = [step for step, _ in train_losses(run_copy)]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    lrs = [r["lr"] for r in records(run_copy) if "lr" in r]
    assert lrs[3] == pytest.approx(1e-4)  # the 4-step plan had decayed to its floor at its last step ...
    assert lrs[4] > lrs[5] > lrs[6] == pytest.approx(1e-4)  # ... the 7-step one is half way down at step 5
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume")
    one_error(status, err, "already finished its plan at step 7")
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume", "--max-steps", 7)
    one_error(status, err, "--max-steps 7 is not beyond the checkpoint's step 7")
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume", "--max-steps", 3)
    one_error(status, err, "--max-steps 3 is not beyond the checkpoint's step 7")


def test_a_finished_run_is_extended_by_time(run_copy, capsys):
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume", "--time-budget", "4s")
    assert status == 0, err
    assert "extending the run: for " in err and "s of wall-clock time (4s left)" in err, err
    assert "time budget reached" in err, err
    info = read_info(step_checkpoints(run_copy)[-1][1])
    assert info["step"] >= 4 and info["done"], err  # how many steps fit is test_budget.py's business
    assert info["plan"]["max_steps"] is None  # --time-budget alone drops the old step count
    assert info["train_config"]["time_budget"] == info["plan"]["time_budget"]  # so --resume alone ...
    status, _, err = cli(capsys, "train", "--out", run_copy, "--resume")
    one_error(status, err, "already finished its plan")  # ... knows the run is done


def test_an_early_ctrl_c_reports_no_best_loss_yet(tmp_path, capsys, fast_args, data_dir, monkeypatch, default_sigint):
    ctrl_c_during_step(monkeypatch, 1)
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--max-steps", 5, *fast_args)
    assert status == 130
    assert "interrupted at step 1" in err and "no validation yet" in err and "inf" not in err


def test_out_is_a_directory_named_after_the_preset_by_default(tmp_path, capsys, fast_args, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a run")
    one_error(*cli(capsys, "train", "--data", data_dir, "--out", "afile", "--max-steps", 2, *fast_args)[::2],
              "afile: not a directory")
    status, _, err = cli(capsys, "train", "--data", data_dir, "--max-steps", 2, *fast_args)
    assert status == 0, err
    assert (tmp_path / "runs" / "tiny" / "ckpt_0000002.safetensors").exists()
    assert err.count("finished at step 2/2") == 1  # one closing line, not the trainer's and the command's


def test_a_fresh_run_replaces_the_log_of_a_run_that_saved_nothing(tmp_path, capsys, fast_args, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 9.99}\n')  # a run stopped before its first checkpoint
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", run, "--max-steps", 2, *fast_args)
    assert status == 0 and "removed the log of an earlier run that saved no checkpoint" in err
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2]
    assert 9.99 not in [r.get("loss") for r in records(run)]


def test_a_full_disk_while_training_is_one_line_naming_the_checkpoint(small_tmpfs, capsys, fast_args, data_dir):
    run = small_tmpfs / "run"  # 1 MiB: the log fits, a checkpoint (weights and AdamW moments, ~1.6 MB) does not
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", run, "--max-steps", 4, *fast_args)
    line = one_error(status, err, "No space left on device", str(run / "best.safetensors"))
    assert ".tmp" not in line  # the file the user asked for, not the hidden temporary one
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_mfu_is_measured_against_a_peak_that_load_cannot_lower(tmp_path, capsys, fast_args, data_dir):
    status, _, err = cli(capsys, "train", "--data", data_dir, "--out", tmp_path / "run", "--max-steps", 3,
                         *fast_args)
    assert status == 0 and "MFU against the CPU vector peak" in err
    log = records(tmp_path / "run")
    peak = [r for r in log if "peak_flops" in r]
    assert len(peak) == 1 and peak[0]["peak_source"].startswith("CPU vector peak")
    assert all(0 < r["mfu"] < 1 for r in log if "mfu" in r)


@pytest.mark.parametrize(("prompt", "named"), [("x " * 200, "the model's context is 32"), ("", "the prompt is empty")])
def test_a_prompt_the_model_cannot_take(trained_run, capsys, prompt, named):
    status, out, err = cli(capsys, "generate", "-c", trained_run, "-p", prompt)
    one_error(status, err, named)
    assert out == ""


# ---------------------------------------------------------------------- it learns


def test_training_loss_falls_below_the_unigram_entropy(tmp_path, data_dir, train_config):
    """A few hundred steps of the tiny preset already use context: they beat the best context-free model."""
    tokens = TokenShards(data_dir, "train")[:].astype(np.int64)
    p = np.bincount(tokens) / tokens.size
    unigram_entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # nats per token
    assert 4 < unigram_entropy < math.log(512)

    model_fields, config = train_config(tmp_path / "run", "batch_size=4", "lr=3e-3", "eval_interval=400",
                                       "checkpoint_interval=400", max_steps=400)
    pretraining(model_fields, config, stream=io.StringIO()).fit()
    log = records(tmp_path / "run")
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 400
    assert np.mean(losses[:10]) > unigram_entropy  # it starts near log(vocab), above the unigram entropy
    assert np.mean(losses[-20:]) < unigram_entropy
    val = [r["val_loss"] for r in log if "val_loss" in r]
    assert val[-1] < val[0]
