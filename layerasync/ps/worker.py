"""The workers of ``ps-sync`` / ``ps-async``: a strategy that pushes gradients
and pulls weights.

A worker pushes the pieces of layer l's gradient to their servers the moment
backward has them (``after_backward(l)``), posting with them the receives of
the pieces' new weights straight into its parameter arena;
``before_forward(l)`` waits for them. Nothing happens at the end of an
iteration: the servers update.

Drains (``finish``): a worker waits for its own answers; under ``ps-async``
the workers then pull the servers' weights between two barriers, so all of
them test and snapshot the same weights, which include every gradient pushed.
Snapshots: worker 0's ``state_dict()`` first gathers the servers' weights and
history into its solver, so the ordinary snapshot holds the servers' state;
``start()`` gives every rank (servers included) rank 0's weights, history and
iteration, so resuming pushes them back.

Without a communicator (one process) there is no server: ``end_iteration``
updates, as ``sync`` does, and nothing here needs MPI.
"""
import time
from collections import Counter

import numpy as np

from ..strategies.agree import agree
from ..strategies.base import Strategy
from . import GATHER, PULL, REPLY, STOP, TRACE, check_solver, staleness_bound
from .layout import Layout

__all__ = ['ParameterServerStrategy', 'PsSync', 'PsAsync', 'WORKERS']


