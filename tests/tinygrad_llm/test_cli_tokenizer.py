"""``tinygrad-llm tokenizer ...``: the happy path and every user error as one clean line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_llm.cli import main
from tokenizer import Tokenizer

TEXT = Path(argparse.__file__).read_text(encoding="utf-8")[:30_000]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture()
def tok_file(tmp_path, corpus):
    path = tmp_path / "tok.txt"
    assert main(["tokenizer", "train", "-i", str(corpus), "-o", str(path), "--vocab-size", "300", "-q"]) == 0
    return path


def test_train_encode_decode_round_trip(tmp_path, corpus, tok_file, capsys):
    tok = Tokenizer.load(tok_file)
    assert tok.vocab_size == 300 and tok.eot_token == 299
    ids_file, out_file = tmp_path / "ids.txt", tmp_path / "out.txt"
    assert main(["tokenizer", "encode", "-t", str(tok_file), "-i", str(corpus), "-o", str(ids_file)]) == 0
    ids = [int(x) for x in ids_file.read_text().split()]
    assert ids == tok.encode(TEXT)
    assert main(["tokenizer", "decode", "-t", str(tok_file), "-i", str(ids_file), "-o", str(out_file)]) == 0
    assert out_file.read_text(encoding="utf-8") == TEXT
    assert main(["tokenizer", "encode", "-t", str(tok_file), "-i", str(corpus)]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in ids]


def test_stats_writes_table_json_and_plot(tmp_path, corpus, capsys):
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("def sub(a, b):\n    return a - b\n", encoding="utf-8")
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["tokenizer", "stats", "-i", str(corpus), "--heldout", str(heldout), "--vocab-sizes",
                 "260,280,300", "--json", str(out_json), "--plot", str(out_png), "-q"]) == 0
    table = capsys.readouterr().out
    assert "bytes/token" in table
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["vocab_size"] for r in rows] == [260, 280, 300]
    n_bytes = len(heldout.read_bytes())
    for r in rows:
        assert r["bytes_per_token"] == pytest.approx(n_bytes / r["tokens"], abs=1e-4)
    assert rows[0]["tokens"] >= rows[1]["tokens"] >= rows[2]["tokens"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tinygrad-llm: error: ")
    return lines[0]


def test_missing_input(tmp_path, capsys):
    assert main(["tokenizer", "train", "-i", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "t")]) == 2
    assert "no such file" in error_line(capsys)
    assert not (tmp_path / "t").exists()


def test_empty_input(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert main(["tokenizer", "train", "-i", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "t")]) == 2
    assert "empty" in error_line(capsys)
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.txt"]


def test_invalid_utf8_input(tmp_path, tok_file, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    assert main(["tokenizer", "encode", "-t", str(tok_file), "-i", str(bad)]) == 2
    assert "invalid UTF-8 (byte 0xff at offset 3)" in error_line(capsys)


def test_train_reads_a_directory_as_prepare_does(tmp_path, capsys):
    corpus = tmp_path / "texts"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("the cat sat on the mat " * 50)
    (corpus / "sub" / "b.txt").write_text("the dog sat on the log " * 50)
    (corpus / "binary.bin").write_bytes(b"\xff\xfe" * 10)  # not UTF-8: skipped, as prepare skips it
    out = tmp_path / "t.tok"
    assert main(["tokenizer", "train", "-i", str(corpus), "-o", str(out), "--vocab-size", "270", "-q"]) == 0
    assert "1 file(s) not UTF-8, skipped (e.g. binary.bin)" in capsys.readouterr().err
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 270
    assert tok.decode(tok.encode("the dog sat on the mat")) == "the dog sat on the mat"
    assert len(tok.encode("the dog sat")) < len("the dog sat")  # it learned merges from both files


@pytest.mark.parametrize("option", [["tokenizer", "train", "-o", "x.tok", "--vocab-size", "0"],
                                    ["prepare", "--vocab-size", "100"]])
def test_a_vocabulary_below_257_names_the_real_minimum(capsys, option):
    assert main(option) == 2
    assert "--vocab-size: must be at least 257" in error_line(capsys)


def test_unknown_option_and_missing_subcommand(capsys):
    assert main(["tokenizer", "train", "-o", "x.tok", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in error_line(capsys)
    assert main(["tokenizer"]) == 2
    error_line(capsys)


def test_corrupt_tokenizer_file(tmp_path, corpus, tok_file, capsys):
    tok_file.write_text(tok_file.read_text()[:500])
    assert main(["tokenizer", "encode", "-t", str(tok_file), "-i", str(corpus)]) == 2
    assert "truncated" in error_line(capsys)
    assert main(["tokenizer", "encode", "-t", str(corpus), "-i", str(corpus)]) == 2
    assert "not a tinygrad-llm tokenizer file" in error_line(capsys)


def test_disallowed_special_in_input(tmp_path, tok_file, capsys):
    text = tmp_path / "special.txt"
    text.write_text("a <|endoftext|> b")
    assert main(["tokenizer", "encode", "-t", str(tok_file), "-i", str(text)]) == 2
    line = error_line(capsys)
    assert "the text contains the special token '<|endoftext|>'; pass --allow-special" in line
    assert "pass it in allowed_special" not in line  # the Python API's keyword means nothing on the command line
    assert main(["tokenizer", "encode", "-t", str(tok_file), "-i", str(text), "--allow-special"]) == 0
    assert "299" in capsys.readouterr().out.split()


def test_bad_ids_leave_existing_output_untouched(tmp_path, tok_file, capsys):
    ids, out = tmp_path / "ids.txt", tmp_path / "out.txt"
    out.write_text("previous")
    for content, message in [("1 2 x", "integer token ids"), ("1 99999", "unknown token id 99999")]:
        ids.write_text(content)
        assert main(["tokenizer", "decode", "-t", str(tok_file), "-i", str(ids), "-o", str(out)]) == 2
        assert message in error_line(capsys)
        assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "ids.txt", "out.txt", "tok.txt"]


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygrad_llm", "tokenizer", "encode", "-t",
                             str(tmp_path / "missing.tok"), "-i", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "missing.tok" in result.stderr
