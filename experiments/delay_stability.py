"""How large a step stays stable when gradients arrive K iterations late.

    .venv/bin/python experiments/delay_stability.py

On a quadratic f(w) = lambda w^2 / 2 with step a = lr * lambda, delayed SGD
with momentum m is the linear recurrence

    w(t+1) - w(t) = m (w(t) - w(t-1)) - a w(t-K)

whose characteristic polynomial is z^(K+1) - (1+m) z^K + m z^(K-1) + a. It is
stable iff every root lies inside the unit circle. For m = 0 the limit has a
closed form (Levin & May, 1976): a < 2 cos(K pi / (2K + 1)). This script finds
the limit numerically by bisection for both, and checks the closed form.
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
    return 2 * math.cos(delay * math.pi / (2 * delay + 1))


def main():
    print('largest stable a = lr * lambda on a quadratic, gradients K iterations late;')
    print('with momentum m the effective step is a / (1 - m)')
    print(f"{'K':>3} {'Levin-May':>10} {'m = 0':>8} {'m = 0.9':>8} {'effective':>10}")
    for k in range(6):
        m0, m9 = largest_stable_step(k), largest_stable_step(k, 0.9)
        print(f'{k:>3} {levin_may(k):>10.4f} {m0:>8.4f} {m9:>8.4f} {m9 / 0.1:>10.4f}')


if __name__ == '__main__':
    main()
