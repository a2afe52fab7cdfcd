"""Continuous batching: the tokens of one-request-at-a-time generation, without recompiling."""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_llama import write_tiny_model

from mars_jax.errors import MarsError
from mars_jax.models import sampling
from mars_jax.models.generator import LlamaChatGenerator
from mars_jax.models.llama import forward, init_cache
from mars_jax.models.llama_weights import load_llama, to_device
from mars_jax.models.sampling import generate_ids, generate_ids_continuous

NO_STOP = -1
SAMPLED = {"temperature": 1.0, "top_p": 0.95, "seed": 11}
GREEDY = {"temperature": 0.0, "top_p": 1.0, "seed": 0}
# one compilation per call shape, as inside the library's jitted loops (eagerly, every op
# and every constant start would compile a program of its own)
jitted_forward = jax.jit(forward, static_argnames="config")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_llama"), seed=3)


@pytest.fixture(scope="module")
def model(tiny):
    config, params = load_llama(tiny[0])
    return config, to_device(params)


def _prompts(count: int, seed: int = 0, longest: int = 40) -> list[list[int]]:
    """Token-id prompts of 1 to ``longest`` tokens (buckets 16, 32 and 64)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 290, size=rng.integers(1, longest + 1)).tolist() for _ in range(count)]


def _run(fn, model, prompts, **kwargs):
    config, params = model
    options = {"batch_size": 4, "max_prompt_tokens": 64, "max_new_tokens": 14, "stop_id": NO_STOP}
    return fn(params, config, prompts, **{**options, **kwargs})


def _most_common(replies: list[list[int]]) -> int:
    return Counter(token for reply in replies for token in reply).most_common(1)[0][0]


def _one_at_a_time(model, prompts, **kwargs):
    """Today's static generation with one request per batch (each keeps its index)."""
    return _run(generate_ids, model, prompts, **{**kwargs, "batch_size": 1})


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_same_tokens_as_one_request_at_a_time(model, options):
    prompts = _prompts(23)  # more requests than the 4 slots, three prompt buckets
    free = _run(generate_ids, model, prompts, **options)
    stop = _most_common(free)  # ends replies after varied numbers of tokens
    counts: dict[str, int] = {}
    continuous = _run(
        generate_ids_continuous, model, prompts, stop_id=stop, counts=counts, **options
    )
    expected = _one_at_a_time(model, prompts, stop_id=stop, **options)
    assert continuous == expected
    lengths = [len(reply) for reply in continuous]
    assert max(lengths) == 14 and len(set(lengths)) >= 3
    assert counts["kept_tokens"] == sum(lengths) and counts["prefills"] == len(prompts)
    static: dict[str, int] = {}
    assert _run(generate_ids, model, prompts, stop_id=stop, counts=static, **options) == expected
    assert counts["decoded_slots"] < static["decoded_slots"]


def test_outputs_do_not_depend_on_slot_or_batch_size(model):
    prompts = _prompts(11, seed=1, longest=16)  # one bucket: batch 8 drains to 4
    stop = _most_common(_run(generate_ids, model, prompts, **SAMPLED))
    runs = [
        _run(generate_ids_continuous, model, prompts, stop_id=stop, batch_size=size, **SAMPLED)
        for size in (2, 4, 8)
    ]
    assert runs[0] == runs[1] == runs[2]
    assert len({len(reply) for reply in runs[0]}) >= 2  # the stop token did cut some replies
    # greedy: the reply depends on the text only, whatever slot the request lands in
    forward_order = _run(generate_ids_continuous, model, prompts, stop_id=stop, **GREEDY)
    backward = _run(generate_ids_continuous, model, prompts[::-1], stop_id=stop, **GREEDY)
    assert backward == forward_order[::-1]


def test_one_new_token_and_immediate_stops(model):
    prompts = _prompts(6, seed=2, longest=16)
    one = _run(generate_ids_continuous, model, prompts, max_new_tokens=1, **SAMPLED)
    assert one == _one_at_a_time(model, prompts, max_new_tokens=1, **SAMPLED)
    assert all(len(reply) == 1 for reply in one)
    firsts = [reply[0] for reply in one]
    # every request stops at its first token: the slots turn over without decoding
    for stop in set(firsts):
        replies = _run(generate_ids_continuous, model, prompts, stop_id=stop, **SAMPLED)
        assert replies == _one_at_a_time(model, prompts, stop_id=stop, **SAMPLED)
        assert [reply == [] for reply in replies] == [first == stop for first in firsts]


