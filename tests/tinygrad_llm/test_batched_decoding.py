"""Batched decoding: sequences of different lengths share forward passes and get the tokens they get alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nn
from nn.attention import PackedKVCache, RaggedKVCache
from tinygrad_llm.generate import SamplingConfig, generate_tokens
from tinygrad_llm.model import GPT, GPTConfig
from tinygrad_llm.serve.batch import BatchDecoder

VARIANTS = {
    "gpt2": dict(),
    "rope": dict(pos="rope"),
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False),
}


def tiny(variant: str) -> GPT:
    nn.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=97, block_size=48, **VARIANTS[variant])).to("float64")
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data[...] += 0.05 * rng.standard_normal(p.shape)
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_ragged_batch_step_gives_each_row_its_logits_alone(variant):
    model = tiny(variant)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 97, size=n).tolist() for n in (3, 11, 7)]
    with nn.no_grad():
        alone, rows = [], []
        for prompt in prompts:
            caches = model.make_caches(1)
            model(np.array([prompt]), caches=caches)
            rows.append([RaggedKVCache.from_caches([c]) for c in caches])
            full, _ = model(np.array([prompt + [5, 9]]))           # the prompt and two more tokens, no cache
            alone.append(full.numpy()[0, -2:])
        batch = rows[0]
        for row in rows[1:]:
            for cache, new in zip(batch, row, strict=True):
                cache.extend(new)
        first, _ = model(np.array([[5]] * 3), caches=batch)
        second, _ = model(np.array([[9]] * 3), caches=batch)
    for i in range(3):
        np.testing.assert_allclose(first.numpy()[i, 0], alone[i][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(second.numpy()[i, 0], alone[i][1], rtol=1e-10, atol=1e-12)
    for cache in batch:  # a row leaves: the others go on unchanged
        cache.keep([0, 2])
    with nn.no_grad():
        third, _ = model(np.array([[4], [4]]), caches=batch)
        solo, _ = model(np.array([prompts[2] + [5, 9, 4]]))
    np.testing.assert_allclose(third.numpy()[1, 0], solo.numpy()[0, -1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prompts_read_together_right_padded_give_each_row_its_logits_alone(variant):
    model = tiny(variant)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 97, size=n).tolist() for n in (5, 12, 1, 8)]
    lengths = np.array([len(p) for p in prompts])
    ids = np.full((4, 12), 7)  # the padding's value must not matter
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt
    with nn.no_grad():
        caches = model.make_caches(4, ragged=True)
        last, _ = model(ids, caches=caches, logits_at=lengths - 1)
        for cache in caches:
            cache.set_lengths(lengths)
        after, _ = model(np.array([[3], [3], [3], [3]]), caches=caches)  # one more token each, own positions
        two, _ = model(np.array([[5, 6]] * 4), caches=caches)  # two more, rows of different lengths
        for row, prompt in enumerate(prompts):
            alone, _ = model(np.array([prompt + [3, 5, 6]]))
            assert last.shape == (4, 1, 97)
            np.testing.assert_allclose(last.numpy()[row, 0], alone.numpy()[0, -4], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(after.numpy()[row, 0], alone.numpy()[0, -3], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(two.numpy()[row], alone.numpy()[0, -2:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_packed_pass_gives_every_token_its_logits_alone(variant):
    """Running rows with 1 or 3 new tokens and a new row with its whole prompt, one token per batch row."""
    model = tiny(variant)
    rng = np.random.default_rng(5)
    held = [rng.integers(0, 97, size=n).tolist() for n in (4, 9)]       # already in the cache
    new = [rng.integers(0, 97, size=n).tolist() for n in (1, 3, 6)]     # this pass: 1, 3, and a prompt of 6
    with nn.no_grad():
        caches = model.make_caches(2, ragged=True)
        ids = np.zeros((2, 9), dtype=np.int64)
        for row, tokens in enumerate(held):
            ids[row, :len(tokens)] = tokens
        model(ids, caches=caches)
        for cache in caches:
            cache.set_lengths([4, 9])
            cache.extend(RaggedKVCache.empty(1, cache.k.shape[1], cache.max_length, cache.k.shape[3], np.float64))
        packed = [PackedKVCache(cache, [1, 3, 6]) for cache in caches]
        every, _ = model(np.concatenate(new)[:, None], caches=[PackedKVCache(c, [1, 3, 6]) for c in
                                                            [_copy(c) for c in caches]])
        last, _ = model(np.concatenate(new)[:, None], caches=packed, logits_rows=[0, 3, 9])
        after, _ = model(np.array([[7], [8], [9]]), caches=caches)  # an ordinary step afterwards
    assert caches[0].lengths.tolist() == [6, 13, 7] and every.shape == (10, 1, 97) and last.shape == (3, 1, 97)
    sequences = [held[0] + new[0], held[1] + new[1], new[2]]
    for i, (tokens, following) in enumerate(zip(sequences, (7, 8, 9), strict=True)):
        alone, _ = model(np.array([tokens + [following]]))
        start = sum(len(n) for n in new[:i])
        want = alone.numpy()[0, -1 - len(new[i]):-1]
        np.testing.assert_allclose(every.numpy()[start:start + len(new[i]), 0], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(last.numpy()[i, 0], want[-1], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(after.numpy()[i, 0], alone.numpy()[0, -1], rtol=1e-10, atol=1e-12)


def _copy(cache: RaggedKVCache) -> RaggedKVCache:
    return RaggedKVCache(cache._k.copy(), cache._v.copy(), cache.lengths, cache.max_length)


def test_a_packed_cache_refuses_counts_that_do_not_fit_its_rows():
    cache = tiny("gpt2").make_caches(2, ragged=True)[0]
    with pytest.raises(ValueError, match="one count of at least 1 per row"):
        PackedKVCache(cache, [1, 0])
    with pytest.raises(ValueError, match="one count of at least 1 per row"):
        PackedKVCache(cache, [1, 1, 1])


def test_set_lengths_refuses_more_than_a_row_holds():
    caches = tiny("gpt2").make_caches(2, ragged=True)
    with pytest.raises(ValueError, match="do not fit"):
        caches[0].set_lengths([1, 1])  # the rows hold nothing yet


@pytest.mark.parametrize("pack_bytes", [16 << 20, 0], ids=["prompts-packed", "prompts-alone"])
@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.9, top_p=0.9)],
                         ids=["greedy", "seeded"])
def test_concurrent_requests_get_the_tokens_they_get_alone(sampling, pack_bytes):
    model = tiny("gpt2")
    rng = np.random.default_rng(2)
    requests = [(rng.integers(0, 97, size=int(n)).tolist(), int(m), seed)
                for seed, (n, m) in enumerate([(4, 20), (9, 5), (2, 30), (15, 12), (6, 1), (3, 25)])]
    want = [list(generate_tokens(model, p, m, sampling, seed, stop_ids=[96])) for p, m, seed in requests]
    decoder = BatchDecoder(model, max_batch=4, pack_bytes=pack_bytes)
    got: list[list[int]] = [[] for _ in requests]
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        p, m, seed = requests[i]
        start.wait()
        got[i] = list(decoder.submit(p, m, sampling, seed, stop_ids=[96]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert got == want
    assert decoder.largest_batch > 1   # they really shared steps
    assert decoder.steps < sum(len(w) for w in want) - len(want)  # fewer steps than decoding them one by one
    assert (decoder.packed_prompts > 0) == (pack_bytes > 0)  # prompts rode in decode passes, or had their own


def tool(token: int) -> list[int]:
    """A stand-in tool: after every token divisible by 5 the model reads three more (one depends on the token)."""
    return [token // 5, 3, 4] if token % 5 == 0 else []


@pytest.mark.parametrize("pack_bytes", [16 << 20, 0], ids=["prompts-packed", "prompts-alone"])
def test_concurrent_requests_with_a_tool_get_the_tokens_they_get_alone(pack_bytes):
    model = tiny("rope")
    sampling = SamplingConfig(temperature=0.9, top_p=0.9)
    rng = np.random.default_rng(3)
    requests = [(rng.integers(0, 97, size=int(n)).tolist(), int(m), seed)
                for seed, (n, m) in enumerate([(4, 14), (9, 5), (2, 16), (7, 12), (3, 1)])]
    want = [list(generate_tokens(model, p, m, sampling, seed, respond=tool)) for p, m, seed in requests]
    assert sum(tool(t) != [] for w in want for t in w) >= 3  # the tool answered several times
    decoder = BatchDecoder(model, max_batch=3, pack_bytes=pack_bytes)
    streams = [decoder.submit(p, m, sampling, seed, respond=tool) for p, m, seed in requests]
    assert [list(stream) for stream in streams] == want


def test_a_tool_answer_that_would_pass_the_context_ends_the_sequence():
    model = tiny("gpt2")  # context 48
    greedy = SamplingConfig(temperature=0.0)
    prompt = list(range(1, 40))

    def long_answer(token: int) -> list[int]:
        return [7] * 9  # 39 + 1 + 9 = 49 tokens: one more than the cache holds

    got = list(BatchDecoder(model).submit(prompt, 5, greedy, None, respond=long_answer))
    assert got == list(generate_tokens(model, prompt, 1, greedy))  # the first token, then the end


def test_a_request_withdrawn_midway_frees_its_row():
    model = tiny("gpt2")
    decoder = BatchDecoder(model, max_batch=2)
    stream = decoder.submit([1, 2, 3], 40, SamplingConfig(temperature=0.0), None)
    assert next(stream) >= 0
    stream.close()  # the client went away
    rest = list(decoder.submit([4, 5], 6, SamplingConfig(temperature=0.0), None))
    assert rest == list(generate_tokens(model, [4, 5], 6, SamplingConfig(temperature=0.0)))


def test_logits_at_picks_one_position_per_row_and_excludes_a_loss():
    model = tiny("rope")
    ids = np.random.default_rng(4).integers(0, 97, size=(3, 9))
    with nn.no_grad():
        full, _ = model(ids)
        some, _ = model(ids, logits_at=[8, 0, 4])
    np.testing.assert_allclose(some.numpy()[:, 0], full.numpy()[[0, 1, 2], [8, 0, 4]], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="exclude each other"):
        model(ids, targets=ids, logits_at=[8, 8, 8])
    with pytest.raises(ValueError, match="exclude each other"):
        model(ids, targets=ids, logits_rows=[0])
