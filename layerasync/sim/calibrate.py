"""Calibration: a network fitted to a measured allreduce sweep, and the update rate.

``fit_network`` reads the JSON of ``benchmarks/allreduce_sweep.py`` (P ranks,
sizes n, seconds T per allreduce) and fits the ring model
``T(n) = 2(P-1) alpha + 2(P-1)/P n / beta`` by least squares on *relative*
errors, so 4 KB and 64 MB weigh the same. At one P the reduction arithmetic
cannot be told apart from the transfer: it is folded into beta (gamma = 0),
and the fitted network is exact only for the P it was measured at.

``measure_update_rate`` times the SGD update kernel (``layerasync.kernels.solver``,
one fused pass over weights, gradient and history) on this machine, in
parameter bytes per second: the simulator's update cost of a layer is its
parameter bytes divided by that rate.
"""
import json
import time

import numpy as np

from .model import Network

__all__ = ['load_sweep', 'fit_network', 'fit_report', 'measure_update_rate']


def load_sweep(path):
    """The sweep in ``path``; ValueError naming what is missing."""
    with open(path) as f:
        sweep = json.load(f)
    missing = [k for k in ('ranks', 'sizes', 'iallreduce_s') if k not in sweep]
    if missing:
        raise ValueError(f'{path}: not an allreduce sweep (no {", ".join(missing)}); write one '
                         'with benchmarks/allreduce_sweep.py')
    if sweep['ranks'] < 2 or len(sweep['sizes']) < 2:
        raise ValueError(f'{path}: a fit needs at least 2 ranks and 2 sizes (the sweep has '
                         f"{sweep['ranks']} ranks, {len(sweep['sizes'])} sizes)")
    return sweep


def fit_network(sweep, kind='iallreduce', name='sweep'):
    """The ring ``Network`` that best fits ``sweep[kind + '_s']`` against ``sweep['sizes']``."""
    p = sweep['ranks']
    n = np.asarray(sweep['sizes'], float)
    t = np.asarray(sweep[f'{kind}_s'], float)
    # Divide each equation a + b n = t by t: least squares on relative error.
    design = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (a, b), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if a < 0:   # latency below resolution: a line through the origin
        a, b = 0.0, float(np.sum(n / t) / np.sum((n / t) ** 2))
    if b <= 0:
        raise ValueError('the sweep does not grow with message size: no bandwidth to fit')
    return Network(alpha=a / (2 * (p - 1)), beta=2 * (p - 1) / (p * b), name=name)


def fit_report(sweep, network, kind='iallreduce'):
    """Lines: measured vs fitted time per size, and the relative error."""
    p = sweep['ranks']
    rows = [f"{'bytes':>10} {'measured us':>12} {'model us':>10} {'error':>7}"]
    for nbytes, measured in zip(sweep['sizes'], sweep[f'{kind}_s']):
        model = network.allreduce_time(nbytes, p)
        rows.append(f'{nbytes:>10} {1e6 * measured:>12.1f} {1e6 * model:>10.1f} '
                    f'{(model - measured) / measured:>+7.0%}')
    return rows


def measure_update_rate(nbytes, repeats=5):
    """Parameter bytes per second of one SGD-with-momentum update pass on this machine.

    ``nbytes``: the parameter bytes to update (clamped to 4..64 MB, so the
    measurement neither sits in cache nor takes long). Best of ``repeats``.
    """
    from ..kernels.solver import sgd_update
    count = int(min(max(nbytes, 4 << 20), 64 << 20)) // 4
    w, g, h = (np.full(count, 0.5, np.float32) for _ in range(3))
    sgd_update(w, g, h, 0.01, 0.9, 5e-4, 0.5, False)   # compile or load from cache
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        sgd_update(w, g, h, 0.01, 0.9, 5e-4, 0.5, False)
        best = min(best, time.perf_counter() - start)
    return 4 * count / best



def measure_codec_rate(spec, nbytes=4 << 20, repeats=5):
    """Float32 gradient bytes per second that codec ``spec`` (``--compress``)
    packs and unpacks on this machine: ``layerasync.comm.compress.measure_rate``."""
    from ..comm.compress import measure_rate
    return measure_rate(spec, nbytes, repeats)
