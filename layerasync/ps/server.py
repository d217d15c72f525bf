"""The servers of ``ps-sync`` / ``ps-async``: hold pieces of the parameters and update them.

A server builds the same solver as the workers (with synthetic data, so it
reads no data files): it knows the layout and the update rules, and uses the
pieces ``Layout`` gives it. It polls for gradients and requests, pausing
with ``comm.backoff.Backoff`` while none came, until every worker has asked
it to stop. Only code that runs under MPI imports this module.

Clocks: worker k's n-th push of piece p is its gradient of clock start + n
(MPI keeps one sender's messages on one tag and communicator in order), so no
clock travels with a gradient. ``received[p, k]`` is the last clock received;
the weights of p fully include clocks up to min_k received[p, k], and every
answer carries that count (+1).

``ps-sync``: once every worker's gradient of clock c is in, sum them in worker
order and call ``Solver.update_slice`` at the learning rate of c
(``begin_update(scale=1/W)`` once per clock: the rate, Adam's step count and
the scale are the clock's, the same for all its pieces); send the new
weights to every worker from the arena.

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

from ..comm import job
from ..comm.backoff import Backoff
from ..kernels import solver as K
from . import GATHER, PULL, REPLY, REQUEST, STOP, TRACE, check_solver, staleness_bound
from .layout import Layout
from .wire import Wire

__all__ = ['serve', 'ParameterServer', 'SyncServer', 'AsyncServer']


class ParameterServer:
    """One server rank. Collective over the job with the workers' strategy:
    construction (it splits ``world``), ``start()``, and ``close()`` after
    ``run()``, which returns once every worker has sent STOP."""

    def __init__(self, solver, world, name, servers=1, staleness=None, trace=None, watch=None):
        check_solver(solver, name)
        self.solver, self.name, self.trace, self.watch = solver, name, trace, watch
        self.staleness = staleness_bound(name, staleness)
        self.wire = Wire(world, servers)
        if not self.wire.role.serving:
            raise ValueError(f'{self.wire.describe(self.wire.rank)} is a worker of this job, '
                             'not a server')
        self.workers = self.wire.workers
        self.layout = Layout(solver, servers)
        self.pieces = self.layout.by_server[self.wire.role.index]
        dtype = solver.net.arena.data.dtype
        self.grad = {(p.index, k): np.empty(p.stop - p.start, dtype)
                     for p in self.pieces for k in range(self.workers)}
        self.received = np.zeros((len(self.layout.pieces), self.workers), np.int64)
        self.clock_out = np.zeros_like(self.received)   # send buffers of the clock messages
        self.sends = {}                                  # (piece, worker) -> last answer's requests
        self.request = np.zeros(2, np.int64)             # [kind, worker] of a control message
        self.requests, self.keys, self.slot = [], [], {}

    def start(self):
        """Collective over the job: the start-up agreement, then rank 0's state."""
        self.wire.start(self.solver, self.name, self.staleness)
        self.received[:] = self.solver.iter - 1
        if self.trace is not None:
            self.trace.start()

    # -- the loop -------------------------------------------------------------
    def run(self):
        self.keys = [(p, k) for p in self.pieces for k in range(self.workers)]
        self.slot = {key: 1 + j for j, key in enumerate(self.keys)}
        self.requests = [self._listen_for_requests()] + [None] * len(self.keys)
        for p, k in self.keys:
            self._listen(p, k)
        stopped, backoff = 0, Backoff()
        while stopped < self.workers:
            done = job.test_some(self.requests)
            if not done:
                if self.watch is not None:
                    # Answer a stalled worker's question; waiting here is idle, not a stall.
                    self.watch.answer(self._whereabouts)
                backoff.pause()
                continue
            backoff.reset()
            for j in done:
                if j == 0:
                    kind, worker = (int(v) for v in self.request)
                    self.requests[0] = self._listen_for_requests()
                    stopped += self._on_request(kind, worker)
                else:
                    piece, k = self.keys[j - 1]
                    self.received[piece.index, k] += 1
                    self.on_gradient(piece, k)

    def _whereabouts(self):
        """What this server waits for, as the stall watchdog's answer says it."""
        clock = int(self.received.min()) + 1
        late = [k for k in range(self.workers) if self.received[:, k].min() < clock]
        return (f"iteration {clock}, waiting for the gradients of worker"
                f"{'s' if len(late) > 1 else ''} {', '.join(map(str, late))}")

    def _listen_for_requests(self):
        return self.wire.control.Irecv(self.request, job.ANY_SOURCE, REQUEST)

    def _listen(self, piece, k):
        """(Re-)post the receive of worker k's next gradient of ``piece``."""
        self.requests[self.slot[piece, k]] = self.wire.grads.Irecv(self.grad[piece.index, k],
                                                                   k, piece.index)

    def on_gradient(self, piece, k):
        """Worker k's gradient of ``piece`` is in ``self.grad[piece.index, k]``."""
        raise NotImplementedError

    def _answer(self, piece, k):
        """Send worker k the current weights of ``piece`` and the clocks they include."""
        p = piece.index
        job.wait_all(self.sends.get((p, k), []))   # done already: k has pushed since
        self.clock_out[p, k] = self.received[p].min() + 1
        self.sends[p, k] = [
            self.wire.weights.Isend(self.answer_buffer(piece, k), k, p),
            self.wire.clocks.Isend(self.clock_out[p, k:k + 1], k, p)]

    def answer_buffer(self, piece, k):
        return self.solver.net.arena.data[piece.view]

    def _on_request(self, kind, worker):
        """Serve a control request; returns 1 for STOP."""
        control = self.wire.control
        if kind == STOP:
            return 1
        if kind == PULL:
            for piece in self.pieces:
                self._answer(piece, worker)
        elif kind == GATHER:
            for piece in self.pieces:
                for array in [self.solver.net.arena.data, *self.solver.history]:
                    control.Send(array[piece.view], worker, REPLY)
        elif kind == TRACE:
            control.send(self.trace.events if self.trace is not None else [], worker, REPLY)
            if self.trace is not None:
                self.trace.events = []
        else:
            raise RuntimeError(f'{self.wire.describe(self.wire.rank)}: unknown request {kind} '
                               f'from worker {worker}')
        return 0

    def _span(self, track, name, start, clock, **args):
        if self.trace is not None:
            self.trace.iteration = clock
            self.trace.span(track, name, start, time.perf_counter(), **args)

    def close(self):
        """Collective over the job, after ``run``: drop the receives nobody will match."""
        job.cancel_all(self.requests)
        for requests in self.sends.values():
            job.wait_all(requests)
        self.wire.free()


