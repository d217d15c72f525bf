"""Blocking collectives of the control path: broadcasts, means, checks.

Collective: every rank of the communicator calls each of them, in the same
order, with nothing of the data path in flight on the same communicator.
"""
import numpy as np
from mpi4py import MPI

__all__ = ['Control', 'AgreedError']


class AgreedError(ValueError):
    """An error every rank of the communicator raised together, at the same point:
    the job can end with every rank exiting normally instead of one aborting the rest."""


class Control:
    """Control-path collectives over the mpi4py communicator ``control``."""

    def __init__(self, control):
        self.control = control
        self.rank, self.size = control.Get_rank(), control.Get_size()

    def bcast(self, array, root=0):
        self.control.Bcast(array, root=root)

    def allreduce_sum(self, array):
        """In-place sum of a (small) array."""
        self.control.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        return array

    def allreduce_mean(self, value):
        buf = np.array(value, np.float64, copy=True, ndmin=1)
        self.control.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        buf /= self.size
        return buf if np.ndim(value) else float(buf[0])

    def barrier(self):
        self.control.Barrier()

    def allgather_text(self, text):
        return self.control.allgather(text)

    def check_same(self, lines, describe=lambda rank: f'rank {rank}'):
        """Stop every rank if any rank's ``lines`` (strings) differ from rank 0's,
        naming the rank and the first difference."""
        everyone = self.allgather_text(lines)
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                first = next((a, b) for a, b in zip(everyone[0] + ['(nothing)'],
                                                    theirs + ['(nothing)']) if a != b)
                raise AgreedError(f'{describe(rank)} differs from rank 0: rank 0 has {first[0]}, '
                                  f'rank {rank} has {first[1]}. Every rank must run the same '
                                  'net, solver and strategy settings.')
