"""MPI for jobs whose ranks play different roles (parameter servers and
workers, the bench's idle servers): splitting a job, and waiting without
holding a core.

Every wait here polls non-blocking requests and pauses with ``Backoff``
between polls that found nothing, instead of blocking in MPI (MPICH
busy-polls inside ``MPI_Wait`` and inside blocking collectives): a rank that
waits long — a server between gradients, a worker for a withheld answer, the
servers while the bench times rows without them — leaves the core to the
ranks that compute.

Outside ``layerasync.comm`` only this module's functions touch MPI for such
jobs; a single process never imports it.
"""
import time

from mpi4py import MPI

from . import stall
from .backoff import Backoff

__all__ = ['ANY_SOURCE', 'split', 'wait_all', 'progress', 'test_some', 'cancel_all',
           'barrier', 'max_over']

ANY_SOURCE = MPI.ANY_SOURCE


def split(comm, color):
    """Collective over ``comm``: the communicator of the ranks that gave the same
    ``color`` (an int >= 0), in ``comm``'s rank order. The caller frees it."""
    return comm.Split(color, comm.Get_rank())


def wait_all(requests, what='a message'):
    """Complete every request of ``requests`` (a list of mpi4py requests),
    polling with back-off, under the stall watchdog (``what`` names the wait)."""
    backoff, started = Backoff(), time.perf_counter()
    while not MPI.Request.Testall(requests):
        stall.check(started, what)
        backoff.pause()
    stall.done()


def progress(requests):
    """One test of ``requests``: MPI moves a large (rendezvous) transfer only
    while both sides call into it, so a computing rank calls this between layers."""
    MPI.Request.Testall(requests)


def test_some(requests):
    """Indices of the requests of ``requests`` that completed (possibly none), without waiting."""
    return MPI.Request.Testsome(requests) or []


def cancel_all(requests):
    """Cancel the pending receives of ``requests`` (None entries allowed) and complete them all."""
    for request in requests:
        if request:
            request.Cancel()
    MPI.Request.Waitall(requests)


def barrier(comm):
    """A barrier over ``comm`` that sleeps while it waits (collective)."""
    wait_all([comm.Ibarrier()], 'a barrier')


def max_over(comm, array):
    """In place: every rank's ``array`` becomes the elementwise maximum over
    ``comm``'s ranks (collective; sleeps while it waits)."""
    wait_all([comm.Iallreduce(MPI.IN_PLACE, array, op=MPI.MAX)])
