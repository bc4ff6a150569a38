"""Batched decoding: sequences of different lengths share forward passes and get the tokens they get alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nn
from nn.attention import RaggedKVCache
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


def test_set_lengths_refuses_more_than_a_row_holds():
    caches = tiny("gpt2").make_caches(2, ragged=True)
    with pytest.raises(ValueError, match="do not fit"):
        caches[0].set_lengths([1, 1])  # the rows hold nothing yet


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.9, top_p=0.9)],
                         ids=["greedy", "seeded"])
def test_concurrent_requests_get_the_tokens_they_get_alone(sampling):
    model = tiny("gpt2")
    rng = np.random.default_rng(2)
    requests = [(rng.integers(0, 97, size=int(n)).tolist(), int(m), seed)
                for seed, (n, m) in enumerate([(4, 20), (9, 5), (2, 30), (15, 12), (6, 1), (3, 25)])]
    want = [list(generate_tokens(model, p, m, sampling, seed, stop_ids=[96])) for p, m, seed in requests]
    decoder = BatchDecoder(model, max_batch=4)
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
