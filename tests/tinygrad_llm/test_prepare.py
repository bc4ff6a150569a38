"""``prepare``: sources, cleaning, tokenizer, shards, meta.json, reuse, atomicity, progress lines
and user errors.

Kept fast: a 30-document slice of the stdlib corpus or a few small files, vocabularies
of 300 tokens, one process except where the number of processes is what is tested.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re

import numpy as np
import pytest

import tinygrad_llm.data.prepare as prepare_module
from tinygrad_llm.cli import main
from tinygrad_llm.data import DataError
from tinygrad_llm.data.clean import clean_and_dedup
from tinygrad_llm.data.loader import TokenShards
from tinygrad_llm.data.prepare import PrepareConfig, prepare, split_documents, tokenizer_sample
from tinygrad_llm.data.shards import token_dtype
from tinygrad_llm.data.sources import Document, JsonLines, StdlibCorpus, TextFiles, is_validation, open_source
from tokenizer import ENDOFTEXT, Tokenizer

SLICE = 30
VOCAB = 300
PROSE = ("The quick brown fox jumps over the lazy dog near the river bank. " * 3).strip()


def joined(documents):
    """What a split's shards must decode to: every document preceded by the end-of-text token."""
    return "".join(ENDOFTEXT + doc.text for doc in documents)


def decoded(directory, split):
    tok = Tokenizer.load(directory / "tokenizer.txt")
    return tok.decode(TokenShards(directory, split)[:].tolist(), errors="strict")


