"""Validation during training: loss, perplexity and bits per byte on held-out token windows."""

from __future__ import annotations

import math

import numpy as np

import nn
from nn import distributed
from nn import functional as F
from tinygrad_llm.data.loader import TokenShards, eval_windows
from tinygrad_llm.model import GPT

__all__ = ["validation_metrics"]


def validation_metrics(model: GPT, shards: TokenShards, token_bytes: np.ndarray, batch_size: int,
                       max_batches: int | None, comm: distributed.Communicator | None = None) -> dict[str, float]:
    """Validation loss (nats per token), perplexity and bits per byte over the first ``max_batches`` batches.

    Bits per byte divides the total loss in bits by the UTF-8 bytes of the
    predicted tokens (``token_bytes[id]``), which makes models with different
    tokenizers comparable. With ``comm`` (the data-parallel group) each process
    scores every N-th batch and the sums are added up, so all get the numbers
    of the whole set.
    """
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    was_training = model.training
    model.eval()
    totals = np.zeros(3)  # nats, tokens, bytes
    with nn.no_grad():
        for i, (x, y) in enumerate(eval_windows(shards, model.config.block_size, batch_size, max_batches)):
            if i % size != rank:
                continue
            logits, _ = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            totals += (float(loss.item()), y.size, int(token_bytes[y].sum()))
    model.train(was_training)
    if comm is not None:
        comm.all_reduce(totals, op="sum")
    nats, tokens, text_bytes = float(totals[0]), int(totals[1]), int(totals[2])
    loss = nats / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700)),
            "val_bpb": nats / math.log(2) / max(text_bytes, 1)}
