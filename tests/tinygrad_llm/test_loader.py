"""Token shards and batches: memory-mapped reads, windows, epochs, ranks, exact resume, bad data.

The datasets here are written by hand in ``prepare``'s layout, with token ``i`` equal
to ``i``, so every batch shows exactly which part of the stream it came from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinygrad_llm.data import DataError
from tinygrad_llm.data.loader import BatchLoader, TokenShards, eval_windows, read_meta
from tinygrad_llm.data.shards import FORMAT, FORMAT_VERSION, META_FILE, shard_name


def write_dataset(directory, train_tokens, val_tokens=100, shard_tokens=1000, dtype="uint16"):
    """A prepared directory whose streams are 0, 1, 2, ... split into shards of ``shard_tokens``."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in (("train", train_tokens), ("val", val_tokens)):
        tokens = np.arange(count, dtype=dtype)
        shards = []
        for index, start in enumerate(range(0, count, shard_tokens)):
            part = tokens[start:start + shard_tokens]
            part.astype(np.dtype(dtype).newbyteorder("<")).tofile(directory / shard_name(split, index))
            shards.append({"file": shard_name(split, index), "tokens": len(part)})
        splits[split] = {"documents": 1, "bytes": count, "tokens": count, "shards": shards}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype, "vocab_size": 70_000,
            "eot_token": 0, "splits": splits, "tokenizer": {"file": "tokenizer.txt", "sha256": ""}}
    (directory / META_FILE).write_text(json.dumps(meta))
    return directory


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "data", train_tokens=2501)


# ---------------------------------------------------------------------- TokenShards


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_shards_read_as_one_stream_across_files(tmp_path, dtype):
    shards = TokenShards(write_dataset(tmp_path, 2501, dtype=dtype), "train")
    assert len(shards) == 2501 and len(shards.shards) == 3
    assert shards.dtype == np.dtype(dtype) and shards.vocab_size == 70_000 and shards.eot_token == 0
    assert np.array_equal(shards[:], np.arange(2501))
    assert np.array_equal(shards[995:2003], np.arange(995, 2003))  # spans all three files
    assert shards[2500:3000].tolist() == [2500]
    assert len(shards[5:5]) == 0
    assert read_meta(tmp_path)["splits"]["train"]["tokens"] == 2501


def test_missing_meta_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no meta.json.*tinygrad-llm prepare"):
        TokenShards(tmp_path, "train")


@pytest.mark.parametrize("content", ["{not json", '{"format": "something-else"}', '{"format": "tinygrad-llm-shards"}',
                                     "\xff\xfe"])
def test_corrupt_meta_is_a_clear_error(data, content):
    (data / META_FILE).write_text(content, encoding="latin-1")
    with pytest.raises(DataError, match="meta.json: (corrupt|not a token-shard directory)"):
        TokenShards(data, "val")


def test_missing_or_truncated_shard_is_a_clear_error(data):
    path = data / shard_name("train", 1)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train_001.bin: 1,998 bytes, expected 2,000: truncated"):
        TokenShards(data, "train")
    path.unlink()
    with pytest.raises(DataError, match="train_001.bin: shard missing"):
        TokenShards(data, "train")
    assert len(TokenShards(data, "val")) == 100  # the other split is still readable


# ---------------------------------------------------------------------- BatchLoader


def test_batches_are_windows_with_targets_shifted_by_one(data):
    loader = BatchLoader(TokenShards(data, "train"), batch_size=4, block_size=16, seed=0)
    assert loader.num_windows == (2501 - 1) // 16
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    starts = x[:, 0]
    assert np.all(starts % 16 == 0)
    assert np.array_equal(x, starts[:, None] + np.arange(16))
    assert np.array_equal(y, x + 1)


def test_same_seed_same_batches_other_seed_other_batches(data):
    shards = TokenShards(data, "train")
    a, b, c = (BatchLoader(shards, 4, 16, seed=s) for s in (7, 7, 8))
    for _ in range(5):
        xa, xb, xc = a.next_batch()[0], b.next_batch()[0], c.next_batch()[0]
        assert np.array_equal(xa, xb)
    assert not np.array_equal(xa, xc)