def write_files(root, files):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def run_cli(capsys, *args):
    status = main(["prepare", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def stdlib_slice(tmp_path_factory):
    out = tmp_path_factory.mktemp("stdlib") / "data"
    return prepare(PrepareConfig(out=out, max_documents=SLICE, vocab_size=VOCAB, workers=1))


@pytest.fixture()
def text_dir(tmp_path):
    return write_files(tmp_path / "texts", {
        "a.txt": "alpha document\r\nwith windows newlines\n", "sub/b.txt": "beta document\n",
        "c.md": "gamma: caf\u00e9 and emoji \U0001f600\n", "bad.bin": b"\xff\xfe not utf-8",
        ".hidden.txt": "never read", ".git/config": "never read"})


# ---------------------------------------------------------------------- the stdlib slice


def test_stdlib_shards_decode_to_the_cleaned_documents(stdlib_slice):
    documents = list(itertools.islice(StdlibCorpus(), SLICE))
    kept, report = clean_and_dedup(documents)
    train, val = split_documents(list(kept))
    out = stdlib_slice.directory
    assert decoded(out, "train") == joined(train)
    assert decoded(out, "val") == joined(val)
    splits = stdlib_slice.meta["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (len(train), len(val))
    assert splits["train"]["bytes"] == len(joined(train).encode()) - len(train) * len(ENDOFTEXT)
    assert stdlib_slice.meta["cleaning"]["dropped"] == report.to_dict()["dropped"]


def test_meta_json_describes_the_output(stdlib_slice):
    out = stdlib_slice.directory
    meta = json.loads((out / "meta.json").read_text())
    assert meta == stdlib_slice.meta and not stdlib_slice.reused
    assert meta["format"] == "tinygrad-llm-shards" and meta["tool_version"] == "0.1.0"
    assert len(meta["fingerprint"]) == 64
    assert meta["source"]["spec"] == "stdlib" and meta["source"]["kind"] == "code"
    assert meta["source"]["documents"] == SLICE and meta["source"]["max_documents"] == SLICE
    cleaning = meta["cleaning"]
    assert cleaning["filters"] == "code" and cleaning["dedup"] is True
    assert cleaning["kept_documents"] == meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"]
    assert cleaning["kept_documents"] + sum(d["documents"] for d in cleaning["dropped"].values()) == SLICE
    assert (meta["vocab_size"], meta["eot_token"], meta["dtype"]) == (VOCAB, VOCAB - 1, "uint16")
    tok = meta["tokenizer"]
    assert tok["file"] == "tokenizer.txt" and tok["trained"] and tok["requested_vocab_size"] == VOCAB
    assert tok["sha256"] == hashlib.sha256((out / "tokenizer.txt").read_bytes()).hexdigest()
    for split in ("train", "val"):
        entry = meta["splits"][split]
        assert [s["file"] for s in entry["shards"]] == [f"{split}_000.bin"]
        assert (out / f"{split}_000.bin").stat().st_size == 2 * entry["tokens"]
        tokens = np.fromfile(out / f"{split}_000.bin", dtype="<u2")
        assert tokens[0] == VOCAB - 1 and (tokens == VOCAB - 1).sum() == entry["documents"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.txt", "train_000.bin", "val_000.bin"]


def test_more_processes_and_smaller_shards_give_the_same_tokens(stdlib_slice, tmp_path):
    result = prepare(PrepareConfig(out=tmp_path, max_documents=SLICE, vocab_size=VOCAB, workers=2,
                                   shard_tokens=40_000))
    first = stdlib_slice.directory
    assert (tmp_path / "tokenizer.txt").read_bytes() == (first / "tokenizer.txt").read_bytes()
    train = result.meta["splits"]["train"]
    assert len(train["shards"]) == -(-train["tokens"] // 40_000) > 1
    assert all(s["tokens"] == 40_000 for s in train["shards"][:-1])
    assert np.array_equal(TokenShards(tmp_path, "train")[:], TokenShards(first, "train")[:])


def test_reused_tokenizer_is_copied_and_hashed(stdlib_slice, text_dir, tmp_path):
    tokenizer = stdlib_slice.directory / "tokenizer.txt"
    result = prepare(PrepareConfig(source=str(text_dir), out=tmp_path, tokenizer=tokenizer, filters="none",
                                   workers=1))
    tok = result.meta["tokenizer"]
    assert not tok["trained"] and tok["copied_from"] == str(tokenizer)
    assert tok["sha256"] == stdlib_slice.meta["tokenizer"]["sha256"]
    assert (tmp_path / "tokenizer.txt").read_bytes() == tokenizer.read_bytes()
    assert result.meta["vocab_size"] == VOCAB


# ---------------------------------------------------------------------- other sources


def test_text_directory_skips_hidden_and_undecodable_files(text_dir, tmp_path):
    source = open_source(str(text_dir))
    assert isinstance(source, TextFiles) and source.kind == "prose"
    assert source.files == ["a.txt", "bad.bin", "c.md", "sub/b.txt"]
    result = prepare(PrepareConfig(source=str(text_dir), out=tmp_path, vocab_size=VOCAB, filters="none", workers=1))
    meta = result.meta
    assert (meta["source"]["documents"], meta["source"]["skipped"]) == (3, 1)
    assert meta["source"]["skipped_examples"] == ["bad.bin"]
    assert meta["cleaning"]["filters"] == "none"
    train, val = split_documents([Document("a.txt", "alpha document\nwith windows newlines\n"),
                                  Document("c.md", "gamma: caf\u00e9 and emoji \U0001f600\n"),
                                  Document("sub/b.txt", "beta document\n")])
    assert decoded(tmp_path, "train") == joined(train) and decoded(tmp_path, "val") == joined(val)


def test_glob_names_files_relative_to_its_fixed_directory(text_dir):
    source = open_source(str(text_dir / "**" / "*.txt"))
    assert source.root == text_dir and source.files == ["a.txt", "sub/b.txt"]
    assert [doc.path for doc in source] == ["a.txt", "sub/b.txt"]
    assert open_source(str(text_dir / "*.md")).files == ["c.md"]
    with pytest.raises(DataError, match=r"\*\.rst: no files match"):
        open_source(str(text_dir / "*.rst"))


def test_json_lines_skip_and_count_bad_lines(tmp_path):
    lines = [b'{"text": "first document\\nline two"}', b"", b'{"text": "second \\u00e9"}', b'{"text": "caf\xe9"}',
             b"not json", b'{"title": "no text field"}', b'["a list"]', b'{"text": "a literal <|endoftext|> here"}']
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    source = open_source(str(corpus))
    assert isinstance(source, JsonLines)
    expected = [Document("corpus.jsonl:1", "first document\nline two"), Document("corpus.jsonl:3", "second \u00e9"),
                Document("corpus.jsonl:8", "a literal <|endoftext|> here")]
    assert list(source) == expected
    assert source.skipped == ["corpus.jsonl:4", "corpus.jsonl:5", "corpus.jsonl:6", "corpus.jsonl:7"]
    out = tmp_path / "out"
    meta = prepare(PrepareConfig(source=str(corpus), out=out, vocab_size=VOCAB, filters="none", workers=1)).meta
    assert (meta["source"]["documents"], meta["source"]["skipped"]) == (3, 4)
    train, val = split_documents(expected)
    assert decoded(out, "train") == joined(train) and decoded(out, "val") == joined(val)
    eot = meta["eot_token"]
    all_tokens = np.concatenate([TokenShards(out, "train")[:], TokenShards(out, "val")[:]])
    assert (all_tokens == eot).sum() == 3  # the literal in the text is ordinary text, not a boundary


def test_jsonl_split_is_a_stable_hash_of_file_and_line(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(400)))
    source = open_source(str(corpus))
    val = [doc.path for doc in JsonLines(source.root, source.files, split="validation")]
    assert val == [f"c.jsonl:{i}" for i in range(1, 401) if is_validation(f"c.jsonl:{i}")]
    assert 0 < len(val) < 30


def test_single_file_corpus_is_cut_into_train_and_validation(tmp_path):
    text = "".join(f"line {i}\n" for i in range(20))
    path = write_files(tmp_path, {"book.txt": text}) / "book.txt"
    out = tmp_path / "out"
    meta = prepare(PrepareConfig(source=str(path), out=out, vocab_size=VOCAB, filters="none", workers=1)).meta
    assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1
    train, val = decoded(out, "train"), decoded(out, "val")
    assert val == ENDOFTEXT + "line 18\nline 19\n"  # cut at the last line break before 90% of 150 characters
    assert train == ENDOFTEXT + "".join(f"line {i}\n" for i in range(18))


def test_split_moves_a_document_when_one_side_is_empty():
    names = [f"doc{i}" for i in range(200)]
    train_names = [n for n in names if not is_validation(n)][:3]
    val_names = [n for n in names if is_validation(n)][:2]
    docs = [Document(n, n) for n in train_names]
    assert split_documents(docs) == (docs[:2], docs[2:])  # the last train document validates
    docs = [Document(n, n) for n in val_names]
    assert split_documents(docs) == (docs[:1], docs[1:])  # the first validation document trains
    with pytest.raises(DataError, match="too short"):
        split_documents([Document("x", "x")])


def test_tokenizer_sample_spreads_over_the_corpus():
    texts = [f"{i:04d}" * 25 for i in range(100)]  # 100 bytes each
    assert tokenizer_sample(texts, 10_000) == texts
    sample = tokenizer_sample(texts, 2_500)
    assert sample == texts[::4] and sum(map(len, sample)) == 2_500


def test_dtype_is_uint16_up_to_65536_ids_else_uint32(text_dir, tmp_path):
    assert token_dtype(65_536) == np.dtype("<u2") and token_dtype(65_537) == np.dtype("<u4")
    big = Tokenizer({bytes([b]): b for b in range(256)}, special_tokens={ENDOFTEXT: 70_000})
    big.save(tmp_path / "big.txt")
    out = tmp_path / "out"
    meta = prepare(PrepareConfig(source=str(text_dir), out=out, tokenizer=tmp_path / "big.txt", filters="none",
                                 workers=1)).meta
    assert (meta["dtype"], meta["vocab_size"], meta["eot_token"]) == ("uint32", 70_001, 70_000)
    shards = TokenShards(out, "train")
    assert shards.dtype == np.dtype("<u4") and shards[:1].tolist() == [70_000]
    assert (out / "train_000.bin").stat().st_size == 4 * len(shards)
    assert decoded(out, "train").startswith(ENDOFTEXT)


# ---------------------------------------------------------------------- reuse and atomicity


def test_rerun_reuses_and_a_change_redoes(text_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--source", text_dir, "--out", out, "--vocab-size", 1000, "--no-filter", "--workers", 1]
    status, summary, _ = run_cli(capsys, *args)
    assert status == 0 and summary.startswith("prepared")
    for needle in ("1 skipped as unreadable", "kept 3 documents", "near-duplicate clusters: 0", "bytes/token",
                   "train_000.bin", "uint16", "ran out of pairs to merge before 1,000"):
        assert needle in summary
    files = sorted(out.iterdir())
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    status, summary, err = run_cli(capsys, *args)
    assert status == 0 and "up to date" in err and summary.startswith("reused")
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.iterdir())} == stats

    fingerprint = json.loads((out / "meta.json").read_text())["fingerprint"]
    status, summary, _ = run_cli(capsys, *args, "--no-dedup")  # a changed option
    meta = json.loads((out / "meta.json").read_text())
    assert status == 0 and summary.startswith("prepared") and meta["cleaning"]["dedup"] is False
    assert meta["fingerprint"] != fingerprint
    assert (out / "train_000.bin").stat().st_ino != stats["train_000.bin"][0]

    (text_dir / "sub" / "b.txt").write_text("beta document, edited\n")  # a changed input
    status, summary, _ = run_cli(capsys, *args, "--no-dedup")
    assert status == 0 and summary.startswith("prepared")
    assert "edited" in decoded(out, "train") + decoded(out, "val")
    status, summary, _ = run_cli(capsys, *args, "--no-dedup", "--force")
    assert status == 0 and summary.startswith("prepared")


def test_damaged_output_is_redone_not_reused(text_dir, tmp_path):
    config = PrepareConfig(source=str(text_dir), out=tmp_path, vocab_size=VOCAB, filters="none", workers=1)
    prepare(config)
    shard = tmp_path / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    result = prepare(config)
    assert not result.reused and shard.stat().st_size == 2 * result.meta["splits"]["train"]["tokens"]


def fail_on_second_chunk(monkeypatch):
    real = prepare_module.encode_documents
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "encode_documents", flaky)


def test_failure_midway_leaves_nothing_behind(text_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_files(out, {".prepare-stale/train_000.bin": b"left by a killed run"})
    fail_on_second_chunk(monkeypatch)  # the train shards are written, the val split fails
    with pytest.raises(RuntimeError, match="injected"):
        prepare(PrepareConfig(source=str(text_dir), out=out, vocab_size=VOCAB, filters="none", workers=1,
                              shard_tokens=5))
    assert list(out.iterdir()) == []


def test_failed_rerun_leaves_the_previous_dataset_intact(text_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare(PrepareConfig(source=str(text_dir), out=out, vocab_size=VOCAB, filters="none", workers=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fail_on_second_chunk(monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        prepare(PrepareConfig(source=str(text_dir), out=out, vocab_size=VOCAB + 20, filters="none", workers=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(TokenShards(out, "val")) > 0


# ---------------------------------------------------------------------- progress lines


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cleaning_shows_a_progress_line_with_rate_and_eta(tmp_path, capsys):
    prepare(PrepareConfig(out=tmp_path, max_documents=SLICE, vocab_size=VOCAB, workers=1))
    cleaning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cleaning:")]
    assert cleaning and cleaning[-1].startswith(f"cleaning: {SLICE}/{SLICE} documents 100% | ")
    assert all(" documents/s | " in line and "ETA" in line for line in cleaning)


def test_json_lines_cleaning_progress_counts_lines(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document number {i}\n" * 3}) + "\n\n" for i in range(40)))
    prepare(PrepareConfig(source=str(corpus), out=tmp_path / "out", vocab_size=VOCAB, filters="none", workers=1))
    assert "cleaning: 40/40 documents 100%" in capsys.readouterr().err


def test_on_a_terminal_each_stage_line_is_drawn_once_when_one_update_finishes_it(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    prepare(PrepareConfig(out=tmp_path, max_documents=SLICE, vocab_size=VOCAB, workers=1))
    frames = re.split(r"[\r\n]", terminal.getvalue())
    assert len([frame for frame in frames if frame.startswith("tokenizing val:")]) == 1


# ---------------------------------------------------------------------- user errors: one line, exit 2


@pytest.mark.parametrize(("files", "extra", "message"), [
    (None, [], "no such file or directory"),
    ({}, [], "the directory holds no files"),
    ({"a.txt": b"\xff\xfe", "b.txt": b"caf\xe9"}, [], r"the corpus is empty: no documents to read \(2 unreadable"),
    ({"a.txt": "", "b.txt": "  \n\n"}, ["--no-filter"], r"nothing left after cleaning: all 2 documents .*empty: 2"),
    ({"a.txt": PROSE, "b.txt": "Too short."}, [], r"nothing left after cleaning: all 2 .*gopher_short_doc: 1"),
    ({"a.txt": "x\n"}, ["--vocab-size", "100"], "must be at least 257"),
    ({"a.txt": "x\n"}, ["--vocab-size", "300", "--tokenizer", "t.txt"], "not allowed with argument"),
    ({"a.txt": "x\n"}, ["--tokenizer", "SOURCE/a.txt"], "not a tinygrad-llm tokenizer file"),
    ({"a.txt": "x\n"}, ["--tokenizer", "SOURCE/none.txt"], "none.txt: no such tokenizer file"),
    ({"a.txt": "x\n"}, ["--max-documents", "0"], "must be at least 1"),
    ({"a.py": "x = 1\n"}, ["--filter-threshold", "max_digits=0.3"], "no filter has a threshold called 'max_digits'"),
    ({"a.py": "x = 1\n"}, ["--filter-threshold", "max_digit_fraction"], "expected NAME=VALUE"),
    ({"a.py": "x = 1\n"}, ["--filter-threshold", "max_digit_fraction=lots"], "not a number"),
    ({"a.py": "x = 1\n"}, ["--filter-threshold", "max_digit_fraction=1.5"], r"must be in \[0, 1\]"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, files, extra, message):
    source = tmp_path / "source"
    if files is not None:
        source.mkdir()
        write_files(source, files)
    out = tmp_path / "out"
    extra = [arg.replace("SOURCE", str(source)) for arg in extra]
    status, stdout, err = run_cli(capsys, "--source", source, "--out", out, "--workers", 1, *extra)
    errors = [line for line in err.splitlines() if line.startswith("tinygrad-llm: error:")]
    assert status == 2 and stdout == "" and "Traceback" not in err
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])
    assert re.search(message, errors[0]), errors[0]
    assert not (out / "meta.json").exists()


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
    with pytest.raises(DataError, match="filters must be"):
        PrepareConfig(filters="web")
