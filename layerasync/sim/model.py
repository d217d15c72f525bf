"""Cost of one allreduce on P ranks: the alpha-beta(-gamma) model.

A message of n bytes between two ranks costs ``alpha + n / beta`` seconds
(alpha: latency per message step, beta: link bandwidth in bytes/s); summing
n bytes into a buffer costs ``n * gamma``. The classic allreduce algorithms
(Thakur, Rabenseifner and Gropp, "Optimization of collective communication
operations in MPICH", IJHPCA 2005; Patarasuk and Yuan 2009 for the ring):

=====================  ==============================================================
``ring``               ``2(P-1) alpha + 2(P-1)/P n/beta + (P-1)/P n gamma``
``recursive-doubling`` ``log2(P) (alpha + n/beta + n gamma)``
``rabenseifner``       ``2 log2(P) alpha + 2(P-1)/P n/beta + (P-1)/P n gamma``
``auto``               the cheapest of the three for each message, the idealised
                       choice an MPI library's tuned selection aims at
=====================  ==============================================================

The reduce-scatter and the all-gather of ``sharded`` are the two halves of
the ring allreduce, or of Rabenseifner's (recursive halving, then doubling;
``reduce_scatter_parts``, ``allgather_parts``).

Each cost is split in two (``allreduce_parts``): the alpha terms are
*latency*, during which the link can carry other traffic; the bandwidth and
reduction terms keep the rank's link *busy*. ``sigma``, 0 by default, is a
cost per message step that is busy too: the time a rank needs to be running
to take each step of the algorithm (to be scheduled, to reach its next
progress call), during which its part of the collective stands still. It is
what makes many small steps dear where ranks share cores (the emulated
cluster) or progress only inside MPI calls; ``2(P-1) sigma`` for the ring,
``log2(P) sigma`` for recursive doubling, ``2 log2(P) sigma`` for
Rabenseifner's. So allreduces in flight together
overlap their latencies but queue for the link, which is what posting several
chunks at once buys.

Assumptions, stated once: one rank per node and one full-duplex link per node;
a non-blocking switch (no contention between the ring's or the butterfly's
pairs); ``log2(P)`` is rounded up for P not a power of two (MPICH folds the
extra ranks in first, which costs one more step; we ignore that); P = 1 costs
nothing. Bandwidths are in bytes per second, times in seconds.
"""
import math
import re
from dataclasses import dataclass, replace

__all__ = ['Network', 'ALGORITHMS', 'FABRICS', 'fabric', 'parse_latency']

ALGORITHMS = ('ring', 'recursive-doubling', 'rabenseifner', 'auto')


@dataclass(frozen=True)
class Network:
    """A link and an allreduce algorithm: ``alpha`` s, ``beta`` bytes/s, ``gamma``
    s/byte, ``sigma`` s of busy time per message step."""
    alpha: float
    beta: float
    gamma: float = 0.0
    algorithm: str = 'ring'
    name: str = 'custom'
    sigma: float = 0.0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown allreduce algorithm '{self.algorithm}'; "
                             f"known: {', '.join(ALGORITHMS)}")
        if self.alpha < 0 or self.beta <= 0 or self.gamma < 0 or self.sigma < 0:
            raise ValueError(f'network {self.name}: need latency >= 0, bandwidth > 0, '
                             f'reduction cost >= 0 and step cost >= 0 (got alpha={self.alpha}, '
                             f'beta={self.beta}, gamma={self.gamma}, sigma={self.sigma})')

    def allreduce_time(self, nbytes, ranks):
        """Seconds for one allreduce of ``nbytes`` over ``ranks`` ranks."""
        return sum(self.allreduce_parts(nbytes, ranks))

    def allreduce_parts(self, nbytes, ranks):
        """(latency, busy) seconds of one allreduce: the alpha terms, and the
        bandwidth and reduction terms, which keep the rank's link busy. Several
        allreduces in flight overlap their latencies but share the link."""
        if ranks <= 1 or nbytes <= 0:
            return 0.0, 0.0
        parts = [cost(self, nbytes, ranks) for name, cost in _COSTS.items()
                 if self.algorithm in ('auto', name)]
        return min(parts, key=sum)

    def reduce_scatter_parts(self, nbytes, ranks):
        """(latency, busy) of a reduce-scatter of ``nbytes`` (each rank ends with
        the sum of 1/P of them): the first half of the ring or of Rabenseifner's
        allreduce (recursive halving) — ``(P-1) alpha`` or ``log2(P) alpha``,
        plus ``(P-1)/P n (1/beta + gamma)``; ``auto``: the cheaper."""
        return self._half(nbytes, ranks, self.gamma)

    def allgather_parts(self, nbytes, ranks):
        """(latency, busy) of an all-gather of ``nbytes`` (1/P from each rank): the
        second half of the ring or of Rabenseifner's allreduce (recursive
        doubling), ``(P-1)/P n / beta`` busy and no reduction."""
        return self._half(nbytes, ranks, 0.0)

    def _half(self, nbytes, ranks, gamma):
        if ranks <= 1 or nbytes <= 0:
            return 0.0, 0.0
        busy = (ranks - 1) / ranks * nbytes * (1 / self.beta + gamma)
        steps = {'ring': ranks - 1, 'recursive-doubling': math.ceil(math.log2(ranks)),
                 'rabenseifner': math.ceil(math.log2(ranks))}
        options = [(steps[name] * self.alpha, busy + steps[name] * self.sigma) for name in steps
                   if self.algorithm in ('auto', name)]
        return min(options, key=sum)

    def with_(self, **changes):
        return replace(self, **changes)

    def describe(self):
        reduce = f', reduction {1e-9 / self.gamma:.3g} GB/s' if self.gamma else ''
        step = f', {1e6 * self.sigma:.3g} us per step' if self.sigma else ''
        return (f'{self.name}: latency {1e6 * self.alpha:.3g} us, bandwidth '
                f'{self.beta / 1e9:.3g} GB/s ({8 * self.beta / 1e9:.3g} Gbit/s){reduce}{step}, '
                f'{self.algorithm} allreduce')


