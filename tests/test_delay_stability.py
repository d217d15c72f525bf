"""The delay-stability analysis quoted in docs/theory.md."""
import importlib.util
import os

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    'delay_stability', os.path.join(os.path.dirname(__file__), '..', 'experiments', 'delay_stability.py'))
ds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ds)


@pytest.mark.parametrize('delay', range(5))
def test_bisection_finds_the_levin_may_limit(delay):
    assert ds.largest_stable_step(delay) == pytest.approx(ds.levin_may(delay), abs=1e-6)


def test_momentum_limits():
    assert ds.largest_stable_step(0, 0.9) == pytest.approx(3.8, abs=1e-6)   # heavy ball: 2(1+m)
    assert ds.largest_stable_step(1, 0.9) == pytest.approx(0.1, abs=1e-6)   # roots' product m + a < 1


@pytest.mark.parametrize('momentum', [0.0, 0.3, 0.5, 0.9, 0.99])
def test_one_delay_allows_one_effective_step_whatever_the_momentum(momentum):
    limit = ds.largest_stable_step(1, momentum)
    assert limit == pytest.approx(ds.small_delay_limit(1, momentum), abs=1e-6)
    assert limit / (1 - momentum) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize('delay', [2, 3, 5])
def test_high_momentum_limit_goes_as_one_minus_m_over_k(delay):
    """(1 - m) / K as K (1 - m) -> 0: within 0.5% at m = 0.999, 8% at m = 0.9 (K <= 5)."""
    for momentum, within in [(0.999, 0.005), (0.9, 0.08)]:
        limit = ds.largest_stable_step(delay, momentum, tol=1e-12)
        assert limit == pytest.approx(ds.small_delay_limit(delay, momentum), rel=within)
    # The m = 0 column does not: it goes as pi / (2K + 1), far above 1 / K in effective steps.
    assert ds.levin_may(delay) > 1.2 * ds.small_delay_limit(delay, 0.0)


def test_simulated_quadratic_agrees_with_the_roots():
    """Run delayed heavy-ball on w^2/2 just inside and just outside the limit."""
    for delay, m in [(1, 0.0), (2, 0.0), (2, 0.9)]:
        limit = ds.largest_stable_step(delay, m)
        for a, bounded in [(0.97 * limit, True), (1.03 * limit, False)]:
            w, h, past = 1.0, 0.0, [1.0] * (delay + 1)
            for _ in range(4000):
                h = m * h + a * past[0]
                w -= h
                past = past[1:] + [w]
            assert (abs(w) < 1) == bounded, (delay, m, a)
            assert np.isfinite(w) or not bounded
