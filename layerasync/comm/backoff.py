"""Waiting without holding a core: spin briefly, then sleep for doubling intervals.

Why not ``MPI_Wait`` (or ``Waitany``, ``Waitall``): MPICH busy-polls inside
them, and so does a Python loop of ``Test`` calls. A rank that waits long —
for a peer still computing, for a slow link, a server between gradients —
then holds a core at 100 % doing nothing. While every rank has a core of its
own that costs nothing; when ranks outnumber cores (an emulated cluster, or
many ranks on a laptop) the waiter takes the core from the very peer it is
waiting for.

The price of sleeping: the waiter notices a completion up to one sleep late,
and MPI moves a non-blocking operation forward only while some MPI call runs,
so a sleeping rank also delays the steps of a multi-step reduction that need
it. The spin phase keeps short waits — the common case when each rank has its
own core — free of both; ``max_sleep`` bounds the lateness of long ones.
"""
import os
import time

__all__ = ['Backoff', 'default_spin', 'LONG_SPIN', 'SHORT_SPIN']

# How long a wait spins before it sleeps: long while every rank on the machine
# has a core of its own (sleeping then only delays the peers' steps of a
# reduction: lenet's allreduce alone took 8-10 ms per iteration instead of 1-2 ms
# at 2 ranks on 2 cores with the short spin, docs/cluster.md), short when ranks
# outnumber cores (spinning then takes the core a peer computes on).
LONG_SPIN, SHORT_SPIN = 10e-3, 50e-6


def default_spin(environ=os.environ):
    """``LONG_SPIN`` unless the ranks on this machine (as the launcher says,
    or ``LAYERASYNC_RANKS_PER_MACHINE`` for an emulated cluster) outnumber its
    cores; then ``SHORT_SPIN``."""
    from .._threads import ranks_on_this_node
    return LONG_SPIN if ranks_on_this_node(environ) <= (os.cpu_count() or 1) else SHORT_SPIN


class Backoff:
    """Pauses between polls that found nothing to do.

    Call ``pause()`` after each poll that found nothing, ``reset()`` when a
    poll found something (or a new wait begins). The first ``spin`` seconds
    after a reset, ``pause()`` returns at once (the caller spins); after that
    it sleeps, starting at ``min_sleep`` and doubling up to ``max_sleep``.
    """

    def __init__(self, spin=50e-6, max_sleep=1e-3, min_sleep=20e-6):
        for name, value in (('spin', spin), ('max_sleep', max_sleep), ('min_sleep', min_sleep)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f'back-off {name} must be a number of seconds >= 0, not {value!r}')
        if min_sleep > max_sleep:
            raise ValueError(f'back-off min_sleep ({min_sleep} s) exceeds max_sleep ({max_sleep} s)')
        self.spin, self.max_sleep, self.min_sleep = spin, max_sleep, min_sleep
        self.reset()

    def reset(self):
        self.since, self.sleep = None, 0.0

    def pause(self):
        seconds = self.next_sleep()
        if seconds:
            time.sleep(seconds)

    def next_sleep(self):
        """How long this pause should sleep (0 while spinning), for callers that
        sleep their own way (on a condition, releasing its lock)."""
        now = time.perf_counter()
        if self.since is None:
            self.since = now
        if now - self.since < self.spin:
            return 0.0
        self.sleep = min(self.max_sleep, max(2 * self.sleep, self.min_sleep))
        return self.sleep
