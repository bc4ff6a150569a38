"""Supervised fine-tuning: a base model learns to answer in the chat format, trained on the answers only.

    model, tokenizer = load_model("runs/small")
    trainer = finetuning(model, tokenizer, {"train": convs, "val": held_out}, config, base="runs/small")
    trainer.fit()

The pieces, in order:

1. **Chat tokens.** The six turn markers and the four calculator markers are
   added to the base tokenizer as special tokens after its largest id
   (``format.add_chat_tokens``): no existing id moves, so the base model's knowledge stays where it was. Its
   embedding and output rows grow to fit, the new rows starting as the mean
   of the old ones (``GPT.grow_vocabulary``).
2. **Rendering.** Each conversation becomes ids and a loss mask
   (``format.render_conversation``): only the assistant's tokens and its
   end-of-turn token are trained on (its calculator expressions too, the
   calculator's outputs not). A target whose mask is 0 becomes -100,
   the index the cross-entropy ignores, so the loss is the mean over the
   answers' tokens alone.
3. **Packing.** Conversations are packed whole, in a shuffled order per
   epoch, into rows of ``block_size + 1`` tokens; a row is closed when the next
   conversation does not fit and its rest is padding (``<|endoftext|>`` as
   input, -100 as target). Packing, not one conversation per padded row,
   because the conversations are short (often 20 to 60 tokens) and a padded
   row would be mostly padding: packing trains on several times more answers
   per step. The price: a conversation can attend to the ones before it in its
   row; each starts with ``<|endoftext|>``, the document boundary the base
   model learned to read past. A conversation longer than a row is cut to fit.
4. **The loop** is pretraining's :class:`~tinygrad_llm.train.loop.Trainer`:
   learning-rate schedule, clipping, checkpoints, resume, progress, time
   budget, the loss plot. Validation is the masked loss over the held-out
   conversations.
5. **LoRA** (optional, ``chat.lora``): adapters on the chosen Linear layers;
   the base is frozen and only the adapters are in the optimizer. The
   checkpoints hold the whole model (to resume); at the end the adapters alone
   are also written to ``adapter.safetensors``, and ``merge_lora_checkpoint``
   folds them into a plain checkpoint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import nn
from nn import distributed, optim
from tinygrad_llm.chat import lora as lora_module
from tinygrad_llm.chat.format import TEMPLATE, Message, add_chat_tokens, added_token_ids, render_conversation
from tinygrad_llm.checkpoint import (
    TOKENIZER_FILE,
    Checkpoint,
    CheckpointError,
    load_model,
    read_info,
    resolve_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from tinygrad_llm.model import GPT, ConfigError, GPTConfig
from tinygrad_llm.train.config import TrainConfig
from tinygrad_llm.train.loop import Setup, Trainer
from tokenizer import Tokenizer
from util.files import file_sha256

__all__ = ["LoRASettings", "ConversationBatches", "render_all", "masked_loss", "finetuning", "ADAPTER_FILE",
           "build_model", "train_token_rows", "adapter_info", "load_merged", "merge_lora_checkpoint",
           "lora_model_loader", "held_out_scores"]

IGNORE = -100
ADAPTER_FILE = "adapter.safetensors"


@dataclass(frozen=True)
class LoRASettings:
    """``--lora-rank``, ``--lora-alpha`` and ``--lora-targets``."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = field(default_factory=lambda: tuple(lora_module.DEFAULT_TARGETS))


Rendered = tuple[np.ndarray, np.ndarray]
"""One conversation's ids and loss mask (1 = trained on), int64 arrays of one length."""


def render_all(tokenizer: Tokenizer, conversations: Sequence[Sequence[Message]], length: int) -> list[Rendered]:
    """Render every conversation, cut to ``length`` tokens; those left with no answer token are dropped."""
    rendered = []
    for conversation in conversations:
        ids, mask = render_conversation(tokenizer, conversation, max_tokens=length)
        if sum(mask[1:]):  # a target exists only from the second position on
            rendered.append((np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int64)))
    return rendered