def _ring(net, n, p):
    steps = 2 * (p - 1)
    return steps * net.alpha, (p - 1) / p * n * (2 / net.beta + net.gamma) + steps * net.sigma


def _recursive_doubling(net, n, p):
    steps = math.ceil(math.log2(p))
    return steps * net.alpha, steps * (n * (1 / net.beta + net.gamma) + net.sigma)


def _rabenseifner(net, n, p):
    steps = 2 * math.ceil(math.log2(p))
    return steps * net.alpha, (p - 1) / p * n * (2 / net.beta + net.gamma) + steps * net.sigma


_COSTS = {'ring': _ring, 'recursive-doubling': _recursive_doubling,
          'rabenseifner': _rabenseifner}

# Nominal fabrics, one rank per node. Bandwidth: the standard's data rate
# (InfiniBand 4x EDR 100 Gbit/s, 4x HDR 200 Gbit/s; IEEE 802.3 100G, 25G,
# 10GBASE and 1000BASE, through TCP)
# times the share MPI typically gets (~95% on InfiniBand's RDMA, ~94% of
# Ethernet frames is TCP payload). Latency: the order of published MPI
# ping-pong latencies (a microsecond on InfiniBand with RDMA, tens of
# microseconds through a kernel TCP stack). Rounded, not measured here:
# fit a sweep (``--network``) for real numbers.
FABRICS = {
    'ib-edr': Network(alpha=1.0e-6, beta=0.95 * 100e9 / 8, name='ib-edr'),
    'ib-hdr': Network(alpha=1.0e-6, beta=0.95 * 200e9 / 8, name='ib-hdr'),
    '100gbe': Network(alpha=10e-6, beta=0.94 * 100e9 / 8, name='100gbe'),
    '25gbe': Network(alpha=12e-6, beta=0.94 * 25e9 / 8, name='25gbe'),
    '10gbe': Network(alpha=15e-6, beta=0.94 * 10e9 / 8, name='10gbe'),
    '1gbe': Network(alpha=40e-6, beta=0.94 * 1e9 / 8, name='1gbe'),
    # Ranks of one node through shared memory: a copy bound by memory bandwidth.
    'shm': Network(alpha=0.5e-6, beta=5e9, name='shm'),
}


def fabric(name):
    if name not in FABRICS:
        raise ValueError(f"unknown fabric '{name}'; known: {', '.join(FABRICS)}")
    return FABRICS[name]


_TIME_UNITS = {'s': 1, 'ms': 1e-3, 'us': 1e-6, 'µs': 1e-6, 'ns': 1e-9}


def parse_latency(text):
    """'2us', '1.5µs', '0.02ms', '3e-6s' -> seconds."""
    m = re.fullmatch(r'\s*([0-9.]+(?:e-?[0-9]+)?)\s*(s|ms|us|µs|ns)\s*', text)
    if not m:
        raise ValueError(f"latency '{text}': expected a number and a unit: s, ms, us or ns "
                         '(e.g. 2us)')
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]
