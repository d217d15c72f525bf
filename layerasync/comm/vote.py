"""Agreeing on small requests at iteration boundaries without a blocking collective.

``Vote(comm)``: at each boundary every rank calls ``vote(bits)`` with what
it wants (signal requests); the call posts a non-blocking bitwise-OR
allreduce of ``bits`` and returns the OR of the *previous* boundary's round,
which has long completed by then. So every rank learns the same answer at
the same boundary, one iteration after the request, and no boundary waits
for the slowest rank (the round overlaps an iteration of compute). Collective:
every rank calls ``vote`` at every boundary and ``close()`` once.
"""
import numpy as np
from mpi4py import MPI

from .job import wait_all

__all__ = ['Vote']


class Vote:
    def __init__(self, comm):
        self.comm = comm.Dup()
        self.mine, self.result = np.zeros(1, np.int64), np.zeros(1, np.int64)
        self.request = None

    def vote(self, bits):
        """Contribute ``bits`` to this boundary's round; the OR over ranks of the last round."""
        agreed = self._finish()
        self.mine[0] = bits
        self.request = self.comm.Iallreduce(self.mine, self.result, op=MPI.BOR)
        return agreed

    def _finish(self):
        if self.request is None:
            return 0
        wait_all([self.request])
        self.request = None
        return int(self.result[0])

    def close(self):
        """Collective: complete the last round (its requests are dropped) and free."""
        self._finish()
        self.comm.Free()
