"""Fine-tuning: packed batches train on the answers alone (checked against PyTorch), the finetune, merge and chat
commands end to end on a tiny base run, LoRA runs, resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli, one_error
from torch_gpt import TorchGPT, copy_weights

import nn
from tinygrad_llm.chat.finetune import IGNORE, ConversationBatches, masked_loss, pack_rows, render_all
from tinygrad_llm.chat.format import add_chat_tokens, message_text, render_conversation
from tinygrad_llm.checkpoint import latest_checkpoint, load_checkpoint, read_info
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer

QA = [("What is 2 + 3?", "5"), ("Reverse the word 'cat'.", "tac"), ("What is 7 * 6?", "42"),
      ("Upper-case 'abc'.", "ABC"), ("What is 10 - 4?", "6"), ("Sort [3, 1, 2].", "[1, 2, 3]")]


def conversation(question: str, answer: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def chat_tokenizer() -> Tokenizer:
    text = " ".join(q + " " + a for q, a in QA) * 5
    return add_chat_tokens(Tokenizer.train(text, vocab_size=300))


# ---------------------------------------------------------------------- packing and the masked loss


def test_packed_rows_keep_whole_conversations_and_train_only_answers(chat_tokenizer):
    items = render_all(chat_tokenizer, [conversation(q, a) for q, a in QA * 2], 64)
    x, y, used = pack_rows(items, list(range(len(items))), 0, rows=2, width=65, pad_id=chat_tokenizer.eot_token,
                           wrap=False)
    assert 3 <= used < len(items)  # several conversations per row, and not all of them fit
    # Every answer token of the conversations used is a target, in order, and nothing else is.
    answers = np.concatenate([ids[1:][mask[1:] == 1] for ids, mask in items[:used]])
    assert y[y != IGNORE].tolist() == answers.tolist()
    # The inputs are those conversations back to back (each starts with <|endoftext|>), then padding.
    inputs = np.concatenate([ids for ids, _ in items[:used]])
    rows = [x[r][: np.flatnonzero(y[r] != IGNORE).max() + 1] for r in range(2)]
    joined = np.concatenate([np.concatenate([row, [y[r][len(row) - 1]]]) for r, row in enumerate(rows)])
    assert joined.tolist() == inputs.tolist()
    assert (x[:, 0] == chat_tokenizer.eot_token).all()


def long_conversations(tokenizer: Tokenizer, width: int) -> list[list[dict]]:
    """Conversations longer than half a row, so that packing puts exactly one in each row."""
    out = []
    for q, a in QA[:4]:
        convo = conversation((q + " ") * 3, (a + " ") * 3, system="Answer briefly.")
        assert width // 2 < len(render_conversation(tokenizer, convo)[0]) <= width
        out.append(convo)
    return out


def test_a_step_gradient_equals_pytorchs_loss_on_the_answer_tokens_alone(chat_tokenizer):
    nn.manual_seed(0)
    config = GPTConfig.preset("tiny", vocab_size=chat_tokenizer.vocab_size, block_size=64)
    model = GPT(config).to("float64")
    conversations = long_conversations(chat_tokenizer, 65)
    batches = ConversationBatches(render_all(chat_tokenizer, conversations, 65), 4, 64, chat_tokenizer.eot_token, 0)
    x, y = batches.next_batch()
    _, loss = model(x, y)
    loss.backward()

    reference = copy_weights(model, TorchGPT(config))
    logits, _ = reference(torch.tensor(x))
    logp = torch.log_softmax(logits, dim=-1)
    terms = []
    for row in range(4):  # one conversation per row, at offset 0: which one is read from the row itself
        first = [i for i, c in enumerate(conversations)
                 if list(x[row][:len(render_conversation(chat_tokenizer, c)[0])]) ==
                 render_conversation(chat_tokenizer, c)[0]]
        ids, mask = render_conversation(chat_tokenizer, conversations[first[0]])
        terms += [logp[row, t - 1, ids[t]] for t in range(1, len(ids)) if mask[t]]
    torch_loss = -torch.stack(terms).mean()
    torch_loss.backward()
    np.testing.assert_allclose(loss.item(), torch_loss.item(), rtol=1e-12)
    for name, p in model.named_parameters():
        theirs = dict(reference.named_parameters())[name].grad.numpy()
        np.testing.assert_allclose(p.grad.numpy(), theirs, rtol=1e-9, atol=1e-12, err_msg=name)
    assert len(terms) < (y.size // 2)  # most positions carry no loss: the mask matters


def test_validation_loss_is_the_mean_over_every_answer_token_once(chat_tokenizer):
    nn.manual_seed(1)
    model = GPT(GPTConfig.preset("tiny", vocab_size=chat_tokenizer.vocab_size, block_size=64)).to("float64")
    conversations = long_conversations(chat_tokenizer, 65)
    items = render_all(chat_tokenizer, conversations, 65)
    result = masked_loss(model, items, batch_size=3, pad_id=chat_tokenizer.eot_token)
    total, count = 0.0, 0
    for ids, mask in items:  # each conversation alone
        logits, _ = model(np.array([ids[:-1]]))
        logp = torch.log_softmax(torch.from_numpy(logits.numpy()[0]), dim=-1)
        picked = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if mask[t]]
        total -= sum(picked)
        count += len(picked)
    assert result["val_answer_tokens"] == count
    assert result["val_loss"] == pytest.approx(total / count, rel=1e-10)


def test_batches_resume_where_they_stopped(chat_tokenizer):
    items = render_all(chat_tokenizer, [conversation(q, a) for q, a in QA * 3], 32)
    first = ConversationBatches(items, 2, 31, chat_tokenizer.eot_token, seed=3)
    for _ in range(5):
        first.next_batch()
    second = ConversationBatches(items, 2, 31, chat_tokenizer.eot_token, seed=3)
    second.load_state_dict(first.state_dict())
    for _ in range(6):  # across an epoch boundary too
        a, b = first.next_batch(), second.next_batch()
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert first.epoch >= 1


# ---------------------------------------------------------------------- the commands


def write_data(path: Path) -> Path:
    """Messages and Alpaca records mixed, as a user's file may hold them."""
    lines = []
    for i, (q, a) in enumerate(QA * 4):
        if i % 2:
            lines.append({"instruction": q, "input": "", "output": a})
        else:
            lines.append({"messages": conversation(q, a)})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