class ParameterServerStrategy(Strategy):
    """A worker of a parameter-server job.

    ``mpi_comm`` is the whole job (workers and servers; building the strategy
    is collective over it, as are ``start`` and ``close``); ``self.control`` then
    covers the workers only. The allreduce communicator settings do not apply.
    """
    asynchronous = False

    def __init__(self, solver, mpi_comm=None, argument=None, trace=None, servers=1,
                 staleness=None, **comm_settings):
        super().__init__(solver, mpi_comm, argument, trace)
        if comm_settings.get('compress'):
            raise ValueError(f"--compress {comm_settings['compress']}: the parameter servers "
                             'exchange uncompressed pieces (compression applies to the gradient '
                             'allreduce of sync, layerwise, async-layerwise and delayed:K)')
        self.staleness = staleness_bound(self.name, staleness)
        check_solver(solver, self.name)
        self.lag = Counter()          # observed staleness -> iterations
        self.wire = None
        if mpi_comm is None:
            return                    # one process: no server; end_iteration updates
        from ..comm.control import Control
        from .wire import Wire
        self.wire = Wire(mpi_comm, servers)
        if self.wire.role.serving:
            raise ValueError(f'{self.wire.describe(self.rank)} is a server of this job: '
                             'run it with layerasync.ps.run, not as a worker')
        self.rank, self.size = self.wire.role.index, self.wire.workers
        self.control = Control(self.wire.group)
        self.layout = Layout(solver, servers)
        n = len(self.layout.pieces)
        self.clock_in = np.zeros(n, np.int64)   # receive buffers of the clock messages
        self.complete = np.zeros(n, np.int64)   # clocks fully included in the weights held
        self.in_flight = {}                     # layer -> (requests, post time)

    def start(self, context=()):
        """Collective over the whole job (servers included); then the workers
        agree on the caller's ``context`` (the trainer's schedule), which the
        servers do not follow."""
        if self.wire is not None:
            self.wire.start(self.solver, self.name, self.staleness)
            agree(self.control, list(context), describe=self.wire.describe)
            self.complete[:] = self.solver.iter

    # -- hooks ------------------------------------------------------------
    def after_backward(self, i):
        if self.wire is None:
            return
        pieces = self.layout.by_layer.get(i)
        if pieces is None:
            if i in self.solver.slots_of:
                # Only lr_mult 0 blobs: never applied, so drop what backward wrote.
                self.net.arena.diff[self.net.param_slice(i)] = 0.0
            self._progress()
            return
        wire, arena, requests = self.wire, self.net.arena, []
        for piece in pieces:
            server, tag = wire.server_rank(piece.server), piece.index
            # The receives first, so the answer finds them posted and lands in place.
            requests.append(wire.weights.Irecv(arena.data[piece.view], server, tag))
            requests.append(wire.clocks.Irecv(self.clock_in[tag:tag + 1], server, tag))
            requests.append(wire.grads.Isend(arena.diff[piece.view], server, tag))
        self.in_flight[i] = (requests, time.perf_counter())

    def before_forward(self, i):
        if self.wire is None:
            return
        if i in self.in_flight:
            self._receive(i)
        else:
            self._progress()

    def end_iteration(self):
        if self.wire is None:
            self.solver.update()
        elif self.complete.size:
            self.lag[int(self.solver.iter - self.complete.min())] += 1

    def _receive(self, i):
        requests, posted = self.in_flight.pop(i)
        layer = self.net.layers[i].name
        servers = sorted({self.wire.server_rank(p.server) for p in self.layout.by_layer[i]})
        with self.span(f'wait {layer}', layer=layer):
            self.wire.wait_all(requests, f"layer '{layer}' from the server rank(s) "
                                         f"{', '.join(map(str, servers))}")
        if self.trace is not None:
            self.trace.span('comm', f'push/pull {layer}', posted, time.perf_counter(), layer=layer)
        # Backward adds into the gradient; the send has completed, so it may be zeroed.
        self.net.arena.diff[self.net.param_slice(i)] = 0.0
        for piece in self.layout.by_layer[i]:
            self.complete[piece.index] = self.clock_in[piece.index]

    def _progress(self):
        """Move the oldest layer's transfers on: MPI progresses only inside MPI calls."""
        oldest = next(iter(self.in_flight.values()), None)
        if oldest is not None:
            self.wire.progress(oldest[0])

    def progress_hook(self):
        """Long layers (convolution chunks) move the transfers on too."""
        return self._progress if self.wire is not None else None

    # -- drains, snapshots, shutdown ------------------------------------------------
    def finish(self):
        """Wait for this worker's answers; ps-async: collective over the workers."""
        if self.wire is None:
            return
        self._drain()
        if self.asynchronous:
            self.control.barrier()   # now the servers hold every worker's pushes
            self._pull()
            self.control.barrier()   # no worker pushes again before all have pulled
        if self.trace is not None and self.rank == 0:
            self._collect_server_spans()

    def _drain(self):
        for i in sorted(self.in_flight):
            self._receive(i)

    def _pull(self):
        wire, requests = self.wire, []
        for piece in self.layout.pieces:
            server, tag = wire.server_rank(piece.server), piece.index
            requests.append(wire.weights.Irecv(self.net.arena.data[piece.view], server, tag))
            requests.append(wire.clocks.Irecv(self.clock_in[tag:tag + 1], server, tag))
        wire.ask_servers(PULL)
        wire.wait_all(requests)
        self.complete[:] = self.clock_in

    def _collect_server_spans(self):
        self.wire.ask_servers(TRACE)
        for s in range(self.wire.servers):
            self.trace.events += self.wire.control.recv(source=self.wire.server_rank(s),
                                                        tag=REPLY)

    def state_dict(self):
        """Worker 0, drained, before it writes a snapshot: gather the servers'
        weights and solver history into this solver (the snapshot's contents)."""
        if self.wire is None:
            return {}
        self.wire.ask_servers(GATHER)
        arrays = [self.net.arena.data, *self.solver.history]
        for s in range(self.wire.servers):
            for piece in self.layout.by_server[s]:
                for array in arrays:
                    self.wire.control.Recv(array[piece.view], self.wire.server_rank(s), REPLY)
        return {}

    def metrics(self):
        """Observed staleness so far, {lag: iterations} (the trainer's optional hook)."""
        return {'staleness': {str(k): v for k, v in sorted(self.lag.items())}} if self.lag else {}

    def close(self):
        """Tell the servers to stop and free the communicators (collective over the job)."""
        if self.wire is None:
            return
        self._drain()
        self.wire.ask_servers(STOP)
        self.wire.free()
        self.wire = self.control = None


class PsSync(ParameterServerStrategy):
    name = 'ps-sync'


class PsAsync(ParameterServerStrategy):
    name = 'ps-async'
    asynchronous = True


WORKERS = {cls.name: cls for cls in (PsSync, PsAsync)}
