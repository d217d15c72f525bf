"""The parameter-server transport: roles, pieces, polling.

A job of P ranks runs W = P - S workers (world ranks 0..W-1, so worker 0 is
rank 0 and logs) and S servers (the last S ranks). The parameter arena is
cut into *pieces*, each held by one server; a piece never straddles two
parameter blobs, so one ``lr_mult``/``decay_mult`` applies to all of it.

Messages (all buffer calls on arena slices, no pickling on the data path),
each stream on its own duplicate of the world communicator so that the tag
only has to name the piece and MPI's non-overtaking rule (same source, tag
and communicator arrive in order) numbers a worker's pushes of a piece:

- ``grads``: worker -> server, the gradient of piece p (tag p);
- ``weights``: server -> worker, the weights of piece p (tag p), and
  ``clocks``: server -> worker, how many clocks those weights fully include
  (int64, tag p);
- ``control``: start-up collectives over the whole job; requests to a server
  (tag ``REQUEST``: int64 [kind, the worker's rank]) and the server's answers (tag ``REPLY``).

mpi4py is imported here, never by the layers: one process without MPI trains.
"""
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

__all__ = ['Roles', 'Piece', 'shard', 'Idle', 'wait_all', 'progress',
           'STOP', 'PULL', 'GATHER', 'TRACE', 'REQUEST', 'REPLY']

# Requests to a server (the first int64 of a control message).
STOP, PULL, GATHER, TRACE = range(4)
REQUEST, REPLY = 0, 1


class Roles:
    """Who serves and who trains, and the communicators between them.

    Collective over ``world``: every rank builds it (it splits and duplicates
    ``world``) and calls ``free()``. ``group`` is the communicator of this
    rank's kind (the workers' one carries the trainer's control calls).
    """

    def __init__(self, world, servers):
        size, rank = world.Get_size(), world.Get_rank()
        if not (isinstance(servers, int) and 1 <= servers < size):
            raise ValueError(f'a parameter-server job needs at least one server and one worker: '
                             f'{servers} server(s) among {size} rank(s); launch more ranks '
                             f'(mpiexec -n {max(servers, 1) + 1} or more) or lower --servers')
        self.size, self.servers, self.workers = size, servers, size - servers
        self.rank = rank
        self.is_server = rank >= self.workers
        self.index = rank - self.workers if self.is_server else rank
        self.group = world.Split(int(self.is_server), rank)
        self.grads, self.weights, self.clocks, self.control = (world.Dup() for _ in range(4))

    def server_rank(self, server):
        return self.workers + server

    def describe(self, rank):
        """'rank 2 (server 0)': how errors name a rank."""
        role = f'server {rank - self.workers}' if rank >= self.workers else f'worker {rank}'
        return f'rank {rank} ({role})'

    def free(self):
        for c in (self.group, self.grads, self.weights, self.clocks, self.control):
            c.Free()


@dataclass(frozen=True)
class Piece:
    index: int      # also its message tag
    server: int
    start: int      # arena offsets (elements)
    stop: int
    blob: int       # index into the ranges given to ``shard``

    @property
    def view(self):
        return slice(self.start, self.stop)


def shard(ranges, servers, snap=0.1, align=16):
    """Cut blob ``ranges`` (arena (start, stop), in memory order) into pieces over ``servers``.

    Each server gets a contiguous run of the concatenated ranges, balanced by
    size. A cut moves to the nearest blob boundary when that is within
    ``snap`` of a server's share (fewer, larger messages); otherwise it cuts
    the blob, at a multiple of ``align`` elements. Pieces come in server order,
    then memory order.
    """
    offsets = np.cumsum([0] + [stop - start for start, stop in ranges])
    total = int(offsets[-1])
    share = total / servers
    cuts = [0]
    for s in range(1, servers):
        ideal = s * share
        near = int(offsets[np.argmin(np.abs(offsets - ideal))])
        cut = near if abs(near - ideal) <= snap * share else int(round(ideal / align)) * align
        cuts.append(min(max(cut, cuts[-1]), total))
    cuts.append(total)
    pieces = []
    for s in range(servers):
        for b, (start, _) in enumerate(ranges):
            lo, hi = max(cuts[s], offsets[b]), min(cuts[s + 1], offsets[b + 1])
            if lo < hi:
                pieces.append(Piece(len(pieces), s, int(start + lo - offsets[b]),
                                    int(start + hi - offsets[b]), b))
    return pieces


class Idle:
    """Back-off between polls that found nothing: spin ``spin`` seconds, then
    sleep for doubling intervals up to ``max_sleep``.

    Why not ``MPI_Wait``: MPICH busy-polls inside it, so a rank that waits long
    (a server between gradients, a worker for a withheld reply) would hold a
    core that the computing ranks need whenever ranks outnumber cores.
    """

    def __init__(self, spin=50e-6, max_sleep=1e-3):
        self.spin, self.max_sleep = spin, max_sleep
        self.reset()

    def reset(self):
        self.since, self.sleep = None, 0.0

    def pause(self):
        now = time.perf_counter()
        if self.since is None:
            self.since = now
        if now - self.since < self.spin:
            return
        self.sleep = min(self.max_sleep, max(2 * self.sleep, 20e-6))
        time.sleep(self.sleep)


def wait_all(requests):
    """Complete every request of ``requests`` (polling with ``Idle``)."""
    if MPI.Request.Testall(requests):
        return
    idle = Idle()
    while not MPI.Request.Testall(requests):
        idle.pause()


def progress(requests):
    """One test of ``requests``: MPI moves a large (rendezvous) transfer only
    while both sides call into it, so a computing rank calls this between layers."""
    MPI.Request.Testall(requests)
