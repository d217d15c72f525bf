"""The servers of ``ps-sync`` / ``ps-async``: hold pieces of the parameters and update them.

A server builds the same solver as the workers (with synthetic data, so it
reads no data files): it knows the layout and the update rules, and uses the
pieces ``Layout`` gives it. It polls (``comm.ps.Idle``) for gradients and
requests until every worker has asked it to stop.

Clocks: worker k's n-th push of piece p is its gradient of clock start + n
(MPI keeps one sender's messages on one tag and communicator in order), so no
clock travels with a gradient. ``received[p, k]`` is the last clock received;
the weights of p fully include clocks up to min_k received[p, k], and every
answer carries that count (+1).

``ps-sync``: once every worker's gradient of clock c is in, sum them in worker
order and call ``Solver.update_slice`` at the learning rate of c
(``scale`` = 1/W); send the new weights to every worker from the arena.

``ps-async`` splits Caffe's SGD step h' = m h + r (g + d w), w' = w - h'
(r = lr(c) lr_mult, d = weight_decay decay_mult, g the workers' mean
gradient) into a part per clock and a part per gradient::

    per clock c, once, when its first gradient arrives (clocks in order):
        h = m h + r d w;    w -= h
    per gradient g_k of clock c, whenever it arrives:
        h += r g_k / W;     w -= r g_k / W

After the W gradients of clock c this is the synchronous step (up to the
order of float sums). A late gradient (of a clock older than the newest
applied) still enters the momentum once, at its own clock's rate; only its
decay by m is skipped. The answer to worker k's gradient of clock c waits
until every worker's gradient of clock c - S is in, so k's iteration c + 1
uses weights complete up to c - S. With S = 0 no gradient of clock c + 1
arrives before all of clock c: the iterates of ``ps-sync``.
"""
import time

import numpy as np

from ..kernels import solver as K
from .ps_job import Layout, check_solver, job_settings, staleness_bound, start_job

__all__ = ['serve', 'ParameterServer', 'SyncServer', 'AsyncServer']


class ParameterServer:
    """One server rank. Collective over the job with the workers' strategy:
    construction (it splits ``world``), ``start()``, and ``close()`` after
    ``run()``, which returns once every worker has sent STOP."""

    def __init__(self, solver, world, name, servers=1, staleness=None, trace=None):
        from ..comm import ps
        check_solver(solver, name)
        self.ps, self.MPI = ps, ps.MPI
        self.solver, self.name, self.trace = solver, name, trace
        self.staleness = staleness_bound(name, staleness)
        self.roles = ps.Roles(world, servers)
        if not self.roles.is_server:
            raise ValueError(f'{self.roles.describe(self.roles.rank)} is a worker of this job, '
                             'not a server')
        self.workers = self.roles.workers
        self.layout = Layout(solver.net, servers)
        self.pieces = self.layout.by_server[self.roles.index]
        dtype = solver.net.arena.data.dtype
        self.grad = {(p.index, k): np.empty(p.stop - p.start, dtype)
                     for p in self.pieces for k in range(self.workers)}
        self.received = np.zeros((len(self.layout.pieces), self.workers), np.int64)
        self.clock_out = np.zeros_like(self.received)   # send buffers of the clock messages
        self.sends = {}                                  # (piece, worker) -> last answer's requests
        self.request = np.zeros(2, np.int64)             # [kind, worker] of a control message
        self.requests, self.keys, self.slot = [], [], {}
        self.grad_scale = 1.0 / self.workers

    def start(self):
        """Collective over the job: the start-up checks, then rank 0's state."""
        start_job(self.roles, self.solver, job_settings(self.solver, self.name, self.staleness,
                                                        self.roles.servers, self.workers))
        self.received[:] = self.solver.iter - 1
        if self.trace is not None:
            self.trace.start()

    # -- the loop -------------------------------------------------------------
    def run(self):
        roles, MPI = self.roles, self.MPI
        self.keys = [(p, k) for p in self.pieces for k in range(self.workers)]
        self.slot = {key: 1 + j for j, key in enumerate(self.keys)}
        self.requests = [roles.control.Irecv(self.request, MPI.ANY_SOURCE, self.ps.REQUEST)]
        self.requests += [None] * len(self.keys)
        for p, k in self.keys:
            self._listen(p, k)
        stopped, idle = 0, self.ps.Idle()
        while stopped < self.workers:
            done = MPI.Request.Testsome(self.requests)
            if not done:
                idle.pause()
                continue
            idle.reset()
            for j in done:
                if j == 0:
                    kind, worker = (int(v) for v in self.request)
                    self.requests[0] = roles.control.Irecv(self.request, MPI.ANY_SOURCE,
                                                           self.ps.REQUEST)
                    stopped += self._on_request(kind, worker)
                else:
                    piece, k = self.keys[j - 1]
                    self.received[piece.index, k] += 1
                    self.on_gradient(piece, k)

    def _listen(self, piece, k):
        """(Re-)post the receive of worker k's next gradient of ``piece``."""
        self.requests[self.slot[piece, k]] = self.roles.grads.Irecv(self.grad[piece.index, k],
                                                                    k, piece.index)

    def on_gradient(self, piece, k):
        """Worker k's gradient of ``piece`` is in ``self.grad[piece.index, k]``."""
        raise NotImplementedError

    def _answer(self, piece, k):
        """Send worker k the current weights of ``piece`` and the clocks they include."""
        p, ps = piece.index, self.ps
        ps.wait_all(self.sends.get((p, k), []))   # done already: k has pushed since
        self.clock_out[p, k] = self.received[p].min() + 1
        self.sends[p, k] = [
            self.roles.weights.Isend(self.answer_buffer(piece, k), k, p),
            self.roles.clocks.Isend(self.clock_out[p, k:k + 1], k, p)]

    def answer_buffer(self, piece, k):
        return self.solver.net.arena.data[piece.view]

    def _on_request(self, kind, worker):
        """Serve a control request; returns 1 for STOP."""
        ps, control = self.ps, self.roles.control
        if kind == ps.STOP:
            return 1
        if kind == ps.PULL:
            for piece in self.pieces:
                self._answer(piece, worker)
        elif kind == ps.GATHER:
            for piece in self.pieces:
                for array in [self.solver.net.arena.data, *self.solver.history]:
                    control.Send(array[piece.view], worker, ps.REPLY)
        elif kind == ps.TRACE:
            control.send(self.trace.events if self.trace is not None else [], worker, ps.REPLY)
            if self.trace is not None:
                self.trace.events = []
        else:
            raise RuntimeError(f'{self.roles.describe(self.roles.rank)}: unknown request {kind} '
                               f'from worker {worker}')
        return 0

    def _span(self, track, name, start, clock, **args):
        if self.trace is not None:
            self.trace.iteration = clock
            self.trace.span(track, name, start, time.perf_counter(), **args)

    def close(self):
        """Collective over the job, after ``run``: drop the receives nobody will match."""
        for r in self.requests:
            if r:
                r.Cancel()
        self.MPI.Request.Waitall(self.requests)
        for requests in self.sends.values():
            self.ps.wait_all(requests)
        self.roles.free()


