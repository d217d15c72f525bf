"""Counter-based random draws keyed by sample stream position (SplitMix64).

Element e of the sample at stream position p of a layer with key k draws the
64 bits ``mix(mix(k + p * golden) + e * golden)``, where ``mix`` is
SplitMix64's finalizer: the bits of ``layerasync.data.keyed_bits`` for the
sample, then SplitMix64's stream seeded by them for its elements. No state,
so any rank computes any sample's draws, in one pass and in any order.
"""
import numpy as np
from numba import njit

JIT = dict(nogil=True, cache=True, fastmath=False)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(inline='always', **JIT)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(**JIT)
def dropout_forward(x, key, first, threshold, scale, mask, out):
    """Dropout over ``x`` (N, D): element (n, e) is kept when the top 32 bits of
    its draw, for the sample at stream position ``first + n``, are at least
    ``threshold`` (the dropped fraction times 2**32). Writes ``mask`` (N, D):
    ``scale`` where kept, else 0, and ``out = x * mask`` in the arrays' dtype
    (``out`` may be ``x``)."""
    n, d = x.shape
    for s in range(n):
        sample = _mix(key + np.uint64(first + s) * _GOLDEN)
        for e in range(d):
            bits = _mix(sample + np.uint64(e) * _GOLDEN)
            mask[s, e] = scale if (bits >> np.uint64(32)) >= threshold else 0
            out[s, e] = x[s, e] * mask[s, e]
