"""Train state and steps: schedule, loss decrease, masking, compile-once, chunked scans."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mars_jax.losses import LossSettings, pairwise_loss
from mars_jax.models.heads import init_members, mlp_reward_model
from mars_jax.train import OptimizerSettings, Trainer, learning_rate_at
from mars_jax.types import PairBatch


def linear_reward(params, features):
    return features @ params["w"]


def separable_batch(num_pairs: int = 64, dim: int = 4, seed: int = 0) -> PairBatch:
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=dim)
    a, b = rng.normal(size=(2, num_pairs, dim))
    a_wins = (a @ true_w) > (b @ true_w)
    chosen = np.where(a_wins[:, None], a, b)
    rejected = np.where(a_wins[:, None], b, a)
    return PairBatch(
        jnp.asarray(chosen, jnp.float32),
        jnp.asarray(rejected, jnp.float32),
        jnp.ones(num_pairs, jnp.float32),
    )


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [
        float(learning_rate_at(jnp.asarray(s), jnp.asarray(100), peak=1.0, warmup_fraction=0.1))
        for s in range(101)
    ]
    assert rates[0] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(1.0)
    assert max(rates) == pytest.approx(1.0)
    assert all(x >= y for x, y in itertools.pairwise(rates[10:]))
    assert rates[100] == pytest.approx(0.0, abs=1e-6)


def test_train_steps_lower_the_loss_and_raise_accuracy():
    batch = separable_batch()
    trainer = Trainer.adamw(linear_reward, optimizer=OptimizerSettings(learning_rate=0.05))
    state = trainer.init_state({"w": jnp.zeros(4)}, num_steps=50)
    step = jax.jit(trainer.train_step, donate_argnums=0)
    first_loss = None
    for _ in range(50):
        state, loss = step(state, batch)
        first_loss = float(loss) if first_loss is None else first_loss
    final_loss, margins = pairwise_loss(
        state.params, batch, reward_fn=linear_reward, loss=LossSettings()
    )
    assert first_loss == pytest.approx(np.log(2.0), rel=1e-6)
    assert float(final_loss) < 0.5 * first_loss
    assert float(jnp.mean(margins > 0)) > 0.9
    assert int(state.step) == 50


def test_jitted_train_step_does_not_recompile_on_second_call():
    traces = []

    def counted_reward(params, features):
        traces.append(1)
        return linear_reward(params, features)

    trainer = Trainer.adamw(counted_reward)
    step = jax.jit(trainer.train_step, donate_argnums=0)
    state = trainer.init_state({"w": jnp.zeros(4)}, num_steps=3)
    state, _ = step(state, separable_batch(seed=1))
    traced_once = len(traces)
    state, _ = step(state, separable_batch(seed=2))
    state, _ = step(state, separable_batch(seed=3))
    assert traced_once > 0
    assert len(traces) == traced_once


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
    batch = separable_batch()._replace(weight=jnp.zeros(64))
    value, grads = jax.value_and_grad(
        lambda p: pairwise_loss(p, batch, reward_fn=linear_reward, loss=LossSettings())[0]
    )({"w": jnp.ones(4)})
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grads["w"]), 0.0)


def test_loss_variants_match_closed_forms():
    batch = separable_batch(8)
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    margins = np.asarray(
        linear_reward(params, batch.chosen) - linear_reward(params, batch.rejected)
    )
    chosen = np.asarray(linear_reward(params, batch.chosen))
    rejected = np.asarray(linear_reward(params, batch.rejected))

    def value(settings):
        return float(pairwise_loss(params, batch, reward_fn=linear_reward, loss=settings)[0])

    softplus = lambda x: np.logaddexp(0.0, x)  # noqa: E731
    assert value(LossSettings()) == pytest.approx(np.mean(softplus(-margins)), rel=1e-5)
    assert value(LossSettings(kind="hinge", target_margin=0.5)) == pytest.approx(
        np.mean(np.maximum(0.0, 0.5 - margins)), rel=1e-5
    )
    smoothed = 0.9 * softplus(-(margins - 1.0)) + 0.1 * softplus(margins - 1.0)
    assert value(LossSettings(target_margin=1.0, label_smoothing=0.1)) == pytest.approx(
        np.mean(smoothed), rel=1e-5
    )
    centred = softplus(-margins) + 0.2 * (chosen + rejected) ** 2
    assert value(LossSettings(centering_coef=0.2)) == pytest.approx(np.mean(centred), rel=1e-5)


def test_gradient_clipping_clips_the_gradient_adam_sees():
    batch = separable_batch()
    big = batch._replace(chosen=batch.chosen * 1e4, rejected=batch.rejected * 1e4)
    trainer = Trainer.adamw(
        linear_reward,
        optimizer=OptimizerSettings(grad_clip_norm=1.0, warmup_fraction=0.0, weight_decay=0.0),
    )
    state = trainer.init_state({"w": jnp.zeros(4)}, num_steps=1)
    new_state, stats = trainer.train_step_with_stats(state, big)
    assert float(stats.grad_norm) > 100.0  # the raw gradient is far above the clip norm
    # Adam's first moment after one step is (1 - b1) = 0.1 times the gradient it was given.
    first_moment = new_state.opt_state[1].mu
    assert float(optax.tree.norm(first_moment)) == pytest.approx(0.1 * 1.0, rel=1e-5)


def test_any_optax_optimizer_applies_its_own_updates():
    batch = separable_batch(16)
    params = {"w": jnp.linspace(-0.5, 0.5, 4)}
    trainer = Trainer(linear_reward, optax.sgd(0.3))
    state = trainer.init_state(params)
    new_state, _ = trainer.train_step(state, batch)
    grads = jax.grad(
        lambda p: pairwise_loss(p, batch, reward_fn=linear_reward, loss=LossSettings())[0]
    )(params)
    np.testing.assert_allclose(
        np.asarray(new_state.params["w"]), np.asarray(params["w"] - 0.3 * grads["w"]), rtol=1e-6
    )


def test_train_chunk_with_inactive_steps_equals_fewer_plain_steps():
    model = mlp_reward_model(4, [8])
    trainer = Trainer.adamw(model.reward_fn)
    params = init_members(model, jax.random.key(0), 2)
    state = jax.vmap(trainer.init_state)(params)
    pairs = separable_batch(64)
    rows = np.arange(64, dtype=np.int32).reshape(4, 1, 16).repeat(2, axis=1)
    rows[:, 1] = rows[:, 1, ::-1]  # the second member sees its batches in another order
    mask = np.ones((4, 2, 16), np.float32)
    mask[1, :, 8:] = 0.0  # half of step 2 is padding
    active = jnp.array([True, True, False, False])
    chunk_state, stats = jax.jit(trainer.train_chunk)(state, pairs, rows, mask, active)

    plain_step = jax.jit(jax.vmap(trainer.train_step))
    expected = state
    for step in range(2):
        batch = PairBatch(
            chosen=pairs.chosen[rows[step]],
            rejected=pairs.rejected[rows[step]],
            weight=pairs.weight[rows[step]] * mask[step],
        )
        expected, _ = plain_step(expected, batch)
    for got, want in zip(jax.tree.leaves(chunk_state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert stats.loss.shape == stats.grad_norm.shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(stats.loss[2:]), 0.0)
    np.testing.assert_array_equal(np.asarray(stats.grad_norm[2:]), 0.0)

    first = PairBatch(
        pairs.chosen[rows[0, 0]], pairs.rejected[rows[0, 0]], pairs.weight[rows[0, 0]]
    )
    grads = jax.grad(
        lambda p: pairwise_loss(p, first, reward_fn=model.reward_fn, loss=trainer.loss)[0]
    )(jax.tree.map(lambda leaf: leaf[0], params))
    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(float(stats.grad_norm[0, 0]), norm, rtol=1e-5)
