"""The embedded stdlib corpus: which files, in what order, and a stable split."""

from __future__ import annotations

import hashlib
import json

from tinygrad_llm.data.sources import VALIDATION_PERCENT, JsonLines, StdlibCorpus, is_validation, stdlib_files


def make_tree(root):
    files = {"b.py": "x = 1\n", "a/c.py": "y = 2\n", "a/z.txt": "not python",
             "site-packages/pkg/m.py": "third party", "enc/latin1.py": b"caf\xe9"}
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_files_sorted_python_only_no_site_packages(tmp_path):
    make_tree(tmp_path)
    assert stdlib_files(tmp_path) == ["a/c.py", "b.py", "enc/latin1.py"]


def test_undecodable_files_are_skipped_and_counted(tmp_path):
    make_tree(tmp_path)
    corpus = StdlibCorpus("all", root=tmp_path)
    docs = list(corpus)
    assert [d.path for d in docs] == ["a/c.py", "b.py"]
    assert docs[0].text == "y = 2\n"
    assert corpus.skipped == ["enc/latin1.py"]


def test_count_documents_counts_what_a_pass_reads_skipped_ones_included(tmp_path):
    make_tree(tmp_path)
    assert StdlibCorpus("all", root=tmp_path).count_documents() == 3
    lines = [{"text": "a"}, {"text": "b"}, {"no": "text"}]
    (tmp_path / "c.jsonl").write_text("\n\n".join(json.dumps(line) for line in lines) + "\n")
    source = JsonLines(tmp_path, ["c.jsonl"])
    assert source.count_documents() == 3 and len(list(source)) == 2


def test_split_is_a_stable_hash_of_the_path():
    paths = [f"pkg{i}/module{i}.py" for i in range(20_000)]
    held = [p for p in paths if is_validation(p)]
    assert 0.5 * VALIDATION_PERCENT / 100 < len(held) / len(paths) < 1.5 * VALIDATION_PERCENT / 100
    for p in paths[:200]:
        h = int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "big")
        assert is_validation(p) == (h % 10_000 < VALIDATION_PERCENT * 100)


def test_real_stdlib_splits_partition_the_corpus():
    train, valid, everything = (StdlibCorpus(s).paths() for s in ("train", "validation", "all"))
    assert sorted(train + valid) == everything
    assert not set(train) & set(valid)
    assert "os.py" in everything and len(everything) > 1000
    assert all("site-packages" not in p for p in everything)
