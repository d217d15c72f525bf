"""How large a step stays stable when gradients arrive K iterations late.

    .venv/bin/python experiments/delay_stability.py

On a quadratic f(w) = kappa w^2 / 2 (curvature kappa) with a = lr * kappa,
delayed SGD with momentum m is the linear recurrence

    w(t+1) - w(t) = m (w(t) - w(t-1)) - a w(t-K)

whose characteristic polynomial is z^(K+1) - (1+m) z^K + m z^(K-1) + a. It is
stable iff every root lies inside the unit circle. For m = 0 the limit has a
closed form (Levin & May, 1976): a < 2 cos(K pi / (2K + 1)). With momentum,
two limits are exact or asymptotic (derived in docs/theory.md, section 4):
at K = 1 the limit is a < 1 - m for every m; for K >= 1 and K (1 - m) << 1
it approaches a = (1 - m) / K. This script finds the limits numerically by
bisection for m = 0, 0.5 and 0.9, and prints them both as a and in units of
the effective step, a / (1 - m); tests/test_delay_stability.py checks the
closed form and both limits against the bisection.
"""
import math

import numpy as np


def spectral_radius(a, delay, momentum=0.0):
    """Largest |root| of z^(K+2) - (1+m) z^(K+1) + m z^K + a z (the polynomial
    above times z, which adds a harmless root at 0 and keeps K = 0 uniform)."""
    poly = np.zeros(delay + 3)
    poly[0], poly[1], poly[2] = 1.0, -(1.0 + momentum), momentum
    poly[-2] += a
    return max(abs(np.roots(poly)))


def largest_stable_step(delay, momentum=0.0, tol=1e-9):
    """The supremum of a > 0 with spectral radius < 1, by bisection on (0, 4]."""
    lo, hi = 0.0, 4.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if spectral_radius(mid, delay, momentum) < 1 - 1e-12:
            lo = mid
        else:
            hi = mid
    return lo


def levin_may(delay):
    """The exact limit without momentum (Levin & May, 1976)."""
    return 2 * math.cos(delay * math.pi / (2 * delay + 1))


def small_delay_limit(delay, momentum):
    """(1 - m) / K: the limit for K >= 1 as K (1 - m) -> 0; exact at K = 1."""
    return (1 - momentum) / delay


MOMENTA = (0.0, 0.5, 0.9)


def main():
    print('largest stable a = lr * kappa on a quadratic of curvature kappa, gradients K '
          'iterations late;')
    print('a / (1 - m) is the same limit in units of the effective step lr * kappa / (1 - m)')
    high = MOMENTA[-1]
    print(f"{'K':>3} {'Levin-May':>10} |"
          + ''.join(f"{f'a, m = {m:g}':>12}" for m in MOMENTA) + f"{f'(1-{high:g})/K':>12} |"
          + ''.join(f"{f'a/(1-m), m = {m:g}':>18}" for m in MOMENTA[1:]))
    for k in range(6):
        limits = [largest_stable_step(k, m) for m in MOMENTA]
        small_delay = f'{small_delay_limit(k, high):>12.4f}' if k else f"{'':>12}"
        print(f'{k:>3} {levin_may(k):>10.4f} |' + ''.join(f'{a:>12.4f}' for a in limits)
              + small_delay + ' |'
              + ''.join(f'{a / (1 - m):>18.4f}' for a, m in zip(limits[1:], MOMENTA[1:])))


if __name__ == '__main__':
    main()
