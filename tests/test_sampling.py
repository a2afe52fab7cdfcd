"""Batched sampling: greedy against a naive loop, stops, buckets, top-p and temperature."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_llama import write_tiny_model

from mars_jax.models import sampling
from mars_jax.models.llama import forward_logits
from mars_jax.models.llama_weights import load_llama, to_device
from mars_jax.models.sampling import (
    batch_rows,
    bucket_length,
    generate_ids,
    sample_tokens,
    top_p_filter,
)

NO_STOP = -1  # a token id that never occurs
_top_p_filter = jax.jit(top_p_filter, static_argnums=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    hf, _ = write_tiny_model(tmp_path_factory.mktemp("tiny_llama"), seed=3)
    config, params = load_llama(hf)
    return config, to_device(params)


def _generate(model, prompts, **kwargs):
    config, params = model
    options = {
        "batch_size": 4,
        "max_prompt_tokens": 64,
        "max_new_tokens": 6,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "stop_id": NO_STOP,
    }
    return generate_ids(params, config, prompts, **{**options, **kwargs})


def _naive_greedy(model, ids, steps, width=24):
    """Greedy tokens by re-running the whole (right-padded, causal) sequence each step."""
    config, params = model
    full_logits = jax.jit(forward_logits, static_argnums=1)
    seq = np.zeros((1, width), np.int32)
    seq[0, : len(ids)] = ids
    for n in range(len(ids), len(ids) + steps):
        seq[0, n] = int(jnp.argmax(full_logits(params, config, seq)[0, n - 1]))
    return seq[0, len(ids) : len(ids) + steps].tolist()


PROMPTS = [[1, 5, 9, 40], [1, 7, 7, 7, 7, 7, 7, 8, 2, 201], [3], [1, 100, 200, 250, 2, 17, 30]]


def test_greedy_matches_naive_uncached_loop(model):
    outputs = _generate(model, PROMPTS)
    assert outputs == [_naive_greedy(model, ids, 6) for ids in PROMPTS]


def test_no_recompilation_within_a_bucket(model):
    _generate(model, PROMPTS[:2])
    before = sample_tokens._cache_size()
    _generate(model, [PROMPTS[2], PROMPTS[3], PROMPTS[0] * 3])
    _generate(model, [[9] * 16])
    assert sample_tokens._cache_size() == before
    _generate(model, [[9] * 17])  # the next bucket: one new compilation
    assert sample_tokens._cache_size() == before + 1


def test_partial_batches_run_in_fewer_rows_with_the_same_outputs(model):
    assert [batch_rows(n, 32) for n in (1, 4, 5, 9, 31, 32)] == [4, 4, 8, 16, 32, 32]
    assert batch_rows(5, 6) == 6
    sampled = {"temperature": 0.9, "top_p": 0.9, "seed": 5, "batch_size": 8}
    alone = _generate(model, PROMPTS[:3], **sampled)
    in_full_batch = _generate(model, PROMPTS[:3] + [[4, 4, 4]] * 5, **sampled)
    assert in_full_batch[:3] == alone


def test_bucket_lengths():
    assert [bucket_length(n, 100) for n in (1, 16, 17, 33, 64, 65, 100)] == [
        16,
        16,
        32,
        64,
        64,
        100,
        100,
    ]
    assert bucket_length(130, 100) == 130


def test_per_sequence_stop(model):
    full = _generate(model, PROMPTS)
    stop = full[0][2]
    stopped = _generate(model, PROMPTS, stop_id=stop)
    assert stopped == [row[: row.index(stop)] if stop in row else row for row in full]
    config, params = model
    tokens = jnp.array([[1, 5, 9, 40]], jnp.int32)
    args = (params, tokens, jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), jnp.ones(1, bool))
    out, steps = sample_tokens(*args, 0, 0.0, 1.0, full[0][1], config=config, max_new_tokens=6)
    assert int(steps) == 2  # stopped after the second token, not after 6
    assert out[0].tolist() == full[0][:2] + [full[0][1]] * 4


def test_sampling_is_seeded_and_independent_of_batch_mates(model):
    kwargs = {"temperature": 1.0, "top_p": 0.95}
    first = _generate(model, PROMPTS, seed=7, **kwargs)
    assert _generate(model, PROMPTS, seed=7, **kwargs) == first
    assert _generate(model, PROMPTS, seed=8, **kwargs) != first
    mates = [[4, 4, 4], PROMPTS[1], [250, 1], [9, 9]]
    assert _generate(model, mates, seed=7, **kwargs)[1] == first[1]
    assert _generate(model, mates, seed=7, batch_size=2, **kwargs)[1] == first[1]


def test_tiny_top_p_is_greedy(model):
    sampled = _generate(model, PROMPTS, temperature=1.5, top_p=1e-6, seed=3)
    assert sampled == _generate(model, PROMPTS)


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8, allow_subnormal=False), min_size=8, max_size=8),
    top_p=st.floats(0.01, 1.0),
    candidates=st.sampled_from([256, 2]),  # 2: the nucleus rarely fits, bisection runs
)
def test_top_p_keeps_the_smallest_nucleus(logits, top_p, candidates):
    x = np.asarray(logits, np.float32)
    kept = np.isfinite(np.asarray(_top_p_filter(x[None], top_p, candidates))[0])
    probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    assert kept[np.argmax(x)]
    # every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()
    # the kept mass reaches top_p, and without its least likely tokens (all tied at the
    # threshold are kept) it would not
    assert probs[kept].sum() >= top_p - 1e-5
    least = kept & (probs <= probs[kept].min() * (1 + 1e-6))  # ties in float32 probability
    assert probs[kept].sum() - probs[least].sum() < top_p + 1e-5


def test_bisection_and_top_k_thresholds_agree():
    logits = jax.random.normal(jax.random.key(2), (16, 300)) * 3
    for top_p in (0.3, 0.9, 0.99):
        np.testing.assert_array_equal(
            np.isfinite(_top_p_filter(logits, top_p, 300)),
            np.isfinite(_top_p_filter(logits, top_p, 2)),
        )


def test_temperature_sampling_frequencies():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    rows = 20000
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(rows))
    batch = jnp.tile(logits, (rows, 1))
    for temperature in (1.0, 0.5):
        draws = sampling._next_tokens(batch, keys, 1, temperature, 1.0)
        freq = np.bincount(np.asarray(draws), minlength=4) / rows
        expected = np.asarray(jax.nn.softmax(logits / temperature))
        np.testing.assert_allclose(freq, expected, atol=0.015)
    draws = sampling._next_tokens(batch, keys, 1, 1.0, 0.7)  # nucleus {0, 1}: 0.5 / 0.8
    freq = np.bincount(np.asarray(draws), minlength=4) / rows
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)
