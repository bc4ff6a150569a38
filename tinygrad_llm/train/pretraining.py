"""Pretraining's pieces for the loop: token shards from ``prepare``, a fresh GPT, AdamW.

    trainer = pretraining(*resolve_config("small", data="data/stdlib", max_steps=500))
    trainer.fit()

The vocabulary always comes from the data's tokenizer. One optimizer step is
``total_batch_tokens`` tokens: ``accum`` micro-batches of ``batch_size`` windows
of ``block_size`` tokens on each data-parallel process.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import nn
from nn import distributed, optim
from tinygrad_llm.data.loader import BatchLoader, TokenShards, eval_windows, read_meta
from tinygrad_llm.model import GPT, ConfigError, GPTConfig
from tinygrad_llm.train.config import TrainConfig
from tinygrad_llm.train.loop import Setup, Trainer, replica_seed
from tinygrad_llm.train.validate import validation_metrics
from tokenizer import Tokenizer
from util.files import file_sha256

__all__ = ["pretraining"]


def pretraining(model_fields: dict[str, Any], config: TrainConfig, resume: bool = False, replan: bool = False,
                stream: TextIO | None = None, started: float | None = None) -> Trainer:
    """A :class:`Trainer` for a GPT of ``model_fields`` on the token shards in ``config.data``.

    ``resume``, ``replan``, ``stream`` and ``started`` are :class:`Trainer`'s.
    """
    meta = read_meta(config.data)
    tokenizer_path = Path(config.data) / meta["tokenizer"]["file"]
    tokenizer = Tokenizer.load(tokenizer_path)
    vocab = tokenizer.vocab_size
    model_config = GPTConfig.from_dict({**model_fields, "vocab_size": vocab})
    try:
        parallel = distributed.init(model_config.tensor_parallel)
    except ValueError as exc:
        raise ConfigError(f"{exc}; launch with mpiexec -n <a multiple of it>") from None
    data = parallel.data  # the processes that share the batch (tensor-parallel peers share data)

    block = model_config.block_size
    tokens_per_micro = config.batch_size * block * data.size
    if config.total_batch_tokens is None:  # fixed now, so a resume on other processes keeps the batch
        config = dataclasses.replace(config, total_batch_tokens=tokens_per_micro)
    total = config.total_batch_tokens
    if total % tokens_per_micro:
        fits = [b for b in range(config.batch_size, 0, -1) if total % (b * block * data.size) == 0]
        hint = f"; try --set batch_size={fits[0]}" if fits else ""
        raise ConfigError(f"total_batch_tokens ({total}) must be a multiple of batch_size x block_size x "
                          f"data-parallel processes ({config.batch_size} x {block} x {data.size} = "
                          f"{tokens_per_micro}){hint}")

    train_shards, val_shards = TokenShards(config.data, "train"), TokenShards(config.data, "val")
    loader = BatchLoader(train_shards, config.batch_size, block, seed=config.seed, rank=data.rank,
                         world_size=data.size)
    eval_windows(val_shards, block, 1)  # a validation split shorter than one window fails now
    token_bytes = np.array([len(tokenizer.token_bytes(i)) for i in range(vocab)], dtype=np.int64)
    token_bytes[list(tokenizer.special_tokens.values())] = 0  # a document boundary is not text

    nn.manual_seed(config.seed)  # the same on every process: a split model is the dense one, cut
    model = GPT(model_config).to(config.dtype)
    ddp = distributed.DistributedDataParallel(model, comm=data) if data.size > 1 else None
    if data.rank > 0:  # dropout: each replica its own stream; replica 0 keeps the single-process one
        nn.manual_seed(replica_seed(config.seed, data.rank))
    optimizer = optim.AdamW(optim.param_groups_for_weight_decay(model.named_parameters(), config.weight_decay),
                            lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    validate = functools.partial(validation_metrics, model, val_shards, token_bytes, config.batch_size,
                                 config.eval_batches, data)
    setup = Setup(model=model, optimizer=optimizer, batches=loader, validate=validate, parallel=parallel,
                  accum=total // tokens_per_micro, tokens_per_step=total, tokenizer_path=tokenizer_path,
                  tokenizer_sha256=file_sha256(tokenizer_path), ddp=ddp, title=f"GPT on {Path(config.data).name}")
    return Trainer(setup, config, resume=resume, replan=replan, stream=stream, started=started)