class SyncServer(ParameterServer):
    """``ps-sync``: update a piece with every worker's gradient of the clock."""

    def on_gradient(self, piece, k):
        p, s = piece.index, self.solver
        clock = int(self.received[p, k])
        if self.received[p].min() < clock:
            return                                    # other workers' gradients still to come
        start = time.perf_counter()
        for j in range(self.workers):                 # the answers read the arena slice
            self.ps.wait_all(self.sends.get((p, j), []))
        grad = s.net.arena.diff[piece.view]
        np.copyto(grad, self.grad[p, 0])
        for j in range(1, self.workers):
            grad += self.grad[p, j]
        s.iter = clock
        s.begin_update(scale=self.grad_scale)
        s.update_slice(piece.view, *self.layout.rule[p])
        self._span('compute', f'update {self.layout.name[p]}', start, clock, piece=p)
        for j in range(self.workers):
            self._listen(piece, j)
            self._answer(piece, j)


class AsyncServer(ParameterServer):
    """``ps-async``: apply each gradient on arrival; answer within the staleness bound."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.copies = {key: np.empty_like(g) for key, g in self.grad.items()}
        self.zeros = np.zeros(max((g.size for g in self.grad.values()), default=0),
                              self.solver.net.arena.data.dtype)
        self.waiting = {p.index: [] for p in self.pieces}   # (worker, clock, arrival) to answer

    def start(self):
        super().start()
        self.clock_applied = {p.index: self.solver.iter - 1 for p in self.pieces}

    def on_gradient(self, piece, k):
        p, s, param = piece.index, self.solver, self.solver.param
        clock, start = int(self.received[p, k]), time.perf_counter()
        lr_mult, decay_mult = self.layout.rule[p]
        w, h = s.net.arena.data[piece.view], s.history[0][piece.view]
        while self.clock_applied[p] < clock:   # the per-clock parts, in order
            self.clock_applied[p] += 1
            rate = s.learning_rate(self.clock_applied[p]) * lr_mult
            K.sgd_update(w, self.zeros[:w.size], h, rate, param.momentum,
                         param.weight_decay * decay_mult, 1.0, param.regularization_type == 'L1')
        g = self.grad[p, k]
        g *= s.learning_rate(clock) * lr_mult / (self.workers * param.iter_size)
        h += g
        w -= g
        self._listen(piece, k)
        self._span('compute', f'apply {self.layout.name[p]} w{k}', start, clock, piece=p, worker=k)
        self.waiting[p].append((k, clock, start))
        self._release(piece)

    def _release(self, piece):
        """Answer every waiting worker whose bound now holds."""
        p = piece.index
        newest = self.received[p].min() + self.staleness
        still = []
        for k, clock, arrived in self.waiting[p]:
            if clock <= newest:
                self._answer(piece, k)
                if self.trace is not None and time.perf_counter() - arrived > 1e-4:
                    self._span('comm', f'withheld {self.layout.name[p]} w{k}', arrived, clock)
            else:
                still.append((k, clock, arrived))
        self.waiting[p] = still

    def answer_buffer(self, piece, k):
        # A copy: later gradients change the piece while this answer is on the wire.
        copy = self.copies[piece.index, k]
        np.copyto(copy, self.solver.net.arena.data[piece.view])
        return copy


SERVERS = {'ps-sync': SyncServer, 'ps-async': AsyncServer}


def serve(solver, world, strategy, servers=1, staleness=None, trace=None):
    """Run this rank as a server of ``strategy`` until every worker stops.

    Collective over ``world``: the workers build the strategy of the same name
    on ``world`` (with the same ``servers`` and ``staleness``) and train.
    """
    if strategy not in SERVERS:
        raise ValueError(f"'{strategy}' is not a parameter-server strategy; known: "
                         f"{', '.join(SERVERS)}")
    server = SERVERS[strategy](solver, world, strategy, servers, staleness, trace)
    server.start()
    server.run()
    server.close()
