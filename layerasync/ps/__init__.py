"""Parameter servers: ``ps-sync`` and ``ps-async``, the baseline for the allreduce strategies.

Roles. A job of P ranks runs W = P - S workers (world ranks 0..W-1, so
worker 0 is rank 0: it logs, writes metrics, the trace and snapshots) and S
servers (the last S ranks, ``--servers S``). ``role(world, servers)`` says
which a rank is; ``run`` builds and runs it. A worker reads the data shard
of rank k among W (``Role.data``); a server builds the same solver with
synthetic data — it reads no data file — for the parameter layout and the
update rule, and holds the weights and solver history of its pieces.

Pieces (``layout``). The trainable parameters (``solver.slots`` with
lr_mult != 0) are cut into pieces, contiguous arena ranges, each held by one
server; a piece never straddles two blobs. Blobs with lr_mult 0
(BatchNorm's running statistics) are not served: each worker keeps its own.

Messages (``wire``; buffer calls on arena slices, no pickling on the data
path), each stream on its own duplicate of the world communicator, so a tag
only names the piece and MPI's non-overtaking rule (same source, tag and
communicator arrive in order) numbers a worker's pushes of a piece:

- gradients, worker -> server: piece p of ``arena.diff`` (tag p), pushed by
  ``after_backward(l)`` for l's pieces, with the receives of the answer
  posted first, so that it lands in place in ``arena.data``;
- weights, server -> worker: piece p (tag p), and clocks: how many clocks
  those weights fully include (one int64, tag p);
- control: the start-up agreement over the whole job, requests to a server
  (int64 [kind, worker rank]: stop, pull, gather, trace) and its replies.

Clocks. Worker k's n-th push of piece p is its gradient of clock t0 + n,
so no clock travels with a gradient; the answer for p says how many clocks
its weights fully include, and a worker starting iteration t counts its
observed staleness t - c (c the least over the pieces; ``metrics()``).

- ``ps-sync``: a server updates a piece once every worker's gradient of the
  clock is in, with the solver's own rule (``server.SyncServer``): the
  iterates of ``sync``.
- ``ps-async``: a server applies each gradient as it arrives (SGD with
  momentum only) and withholds an answer until the staleness bound S holds
  (``server.AsyncServer``); S = 0 gives the iterates of ``ps-sync``.

Start-up, drains, snapshots and shutdown are the worker's (``worker``);
``docs/parameter_server.md`` explains the design and what was measured.

MPI: ``wire`` and ``server`` use ``layerasync.comm.job`` and are imported
only by code that runs under MPI; this module and ``worker`` import neither,
so one process trains with ``ps-sync`` (as plain SGD) without mpi4py.
"""
import dataclasses
from typing import NamedTuple

from ..signals import Interrupted

__all__ = ['NAMES', 'DEFAULT_STALENESS', 'Role', 'role', 'run', 'check_solver',
           'staleness_bound', 'STOP', 'PULL', 'GATHER', 'TRACE', 'REQUEST', 'REPLY']

NAMES = ('ps-sync', 'ps-async')
DEFAULT_STALENESS = 2

# Requests to a server (the first int64 of a control message), and the tags of
# the control stream.
STOP, PULL, GATHER, TRACE = range(4)
REQUEST, REPLY = 0, 1


class Role(NamedTuple):
    """A rank's part in a parameter-server job."""
    serving: bool
    index: int        # among the workers, or among the servers
    workers: int
    servers: int

    def data(self, options):
        """The ``DataOptions`` of this rank, from the run's ``options``: a worker
        reads its shard among the workers, a server synthetic data (no files)."""
        if self.serving:
            return dataclasses.replace(options, rank=0, world_size=1, synthetic=True,
                                       prefetch=False)
        return dataclasses.replace(options, rank=self.index, world_size=self.workers)

    def describe(self, rank):
        """How errors name world rank ``rank``: 'rank 2 (server 0)'."""
        kind = f'server {rank - self.workers}' if rank >= self.workers else f'worker {rank}'
        return f'rank {rank} ({kind})'


def role(world, servers):
    """This rank's ``Role`` when the last ``servers`` ranks of ``world`` (an
    mpi4py communicator) serve and the others train; ValueError unless there
    is at least one of each."""
    size, rank = world.Get_size(), world.Get_rank()
    if not (isinstance(servers, int) and 1 <= servers < size):
        raise ValueError(f'a parameter-server job needs at least one server and one worker: '
                         f'{servers} server(s) among {size} rank(s); launch more ranks '
                         f'(mpiexec -n {max(servers, 1) + 1} or more) or lower --servers')
    workers = size - servers
    serving = rank >= workers
    return Role(serving, rank - workers if serving else rank, workers, servers)


def run(world, name, solver, train, servers=1, staleness=None, trace=None, watch=None):
    """This rank's part of a ``name`` job (``'ps-sync'`` or ``'ps-async'``) over ``world``.

    Collective over ``world``, on which every rank calls it with the same
    ``name``, ``servers`` and ``staleness``. ``solver`` is this rank's, built
    with ``role(world, servers).data(...)`` (the caller owns and closes it).
    A server serves until every worker stops, and ``run`` returns None. A
    worker builds the worker strategy (not yet started) and returns
    ``train(strategy)``; the strategy is closed (collective) once ``train``
    returns or raises ``signals.Interrupted`` (which every worker raises at the
    same boundary), and left open if it raises anything else (the caller ends
    the job). ``watch``: the job's stall watchdog (``comm.stall.StallWatch``
    over ``world``), which a server answers while it serves.
    """
    if name not in NAMES:
        raise ValueError(f"'{name}' is not a parameter-server strategy; known: {', '.join(NAMES)}")
    if role(world, servers).serving:
        from .server import serve
        serve(solver, world, name, servers, staleness, trace, watch)
        return None
    from .worker import WORKERS
    strategy = WORKERS[name](solver, world, trace=trace, servers=servers, staleness=staleness)
    try:
        result = train(strategy)
    except Interrupted:
        strategy.close()   # every worker stopped at the same boundary: the servers stop too
        raise
    strategy.close()
    return result


def check_solver(solver, name):
    """Refuse what a server cannot do (errors name the strategy and the fix)."""
    if solver.param.clip_gradients > 0:
        raise ValueError(f'{name}: clip_gradients needs the norm of the whole gradient, which no '
                         'single server holds; unset clip_gradients or use an allreduce strategy')
    if name == 'ps-async' and solver.type != 'SGD':
        raise ValueError(f"ps-async applies each worker's gradient on its own, which is defined "
                         f'for SGD with momentum only, not {solver.type}; use ps-sync, '
                         'or type: "SGD"')


def staleness_bound(name, staleness):
    """The staleness bound S of strategy ``name`` (``staleness`` None: the default)."""
    if name == 'ps-sync':
        if staleness not in (None, 0):
            raise ValueError(f'ps-sync is synchronous; --staleness {staleness} applies to '
                             'ps-async')
        return 0
    staleness = DEFAULT_STALENESS if staleness is None else staleness
    if not (isinstance(staleness, int) and staleness >= 0):
        raise ValueError(f'ps-async: the staleness bound must be an integer >= 0, '
                         f'not {staleness!r}')
    return staleness
