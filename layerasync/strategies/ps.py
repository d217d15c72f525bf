"""``ps-sync`` and ``ps-async``: parameter-server baselines, the workers' side.

The last ``--servers`` ranks of the job hold the parameters and the solver
history (``ps_server``); the others train. A worker pushes the pieces of
layer l's gradient to their servers the moment backward has them
(``after_backward(l)``), posting with them the receives of the pieces' new
weights straight into its parameter arena; ``before_forward(l)`` waits for
them. Nothing happens at the end of an iteration: the servers update.

- ``ps-sync``: a server updates a piece once every worker's gradient of that
  clock is in, with the solver's own rule: the iterates of ``sync``.
- ``ps-async``: a server applies each gradient as it arrives (SGD with
  momentum only) and answers with its current weights, but withholds an
  answer until the bound holds: a worker starting iteration t holds weights
  that include every worker's gradients of clocks up to t-1-S (stale-synchronous
  parallel, ``--staleness S``; S = 0 gives the iterates of ``ps-sync``).

Observed staleness: the weights a worker uses in iteration t fully include
clocks 0..c-1 for the least up-to-date piece; t - c (0 under ``ps-sync``, at
most S) is counted per iteration and reported by ``metrics()``.

Drains (``finish``): a worker waits for its own answers; under ``ps-async``
the workers then pull the servers' weights between two barriers, so all of them
test and snapshot the same weights, which include every gradient pushed.
Snapshots: worker 0's ``state_dict()`` first gathers the servers' weights and
history into its solver, so the ordinary snapshot holds the servers' state;
``start()`` gives every rank (servers included) rank 0's weights, history and
iteration, so resuming pushes them back.
"""
import time
from collections import Counter

import numpy as np

from ..comm.control import Control
from .base import Strategy
from .ps_job import Layout, check_solver, job_settings, staleness_bound, start_job

__all__ = ['PsSync', 'PsAsync']


