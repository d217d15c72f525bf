"""``local-sgd:H[+outer=nesterov]``: H local steps, then average the weights.

Each rank trains on its own shard of the data with its own solver (its own
momentum or Adam moments), exchanging nothing for H iterations; after every
H-th local step the weights are averaged over the ranks (Stich 2019, "Local
SGD converges fast and communicates little"; Lin et al. 2020). The average
is one allreduce of the weights per H iterations instead of one of the
gradients per iteration, and it is overlapped with the next forward pass:
each bucket's allreduce is posted, in place in the weights, as soon as the
local step has updated it, and layer l waits for its bucket just before its
next forward (as ``async-layerwise`` waits for a gradient).

With ``+outer=nesterov`` the average is not taken as the new weights but as
a pseudo-gradient for an outer optimizer (DiLoCo, Douillard et al. 2023):
with w0 the weights at the last averaging point and w the new average,
``d = w0 - w``, ``v = mu v + d``, ``w0 <- w0 - lr (d + mu v)`` (Nesterov),
with DiLoCo's ``lr = 0.7``, ``mu = 0.9`` unless given
(``+outer=nesterov:LR:MOMENTUM``); this holds two more copies of the
parameters (w0 and v). DiLoCo's values suit hundreds of inner steps; after
a few SGD steps with momentum they amplify each averaged update about
lr / (1 - mu) = 7 times (measured: LeNet diverges at H = 4).

H = 1 without an outer optimizer is ``sync`` for SGD and Nesterov (to
rounding: the mean of the ranks' updated weights instead of the update with
the mean gradient; the update is linear in the gradient and the weights, and
the momentum histories, different on each rank, average to sync's). For
H > 1, and for Adam at any H, the iterates are local SGD's, not sync's.

Between averaging points the ranks hold different weights: a snapshot taken
there stores rank 0's (weights and solver state), and a run resumed from it
starts every rank from rank 0's.
"""
import numpy as np

from .base import AllreduceStrategy


class LocalSGD(AllreduceStrategy):
    """``argument``: (H, the outer optimizer or None), from
    ``strategies.parse_strategy``."""
    name = 'local-sgd'

    def __init__(self, solver, mpi_comm=None, argument=(1, None), trace=None, **comm_settings):
        self.period, self.outer = argument
        if self.outer is not None:   # refused before allocation if it cannot fit
            solver.memory.reserve("strategy 'local-sgd'", 'the outer optimizer (2 parameter sets)',
                                  2 * solver.net.arena.data.nbytes)
        super().__init__(solver, mpi_comm, argument, trace, **comm_settings)
        self.grad_scale = 1.0   # each rank steps with its own gradient
        self.pending = set()    # buckets whose average is in flight
        self.anchor = self.velocity = None
        if self.outer is not None and self.comm is not None:
            self.anchor = self.net.arena.data.copy()   # w0: the weights at the last average
            self.velocity = np.zeros_like(self.anchor)
            # The outer rule moves what is learned; BatchNorm's statistics are only averaged.
            self.learned = {b.index: [s.view for s in solver.slots
                                      if s.layer in b.layers and s.lr_mult != 0]
                            for b in self.buckets}

    def communicator(self, mpi_comm, trace, comm_settings):
        from ..comm.mpi import Communicator
        if comm_settings.get('compress'):
            raise ValueError(f"--compress {comm_settings['compress']}: local-sgd averages "
                             'weights, which are not compressed (compression applies to the '
                             'gradient allreduce of sync, layerwise, async-layerwise and delayed:K)')
        # Allreduces of the weights: the buckets are over the parameter arena.
        return Communicator(mpi_comm, [self.net.arena.data],
                            list(self.net.arena.segments.items()), trace=trace, **comm_settings)

    def start(self, context=()):
        super().start(context)
        if self.anchor is not None:
            self.anchor[...] = self.net.arena.data

    # -- hooks ------------------------------------------------------------------
    def after_backward(self, i):
        if self.comm is not None:
            self.comm.progress()

    def end_iteration(self):
        with self.span('update all'):
            self.solver.update()
        if self.comm is None or (self.solver.iter + 1) % self.period:
            return
        for b in self.forward_order:
            self.comm.post(b)
        self.pending = set(range(len(self.buckets)))

    def before_forward(self, i):
        bucket = self.needed_by.get(i)
        if bucket in self.pending:
            self._apply(bucket)
        elif self.comm is not None:
            self.comm.progress()

    def _apply(self, bucket):
        b = self.buckets[bucket]
        with self.span(f'wait b{bucket}', bucket=bucket):
            self.comm.wait(bucket)
        data = self.net.arena.data
        data[b.start:b.stop] *= 1.0 / self.size   # the sum over ranks -> the mean
        if self.outer is not None:
            mu = self.outer.momentum
            for view in self.learned[bucket]:
                w0, v = self.anchor[view], self.velocity[view]
                d = w0 - data[view]
                v *= mu
                v += d
                w0 -= self.outer.lr * (d + mu * v)
                data[view] = w0
        self.pending.discard(bucket)

    def finish(self):
        for bucket in [b for b in self.forward_order if b in self.pending]:
            self._apply(bucket)