def test_no_recompilation_per_request(model):
    bucket_16 = _prompts(40, seed=3, longest=16)
    _run(generate_ids_continuous, model, bucket_16[:5], **SAMPLED)
    sizes = (sampling.admit._cache_size(), sampling.decode._cache_size())
    stop = _most_common(_run(generate_ids, model, bucket_16, **SAMPLED))
    counts: dict[str, int] = {}
    _run(generate_ids_continuous, model, bucket_16, stop_id=stop, counts=counts, **SAMPLED)
    _run(generate_ids_continuous, model, bucket_16[::-1], **GREEDY)
    assert counts["prefills"] == 40 and counts["calls"] > 40
    assert (sampling.admit._cache_size(), sampling.decode._cache_size()) == sizes


def test_a_draining_batch_is_compacted_without_changing_tokens(model):
    prompts = _prompts(20, seed=4, longest=16)  # one bucket, 16 slots: drains 16 -> 8 -> 4
    stop = _most_common(_run(generate_ids, model, prompts, **SAMPLED))
    before = sampling.compact._cache_size()
    counts: dict[str, int] = {}
    replies = _run(
        generate_ids_continuous,
        model,
        prompts,
        stop_id=stop,
        batch_size=16,
        counts=counts,
        **SAMPLED,
    )
    assert replies == _one_at_a_time(model, prompts, stop_id=stop, **SAMPLED)
    assert sampling.compact._cache_size() > before  # it did compact
    again = _run(generate_ids_continuous, model, prompts[::-1], batch_size=16, **SAMPLED)
    assert len(again) == 20
    sizes = [fn._cache_size() for fn in (sampling.admit, sampling.decode, sampling.compact)]
    _run(generate_ids_continuous, model, prompts, stop_id=stop, batch_size=16, **SAMPLED)
    assert [fn._cache_size() for fn in (sampling.admit, sampling.decode, sampling.compact)] == sizes


def test_forward_with_one_start_per_row_matches_a_shared_start(model):
    config, params = model
    tokens = jnp.array([[5, 9, 40, 7], [1, 2, 3, 4]], jnp.int32)
    pad = jnp.array([0, 1], jnp.int32)
    cache = init_cache(config, 2, 8, params["embed"].dtype)
    _, cache = jitted_forward(params, config, tokens, cache, 0, pad)
    step = jnp.array([[11], [12]], jnp.int32)
    shared = jitted_forward(params, config, step, cache, 4, pad)
    per_row = jitted_forward(params, config, step, cache, jnp.array([4, 4], jnp.int32), pad)
    np.testing.assert_array_equal(per_row[0], shared[0])
    np.testing.assert_array_equal(per_row[1].keys, shared[1].keys)
    # rows at different slots: row 1 one step behind writes at slot 3 (its own last token)
    moved = jitted_forward(params, config, step, cache, jnp.array([4, 3], jnp.int32), pad)
    np.testing.assert_array_equal(moved[0][0], shared[0][0])
    assert not np.array_equal(moved[0][1], shared[0][1])
    np.testing.assert_array_equal(moved[1].keys[:, 1, :, 4], cache.keys[:, 1, :, 4])


def test_generator_batching_modes_give_the_same_replies(tiny):
    prompts = ["What is the capital of France?", "Rewrite: the cat sat.", "Hi", "12 apples"] * 2
    options = {
        "max_new_tokens": 14,
        "temperature": 0.8,
        "top_p": 0.9,
        "seed": 3,
        "system_prompt": "Be brief.",
    }
    # batch 4, buckets 32 and 64, 14 new tokens: the programs compiled by the tests above
    replies = {
        mode: LlamaChatGenerator.load(
            str(tiny[0]), batch_size=4, max_prompt_tokens=64, batching=mode
        ).generate(prompts, **options)
        for mode in ("static", "continuous")
    }
    assert replies["static"] == replies["continuous"]
    assert LlamaChatGenerator.load(str(tiny[0])).batching == "continuous"
    with pytest.raises(MarsError, match="batching"):
        LlamaChatGenerator.load(str(tiny[0]), batching="dynamic")
