"""Tests of the temperature modes of the MARS weights and the curriculum schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.allocation import (
    TEMPERATURE_MODES,
    curriculum_temperature,
    effective_sample_size,
    effective_temperature,
    ess_temperature,
    mars_weights,
    mars_weights_with_mode,
    scaled_margins,
)


def _margins(seed: int, num: int = 1000, scale: float = 3.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(seed), (num,))


@jax.jit
def _weights(margins, temperature):
    return (
        mars_weights_with_mode(margins, mode="fixed", temperature=temperature),
        mars_weights_with_mode(margins, mode="fixed", temperature=temperature, signed=True),
        mars_weights(margins, temperature=temperature),
        mars_weights(margins, temperature=temperature, signed=True),
    )


@pytest.mark.parametrize("temperature", [0.0, 0.1, 1.0, 7.5])
def test_fixed_mode_is_mars_weights(temperature):
    margins = _margins(0)
    unsigned, signed, reference, reference_signed = _weights(margins, temperature)
    np.testing.assert_array_equal(unsigned, reference)
    np.testing.assert_array_equal(signed, reference_signed)
    np.testing.assert_array_equal(
        mars_weights_with_mode(margins, mode="fixed", temperature=temperature),
        mars_weights(margins, temperature=temperature),
    )


@pytest.mark.parametrize("signed", [False, True])
def test_normalized_mode_is_invariant_to_the_margin_scale(signed):
    margins = _margins(1)
    weights = mars_weights_with_mode(margins, mode="normalized", temperature=2.0, signed=signed)
    for scale in (0.01, 7.0, 1000.0):
        scaled = mars_weights_with_mode(
            scale * margins, mode="normalized", temperature=2.0, signed=signed
        )
        np.testing.assert_allclose(scaled, weights, rtol=2e-4, atol=1e-9)
    # The fixed mode is not, and normalized is fixed at tau / std(s).
    assert not np.allclose(mars_weights(7.0 * margins, temperature=2.0), weights, rtol=1e-2)
    score = margins if signed else jnp.abs(margins)
    np.testing.assert_allclose(
        weights, mars_weights(margins, temperature=2.0 / float(jnp.std(score)), signed=signed)
    )


def test_normalized_mode_with_constant_margins_is_uniform():
    for margins in (jnp.zeros(5), jnp.full(5, 3.0)):
        weights = mars_weights_with_mode(margins, mode="normalized", temperature=4.0)
        np.testing.assert_allclose(weights, np.full(5, 0.2), rtol=1e-6)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(("seed", "num", "scale"), [(2, 1000, 3.0), (3, 50, 0.2), (4, 4096, 30)])
def test_target_ess_hits_the_target(seed, num, scale, signed):
    margins = _margins(seed, num, scale)
    solve = jax.jit(
        lambda m, fraction: mars_weights_with_mode(
            m, mode="target_ess", ess_fraction=fraction, signed=signed
        )
    )
    previous = 0.0
    for fraction in (0.9, 0.5, 0.2, 0.05):
        weights = solve(margins, fraction)
        ess = float(effective_sample_size(weights))
        assert ess == pytest.approx(fraction * num, rel=1e-3)
        tau = float(effective_temperature(margins, mode="target_ess", ess_fraction=fraction))
        assert tau > previous  # a smaller target needs a larger temperature
        previous = tau


def test_target_ess_edge_cases():
    margins = _margins(5, 100)
    # Fraction 1: temperature 0, uniform weights.
    assert float(ess_temperature(jnp.abs(margins), ess_fraction=1.0)) == 0.0
    np.testing.assert_allclose(
        mars_weights_with_mode(margins, mode="target_ess", ess_fraction=1.0), np.full(100, 0.01)
    )
    # Constant scores: temperature 0.
    assert float(ess_temperature(jnp.ones(7), ess_fraction=0.3)) == 0.0
    # Three pairs tied at the lowest score: ESS cannot fall below 3, and the solver
    # gets as close as it can.
    scores = jnp.concatenate([jnp.zeros(3), jnp.linspace(1.0, 2.0, 97)])
    weights = jax.nn.softmax(-ess_temperature(scores, ess_fraction=0.01) * scores)
    assert float(effective_sample_size(weights)) == pytest.approx(3.0, rel=1e-4)
    # The temperature scales inversely with the scores, so the weights do not change.
    np.testing.assert_allclose(
        mars_weights_with_mode(margins, mode="target_ess", ess_fraction=0.3),
        mars_weights_with_mode(50 * margins, mode="target_ess", ess_fraction=0.3),
        rtol=1e-3,
        atol=1e-8,
    )


def test_target_ess_traced_fraction_does_not_recompile():
    jitted = jax.jit(lambda m, f: ess_temperature(jnp.abs(m), ess_fraction=f))
    margins = _margins(6, 200)
    taus = [float(jitted(margins, f)) for f in (0.8, 0.4, 0.1)]
    assert taus == sorted(taus)
    assert jitted._cache_size() == 1


def test_scaled_margins_and_modes_errors():
    margins = jnp.array([-2.0, 0.5, 1.0])
    np.testing.assert_allclose(
        scaled_margins(margins, mode="fixed", temperature=0.5), [1.0, 0.25, 0.5]
    )
    np.testing.assert_allclose(
        scaled_margins(margins, mode="fixed", temperature=0.5, signed=True), [-1.0, 0.25, 0.5]
    )
    assert TEMPERATURE_MODES == ("fixed", "normalized", "target_ess")
    with pytest.raises(ValueError, match="mode"):
        scaled_margins(margins, mode="annealed", temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        scaled_margins(margins, mode="normalized")
    with pytest.raises(ValueError, match="ess_fraction"):
        scaled_margins(margins, mode="target_ess", temperature=1.0)


def test_curriculum_temperature_is_geometric():
    taus = [float(curriculum_temperature(t, 5, start=0.1, end=10.0)) for t in range(5)]
    np.testing.assert_allclose(taus, [0.1, 0.1 * 10**0.5, 1.0, 10**0.5, 10.0], rtol=1e-6)
    np.testing.assert_allclose(np.diff(np.log(taus)), np.log(10) / 2, rtol=1e-5)
    assert float(curriculum_temperature(0, 1, start=0.5, end=2.0)) == 0.5
    assert float(curriculum_temperature(3, 4, start=2.0, end=2.0)) == 2.0
    # Cooling works the same way, and a traced round index is fine.
    cooled = jax.jit(lambda t: curriculum_temperature(t, 3, start=4.0, end=1.0))
    np.testing.assert_allclose([float(cooled(t)) for t in range(3)], [4.0, 2.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="num_rounds"):
        curriculum_temperature(0, 0, start=1.0, end=1.0)
    with pytest.raises(ValueError, match="> 0"):
        curriculum_temperature(0, 3, start=0.0, end=1.0)