class SyncServer(ParameterServer):
    """``ps-sync``: update a piece with every worker's gradient of the clock."""

    def start(self):
        super().start()
        self.clock_begun = None   # the clock whose update begin_update has fixed

    def on_gradient(self, piece, k):
        p, s = piece.index, self.solver
        clock = int(self.received[p, k])
        if self.received[p].min() < clock:
            return                                    # other workers' gradients still to come
        start = time.perf_counter()
        for j in range(self.workers):                 # the answers read the arena slice
            job.wait_all(self.sends.get((p, j), []))
        grad = s.net.arena.diff[piece.view]
        np.copyto(grad, self.grad[p, 0])
        for j in range(1, self.workers):
            grad += self.grad[p, j]
        if clock != self.clock_begun:
            s.iter = clock
            s.begin_update(scale=1.0 / self.workers)
            self.clock_begun = clock
        s.update_slice(piece.view, piece.slot.lr_mult, piece.slot.decay_mult)
        self._span('compute', f'update {piece.slot.key}', start, clock, piece=p)
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
        p, s, param, slot = piece.index, self.solver, self.solver.param, piece.slot
        clock, start = int(self.received[p, k]), time.perf_counter()
        w, h = s.net.arena.data[piece.view], s.history[0][piece.view]
        while self.clock_applied[p] < clock:   # the per-clock parts, in order
            self.clock_applied[p] += 1
            rate = s.learning_rate(self.clock_applied[p]) * slot.lr_mult
            K.sgd_update(w, self.zeros[:w.size], h, rate, param.momentum,
                         param.weight_decay * slot.decay_mult, 1.0,
                         param.regularization_type == 'L1')
        g = self.grad[p, k]
        g *= s.learning_rate(clock) * slot.lr_mult / (self.workers * param.iter_size)
        h += g
        w -= g
        self._listen(piece, k)
        self._span('compute', f'apply {slot.key} w{k}', start, clock, piece=p, worker=k)
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
                    self._span('comm', f'withheld {piece.slot.key} w{k}', arrived, clock)
            else:
                still.append((k, clock, arrived))
        self.waiting[p] = still

    def answer_buffer(self, piece, k):
        # A copy: later gradients change the piece while this answer is on the wire.
        copy = self.copies[piece.index, k]
        np.copyto(copy, self.solver.net.arena.data[piece.view])
        return copy


SERVERS = {'ps-sync': SyncServer, 'ps-async': AsyncServer}


def serve(solver, world, name, servers=1, staleness=None, trace=None, watch=None):
    """Run this rank as a server of ``name`` until every worker stops (collective
    over ``world``; ``layerasync.ps.run`` calls it on the serving ranks). ``watch``:
    the job's stall watchdog, answered between polls."""
    server = SERVERS[name](solver, world, name, servers, staleness, trace, watch)
    server.start()
    server.run()
    server.close()
