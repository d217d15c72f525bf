"""Blocking collectives of the control path: broadcasts, means, checks.

Collective: every rank of the communicator calls each of them, in the same
order, with nothing of the data path in flight on the same communicator.
Each is a non-blocking MPI collective completed by ``job.wait_all``: the
waiting rank sleeps instead of spinning, and the stall watchdog sees the
wait.
"""
import pickle

import numpy as np
from mpi4py import MPI

from .job import wait_all

__all__ = ['Control', 'AgreedError']


class AgreedError(ValueError):
    """An error every rank of the communicator raised together, at the same point:
    the job can end with every rank exiting normally instead of one aborting the rest."""


class Control:
    """Control-path collectives over the mpi4py communicator ``comm``
    (which the caller owns and frees)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def bcast(self, array, root=0):
        """In place: every rank's ``array`` becomes rank ``root``'s."""
        wait_all([self.comm.Ibcast(array, root=root)], 'a broadcast')

    def allreduce_mean(self, value):
        """The mean over ranks of a number (returns a float) or an array (returns
        a new float64 array of its shape)."""
        buf = np.array(value, np.float64, copy=True, ndmin=1)
        wait_all([self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)], 'a mean over ranks')
        buf /= self.size
        return buf if np.ndim(value) else float(buf[0])

    def gather(self, array, root=0):
        """Every rank's ``array`` (all of one shape and dtype) stacked in rank order
        at ``root``, ``(P, *shape)``; None elsewhere."""
        array = np.ascontiguousarray(array)
        into = np.empty((self.size,) + array.shape, array.dtype) if self.rank == root else None
        wait_all([self.comm.Igather(array, into, root=root)], 'a gather to rank 0')
        return into

    def barrier(self):
        wait_all([self.comm.Ibarrier()], 'a barrier')

    def allgather_text(self, text):
        """Every rank's (picklable) ``text``, in rank order."""
        mine = np.frombuffer(pickle.dumps(text), np.uint8)
        sizes = np.zeros(self.size, np.int64)
        wait_all([self.comm.Iallgather(np.array([mine.size], np.int64), sizes)],
                 'the ranks\' descriptions')
        everyone = np.empty(int(sizes.sum()), np.uint8)
        wait_all([self.comm.Iallgatherv(mine, (everyone, sizes))], 'the ranks\' descriptions')
        starts = np.concatenate([[0], np.cumsum(sizes)])
        return [pickle.loads(everyone[a:b].tobytes()) for a, b in zip(starts[:-1], starts[1:])]

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