FAST = ["--set", "batch_size=2", "--set", "eval_interval=2", "--set", "checkpoint_interval=2",
        "--set", "eval_batches=1", "--set", "log_interval=1"]


def chat_lines(capsys, monkeypatch, run: Path, *lines: str) -> list[str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    status, out, err = cli(capsys, "chat", "-c", run, "--max-new-tokens", "8")
    assert status == 0, err
    return out.splitlines()


def test_finetune_then_chat_from_a_script(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "chat"
    status, _, err = cli(capsys, "finetune", "--base", trained_run, "--data", write_data(tmp_path / "d.jsonl"),
                         "--out", out, "--max-steps", "4", *FAST)
    assert status == 0, err
    info = read_info(latest_checkpoint(out))
    assert info["chat_template"]["name"] == "tinygrad-llm-chat/2" and info["lora"] is None
    assert info["conversations"] == {"train": 22, "val": 2}  # every 20th held out
    base_vocab = Tokenizer.load(trained_run / "tokenizer.txt").vocab_size
    assert info["model_config"]["vocab_size"] == base_vocab + 10  # six turn markers, four calculator markers
    tokenizer = Tokenizer.load(out / "tokenizer.txt")
    assert tokenizer.special_tokens["<|assistant_end|>"] == base_vocab + 5
    assert tokenizer.special_tokens["<|output_end|>"] == base_vocab + 9

    replies = chat_lines(capsys, monkeypatch, out, "What is 2 + 3?", "/save " + str(tmp_path / "c.jsonl"),
                         "/reset", "Sort [3, 1, 2].")
    assert len(replies) == 4 and replies[1].startswith("(saved") and replies[2] == "(conversation cleared)"
    saved = json.loads((tmp_path / "c.jsonl").read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant"] and message_text(saved[1]) == replies[0]


def test_chat_refuses_a_base_model(trained_run, capsys):
    one_error(*cli(capsys, "chat", "-c", trained_run)[::2], "without the chat tokens", "finetune")


def test_lora_run_trains_only_adapters_and_merges_to_the_same_replies(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "lora"
    status, _, err = cli(capsys, "finetune", "--base", trained_run, "--data", write_data(tmp_path / "d.jsonl"),
                         "--out", out, "--max-steps", "4", "--lora-rank", "2", "--set", "lr=5e-2", *FAST)
    assert status == 0, err
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert ckpt.info["lora"]["rank"] == 2 and (out / "adapter.safetensors").exists()
    base = load_checkpoint(trained_run / "ckpt_0000004.safetensors").model
    frozen = [k for k in base if k not in ("wte.weight", "lm_head.weight")]
    assert all(np.array_equal(ckpt.model[k], base[k]) for k in frozen)  # the base stayed as it was
    old = Tokenizer.load(trained_run / "tokenizer.txt").vocab_size
    wte = ckpt.model["wte.weight"]
    assert np.array_equal(wte[:old], base["wte.weight"][:old])  # old token rows: not a bit moved
    start = base["wte.weight"][:old].astype(np.float64).mean(axis=0).astype(np.float32)
    used = [Tokenizer.load(out / "tokenizer.txt").special_tokens[f"<|{role}_{end}|>"]
            for role in ("user", "assistant") for end in ("start", "end")]  # no system message in the data
    assert all(not np.allclose(wte[i], start) for i in used)  # the chat tokens' rows learned: frozen at the
    assert len({wte[i].tobytes() for i in used}) == 4          # mean, they would all look alike to the model
    adapters = [k for k in ckpt.model if "lora_" in k]
    assert adapters and any(np.abs(ckpt.model[k]).max() > 0 for k in adapters if k.endswith("lora_B"))

    status, _, err = cli(capsys, "merge", "-c", out, "--out", tmp_path / "merged")
    assert status == 0, err
    one_error(*cli(capsys, "merge", "-c", out, "--out", out)[::2], "already holds a run")  # never over a run
    merged = load_checkpoint(tmp_path / "merged" / "best.safetensors")
    assert not any("lora_" in k for k in merged.model)
    questions = ["What is 2 + 3?", "Upper-case 'abc'."]
    assert chat_lines(capsys, monkeypatch, out, *questions) == chat_lines(capsys, monkeypatch, tmp_path / "merged",
                                                                          *questions)


def test_finetune_resumes(trained_run, tmp_path, capsys):
    out = tmp_path / "chat"
    data = write_data(tmp_path / "d.jsonl")
    assert cli(capsys, "finetune", "--base", trained_run, "--data", data, "--out", out, "--max-steps", "2",
               *FAST)[0] == 0
    status, _, err = cli(capsys, "finetune", "--out", out, "--resume", "--max-steps", "4")
    assert status == 0, err
    assert read_info(latest_checkpoint(out))["step"] == 4


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.jsonl"], "missing.jsonl"),
    (["--lora-alpha", "4"], "need --lora-rank"),
    (["--set", "nonsense=1"], "--set needs KEY=VALUE"),
])
def test_finetune_mistakes_are_one_line(trained_run, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "d.jsonl")
    one_error(*cli(capsys, "finetune", "--base", trained_run, "--out", tmp_path / "o", "--max-steps", "1",
                   *(args if "--data" in args else ["--data", "d.jsonl", *args]))[::2], message)


def test_finetune_into_the_base_run_is_refused_before_anything_is_written(run_copy, capsys):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    one_error(*cli(capsys, "finetune", "--base", run_copy, "--out", run_copy, "--max-steps", "1")[::2],
              "already holds checkpoints")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
