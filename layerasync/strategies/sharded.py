"""``sharded``: reduce-scatter each bucket as backward completes it, update
only this rank's shard, all-gather the weights just before the next forward.

The idea of ZeRO stage 1 and of DeAR, on MPI (``comm.sharded``): rank r owns
part r of every chunk of the gradient arena. Backward posts a bucket's
reduce-scatter as soon as it is complete; at the end of the iteration each
rank updates the parts it owns — with the solver's own rule, reading the
summed gradient of those parts and the solver history of those parts only —
and posts the bucket's all-gather; layer l waits for its gather just before
its next forward, as ``async-layerwise`` waits for its allreduce. So:

- the bytes on the wire are those of an allreduce (a ring allreduce *is* a
  reduce-scatter followed by an all-gather), split into two halves that
  overlap the two passes: the reduce-scatters behind backward, the gathers
  behind forward;
- the solver state (momentum; Adam's two moments) is held for 1/P of the
  parameters on each rank, plus a 1/P gradient shard;
- the iterates are those of ``sync``: every element gets the update rule
  applied once, to the sum over ranks of its gradient, with the iteration's
  learning rate.

The shards are updated in forward order (the first layers first), each as
soon as its reduce-scatter is done and the learning rate is fixed; every rank
takes them in that one order, so the gathers are posted alike everywhere.

Parameters a layer does not learn (BatchNorm's statistics: every blob with
``lr_mult: 0``) stay out of the shards: each rank keeps its own, as under
``sync``. A blob with ``lr_mult: 0`` in a layer that learns others is
gathered from its owner's copy (the same on every rank: it never changes).

Snapshots hold whole histories, gathered to rank 0 (``gather_state``); a
resumed run reads them whole and keeps its shards (``start``).
"""
import math
from collections import deque

import numpy as np

from ..kernels import solver as K
from .base import AllreduceStrategy


class Sharded(AllreduceStrategy):
    name = 'sharded'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = None      # this rank's shard of each solver history (after start)
        self.to_update = deque()  # buckets whose shard is due for this iteration's update
        self.gathering = set()   # buckets whose gather is posted and not yet waited for
        if self.comm is None:
            return
        self.pieces = self._pieces()
        learned = {i for i, _ in self._segments()}
        self.unlearned = [view for i, view in self.net.arena.segments.items() if i not in learned]

    def _segments(self):
        """The arena segments of the layers that learn something."""
        return [(i, view) for i, view in self.net.arena.segments.items()
                if any(slot.lr_mult != 0 for slot in self.solver.slots_of[i])]

    def communicator(self, mpi_comm, trace, comm_settings):
        from ..comm.sharded import ShardedCommunicator
        arena = self.net.arena
        return ShardedCommunicator(mpi_comm, arena.diff, arena.data, self._segments(),
                                   trace=trace, **comm_settings)

    def _pieces(self):
        """Per gradient bucket, what this rank updates: (arena slice, shard
        slice, lr_mult, decay_mult) for each blob its parts overlap."""
        comm, slots = self.comm, [s for s in self.solver.slots if s.lr_mult != 0]
        pieces = []
        for bucket in self.buckets:
            mine = []
            for c in bucket.chunks:
                start, count, offset = comm.parts[c]
                for slot in slots:
                    lo, hi = max(start, slot.view.start), min(start + count, slot.view.stop)
                    if lo < hi:
                        mine.append((slice(lo, hi), slice(offset + lo - start, offset + hi - start),
                                     slot.lr_mult, slot.decay_mult))
            pieces.append(mine)
        return pieces

    # -- start-up: the shards of the solver state ------------------------------
    def start(self, context=()):
        super().start(context)
        if self.comm is None or self.history is not None:
            return
        whole = self.solver.history   # as built, or as restored from a snapshot
        self.history = [np.zeros(self.comm.shard_size, h.dtype) for h in whole]
        for start, count, offset in self.comm.parts:
            for shard, h in zip(self.history, whole):
                shard[offset:offset + count] = h[start:start + count]
        # The solver's whole histories are not used from here on; the snapshot
        # gathers the shards (``gather_state``).
        self.solver.history = []

    def gather_state(self):
        if self.comm is None or self.history is None:
            return None
        return self.comm.gather_shards(self.history)

    def close(self):
        """Collective: give the solver its whole histories back, then close."""
        if self.comm is not None and self.history is not None:
            self.finish()
            self.solver.history = self.comm.gather_shards(self.history, root=None)
            self.history = None
        super().close()

    # -- the iteration -----------------------------------------------------------
    def end_iteration(self):
        s = self.solver
        if self.comm is None:
            s.update(scale=self.grad_scale)
            return
        norm = None
        if s.needs_all_gradients:   # clipping: the global norm, from every rank's shard
            with self.span('wait all'):
                self.comm.wait_all()
            squares = K.sum_of_squares(self.comm.shard_grad)
            norm = math.sqrt(self.control.allreduce_mean(squares) * self.size) * self.grad_scale
        # Fixes this iteration's learning rate for the shard updates.
        s.begin_update(scale=self.grad_scale, norm=norm)
        for view in self.unlearned:
            self.net.arena.diff[view] = 0.0
        self.to_update = deque(self.forward_order)
        self._advance()

    def before_forward(self, i):
        bucket = self.needed_by.get(i)
        if bucket in self.gathering or bucket in self.to_update:
            self._apply(bucket)
        else:
            self._advance()

    def progress_hook(self):
        if self.comm is not None and self.comm.thread is None:
            return self._advance
        return None

    def _advance(self):
        """Progress; then update and gather, in order, the shards whose
        reduce-scatter is done."""
        if self.comm is None:
            return
        self.comm.progress()
        while self.to_update and self.comm.is_done(self.to_update[0]):
            self._update(self.to_update.popleft())

    def _update(self, bucket):
        b = self.buckets[bucket]
        with self.span(f'update b{bucket}', bucket=bucket):
            grad = self.comm.shard_grad
            for view, part, lr_mult, decay_mult in self.pieces[bucket]:
                self.solver.update_arrays(self.net.arena.data[view], grad[part],
                                          [h[part] for h in self.history], lr_mult, decay_mult)
            self.net.arena.diff[b.start:b.stop] = 0.0   # sent: ready for the next accumulation
        self.comm.post_gather(bucket)
        self.gathering.add(bucket)

    def _apply(self, bucket):
        """Bucket ``bucket``'s weights whole and current (those due before it first)."""
        while bucket in self.to_update:
            head = self.to_update.popleft()
            with self.span(f'wait b{head}', bucket=head):
                self.comm.wait(head)
            self._update(head)
        self._advance()   # gathers already possible queue up behind this one
        with self.span(f'gather b{bucket}', bucket=bucket):
            self.comm.wait_gather(bucket)
        self.gathering.discard(bucket)

    def finish(self):
        for bucket in list(self.to_update):
            self._apply(bucket)
        for bucket in sorted(self.gathering):
            self._apply(bucket)