@pytest.mark.parametrize("batch_size", [4, 7])
def test_each_epoch_visits_every_window_once_in_a_new_order(tmp_path, batch_size):
    block = 10
    shards = TokenShards(write_dataset(tmp_path, 12 * block + 1, shard_tokens=50), "train")
    loader = BatchLoader(shards, batch_size, block, seed=3)
    starts = np.concatenate([loader.next_batch()[0][:, 0] for _ in range(24 // batch_size + 1)]) // block
    first, second = starts[:12], starts[12:24]
    assert sorted(first) == sorted(second) == list(range(12))
    assert not np.array_equal(first, second)
    assert loader.state_dict() == {"epoch": 2, "position": 4, "seed": 3}  # 28 windows taken


def test_ranks_take_disjoint_slices_whose_union_is_the_single_process_batch(data):
    shards = TokenShards(data, "train")
    single = BatchLoader(shards, batch_size=6, block_size=16, seed=1)
    ranks = [BatchLoader(shards, batch_size=2, block_size=16, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(40):  # past an epoch boundary (156 windows, 6 per step)
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
        firsts = [set(p[0][:, 0].tolist()) for p in parts]
        assert not (firsts[0] & firsts[1] or firsts[0] & firsts[2] or firsts[1] & firsts[2])


def test_state_dict_resumes_exactly(data):
    shards = TokenShards(data, "train")
    loader = BatchLoader(shards, 4, 16, seed=5)
    for _ in range(45):  # into the second epoch (39 batches per epoch)
        loader.next_batch()
    state = loader.state_dict()
    assert state == {"epoch": 1, "position": (45 * 4) % 156, "seed": 5}
    expected = [loader.next_batch() for _ in range(3)]
    resumed = BatchLoader(shards, 4, 16, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint would store it
    for (x, y), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(3)], strict=True):
        assert np.array_equal(x, rx) and np.array_equal(y, ry)


def test_resume_with_a_different_world_size(data):
    shards = TokenShards(data, "train")
    one = BatchLoader(shards, 4, 16, seed=2)
    for _ in range(10):
        one.next_batch()
    state = one.state_dict()
    expected = one.next_batch()[0]
    two = [BatchLoader(shards, 2, 16, seed=2, rank=r, world_size=2) for r in range(2)]
    for loader in two:
        loader.load_state_dict(state)
    assert np.array_equal(np.concatenate([loader.next_batch()[0] for loader in two]), expected)
    assert two[0].state_dict() == one.state_dict()


def test_state_that_does_not_fit_the_data_is_refused(data):
    loader = BatchLoader(TokenShards(data, "train"), 4, 16, seed=0)
    with pytest.raises(DataError, match="does not fit this data"):
        loader.load_state_dict({"epoch": 0, "position": 10_000, "seed": 0})


def test_corpus_smaller_than_one_batch_says_what_is_needed(data):
    shards = TokenShards(data, "val")  # 100 tokens
    with pytest.raises(DataError, match=r"need 129 tokens, it has 100"):
        BatchLoader(shards, batch_size=2, block_size=32, seed=0, world_size=2)
    assert BatchLoader(shards, batch_size=3, block_size=33, seed=0).num_windows == 3


# ---------------------------------------------------------------------- eval_windows


def test_eval_windows_are_sequential_and_deterministic(data):
    shards = TokenShards(data, "val")  # 100 tokens -> 6 windows of 16
    batches = list(eval_windows(shards, block_size=16, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 16), (2, 16)]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert np.array_equal(x.ravel(), np.arange(96)) and np.array_equal(y, x + 1)
    again = list(eval_windows(shards, 16, 4))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert len(list(eval_windows(shards, 16, 4, max_batches=1))) == 1
    with pytest.raises(DataError, match="fewer than one window"):
        eval_windows(shards, block_size=100, batch_size=1)