def pack_rows(items: Sequence[Rendered], order: Sequence[int], start: int, rows: int, width: int,
              pad_id: int, wrap: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """``rows`` rows of ``width`` tokens filled with whole conversations ``items[order[start]]``, ... in turn.

    Returns inputs (rows, width - 1), targets (rows, width - 1) with -100 where
    nothing is trained, and the position in ``order`` after the last one used.
    With ``wrap`` the batch that reaches the end of ``order`` is topped up from
    its start (the caller then begins a new epoch); without it the remaining
    rows stay padding.
    """
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    position = start
    for row in range(rows):
        filled = 0
        while wrap or position < len(order):
            item_ids, item_mask = items[order[position % len(order)]]
            n = min(len(item_ids), width)
            if filled and filled + n > width:
                break
            ids[row, filled:filled + n], mask[row, filled:filled + n] = item_ids[:n], item_mask[:n]
            filled += n
            position += 1
            if filled >= width:
                break
    targets = np.where(mask[:, 1:] == 1, ids[:, 1:], IGNORE)
    return ids[:, :-1], targets, position


class ConversationBatches:
    """Training batches of packed conversations, reshuffled every epoch; resumable (``state_dict``)."""

    def __init__(self, items: Sequence[Rendered], batch_size: int, block_size: int, pad_id: int, seed: int) -> None:
        if not items:
            raise ValueError("no training conversation has an answer within the context")
        self.items, self.batch_size, self.pad_id, self.seed = items, batch_size, pad_id, seed
        self.width = block_size + 1  # a row's inputs and targets are its first and last block_size tokens
        self.epoch, self.position = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        x, y, position = pack_rows(self.items, self._order, self.position, self.batch_size, self.width, self.pad_id)
        if position >= len(self._order):  # the epoch ended inside this batch; the next one starts afresh
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._shuffle(self.epoch)
        else:
            self.position = position
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "conversations": len(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("conversations") != len(self.items):
            raise CheckpointError(f"the checkpoint was trained on {state.get('conversations')} conversations, "
                                  f"this data has {len(self.items)}: resume with the same --data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffle(self.epoch)


def masked_loss(model: GPT, items: Sequence[Rendered], batch_size: int, pad_id: int) -> dict[str, float]:
    """The mean loss over every answer token of ``items`` (packed in order, each once), in eval mode."""
    width = model.config.block_size + 1
    order = np.arange(len(items))
    total, count, position = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with nn.no_grad():
            while position < len(order):
                x, y, position = pack_rows(items, order, position, batch_size, width, pad_id, wrap=False)
                n = int((y != IGNORE).sum())
                if n:
                    _, loss = model(x, y)
                    total += float(loss.item()) * n
                    count += n
    finally:
        model.train(was_training)
    loss = total / count if count else math.nan
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_answer_tokens": count}


def build_model(model: GPT, tokenizer: Tokenizer, dtype: str, lora: LoRASettings | None,
                seed: int) -> tuple[GPT, Tokenizer, list[tuple[str, Any]]]:
    """The base model grown to the chat tokenizer, with LoRA adapters when asked; and what to train."""
    chat_tokenizer = add_chat_tokens(tokenizer)
    if chat_tokenizer.vocab_size > model.config.vocab_size:
        model = model.grow_vocabulary(chat_tokenizer.vocab_size)
    model = model.to(dtype)
    nn.manual_seed(seed)
    if lora is None:
        return model, chat_tokenizer, list(model.named_parameters())
    adapters = lora_module.apply_lora(model, lora.rank, lora.alpha, lora.targets)
    return model, chat_tokenizer, adapters + train_token_rows(model, chat_tokenizer)


def train_token_rows(model: GPT, tokenizer: Tokenizer) -> list[tuple[str, Any]]:
    """Let the chat tokens' rows of the (otherwise frozen) embedding and output layer learn, under LoRA.

    The rows start as the mean of the old ones, and frozen there they would
    break the chat: every chat token would look the same to the model, and the
    logit of ``<|assistant_end|>``, the mean of all logits, could never be the
    largest, so a greedy reply would never end. So the embedding (and the
    output layer, when it is not tied to it) stays trainable, and a gradient
    hook zeroes its gradient on every other row: with a zero gradient, AdamW's
    moments stay zero and those rows do not move by a bit (weight decay is 0).
    Returns the tensors to add to the optimizer.
    """
    rows = np.array(added_token_ids(tokenizer))

    def only_chat_rows(grad: nn.Tensor) -> nn.Tensor:
        kept = np.zeros_like(grad.data)
        kept[rows] = grad.data[rows]
        return nn.Tensor(kept)

    trained: list[tuple[str, Any]] = []
    for name, weight in (("wte.weight", model.wte.weight), ("lm_head.weight", model.lm_head.weight)):
        if any(weight is p for _, p in trained):  # tied: one tensor, one hook
            continue
        weight.requires_grad_(True)
        weight.register_hook(only_chat_rows)
        trained.append((name, weight))
    return trained


def finetuning(model: GPT, tokenizer: Tokenizer, conversations: Mapping[str, Sequence[Sequence[Message]]],
               config: TrainConfig, lora: LoRASettings | None = None, base: str = "", data: str = "",
               resume: bool = False, replan: bool = False, stream: TextIO | None = None,
               started: float | None = None) -> Trainer:
    """A :class:`Trainer` that fine-tunes ``model`` on ``conversations["train"]``, validating on ``["val"]``.

    ``base`` and ``data`` are recorded in every checkpoint, with the chat
    template and the LoRA settings.
    """
    parallel = distributed.init(1)
    if parallel.world_size > 1:
        raise ConfigError("finetune runs in one process (it is minutes of work); launch it without mpiexec")
    model, chat_tokenizer, trained = build_model(model, tokenizer, config.dtype, lora, config.seed)
    block = model.config.block_size
    train = render_all(chat_tokenizer, conversations["train"], block + 1)
    val = render_all(chat_tokenizer, conversations["val"], block + 1)
    if not val:
        raise ValueError("no validation conversation has an answer within the context")
    pad = chat_tokenizer.eot_token
    batches = ConversationBatches(train, config.batch_size, block, pad, config.seed)

    out = Path(config.out_dir)
    if not resume and step_checkpoints(out):  # before anything is written there: it may be the base run itself
        raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue that run or choose another "
                          "--out")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / TOKENIZER_FILE
    if not tokenizer_path.exists() or Tokenizer.load(tokenizer_path).special_tokens != chat_tokenizer.special_tokens:
        chat_tokenizer.save(tokenizer_path)

    if lora is None:
        groups = optim.param_groups_for_weight_decay(trained, config.weight_decay)
    else:
        groups = [{"params": [p for _, p in trained], "weight_decay": 0.0}]  # adapters: no decay, as in the paper
    optimizer = optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    # A fixed sample of the held-out conversations, drawn across all sources (they come grouped by source).
    sample = np.random.default_rng(config.seed).permutation(len(val))[:config.eval_batches * config.batch_size * 4]
    validate = functools.partial(masked_loss, model, [val[i] for i in sorted(sample)], config.batch_size, pad)
    info = {"chat_template": TEMPLATE, "base": base, "finetune_data": data,
            "lora": None if lora is None else lora_module.lora_config(model),
            "conversations": {"train": len(train), "val": len(val)}}
    setup = Setup(model=model, optimizer=optimizer, batches=batches, validate=validate, parallel=parallel, accum=1,
                  tokens_per_step=config.batch_size * block, tokenizer_path=tokenizer_path,
                  tokenizer_sha256=file_sha256(tokenizer_path), title=f"fine-tuning {Path(base).name or 'GPT'}",
                  info=info)
    return Trainer(setup, config, resume=resume, replan=replan, stream=stream, started=started)


def lora_model_loader(info: dict[str, Any]):
    """For ``checkpoint.load_model``: a GPT with the checkpoint's LoRA adapters in place, to load its tensors into."""
    def build(config: GPTConfig) -> GPT:
        model = GPT(config)
        lora_module.apply_lora(model, info["lora"]["rank"], info["lora"]["alpha"], tuple(info["lora"]["targets"]))
        return model
    return build


def load_merged(path: str | Path, info: dict[str, Any] | None = None) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model, tokenizer and info of one of our checkpoints (a file or a run directory); a LoRA run's
    adapters are loaded with it and folded into the weights, so the model is a plain GPT either way.

    ``info``: the checkpoint's info when the caller has already read it.
    """
    path = resolve_checkpoint(path)
    info = read_info(path) if info is None else info
    if not info.get("lora"):
        return (*load_model(path), info)
    model, tokenizer = load_model(path, build=lora_model_loader(info))
    return lora_module.merge_lora(model), tokenizer, info


def merge_lora_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Fold a LoRA run's adapters into its weights: a plain run directory that every command reads.

    Writes ``destination/best.safetensors`` (the merged model, no optimizer
    state, the info without ``lora``) and the tokenizer beside it.
    """
    path = resolve_checkpoint(source)
    settings = read_info(path).get("lora")
    if not settings:
        raise CheckpointError(f"{path}: not a LoRA checkpoint (nothing to merge)")
    destination = Path(destination)
    if step_checkpoints(destination) or (destination / "best.safetensors").exists():
        raise CheckpointError(f"{destination} already holds a run; merge into a new directory")
    model, tokenizer, info = load_merged(path)
    destination.mkdir(parents=True, exist_ok=True)
    info = {**info, "lora": None, "merged_from": str(path), "lora_merged": settings}
    target = destination / "best.safetensors"
    save_checkpoint(target, Checkpoint(model={k: v.numpy() for k, v in model.state_dict().items()}, info=info))
    tokenizer.save(destination / TOKENIZER_FILE)
    return target


def held_out_scores(model: GPT, tokenizer: Tokenizer, instructions: int = 200, seed: int = 0,
                    batch_size: int = 16) -> dict[str, Any]:
    """A chat model's numbers on data it never trained on (the test splits of the built-in mix).

    - ``instructions_exact_match``: greedy answers to ``instructions`` held-out
      generated instructions, exact match (``data.exact_match``), with the
      accuracy per task family;
    - ``instructions_exact_match_in_chat``: the same questions asked five at a
      time in one chat (``repl.ChatSession``, greedy), each answered with the
      earlier ones and the model's own replies in its history, as a user of
      ``tinygrad-llm chat`` asks them;
    - ``chatterbot_val_loss`` and ``docstrings_val_loss``: the mean loss over the
      answer tokens of the held-out chatterbot conversations and
      docstring-to-function pairs (``masked_loss``).

    A base model is scored after ``build_model`` has given it the chat tokens
    (new rows at the mean embedding): that is where fine-tuning starts.
    """
    from tinygrad_llm.chat import data
    from tinygrad_llm.chat.assistant import exact_match_accuracy
    from tinygrad_llm.chat.repl import ChatSession

    items = data.generated_items("test", instructions, seed)
    accuracy, records = exact_match_accuracy(model, tokenizer, [item.messages() for item in items])
    in_chat = []
    for start in range(0, len(items), 5):
        session = ChatSession(model, tokenizer)
        for item in items[start:start + 5]:
            in_chat.append(data.exact_match("".join(session.ask(item.question)), item.answer))
    families: dict[str, list[int]] = {}
    for item, record in zip(items, records, strict=True):
        tally = families.setdefault(item.family, [0, 0])
        tally[0] += data.exact_match(record["answer"], record["expected"])
        tally[1] += 1
    block, pad = model.config.block_size, tokenizer.eot_token
    losses = {name: masked_loss(model, render_all(tokenizer, source("test"), block + 1), batch_size, pad)["val_loss"]
              for name, source in (("chatterbot", data.chatterbot_conversations), ("docstrings", data.docstring_pairs))}
    return {"instructions": len(items), "instructions_exact_match": accuracy,
            "instructions_exact_match_in_chat": sum(in_chat) / len(in_chat),
            "instructions_by_family": {k: v[0] / v[1] for k, v in sorted(families.items())},
            "chatterbot_val_loss": losses["chatterbot"], "docstrings_val_loss": losses["docstrings"],
            "examples": records[:5]}


def adapter_info(model: GPT, tokenizer: Tokenizer, **facts: Any) -> dict[str, Any]:
    """What ``adapter.safetensors`` records beside the adapters: ``facts`` and the chat tokens' trained rows.

    The rows (a few, of ``n_embd`` numbers each) go into the JSON metadata, so
    that the adapter file alone, with the base run, rebuilds the model.
    """
    ids = added_token_ids(tokenizer)
    rows = {name: weight.numpy()[ids].astype(float).tolist()
            for name, weight in (("wte.weight", model.wte.weight), ("lm_head.weight", model.lm_head.weight))
            if name == "wte.weight" or weight is not model.wte.weight}
    return {**facts, "chat_template": TEMPLATE, "token_rows": {"ids": ids, **rows}}