class ParameterServerStrategy(Strategy):
    """A worker of a parameter-server job.

    ``mpi_comm`` is the whole job (workers and servers; building the strategy
    is collective over it, as is ``start``); ``self.comm`` then covers the
    workers only. The allreduce communicator settings do not apply.
    """
    asynchronous = False

    def __init__(self, solver, mpi_comm=None, argument=None, trace=None, servers=1,
                 staleness=None, **comm_settings):
        super().__init__(solver, mpi_comm, argument, trace)
        self.staleness = staleness_bound(self.name, staleness)
        check_solver(solver, self.name)
        self.lag = Counter()          # observed staleness -> iterations
        self.roles = None
        if mpi_comm is None:
            return                    # one process: no server; end_iteration updates
        from ..comm import ps
        self.ps = ps
        self.roles = ps.Roles(mpi_comm, servers)
        if self.roles.is_server:
            raise ValueError(f'{self.roles.describe(self.rank)} is a server of this job: run it '
                             'with layerasync.strategies.ps_server.serve, not as a worker')
        self.rank, self.size = self.roles.index, self.roles.workers
        self.comm = Control(self.roles.group)
        self.layout = Layout(self.net, servers)
        n = len(self.layout.pieces)
        self.clock_in = np.zeros(n, np.int64)   # receive buffers of the clock messages
        self.complete = np.zeros(n, np.int64)   # clocks fully included in the weights held
        self.param_layers = set(self.net.param_layers)
        self.in_flight = {}                     # layer -> (requests, post time)

    def settings(self):
        servers = self.roles.servers if self.roles is not None else 0
        return job_settings(self.solver, self.name, self.staleness, servers, self.size)

    def start(self):
        """Collective over the whole job (servers included)."""
        if self.roles is not None:
            start_job(self.roles, self.solver, self.settings())
            self.complete[:] = self.solver.iter

    # -- hooks ------------------------------------------------------------
    def after_backward(self, i):
        if self.roles is None:
            return
        if i not in self.param_layers:
            self._progress()
            return
        roles, arena, requests = self.roles, self.net.arena, []
        for piece in self.layout.by_layer.get(i, ()):
            server, tag = roles.server_rank(piece.server), piece.index
            # The receives first, so the answer finds them posted and lands in place.
            requests.append(roles.weights.Irecv(arena.data[piece.view], server, tag))
            requests.append(roles.clocks.Irecv(self.clock_in[tag:tag + 1], server, tag))
            requests.append(roles.grads.Isend(arena.diff[piece.view], server, tag))
        self.in_flight[i] = (requests, time.perf_counter())

    def before_forward(self, i):
        if i in self.in_flight:
            self._receive(i)
        elif self.roles is not None:
            self._progress()

    def end_iteration(self):
        if self.roles is None:
            self.solver.update()
        elif self.complete.size:
            self.lag[int(self.solver.iter - self.complete.min())] += 1

    def _receive(self, i):
        requests, posted = self.in_flight.pop(i)
        layer = self.net.layers[i].name
        with self.span(f'wait {layer}', layer=layer):
            self.ps.wait_all(requests)
        if self.trace is not None:
            self.trace.span('comm', f'push/pull {layer}', posted, time.perf_counter(), layer=layer)
        # Backward adds into the gradient; the send has completed, so it may be zeroed.
        self.net.arena.diff[self.net.param_slice(i)] = 0.0
        for piece in self.layout.by_layer.get(i, ()):
            self.complete[piece.index] = self.clock_in[piece.index]

    def _progress(self):
        """Move the oldest layer's transfers on: MPI progresses only inside MPI calls."""
        oldest = next(iter(self.in_flight.values()), None)
        if oldest is not None:
            self.ps.progress(oldest[0])

    def progress_hook(self):
        """Long layers (convolution chunks) move the transfers on too."""
        return self._progress if self.roles is not None else None

    # -- drains, snapshots, shutdown ------------------------------------------------
    def finish(self):
        """Wait for this worker's answers; ps-async: collective over the workers."""
        if self.roles is None:
            return
        for i in sorted(self.in_flight):
            self._receive(i)
        if self.asynchronous:
            self.comm.barrier()   # now the servers hold every worker's pushes
            self._pull()
            self.comm.barrier()   # no worker pushes again before all have pulled
        if self.trace is not None and self.rank == 0:
            self._collect_server_spans()

    def _pull(self):
        roles, ps, requests = self.roles, self.ps, []
        for piece in self.layout.pieces:
            server, tag = roles.server_rank(piece.server), piece.index
            requests.append(roles.weights.Irecv(self.net.arena.data[piece.view], server, tag))
            requests.append(roles.clocks.Irecv(self.clock_in[tag:tag + 1], server, tag))
        self._ask_servers(ps.PULL)
        ps.wait_all(requests)
        self.complete[:] = self.clock_in

    def _ask_servers(self, kind):
        request = np.array([kind, self.roles.rank], np.int64)
        for s in range(self.roles.servers):
            self.roles.control.Send(request, self.roles.server_rank(s), self.ps.REQUEST)

    def _collect_server_spans(self):
        self._ask_servers(self.ps.TRACE)
        for s in range(self.roles.servers):
            self.trace.events += self.roles.control.recv(source=self.roles.server_rank(s),
                                                         tag=self.ps.REPLY)

    def state_dict(self):
        """Worker 0, drained, before it writes a snapshot: gather the servers'
        weights and solver history into this solver (the snapshot's contents)."""
        if self.roles is None:
            return {}
        self._ask_servers(self.ps.GATHER)
        arrays = [self.net.arena.data, *self.solver.history]
        for s in range(self.roles.servers):
            for piece in self.layout.by_server[s]:
                for array in arrays:
                    self.roles.control.Recv(array[piece.view], self.roles.server_rank(s),
                                            self.ps.REPLY)
        return {}

    def metrics(self):
        """Observed staleness so far, {lag: iterations} (the trainer's optional hook)."""
        return {'staleness': {str(k): v for k, v in sorted(self.lag.items())}} if self.lag else {}

    def close(self):
        """Tell the servers to stop and free the communicators (collective over the job)."""
        if self.roles is None:
            return
        for i in sorted(self.in_flight):
            self._receive(i)
        self._ask_servers(self.ps.STOP)
        self.roles.free()
        self.roles = self.comm = None


class PsSync(ParameterServerStrategy):
    name = 'ps-sync'


class PsAsync(ParameterServerStrategy):
    name = 'ps-async'
    asynchronous = True
