"""Training: the configuration, the loop, what a checkpoint saves, and pretraining's data and model.

    config.py       TrainConfig; presets < TOML < --set, checked field by field
    hardware.py     BLAS threads that follow the machine's load; the peak FLOP/s for MFU
    run_state.py    the plan (steps or time budget), what a checkpoint saves and restores; the run directory
    loop.py         Trainer: the loop over any source of batches
    validate.py     validation loss, perplexity, bits per byte
    plot.py         the loss plot
    pretraining.py  token shards + a fresh GPT + AdamW -> a Trainer
"""

from tinygrad_llm.train.config import TrainConfig, parse_duration, resolve_config
from tinygrad_llm.train.loop import Setup, Trainer, TrainingError
from tinygrad_llm.train.pretraining import pretraining

__all__ = ["TrainConfig", "Trainer", "Setup", "TrainingError", "pretraining", "resolve_config", "parse_duration"]
